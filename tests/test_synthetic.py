"""The synthetic source: exact stationary law and entropy rate from its tables, seeded sampling, one token id per
symbol; its settings' errors; `collapse run` with the scratch transformer on it (kl_truth with its interval,
shifts against the true shares)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, run_cli

from collapse import metrics as M
from collapse.config import SyntheticConfig, load_config
from collapse.data import load_splits, split_ids, tokenize
from collapse.data.synthetic import SyntheticSource


@pytest.mark.parametrize("order, vocab", [(0, 50), (1, 50), (2, 20)])
def test_stationary_law_and_entropy_rate_are_exact(order, vocab):
    src = SyntheticSource(SyntheticConfig(vocab=vocab, order=order, doc_tokens=200, concentration=20.0))
    pi = src.pi
    assert abs(pi.sum() - 1) < 1e-12 and (pi > 0).all()
    if order == 1:
        np.testing.assert_allclose(pi @ src.table, pi, atol=1e-13)  # a fixed point of the chain
        assert np.allclose(src.table.sum(1), 1)
    if order == 2:
        np.testing.assert_allclose(np.einsum("ab,abx->bx", src.pair, src.table), src.pair, atol=1e-13)
    docs = src.sample(400, np.random.default_rng(0))  # 80,000 tokens
    f = np.bincount(docs.ravel(), minlength=vocab) / docs.size
    # every position of a document has the law pi: 80,000 tokens put the total variation near 0.01 by chance
    # (0.005-0.015 measured for these settings); a wrong table, start or draw gives 0.1 or more
    assert 0.5 * np.abs(f - pi).sum() < 0.03
    lq = src.log_prob(docs)
    assert np.isfinite(lq).all()
    # -mean log q estimates the entropy rate (the first token aside): within 1% here
    assert abs(-lq[:, 1:].mean() - src.entropy_rate) < 0.01 * src.entropy_rate
    assert src.entropy_rate <= src.unigram_entropy + 1e-12
    shares = src.bucket_shares()
    assert abs(shares.sum() - 1) < 1e-12 and shares[M.BUCKETS.index("unseen")] == 0


def test_same_seed_same_source_other_seed_other_tables():
    a, b = SyntheticSource(SyntheticConfig(vocab=30)), SyntheticSource(SyntheticConfig(vocab=30))
    c = SyntheticSource(SyntheticConfig(vocab=30, seed=1))
    assert np.array_equal(a.table, b.table) and not np.array_equal(a.table, c.table)
    assert np.array_equal(a.truth_documents(), b.truth_documents())


def test_one_token_per_symbol_through_the_splits():
    cfg = load_config(None, ["data.source=synthetic", "data.synthetic.vocab=40", "data.synthetic.documents=30",
                             "data.synthetic.doc_tokens=16"])
    splits = load_splits(cfg.data)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 30
    tok = splits.tokenizer
    ids = split_ids(tok, splits)
    assert all(len(d) == 16 for s in ids.values() for d in s)
    assert len(tok) == 41 and tok.eos_token_id == 40
    doc = ids["train"][0]
    assert splits.train[0] == " ".join(f"w{i}" for i in doc)
    assert tok.decode(doc.tolist()) == splits.train[0]
    # the ids the splits carry (no tokenizing) are the ids the saved tokenizer gives the text
    assert all(np.array_equal(a, b) for s in ids for a, b in zip(tokenize(tok, splits[s]), ids[s]))


SYN_TINY = [*TINY, "model.scratch.context=128", "data.source=synthetic", "data.synthetic.vocab=60",
            "data.synthetic.documents=120", "data.synthetic.doc_tokens=48", "data.synthetic.truth_documents=16",
            "generations=1", "generation.num_sequences=32", "generation.batch_size=16", "generation.prompt_tokens=16",
            "generation.new_tokens=16", "train.epochs=1", "train.batch_size=16", "eval.max_blocks=8",
            "wandb.mode=disabled"]


def test_scratch_transformer_on_the_synthetic_source(tmp_path):
    """The default model kind (the scratch GPT-2, built on the source's word-level tokenizer) runs the loop and
    writes kl_truth with its interval and the shifts against the TRUE shares for every generation."""
    out = tmp_path / "run"
    r = run_cli("run", *SYN_TINY, f"out_dir={out}", env={"COLLAPSE_SKIP_REPORT": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in rows] == [0, 1]
    src = SyntheticSource(SyntheticConfig(vocab=60, documents=120, doc_tokens=48, truth_documents=16))
    true = src.bucket_shares()
    for x in rows:
        lo, hi = x["kl_truth_ci"]
        assert 0 < lo <= x["kl_truth"] <= hi
        assert x["shares_against"] == "truth"
        for i, b in enumerate(M.BUCKETS[:2]):
            assert x["bucket_share"][b]["ref_share"] == pytest.approx(true[i], rel=1e-12)
        assert x["bucket_shift_ref"] is not None and "1-10" in x["tail_loss"]
    base = json.loads((out / "manifest.json").read_text())["base_model"]
    tok = json.loads((__import__("pathlib").Path(base) / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "WordLevel"  # the scratch model uses the source's tokenizer, no BPE


CASES = [
    ("vocab-1", ["data.source=synthetic", "data.synthetic.vocab=1"], "data.synthetic.vocab"),
    ("order-3", ["data.source=synthetic", "data.synthetic.order=3"], "data.synthetic.order"),
    ("zipf-0", ["data.source=synthetic", "data.synthetic.zipf=0"], "data.synthetic.zipf"),
    ("order-2-vocab", ["data.source=synthetic", "data.synthetic.order=2", "data.synthetic.vocab=500"], "vocab<=200"),
    ("ngram-lora", ["model.name_or_path=ngram", "train.lora.r=4"], "train.lora.r"),
    ("ngram-method", ["model.name_or_path=ngram", "train.method=full"], "train.method"),
    ("ngram-n", ["model.name_or_path=ngram", "model.ngram.n=4"], "model.ngram.n"),
]


@pytest.mark.parametrize("overrides, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_settings_are_one_line_exit_2_nothing_written(tmp_path, overrides, needle):
    out = tmp_path / "out"
    r = run_cli("run", *overrides, f"out_dir={out}", env={"COLLAPSE_CACHE": str(tmp_path / "cache")}, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr and not out.exists() and not (tmp_path / "cache").exists()
