"""`collapse measure` end to end on the tiny scratch model: files, exact bucket shares, reproducibility, W&B."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY, run_cli

from collapse import metrics as M
from collapse.config import load_config

WINDOW = 64
# ranked by the true halves: the recomputations below need nothing but continuations.parquet (the default,
# rank_by=train, is tested on its own at the end)
MEASURE = TINY + ["measure.samples=8", f"measure.window={WINDOW}", "generation.batch_size=4", "seed=0",
                  "measure.rank_by=reference"]


def _measure(out, *extra):
    r = run_cli("measure", *MEASURE, f"out_dir={out}", *extra,
                env={"COLLAPSE_CACHE": os.environ["COLLAPSE_CACHE"]}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same measurement twice: W&B disabled, then offline (W&B must not change the samples)."""
    root = tmp_path_factory.mktemp("measure")
    a, b = root / "a", root / "b"
    _measure(a, "wandb.mode=disabled")
    _measure(b, "wandb.mode=offline")
    return a, b


def _ids(out, column) -> np.ndarray:
    rows = pq.read_table(out / "continuations.parquet", columns=[column]).column(column).to_pylist()
    assert len({len(x) for x in rows}) == 1, f"{column}: rows of different lengths"
    return np.asarray(rows, dtype=np.int64)


