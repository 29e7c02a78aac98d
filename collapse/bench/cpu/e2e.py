"""CPU parts 4 and 5 of the benchmark, each a ``python -m collapse run`` subprocess: the end-to-end wall time
from an empty model cache, and peak RSS against corpus size."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from collapse.bench.harness import REPO, target


def run_subprocess(args: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``python -m collapse ARGS``; wall seconds, exit code, stderr and the child's peak RSS (wait4)."""
    e = dict(os.environ)
    e.setdefault("HF_HUB_OFFLINE", "1")
    e.setdefault("HF_DATASETS_OFFLINE", "1")
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    e.update(env or {})
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "collapse", *args], stdout=subprocess.DEVNULL, stderr=err,
                             env=e, cwd=REPO, text=True)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    return {"returncode": p.returncode, "wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024.0, "stderr": stderr,
            "user_s": ru.ru_utime, "sys_s": ru.ru_stime}


STAGE_RE = re.compile(r"\[\s*\d+/\d+\]\s+(gen \d+: .+?)\s+(\d+\.\d+) s\b")


def parse_stages(stderr: str) -> dict:
    stages = {label.strip(): float(sec) for label, sec in STAGE_RE.findall(stderr)}
    totals: dict[str, float] = collections.defaultdict(float)
    for label, sec in stages.items():
        totals[label.split(": ", 1)[1]] += sec
    return {"stages": stages, "totals": dict(totals)}


def bench_e2e(quick: bool, timeout: float) -> dict:
    """The embedded default ``collapse run`` from an EMPTY model cache (a fresh ``COLLAPSE_CACHE``): the
    wall time includes generation 0's training (tokenizer + pre-training of the scratch model), as a
    new user meets it. Split by stage from the run's own stage lines and the scratch model's record."""
    overrides = QUICK_OVERRIDES if quick else []
    with tempfile.TemporaryDirectory(prefix="collapse-bench-") as d:
        r = run_subprocess(["run", *overrides, f"out_dir={d}/run", "wandb.mode=disabled"],
                           env={"COLLAPSE_CACHE": f"{d}/cache"}, timeout=timeout)
        records = [json.loads(p.read_text()) for p in Path(d, "cache").glob("scratch/*/scratch.json")]
        timed = list(Path(d, "run").glob("gen_*/intervals.json"))  # each generation's intervals: their seconds
        boot_s = sum(json.loads(p.read_text())["seconds"] for p in timed) if timed else None
    if r["returncode"] != 0:
        return {"skipped": f"collapse run failed (exit {r['returncode']}): {r['stderr'][-600:]}"}
    st = parse_stages(r["stderr"])
    build = records[0].get("seconds") if len(records) == 1 else None
    after = r["wall_s"] - (build or 0.0)
    rows = [{"name": "collapse run (embedded default) from an empty model cache", "seconds_median": r["wall_s"],
             "seconds": [r["wall_s"]], "peak_rss_mib": r["peak_rss_mib"]},
            {"name": "  of which gen-0 training (scratch model: tokenizer + pre-training)",
             "seconds_median": build, "seconds": [build]},
            {"name": "  of which the generations, evaluation and the report", "seconds_median": after, "seconds": [after]},
            {"name": "  of which the intervals (bootstrap + jackknife, every generation)", "seconds_median": boot_s,
             "seconds": [boot_s]}]
    share = boot_s / r["wall_s"] if boot_s is not None else None
    info = {"empty_cache": True, "scratch_build_s": build, "after_build_s": after,
            "peak_rss_mib": r["peak_rss_mib"], "cpu_user_s": r["user_s"], "cpu_sys_s": r["sys_s"],
            "stage_totals_s": st["totals"], "stages_s": st["stages"], "overrides": overrides,
            "intervals_s": boot_s, "intervals_share_of_wall": share}
    return {"rows": rows, "info": info,
            "targets": [target("end to end from an empty cache, incl. gen-0 training (s)", r["wall_s"], "<=", 240.0),
                        target("the intervals' share of the run's wall time", share, "<=", 0.10)]}


QUICK_OVERRIDES = ["model.scratch.vocab_size=512", "model.scratch.n_layer=1", "model.scratch.d_model=32",
                   "model.scratch.n_head=2", "model.scratch.steps=30", "model.scratch.batch_size=16",
                   "model.scratch.context=256", "generations=1", "generation.num_sequences=64",
                   "generation.batch_size=32", "generation.prompt_tokens=16", "generation.new_tokens=16",
                   "train.epochs=1", "train.batch_size=16", "eval.max_blocks=16"]


def _ensure_scratch(overrides: list[str]) -> None:
    """Build (or find) the default scratch model in the user's cache, so no measured run includes its build."""
    from collapse.config import load_config
    from collapse.data import load_splits
    from collapse.models.scratch import get_scratch_model

    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides)
    get_scratch_model(cfg.model.scratch, load_splits(cfg.data), show_progress=False)


def bench_memory(quick: bool, timeout: float, base: int = 512, mults=(1, 4, 16)) -> dict:
    _ensure_scratch(QUICK_OVERRIDES if quick else [])
    rows = []
    for k in mults:
        n = base * k
        ov = (QUICK_OVERRIDES if quick else []) + ["generations=1", f"generation.num_sequences={n}", "train.epochs=1",
                                                   "eval.max_blocks=64"]
        with tempfile.TemporaryDirectory(prefix="collapse-bench-mem-") as d:
            r = run_subprocess(["run", *ov, f"out_dir={d}/run", "wandb.mode=disabled"], timeout=timeout)
            size = sum(f.stat().st_size for f in Path(d).rglob("samples.parquet"))
        if r["returncode"] != 0:
            rows.append({"name": f"{k}x: {n} samples", "error": r["stderr"][-600:], "seconds_median": None,
                         "seconds": []})
            continue
        rows.append({"name": f"{k:>2}x: {n} samples / generation, generations=1", "seconds_median": r["wall_s"],
                     "seconds": [r["wall_s"]], "peak_rss_mib": r["peak_rss_mib"], "samples": n,
                     "samples_parquet_mib": size / 2**20,
                     "note": f"peak RSS {r['peak_rss_mib']:.0f} MiB"})
    rss = [r["peak_rss_mib"] for r in rows if r.get("peak_rss_mib")]
    spread = (max(rss) / min(rss) - 1.0) if len(rss) == len(mults) else None
    growth = (rss[-1] / rss[0] - 1.0) if len(rss) == len(mults) else None
    return {"rows": rows, "info": {"peak_rss_spread_max_over_min_minus_1": spread,
                                   f"peak_rss_growth_{mults[-1]}x_vs_{mults[0]}x": growth,
                                   "sample_rows_bytes_largest": base * mults[-1] * 128 * 4},
            "targets": [target(f"peak RSS spread over {mults[0]}x..{mults[-1]}x (fraction)", spread, "<=", 0.10)]}
