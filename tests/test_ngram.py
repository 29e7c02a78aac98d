"""The count-based n-gram model: its counts and back-off against a brute-force count, its forward and cache,
its sampler, its files; and the loop with it (resume, every regime)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import run_cli

from collapse.config import GenerationConfig
from collapse.decoding.generate import _decode, sample_batch
from collapse.models.ngram import NGramCounts, fit, load, save, skeleton
from collapse.seeding import seeded_generator


def _brute(rows: np.ndarray, V: int, n: int, k: float, sep: int | None, ctx: tuple[int, ...]) -> np.ndarray:
    """p(. | ctx) by counting n-grams in plain Python, with the documented back-off."""
    for h in range(min(n - 1, len(ctx)), -1, -1):
        hist = tuple(ctx[len(ctx) - h:]) if h else ()
        if any(t < 0 for t in hist):
            continue
        c: Counter = Counter()
        for r in rows:
            for t in range(h, len(r)):
                if tuple(r[t - h:t]) == hist:
                    c[int(r[t])] += 1
        if h and not any(x != sep for x in c):  # unseen, or seen only before the separator: back off
            continue
        tot = sum(c.values())
        return np.array([(c[x] + k) / (tot + k * V) for x in range(V)])
    raise AssertionError("unreachable")


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("k", [0.0, 0.5])
def test_probabilities_match_a_brute_force_count(n, k):
    rng = np.random.default_rng(n)
    V, sep = 5, 4
    rows = rng.integers(0, V, size=(6, 9))
    m = NGramCounts.fit(rows, V, n, k, sep)
    ctxs = [tuple(rng.integers(-1, V, size=max(n - 1, 0))) for _ in range(40)]
    ctx = np.array(ctxs, dtype=np.int64).reshape(len(ctxs), n - 1)
    got = m.probs(ctx)
    for i, c in enumerate(ctxs):
        np.testing.assert_allclose(got[i], _brute(rows, V, n, k, sep, c), rtol=1e-12, err_msg=str(c))
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-12)


def test_forward_is_log_probs_and_the_cache_steps_like_the_full_forward():
    rng = np.random.default_rng(0)
    model = fit(rng.integers(0, 7, size=(20, 12)), 7, 3, 0.0, 6)
    x = torch.as_tensor(rng.integers(0, 7, size=(3, 10)))
    full = model(input_ids=x).logits
    ctx = np.stack([np.r_[[-1, -1], x[0].numpy()][t + 1:t + 3] for t in range(10)])  # position t predicts t+1
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(full[0].numpy(), np.log(model.counts.probs(ctx)).astype(np.float32))
    out = model(input_ids=x[:, :4], use_cache=True, logits_to_keep=1)
    steps = [out.logits[:, -1]]
    for t in range(4, 10):
        out = model(input_ids=x[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:])


@pytest.mark.parametrize("n", [1, 2])
def test_direct_sampler_draws_what_the_generic_decoder_draws(n):
    """The same uniforms give the same tokens through the n-gram's own sampler and the transformer decode loop
    (softmax of its log-probabilities, inverse CDF): the n-gram samples exactly like any model."""
    rng = np.random.default_rng(1)
    model = fit(rng.integers(0, 30, size=(50, 40)), 31, n, 0.0, 30)
    prompts = torch.as_tensor(rng.integers(0, 30, size=(16, 5)))
    cfg = GenerationConfig()
    fast = sample_batch(model, prompts, 12, cfg, seeded_generator(0, 1, "generate", 0), (30,))
    u = torch.rand(12, 16, dtype=torch.float64, generator=seeded_generator(0, 1, "generate", 0))
    slow = _decode(model, prompts, 12, cfg, u, (30,), {})
    assert torch.equal(fast, slow)
    assert not (fast == 30).any()  # the separator is never drawn


def test_unigram_samples_follow_the_counts():
    model = fit(np.array([[0, 0, 0, 1, 1, 2, 3]]), 4, 1, 0.0, 3)  # 3 is the separator
    gen = sample_batch(model, torch.zeros(4000, 1, dtype=torch.long), 5, GenerationConfig(),
                       seeded_generator(7), (3,)).numpy()
    f = np.bincount(gen.ravel(), minlength=4) / gen.size
    np.testing.assert_allclose(f, [0.5, 1 / 3, 1 / 6, 0.0], atol=0.01)  # 20,000 draws: sd < 0.004


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    model = fit(rng.integers(0, 9, size=(10, 15)), 9, 3, 0.25, 8)
    save(model, tmp_path / "model")
    back = load(tmp_path / "model", 8)
    x = torch.as_tensor(rng.integers(0, 9, size=(2, 15)))
    assert torch.equal(model(input_ids=x).logits, back(input_ids=x).logits)
    assert back.counts.add_k == 0.25 and back.counts.n == 3
    assert skeleton(9, 2, 0.0, 8).config.vocab_size == 9


def test_zero_probability_is_an_infinite_loss():
    from collapse.metrics.evaluate import token_nll

    model = fit(np.array([[0, 1, 0, 1, 0, 1]]), 3, 2, 0.0, None)
    nll = token_nll(model, torch.tensor([[0, 1, 0, 0]]))
    assert torch.isinf(nll[0, 2]) and torch.isfinite(nll[0, :2]).all()  # 0 never follows 0 in training


# ---------------------------------------------------------------------- the loop

NGRAM_RUN = [
    "data.source=synthetic", "data.synthetic.vocab=50", "data.synthetic.documents=80", "data.synthetic.doc_tokens=48",
    "data.synthetic.truth_documents=16", "model.name_or_path=ngram", "model.ngram.n=2", "model.ngram.add_k=0.1",
    "generations=3", "generation.num_sequences=32", "generation.batch_size=8", "generation.prompt_tokens=8",
    "generation.new_tokens=16", "eval.max_blocks=8", "wandb.mode=disabled",
]


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["replace", "mix", "accumulate"])
def test_ngram_run_every_regime_writes_truth_metrics(tmp_path, kind):
    out = tmp_path / kind
    r = run_cli("run", *NGRAM_RUN, f"regime.kind={kind}", f"out_dir={out}", env={"COLLAPSE_SKIP_REPORT": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(out)
    assert [x["generation"] for x in rows] == [0, 1, 2, 3]
    for x in rows:
        assert x["kl_truth"] > 0 and x["kl_truth_ci"][0] <= x["kl_truth"] <= x["kl_truth_ci"][1]
        assert x["shares_against"] == "truth" and 0 <= x["mass_forgotten"] < 1
        assert np.isfinite(x["test_ppl"]) and x["test_zero_tokens"] == 0  # add_k > 0: nothing has probability 0
    assert (out / "gen_003" / "model" / "counts.npz").is_file()
    if kind == "replace":  # model 1 counts 512 generated tokens, model 0 the ~3,400 real ones: farther from truth
        assert rows[1]["kl_truth_ci"][0] > rows[0]["kl_truth_ci"][1]


def test_ngram_run_resumes_after_a_kill_with_the_same_numbers(tmp_path):
    env = {"COLLAPSE_SKIP_REPORT": "1"}
    whole = tmp_path / "whole"
    assert run_cli("run", *NGRAM_RUN, f"out_dir={whole}", env=env).returncode == 0
    cut = tmp_path / "cut"
    r = run_cli("run", *NGRAM_RUN, f"out_dir={cut}", env={**env, "COLLAPSE_FAULT": "between:2:train"})
    assert r.returncode != 0  # killed right after generation 2's counts were recorded
    r = run_cli("run", *NGRAM_RUN, f"out_dir={cut}", env=env)  # resumes: model 2 is read back from counts.npz
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _rows(whole), _rows(cut)
    for x, y in zip(a, b):
        for k in ("kl_truth", "kl_truth_ci", "test_ppl", "bucket_shift", "mass_forgotten", "gini_simpson"):
            assert x[k] == y[k], k


@pytest.mark.parametrize("n", [1, 2, 3])
def test_target_log_probs_equal_the_forward_pass(n):
    """Evaluation's shortcut (no [B, L, V] logits) gives what the forward pass gives, with and without the
    separator renormalized away (kl_truth's model distribution)."""
    rng = np.random.default_rng(n)
    V = 12 if n < 3 else 400  # n=3 over 400 ids: no table, the counts' path
    model = fit(rng.integers(0, V, size=(30, 20)), V, n, 0.1, V - 1)
    x = torch.as_tensor(rng.integers(0, V - 1, size=(4, 11)))  # truth documents never hold the separator
    logits = model(input_ids=x).logits[:, :-1]
    torch.testing.assert_close(model.target_log_probs(x), logits.gather(-1, x[:, 1:, None])[..., 0])
    masked = torch.log_softmax(logits.double().masked_fill(torch.arange(V) == V - 1, float("-inf")), -1)
    torch.testing.assert_close(model.target_log_probs(x, 3, drop=V - 1).double(),
                               masked.gather(-1, x[:, 1:, None])[:, 2:, 0], rtol=1e-5, atol=1e-5)