def test_files_written(runs):
    out, _ = runs
    for name in ("measure.json", "continuations.parquet", "buckets.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "buckets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = load_config(out / "config.yaml")  # the resolved config reloads as it ran
    assert cfg.measure.window == WINDOW and cfg.measure.samples == 8 and cfg.out_dir == str(out)
    assert not list(out.glob("wandb")), "wandb.mode=disabled must not write a W&B folder"


def test_continuations_have_half_window(runs):
    out, _ = runs
    m = json.loads((out / "measure.json").read_text())
    cols = pq.read_table(out / "continuations.parquet").column_names
    assert {"prompt_ids", "generated_ids", "reference_ids"} <= set(cols)
    gen, ref, prompt = _ids(out, "generated_ids"), _ids(out, "reference_ids"), _ids(out, "prompt_ids")
    assert gen.shape == ref.shape == prompt.shape == (m["samples"], WINDOW // 2)
    assert 1 <= m["samples"] <= 8
    assert m["generated_tokens"] == m["reference_tokens"] == m["samples"] * WINDOW // 2


def test_bucket_shares_recomputed_exactly(runs):
    out, _ = runs
    m = json.loads((out / "measure.json").read_text())
    gen, ref = _ids(out, "generated_ids"), _ids(out, "reference_ids")
    ref_c, gen_c = np.bincount(ref.ravel()), np.bincount(gen.ravel())
    expect = M.bucket_shift(ref_c, gen_c)
    assert list(m["bucket_shift"]) == list(M.BUCKETS)
    # exact: the same counts give the same floats (JSON round-trips a float exactly)
    for name in M.BUCKETS:
        assert m["bucket_shift"][name]["ref_share"] == expect[name]["ref_share"], name
        assert m["bucket_shift"][name]["gen_share"] == expect[name]["gen_share"], name
    assert {b: {k: v[k] for k in ("ref_share", "gen_share", "shift_pct")} for b, v in m["bucket_shift"].items()} == expect
    ranked = [b for b in M.BUCKETS if b != "unseen"]
    assert sum(m["bucket_shift"][b]["ref_share"] for b in ranked) == pytest.approx(1.0, abs=1e-12)
    assert sum(m["bucket_shift"][b]["gen_share"] for b in ranked) == pytest.approx(1.0, abs=1e-12)
    unseen = ~np.isin(gen, np.flatnonzero(ref_c))  # tokens of types no true half holds: a share of all tokens
    assert m["bucket_shift"]["unseen"]["gen_share"] == pytest.approx(unseen.mean(), abs=1e-12)
    # the scalar metrics come from the same ids
    assert m["kl_ref_gen"] == pytest.approx(M.kl(ref_c, gen_c), abs=1e-12)
    assert m["js"] == pytest.approx(M.js(ref_c, gen_c), abs=1e-12)
    assert m["coverage"] == pytest.approx(M.coverage(ref_c, gen_c), abs=1e-12)
    assert m["distinct_2"] == pytest.approx(M.distinct_n(gen, 2), abs=1e-12)


def test_intervals_recomputed_independently_from_the_continuations(runs):
    """measure.json's intervals, recomputed from continuations.parquet by plain loops over the documented
    resamples: each bootstrap resample's examples repeated by their weights and counted with
    ``metrics.bucket_shift`` (shifts); each half-sample's entropy centred and scaled (Shao & Wu)."""
    from collapse.seeding import numpy_rng

    out, _ = runs
    m = json.loads((out / "measure.json").read_text())
    gen, ref = _ids(out, "generated_ids"), _ids(out, "reference_ids")
    n, R = len(gen), m["intervals"]["resamples"]
    assert m["intervals"]["unit"] == "examples" and m["intervals"]["units"] == n
    rng = numpy_rng(*m["intervals"]["seed_key"])
    assert m["intervals"]["seed_key"] == [0, "measure", "bootstrap"]
    boot = rng.multinomial(n, np.full(n, 1.0 / n), size=R)
    V = max(int(gen.max()), int(ref.max())) + 1
    rank = np.bincount(ref.ravel(), minlength=V)  # measure.rank_by=reference: the buckets stay those of all examples
    shifts = {b: [] for b in M.BUCKETS}
    for w in boot:
        rc = np.bincount(np.repeat(ref, w, axis=0).ravel(), minlength=V)
        gc = np.bincount(np.repeat(gen, w, axis=0).ravel(), minlength=V)
        for b, v in M.bucket_shift(rc, gc, rank_counts=rank).items():
            shifts[b].append(np.nan if v["shift_pct"] is None else v["shift_pct"])
    for b in M.BUCKETS:
        got = m["bucket_shift"][b]["ci95"]
        if m["bucket_shift"][b]["shift_pct"] is None:
            assert got == [None, None]
            continue
        v = np.asarray(shifts[b])
        want = np.quantile(v[np.isfinite(v)], [0.025, 0.975])
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9), b
    keep = n // 2
    idx = np.argsort(rng.random((R, n)), axis=1)[:, :keep]
    ent = np.array([M.entropy(np.bincount(gen[i].ravel(), minlength=V)) for i in idx])
    want = M.entropy(np.bincount(gen.ravel(), minlength=V)) + np.sqrt(keep / (n - keep)) * (ent - ent.mean())
    assert m["entropy_ci"] == pytest.approx(np.quantile(want, [0.025, 0.975]), rel=1e-9)


def test_measure_prints_intervals_and_the_power_line(tmp_path):
    r = _measure(tmp_path / "m", "wandb.mode=disabled", "stats.resamples=200", "measure.rank_by=train")  # the default
    assert "95% interval" in r.stderr and "power:" in r.stderr, r.stderr[-2000:]
    m = json.loads((tmp_path / "m" / "measure.json").read_text())
    assert m["rank_by"] == "train" and m["intervals"]["resamples"] == 200
    # ranked by the training split: types absent from the few true second halves still get a bucket
    assert m["bucket_shift"]["unseen"]["gen_share"] < 0.05
    unresolved = [b for b, v in m["bucket_shift"].items() if v["shift_pct"] is not None and v["examples_to_resolve"]
                  and v["ci95"][0] <= 0 <= v["ci95"][1]]
    for b in unresolved:  # the power line names each bucket its interval does not resolve
        assert f"the {b} bucket's" in r.stderr
        assert m["bucket_shift"][b]["examples_to_resolve"] > m["samples"]


def test_same_seed_same_continuations(runs):
    a, b = runs
    assert np.array_equal(_ids(a, "prompt_ids"), _ids(b, "prompt_ids"))
    assert np.array_equal(_ids(a, "reference_ids"), _ids(b, "reference_ids"))
    assert np.array_equal(_ids(a, "generated_ids"), _ids(b, "generated_ids"))
    ma, mb = (json.loads((d / "measure.json").read_text()) for d in runs)
    assert ma["bucket_shift"] == mb["bucket_shift"]


def test_wandb_offline_run(runs):
    import wandb_offline as wo

    _, out = runs
    files = wo.find_run_files(out)
    assert len(files) == 1, files
    assert wo.wait_until_finished(files[0]), f"no exit record: {wo.describe(files[0])}"
    m = json.loads((out / "measure.json").read_text())
    rows = wo.read_history(files[0])
    logged = {k: v for row in rows for k, v in row.items()}
    for name, v in m["bucket_shift"].items():
        key = f"bucket_shift/{name}"
        if v["shift_pct"] is None:
            assert key not in logged, key
        else:
            assert logged[key] == pytest.approx(v["shift_pct"], abs=1e-12), key
    assert logged["bucket_shift/1-10"] == pytest.approx(m["bucket_shift"]["1-10"]["shift_pct"], abs=1e-12)
    assert logged["kl_ref_gen"] == pytest.approx(m["kl_ref_gen"], abs=1e-12)
