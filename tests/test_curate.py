"""The curate stage (collapse.loop.curate): the built-in curators' rules, the fixed training-set size, each curator
through `collapse run` with its record, an exact resume after a kill inside the stage, and `none` leaving a run as
it was."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY_RUN, run_cli

from collapse.config import Config, load_config
from collapse.loop.curate import fill, rouge1_f1, top_share
from collapse.loop.detector import machine_probability

ENV = {"OMP_NUM_THREADS": "1", "COLLAPSE_SKIP_REPORT": "1"}


def test_fill_holds_the_size_and_the_proportions():
    rng = np.random.default_rng(0)
    kept = np.array([0, 1, 0, 2, 1, 0, 0, 0])  # a multiset of 4 rows
    rows = fill(kept, 8, rng)
    assert rows.sum() == 8 and (rows[kept == 0] == 0).all()
    assert list(rows[kept > 0]) == [2, 4, 2]  # 8 // 4 = 2 copies of each kept row, no remainder
    rows = fill(kept, 10, rng)  # 2 copies each, then 2 more drawn from the multiset without replacement
    assert rows.sum() == 10 and (rows[kept > 0] >= 2 * kept[kept > 0]).all()
    big = fill(np.full(6, 3), 6, rng)  # more kept than N (the detector's 1.5 N): N drawn from the multiset
    assert big.sum() == 6 and big.max() <= 3
    with pytest.raises(ValueError):
        fill(np.zeros(4, np.int64), 4, rng)


def test_top_share_keeps_the_share_it_is_asked_for():
    rng = np.random.default_rng(0)
    scores = np.arange(16.0)
    assert list(np.flatnonzero(top_share(scores, 0.125, rng))) == [14, 15]
    assert list(np.flatnonzero(top_share(scores, 0.125, rng, "lowest"))) == [0, 1]
    assert list(np.flatnonzero(top_share(scores, 0.25, rng, "middle"))) == [6, 7, 8, 9]
    assert top_share(np.zeros(16), 0.5, rng).sum() == 8  # ties: still the share, drawn at random


def test_a_nan_score_is_never_kept_first():
    rng = np.random.default_rng(0)
    scores = np.array([1.0, np.nan, 3.0, 2.0])
    assert list(np.flatnonzero(top_share(scores, 0.25, rng))) == [2]
    assert list(np.flatnonzero(top_share(scores, 0.25, rng, "lowest"))) == [0]


def test_rouge1_is_the_clipped_unigram_f1():
    assert rouge1_f1(np.array([1, 2, 3, 4]), np.array([1, 2, 3, 4])) == 1.0
    assert rouge1_f1(np.array([1, 1, 2, 5]), np.array([1, 2, 2, 6])) == pytest.approx(2 * 2 / 8)  # 1 and 2 once each
    assert rouge1_f1(np.array([7, 8]), np.array([1, 2])) == 0.0


def test_the_detector_tells_apart_what_differs_and_not_what_does_not():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 500, size=(200, 32))
    machine = rng.integers(0, 50, size=(100, 32))  # a collapsed vocabulary
    p, acc = machine_probability(machine, real, np.random.default_rng(1))
    assert acc > 0.9 and p.mean() > 0.8
    p, acc = machine_probability(rng.integers(0, 500, size=(100, 32)), real, np.random.default_rng(1))
    assert 0.3 < acc < 0.7  # the same distribution: no better than chance
    eos = real.copy()
    eos[:, 5] = 999  # a token only real text holds (the EOS the samples never get): not a tell once ignored
    same = rng.integers(0, 500, size=(100, 32))
    _, told = machine_probability(same, eos, np.random.default_rng(1))
    _, fair = machine_probability(same, eos, np.random.default_rng(1), ignore=(999,))
    assert told > 0.9 and 0.3 < fair < 0.7


def test_none_writes_no_curate_key():
    cfg = Config()
    assert "curate" not in cfg.to_dict() and "curate" not in cfg.to_yaml()
    on = Config(curate=type(cfg.curate)(kind="random"))
    assert on.to_dict()["curate"]["kind"] == "random" and on.fingerprint() != cfg.fingerprint()


RUN = [*TINY_RUN, "generations=1"]
EXTRA = {"reference": [], "random": ["curate.share=0.25"], "perplexity": ["curate.score_with=gen0", "curate.keep=lowest"],
         "detector": ["regime.kind=accumulate", "generations=2", "data.max_documents=20"], "dedupe": ["curate.threshold=0.5"]}
GENS = {"detector": 2}  # the others: one generation trained on a curated set


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run per built-in curator (replace; the detector's under accumulate for 2 generations: its record reused;
    on 20 documents, as accumulate trains on every real row)."""
    root = tmp_path_factory.mktemp("curate")
    out = {}
    for kind, extra in EXTRA.items():
        d = root / kind
        r = run_cli("run", *RUN, f"curate.kind={kind}", *extra, f"out_dir={d}", env=ENV)
        assert r.returncode == 0, r.stderr[-2000:]
        out[kind] = (d, r)
    return out


