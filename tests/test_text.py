"""MAUVE and self-BLEU (collapse.metrics.text): cases with a known answer, and the figures in a run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_RUN, run_cli

pytest.importorskip("nltk")
pytest.importorskip("mauve")

from collapse.metrics.text import features, mauve_half, mauve_score, self_bleu_scores, subsample, words  # noqa: E402

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLLAPSE_SKIP_REPORT": "1"}
TEXT = ["eval.mauve=true", "eval.self_bleu=true", "eval.self_bleu_samples=20", "eval.mauve_resamples=4"]


def test_words_split_punctuation_and_keep_case():
    assert words("And God said, Let there be light.") == ["And", "God", "said", ",", "Let", "there", "be", "light", "."]


def test_self_bleu_of_identical_texts_is_one_and_of_disjoint_texts_near_zero():
    same = ["in the beginning god created the heaven and the earth"] * 6
    assert np.allclose(self_bleu_scores(same), 1.0)
    disjoint = [" ".join(f"w{i}x{j}" for j in range(12)) for i in range(6)]  # no word shared by two texts
    assert self_bleu_scores(disjoint).max() < 0.02


def test_self_bleu_by_hand_on_two_texts():
    """a b c d e vs a b c d f: clipped precisions 4/5, 3/4, 2/3, 1/2, equal lengths: BLEU = (0.2)^(1/4) both ways."""
    s = self_bleu_scores(["a b c d e", "a b c d f"])
    assert np.allclose(s, 0.2 ** 0.25)


def test_one_repeated_sample_among_diverse_ones_scores_one_for_its_copies():
    rng = np.random.default_rng(0)
    vocab = [f"v{i}" for i in range(400)]
    texts = [" ".join(rng.choice(vocab, 16)) for _ in range(8)] + ["the same sample again and again"] * 2
    s = self_bleu_scores(texts)
    assert np.allclose(s[-2:], 1.0) and s[:8].max() < 0.2


def test_mauve_of_identical_sets_is_one_of_far_apart_sets_near_zero():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(300, 6))
    assert mauve_score(p, p.copy()) == pytest.approx(1.0)
    assert mauve_score(p, p + 50.0) < 0.05


def test_mauve_of_one_repeated_sample_is_low_and_of_a_fresh_draw_high():
    rng = np.random.default_rng(2)
    p, q = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
    assert mauve_score(p, np.repeat(q[:1], 400, axis=0)) < 0.1
    assert mauve_score(p, q) > 0.8


def test_mauve_half_scores_each_rows_kept_pairs_once():
    """A half-sample that keeps only pairs whose two features are equal scores 1; an empty one is NaN."""
    rng = np.random.default_rng(3)
    p = rng.normal(size=(60, 3))
    q = p.copy()
    q[30:] += 40.0  # the second half of the pairs disagree
    w = np.zeros((2, 60))
    w[0, :30] = 2.0  # the agreeing half, each kept once whatever its weight
    out = mauve_half(p, q, w, buckets=6)
    assert out[0] == pytest.approx(1.0) and np.isnan(out[1])


def test_features_are_the_last_tokens_final_hidden_state():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).eval()
    rows = np.random.default_rng(4).integers(0, 50, size=(5, 7))
    got = features(model, rows, batch_size=2)
    with torch.no_grad():
        want = torch.stack([model.transformer(torch.as_tensor(r)[None]).last_hidden_state[0, -1] for r in rows])
    assert got.shape == (5, 16) and np.allclose(got, want.numpy(), atol=1e-5)


def test_subsample_is_seeded_and_without_repeats():
    a = subsample(50, 20, np.random.default_rng(5))
    assert len(set(a)) == 20 and list(a) == sorted(a)
    assert list(subsample(5, 20, np.random.default_rng(5))) == [0, 1, 2, 3, 4]


def test_text_keys_stay_out_of_a_config_that_does_not_use_them():
    """The default config (and its fingerprint) is the one a run made before the text figures had."""
    from collapse.config import Config
    from collapse.config.schema import TEXT_KEYS

    assert not set(TEXT_KEYS) & set(Config().to_dict()["eval"])
    on = Config()
    on.eval.self_bleu = True
    assert set(TEXT_KEYS) <= set(on.to_dict()["eval"]) and on.fingerprint() != Config().fingerprint()


def test_a_missing_text_library_is_one_line(monkeypatch):
    import importlib.util

    from collapse.check import check_text
    from collapse.config import Config, ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "faiss" else real(m, *a))
    cfg = Config()
    cfg.eval.mauve = True
    with pytest.raises(ConfigError, match=r"eval.mauve needs faiss.*pip install 'model-collapse\[text\]'"):
        check_text(cfg)
    cfg.eval.mauve, cfg.eval.self_bleu = False, True
    check_text(cfg)  # nltk is here


@pytest.mark.parametrize("bad, what", [
    (["model.name_or_path=ngram", "eval.mauve=true"], "n-gram model has none"),
    (["eval.self_bleu=true", "eval.self_bleu_samples=1"], "eval.self_bleu_samples=1 is out of range"),
    (["eval.mauve=true", "eval.mauve_resamples=-1"], "eval.mauve_resamples=-1 is out of range"),
    (["eval.mauve=true", "eval.mauve_features=/no/such/folder"], "eval.mauve_features=/no/such/folder cannot be loaded"),
    (["eval.mauve=true", "eval.mauve_features=no-such-org/no-such-model"], "cannot be loaded"),
])
def test_bad_text_settings_are_one_line_exit_2_nothing_written(tmp_path, bad, what):
    out = tmp_path / "run"
    r = run_cli("run", "--check", *TINY_RUN, *bad, f"out_dir={out}", env=ENV)
    assert r.returncode == 2 and what in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_a_run_reports_both_figures_and_a_killed_measure_stage_resumes_to_the_same_rows(tmp_path):
    """Values, intervals and paired changes in metrics.jsonl; self-BLEU recomputed with nltk from the samples file;
    a kill in generation 1's measure stage, rerun in a fresh process, gives the same bytes (k-means seeded);
    load_runs in a fresh process has both figures."""
    import pyarrow.parquet as pq
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    from collapse.seeding import numpy_rng

    args = ["run", *TINY_RUN, "generations=1", *TEXT]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = run_cli(*args, f"out_dir={whole}", env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for k in ("mauve", "self_bleu"):
            lo, hi = row[f"{k}_ci"]
            assert 0 <= row[k] <= 1 and lo <= hi, (k, row[k], row[f"{k}_ci"])
    ch = rows[1]["changes"]["from_gen0"]
    assert ch["self_bleu"]["delta"] == pytest.approx(rows[1]["self_bleu"] - rows[0]["self_bleu"])
    assert ch["mauve"]["delta"] == pytest.approx(rows[1]["mauve"] - rows[0]["mauve"])
    for g, row in enumerate(rows):  # the subsample's texts as the samples file holds them, scored by nltk here
        texts = pq.read_table(whole / f"gen_{g:03d}" / "samples.parquet").column("text").to_pylist()
        idx = subsample(len(texts), 20, numpy_rng(0, "self-bleu"))
        toks = [words(texts[i]) for i in idx]
        want = np.mean([sentence_bleu(toks[:i] + toks[i + 1:], t, smoothing_function=SmoothingFunction().method1)
                        for i, t in enumerate(toks)])
        assert row["self_bleu"] == pytest.approx(want, abs=1e-12)
    r = run_cli(*args, f"out_dir={killed}", env={**ENV, "COLLAPSE_FAULT": "measure:1:0"})
    assert r.returncode != 0 and not (killed / "gen_001" / "metrics.json").exists()
    r = run_cli(*args, f"out_dir={killed}", env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (killed / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
    assert run_cli("verify", str(killed), env=ENV).returncode == 0
    assert json.loads((whole / "gen_001" / "text.json").read_text())["seconds"] > 0  # the cost, beside the row
    plain = tmp_path / "plain"  # the figures off: every other value of every row the same
    assert run_cli(*[a for a in args if a not in TEXT], f"out_dir={plain}", env=ENV).returncode == 0
    for on, off in zip(rows, [json.loads(x) for x in (plain / "metrics.jsonl").read_text().splitlines()]):
        for k in ("mauve", "self_bleu", "mauve_ci", "self_bleu_ci"):
            on.pop(k)
        for ch in on["changes"].values():
            ch.pop("mauve"), ch.pop("self_bleu")
        assert on == off
    code = ("import collapse, sys; t = collapse.load_runs([sys.argv[1]]); "
            "print(sorted(set(t.figure) & {'mauve', 'self_bleu'}))")
    r = subprocess.run([sys.executable, "-c", code, str(whole)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and "['mauve', 'self_bleu']" in r.stdout, r.stdout + r.stderr[-2000:]


def test_faiss_warnings_are_dropped_and_other_native_errors_still_show(capfd):
    import os

    from collapse.loop.text_stage import _quiet_stderr

    with _quiet_stderr():
        os.write(2, b"WARNING clustering 256 points to 13 centroids: please provide at least 507 training points\n")
        os.write(2, b"a native error line\n")
    err = capfd.readouterr().err
    assert "a native error line" in err and "WARNING clustering" not in err


def test_oversampled_runs_score_each_prompts_first_continuation(tmp_path):
    """curate.oversample=2: self-BLEU's subsample holds only each prompt's first continuation (no sibling of one
    prompt scored against another), recomputed here from the samples file."""
    import pyarrow.parquet as pq
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    from collapse.seeding import numpy_rng

    out = tmp_path / "run"
    r = run_cli("run", *TINY_RUN, "generations=1", *TEXT, "curate.kind=random", "curate.oversample=2",
                f"out_dir={out}", env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    texts = pq.read_table(out / "gen_000" / "samples.parquet").column("text").to_pylist()
    idx = 2 * subsample(len(texts) // 2, 20, numpy_rng(0, "self-bleu"))
    toks = [words(texts[i]) for i in idx]
    want = np.mean([sentence_bleu(toks[:i] + toks[i + 1:], t, smoothing_function=SmoothingFunction().method1)
                    for i, t in enumerate(toks)])
    assert row["self_bleu"] == pytest.approx(want, abs=1e-12) and 0 <= row["mauve"] <= 1


def test_a_local_featurizer_folder_passes_the_check(tmp_path):
    from collapse.models.scratch import SHIPPED

    r = run_cli("run", "--check", *TINY_RUN, "eval.mauve=true", f"eval.mauve_features={SHIPPED}",
                f"out_dir={tmp_path / 'run'}", env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
