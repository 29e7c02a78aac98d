"""`collapse report` on synthetic run folders: 2 configs × 2 seeds, written by hand (no model, a few seconds).

Checks that every image the page references exists and is a PNG, that the metrics table prints the numbers of
metrics.jsonl, that seeds are grouped and labelled by config difference, that bad input fails with DataError
(exit code 2 from the CLI), that an unfinished run gives a marked partial report, and that a headless chromium
decodes every image of the page (skipped where chromium is not installed, except under CI=true; no answer fails).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from collapse import report as R
from collapse.errors import DataError
from collapse.metrics import BUCKETS
from collapse.report.runs import metric_getter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOCAB = 400
N_SAMPLES = 24
DRAWN = [f for f in R.FIGURES if f != "harness"]  # harness: only for runs with lm-eval tasks (tests/test_harness.py)


def _row(g: int, rng: np.random.Generator, buckets=BUCKETS) -> dict:
    """A metrics.jsonl row with the real keys; ranks 10001+ never occur (small vocabulary), unseen has no shift."""
    dead = {"10001+"}
    tail = {b: (None if b in dead else float(2 + i + 0.1 * g + rng.normal(0, 0.05))) for i, b in enumerate(buckets)}
    shift = {b: (None if b in dead | {"unseen"} else float((i - 1.5) * 2 * (g + 1) + rng.normal(0, 0.3)))
             for i, b in enumerate(buckets)}
    edges = np.logspace(0, 4, 81)
    return {
        "generation": g, "test_ppl": float(100 + 3 * g + rng.normal(0, 0.5)), "test_nll": float(4.6 + 0.03 * g),
        "tail_loss": tail, "tail_tokens": {b: (0 if b in dead else 1000 // (i + 1)) for i, b in enumerate(buckets)},
        "bucket_shift": shift,
        "bucket_share": {b: {"ref_share": 0.2, "gen_share": 0.2} for b in buckets},
        "kl_ref_gen": float(0.05 + 0.01 * g), "kl_gen_ref": 0.05, "js": float(0.02 + 0.001 * g),
        "entropy": float(8.5 - 0.05 * g), "entropy_ref": 8.7, "coverage": float(0.74 - 0.01 * g), "tail_mass": 0.39,
        "tail_mass_ref": 0.4, "gen_tokens": 192, "ref_tokens": 5000, "gen_types": 150, "ref_types": 390,
        "distinct_1": 0.1, "distinct_2": float(0.6 - 0.02 * g), "gen0_ppl_mean": float(130 - 2 * g),
        "gen0_ppl_quantiles": {"q05": 70.0, "q25": 100.0, "q50": 125.0, "q75": 160.0, "q95": 220.0},
        "gen0_ppl_hist": {"edges": edges.tolist(), "counts": [1] * 80}, "num_samples": N_SAMPLES,
        "train_loss": None if g == 0 else float(4.9 - 0.1 * g), "val_nll": None if g == 0 else 4.8,
        "train_rows": 0 if g == 0 else N_SAMPLES, "train_real_rows": 0,
    }


def make_run(root: Path, name: str, seed: int, kind: str, finished: int = 3, planned: int = 2,
             buckets=BUCKETS) -> Path:
    """A run folder as `collapse run` leaves it, with ``finished`` generations of the ``planned + 1``."""
    rng = np.random.default_rng(seed + 17 * len(kind))
    run = root / name
    run.mkdir(parents=True)
    cfg = {"out_dir": str(run), "seed": seed, "generations": planned, "resume": "auto", "overwrite": False,
           "data": {"source": "kjv"}, "regime": {"kind": kind, "real_fraction": 0.1},
           "train": {"method": "lora", "lr": 0.002}, "wandb": {"mode": "disabled", "project": "collapse"}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    zipf = 1.0 / np.arange(1, VOCAB + 1)
    zipf /= zipf.sum()
    np.save(run / "reference_counts.npy", rng.multinomial(5000, zipf).astype(np.int64), allow_pickle=False)
    rows = []
    for g in range(finished):
        d = run / f"gen_{g:03d}"
        d.mkdir()
        order = rng.permutation(N_SAMPLES)  # rows need not be in sample_index order
        prompts = [rng.integers(0, VOCAB, 4).astype(np.int32).tolist() for _ in order]
        tokens = [rng.choice(VOCAB, 8, p=zipf).astype(np.int32).tolist() for _ in order]
        pq.write_table(pa.table({
            "sample_index": pa.array(order.astype(np.int64)),
            "prompt_ids": pa.array(prompts, type=pa.list_(pa.int32())),
            "token_ids": pa.array(tokens, type=pa.list_(pa.int32())),
            "text": pa.array([f"<{name} gen{g} sample{i}>" for i in order]),
        }), d / "samples.parquet")
        np.save(d / "gen0_ppl.npy", rng.lognormal(np.log(120 - 5 * g), 0.3, N_SAMPLES).astype(np.float32),
                allow_pickle=False)
        rows.append(_row(g, rng, buckets))
        (d / "metrics.json").write_text(json.dumps(rows[-1]))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gens = {str(g): {"evaluate": True, "generate": True, "measure": True} for g in range(finished)}
    (run / "manifest.json").write_text(json.dumps({"version": 1, "generations": gens,
                                                   "complete": finished == planned + 1,
                                                   "base_model": str(root / "no-such-model")}))
    return run


class _Page(HTMLParser):
    """Images, tables (by data-run) with their cells (by data-key), and the body's text."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.text: list[str] = []
        self._table = self._key = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "table" and "data-run" in a:
            self._table = self.tables.setdefault(a["data-run"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append({})
        elif tag == "td" and self._table is not None and "data-key" in a:
            self._key = a["data-key"]
            self._table[-1][self._key] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "td":
            self._key = None

    def handle_data(self, data):
        self.text.append(data)
        if self._key is not None:
            self._table[-1][self._key] += data


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    for rows in p.tables.values():
        rows[:] = [r for r in rows if r]  # the header row has no data cells
    return p


@pytest.fixture(scope="module")
def four_runs(tmp_path_factory):
    """replace × seeds 0, 1 and accumulate × seeds 0, 1; accumulate seed 1 stopped after generation 1."""
    root = tmp_path_factory.mktemp("runs")
    runs = [make_run(root, "replace_s0", 0, "replace"), make_run(root, "replace_s1", 1, "replace"),
            make_run(root, "acc_s0", 0, "accumulate"), make_run(root, "acc_s1", 1, "accumulate", finished=2)]
    out = root / "report"
    assert R.make_report(runs, out, quiet=True) == 0
    return runs, out


def test_every_image_exists_and_is_a_png(four_runs):
    _, out = four_runs
    page = _parse(out / "report.html")
    assert sorted(Path(s).stem for s in page.images) == sorted(DRAWN)
    for src in page.images:
        assert not Path(src).is_absolute() and "://" not in src  # relative: the folder can be moved or mailed
        png = out / src
        data = png.read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_MAGIC, src
        assert (out / f"{png.stem}.svg").stat().st_size > 0
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries behind


def test_png_only_report_links_no_vector_figure_and_leaves_none_stale(four_runs, tmp_path):
    """`collapse run`'s own report (vector=False) draws the PNGs alone; an SVG left by an earlier
    `collapse report` in that folder is removed, not linked beside a PNG of newer data."""
    runs, full = four_runs
    out = tmp_path / "report"
    assert R.make_report(runs, out, quiet=True) == 0
    assert len(list(out.glob("*.svg"))) == len(DRAWN) and "SVG</a>" in (out / "report.html").read_text()
    assert R.make_report(runs[:2], out, quiet=True, vector=False) == 0
    assert not list(out.glob("*.svg")) and "SVG</a>" not in (out / "report.html").read_text()
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(DRAWN)
    assert (full / "report.html").read_text().count("SVG</a>") == len(DRAWN)  # the default: both


def test_metrics_table_holds_the_runs_numbers(four_runs):
    runs, out = four_runs
    page = _parse(out / "report.html")
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        cells = page.tables[run.name]
        assert [c["generation"] for c in cells] == [str(r["generation"]) for r in rows]
        for r, c in zip(rows, cells):
            assert c["test_ppl"] == f"{r['test_ppl']:.2f}"
            assert c["test_nll"] == f"{r['test_nll']:.3f}"
            assert c["tail_loss.1-10"] == f"{r['tail_loss']['1-10']:.3f}"
            assert c["tail_loss.unseen"] == f"{r['tail_loss']['unseen']:.3f}"
            assert c["bucket_shift.1001-10000"] == f"{r['bucket_shift']['1001-10000']:+.1f}"
            assert c["kl_ref_gen"] == f"{r['kl_ref_gen']:.4f}"
            assert c["coverage"] == f"{r['coverage']:.4f}"  # the registry's format
            assert c["gen0_ppl_mean"] == f"{r['gen0_ppl_mean']:.1f}"
            assert c["train_loss"] == ("—" if r["train_loss"] is None else f"{r['train_loss']:.3f}")
            # buckets with no value anywhere are left out, not printed as zeros
            assert "tail_loss.10001+" not in c and "bucket_shift.10001+" not in c
            assert "bucket_shift.unseen" not in c


def test_groups_by_config_without_seed_and_marks_partial_runs(four_runs):
    runs, out = four_runs
    groups = R.group_runs([R.load_run(r) for r in runs])
    assert [g.label for g in groups] == ["regime.kind=replace", "regime.kind=accumulate"]
    assert [len(g.runs) for g in groups] == [2, 2]
    text = " ".join(_parse(out / "report.html").text)
    assert "regime.kind=accumulate (n=2 seeds)" in text
    assert "partial: generations 0..1 of 2 finished" in text
    assert text.count("partial: generations") == 1  # only acc_s1
    # the same real prompt across generations: sample texts of every generation for one sample_index
    assert all(f"<replace_s0 gen{g} sample0>" in text for g in range(3))


def test_t_interval_of_the_mean_over_seeds(tmp_path):
    runs = [R.Run(tmp_path, f"s{i}", {"seed": i}, "", {}, [{"generation": 0, "test_ppl": v},
                                                           {"generation": 1, "test_ppl": 2 * v}], ())
            for i, v in enumerate([1.0, 3.0, 5.0])]
    gens, mean, lo, hi, n = R.series(R.Group(runs), lambda r: r["test_ppl"])
    assert gens.tolist() == [0, 1] and n.tolist() == [3, 3]
    half = 4.303 * 2.0 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert mean[0] == pytest.approx(3.0) and lo[0] == pytest.approx(3.0 - half) and hi[0] == pytest.approx(3 + half)
    one = R.series(R.Group(runs[:1]), lambda r: r["test_ppl"])
    assert np.isnan(one[2]).all()  # no band from one seed


def test_summary_at_the_last_generation_every_seed_finished(four_runs):
    runs, out = four_runs
    summary = json.loads((out / "summary.json").read_text())
    rows = {r.name: [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in runs}
    rep, acc = summary
    assert rep["group"].startswith("regime.kind=replace") and rep["generation"] == 2
    assert acc["generation"] == 1  # acc_s1 stopped after generation 1: the group's common last generation
    ppl = [rows["replace_s0"][2]["test_ppl"], rows["replace_s1"][2]["test_ppl"]]
    m = rep["metrics"]["test_ppl"]
    assert m["values"] == ppl and m["mean"] == pytest.approx(np.mean(ppl))
    assert m["ci95"] == pytest.approx(12.706 * np.std(ppl, ddof=1) / math.sqrt(2))  # t(0.975, df=1)
    change = [rows[n][2]["test_ppl"] - rows[n][0]["test_ppl"] for n in ("replace_s0", "replace_s1")]
    assert rep["changes"]["test_ppl"]["values"] == pytest.approx(change)  # paired, per run
    ent = [rows[n][1]["entropy"] - rows[n][0]["entropy"] for n in ("acc_s0", "acc_s1")]
    assert acc["changes"]["entropy"]["values"] == pytest.approx(ent)
    shift = [rows[n][1]["bucket_shift"]["1-10"] for n in ("acc_s0", "acc_s1")]
    assert acc["metrics"]["bucket_shift.1-10"]["values"] == pytest.approx(shift)
    assert "bucket_shift.10001+" not in rep["metrics"]  # no value anywhere: left out
    md = (out / "summary.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| group | gen | n |"))
    assert head.startswith("| group | gen | n | test ppl |") and " shift 1-10 (%) |" in head and "| Δ test ppl |" in md
    assert f"{np.mean(ppl):.2f} ± {m['ci95']:.2f}" in md
    assert f"{np.mean(change):+.2f} ± " in md
    text = " ".join(_parse(out / "report.html").text)
    assert "Last generation, mean ± 95% CI over seeds" in text


def test_bad_input_raises_data_error(tmp_path):
    from collapse.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not a run folder"):
        R.make_report([empty], None, quiet=True)
    assert main(["report", str(empty)]) == 2
    assert main(["report", str(tmp_path / "missing")]) == 2

    started = make_run(tmp_path, "started", 0, "replace", finished=0)
    with pytest.raises(DataError, match="no finished generation"):
        R.make_report([started], None, quiet=True)
    (started / "metrics.jsonl").unlink()
    with pytest.raises(DataError, match="no finished generation"):
        R.make_report([started], None, quiet=True)

    broken = make_run(tmp_path, "broken", 0, "replace", finished=1)
    (broken / "metrics.jsonl").write_text('{"generation": 0, "test_ppl": 1\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:1 is not valid JSON"):
        R.make_report([broken], None, quiet=True)

    a = make_run(tmp_path, "a", 0, "replace", finished=1)
    b = make_run(tmp_path, "b", 1, "replace", finished=1, buckets=("top", "rest", "unseen"))
    with pytest.raises(DataError, match="different frequency buckets"):
        R.make_report([a, b], tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()  # nothing written on bad input

    with pytest.raises(DataError, match=r"holds 4 run folder\(s\).*pass them"):  # a sweep's parent folder
        R.make_report([tmp_path], None, quiet=True)


def test_chromium_loads_every_image(four_runs, tmp_path):
    import os

    # CI (CI=true) installs chromium (.ci/run): there a missing browser is a failure, elsewhere a skip
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but chromium is not installed (.ci/run installs it): the headless image check "
                        "cannot run")
        pytest.skip("chromium not installed (apt-get install chromium): headless image check skipped")
    _, out = four_runs
    html_path = (out / "report.html").resolve()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           html_path.as_uri()]
    try:
        # the timeout only ends the wait for chromium's answer: no answer is a failure, with what it printed
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        def text(b):
            return (b.decode(errors="replace") if isinstance(b, bytes) else b or "")[-2000:]

        pytest.fail(f"chromium did not answer within {e.timeout:g} s.\nstdout:\n{text(e.stdout)}\n"
                    f"stderr:\n{text(e.stderr)}")
    dom = r.stdout
    n_img = len(_parse(out / "report.html").images)
    seen = f"exit code {r.returncode}; DOM: {dom[:500]!r}; stderr: {r.stderr[-1500:]}"
    assert f'data-images-total="{n_img}"' in dom, seen
    assert f'data-images-loaded="{n_img}"' in dom, seen


def test_keys_missing_from_older_configs_do_not_split_groups(tmp_path):
    def run(name, seed, kind, **extra):
        cfg = {"seed": seed, "out_dir": name, "regime": {"kind": kind}, "data": {"source": "kjv", **extra}}
        return R.Run(tmp_path / name, name, cfg, "", {}, [{"generation": 0}], ())

    runs = [run("a0", 0, "replace"), run("a1", 1, "replace", split_seed=0), run("b0", 0, "mix", split_seed=0)]
    groups = R.group_runs(runs)
    assert [[r.name for r in g.runs] for g in groups] == [["a0", "a1"], ["b0"]]
    assert [g.label for g in groups] == ["regime.kind=replace", "regime.kind=mix"]
    assert R.schema_drift(runs) == ["data.split_seed"]


def _with_intervals(run: Path, resolved_ppl: bool) -> None:
    """Give a made run the intervals `collapse run` writes: ± 1 around test_ppl and a paired change of
    test perplexity from generation 0 that is (or is not) resolved."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["test_ppl_ci"] = [r["test_ppl"] - 1.0, r["test_ppl"] + 1.0]
        r["bucket_shift_ci"] = {b: ([v - 0.5, v + 0.5] if v is not None else [None, None])
                                for b, v in r["bucket_shift"].items()}
        r["bucket_shift_ci"]["1-10"] = [-1.0, 1.0]  # an unresolved cell for the heatmap
        d = r["test_ppl"] - rows[0]["test_ppl"]
        lo, hi = (d - 0.1, d + 0.1) if resolved_ppl else (d - abs(d) - 1.0, d + abs(d) + 1.0)
        r["changes"] = {} if r["generation"] == 0 else {
            "from_gen0": {"test_ppl": {"delta": d, "ci95": [lo, hi], "resolved": bool(lo > 0 or hi < 0)}}}
        r["intervals"] = {"method": "percentile bootstrap", "level": 0.95, "resamples": 1000}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_one_run_draws_its_own_intervals_and_the_summary_says_what_is_resolved(tmp_path):
    one = make_run(tmp_path, "solo", 0, "replace")
    _with_intervals(one, resolved_ppl=True)
    run = R.load_run(one)
    gens, mean, lo, hi, _ = R.series(R.Group([run]), metric_getter("test_ppl"))
    assert lo.tolist() == pytest.approx((mean - 1.0).tolist()) and hi.tolist() == pytest.approx((mean + 1.0).tolist())
    _, dmean, dlo, dhi, _ = R.series(R.Group([run]), metric_getter("test_ppl"), paired=True)
    assert np.isnan(dlo[0]) and dlo[1:].tolist() == pytest.approx((dmean[1:] - 0.1).tolist())
    seeds = [make_run(tmp_path, f"mix_s{s}", s, "mix") for s in (0, 1)]
    for s, r in enumerate(seeds):
        _with_intervals(r, resolved_ppl=s == 0)
    out = tmp_path / "report"
    assert R.make_report([one, *seeds], out, quiet=True) == 0
    summary = json.loads((out / "summary.json").read_text())
    mix = next(e for e in summary if "mix" in e["group"])
    assert mix["changes"]["test_ppl"]["resolved_runs"] == 1 and len(mix["changes"]["test_ppl"]["within"]) == 2
    assert [p["changes"]["test_ppl"]["resolved"] for p in mix["per_run"]] == [True, False]
    md = (out / "summary.md").read_text()
    assert "(1/2 resolved)" in md and "each run with its own paired 95% interval" in md
    solo = next(e for e in summary if "replace" in e["group"])
    d = solo["changes"]["test_ppl"]["mean"]
    assert f"{d:+.2f} [{d - 0.1:+.2f}, {d + 0.1:+.2f}]*" in md  # one run: its own interval, resolved