@pytest.mark.parametrize("kind", ["reference", "random", "perplexity", "detector", "dedupe"])
def test_each_curator_runs_and_writes_its_record(runs, kind):
    d, r = runs[kind]
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    cfg = load_config(d / "config.yaml", embedded=True)
    assert cfg.curate.kind == kind
    last = GENS.get(kind, 1)
    for g in range(last):  # curated: every generation that a later one trains on
        rec = pq.read_table(d / f"gen_{g:03d}" / "curated.parquet").to_pydict()
        summary = json.loads((d / f"gen_{g:03d}" / "curate.json").read_text())
        n = len(rec["sample_index"])
        assert n == 64 and sum(rec["repeats"]) == 64  # the training set keeps the generation's size
        kept = np.array(rec["kept"])
        assert summary["kept_share"] == pytest.approx((kept > 0).mean()) == rows[g]["kept_share"]
        rep = np.array(rec["repeats"])
        if kind == "detector":  # 1.5 N drawn, N of them trained on: never more than drawn
            assert kept.sum() == 96 and (rep <= kept).all()
        else:  # fewer kept than N: every kept sample trained on, at least once
            assert ((rep > 0) == (kept > 0)).all()
        train = json.loads((d / f"gen_{g + 1:03d}" / "train.json").read_text())
        assert train["rows_by_source"][str(g)] == 64
        assert rows[g]["curate_score_q10"] <= rows[g]["curate_score_q50"] <= rows[g]["curate_score_q90"]
    assert not (d / f"gen_{last:03d}" / "curated.parquet").exists() and "kept_share" not in rows[last]  # nothing trains on it
    assert "gen 0: curate" in r.stderr and "kept" in r.stdout + r.stderr
    m = json.loads((d / "manifest.json").read_text())
    assert set(m["checksums"]["0"]["curate"]) == {"curated.parquet", "curate.json"}


def test_the_curators_keep_what_their_rules_say(runs):
    ref = pq.read_table(runs["reference"][0] / "gen_000" / "curated.parquet").to_pandas()
    assert (ref.kept > 0).sum() == 8  # 12.5% of 64, its paper's default
    assert ref[ref.kept > 0].score.min() >= ref[ref.kept == 0].score.max()  # the best ROUGE-1 kept
    rnd = pq.read_table(runs["random"][0] / "gen_000" / "curated.parquet").to_pandas()
    assert (rnd.kept > 0).sum() == 16  # curate.share=0.25
    ppl = pq.read_table(runs["perplexity"][0] / "gen_000" / "curated.parquet").to_pandas()
    gen0 = np.load(runs["perplexity"][0] / "gen_000" / "gen0_ppl.npy")
    assert np.allclose(ppl.score, gen0, rtol=1e-4)  # scored by generation 0, as asked
    assert ppl[ppl.kept > 0].score.max() <= ppl[ppl.kept == 0].score.min()  # keep=lowest
    det = json.loads((runs["detector"][0] / "gen_000" / "curate.json").read_text())
    assert 0.0 <= det["detector_accuracy"] <= 1.0
    det_rows = json.loads((runs["detector"][0] / "gen_002" / "train.json").read_text())["rows_by_source"]
    assert det_rows["0"] == det_rows["1"] == 64  # accumulate: each generation's curated set, reused


@pytest.mark.parametrize("kind", ["reference", *(pytest.param(k, marks=pytest.mark.slow) for k in
                                                 ("random", "perplexity", "detector", "dedupe"))])
def test_a_kill_inside_the_curate_stage_resumes_exactly(runs, tmp_path, kind):
    """Killed after scoring, before the record is written: the rerun gives what an uninterrupted run gave (the fast
    tier kills the reference verifier's stage; the slow tier every other built-in's)."""
    d = tmp_path / "killed"
    args = ["run", *RUN, f"curate.kind={kind}", *EXTRA[kind], f"out_dir={d}"]
    r = run_cli(*args, env={**ENV, "COLLAPSE_FAULT": "curate:0:1"})  # scored, record not yet written
    assert r.returncode != 0 and not (d / "gen_000" / "curated.parquet").exists()
    r = run_cli(*args, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    whole = runs[kind][0]
    assert (d / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
    name = "gen_000/curated.parquet"
    assert pq.read_table(d / name).equals(pq.read_table(whole / name))
    v = run_cli("verify", str(d), env=ENV)
    assert v.returncode == 0, v.stdout + v.stderr
