"""The curate stage's cost on the embedded default, each built-in curator and each remedy pool, as JSON.

    python scripts/curate_cost.py --out docs/results/curate_cost_<date>.json [--only none,detector]

Runs `collapse run` (the embedded default, W&B off, no report) once per setting below, one after the other in fresh
processes, and reads each stage's seconds from the run's own progress lines (collapse.bench.harness.stage_seconds):
the curate stage's seconds (against its own run's wall time and against the run with no curation), every other
stage's seconds (an oversampled pool grows generate and measure), and the whole run's wall time. docs/benchmarks.md's
table is this JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collapse.bench.harness import load_average, machine_info, stage_seconds  # noqa: E402

SETTINGS = {  # label: overrides of the embedded default
    "none": [],
    "perplexity (trainee = generation 0)": ["curate.kind=perplexity"],
    "perplexity (current)": ["curate.kind=perplexity", "curate.score_with=current"],
    "reference": ["curate.kind=reference"],
    "random": ["curate.kind=random"],
    "detector": ["curate.kind=detector"],
    "dedupe": ["curate.kind=dedupe"],
    "detector, pool 50% real": ["curate.kind=detector", "curate.real_share=0.5"],
    "perplexity, pool 50% real": ["curate.kind=perplexity", "curate.real_share=0.5"],
    "reference, pool 4 per prompt": ["curate.kind=reference", "curate.oversample=4"],
}


def run_one(overrides: list[str], out: Path) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "COLLAPSE_SKIP_REPORT": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "collapse", "run", *overrides, f"out_dir={out}"], capture_output=True,
                       text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"collapse run {' '.join(overrides)} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    st = stage_seconds(r.stderr + r.stdout)
    total = {}
    for stages in st.values():
        for k, v in stages.items():
            total[k] = round(total.get(k, 0.0) + v, 2)
    return {"overrides": overrides, "wall_s": round(wall, 2), "stage_seconds": total,
            "curate_s": total.get("curate", 0.0)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/curate_cost.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--only", help="comma-separated labels (default: all); `none` always runs first")
    args = ap.parse_args(argv)
    labels = list(SETTINGS) if not args.only else ["none", *[x for x in args.only.split(",") if x != "none"]]
    unknown = [x for x in labels if x not in SETTINGS]
    if unknown:
        print(f"error: unknown setting {unknown[0]!r}: choose from {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    res = {"machine": machine_info(), "load_average_before": load_average(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="curate-cost-") as tmp:
        for i, label in enumerate(labels):
            print(f"[{i + 1}/{len(labels)}] {label}", file=sys.stderr, flush=True)
            res["runs"][label] = run_one(SETTINGS[label], Path(tmp) / str(i))
    none = res["runs"]["none"]
    for r in res["runs"].values():
        r["curate_share_of_none_wall"] = round(r["curate_s"] / none["wall_s"], 4)
        r["curate_share_of_own_wall"] = round(r["curate_s"] / r["wall_s"], 4)  # robust to a slow `none` run
        r["wall_vs_none"] = round(r["wall_s"] / none["wall_s"], 3)
    res["load_average_after"] = load_average()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    for label, r in res["runs"].items():
        print(f"{label:32s} curate {r['curate_s']:6.1f} s  ({r['curate_share_of_none_wall']:.1%} of none's "
              f"{none['wall_s']:.0f} s)  wall {r['wall_s']:6.1f} s (× {r['wall_vs_none']:.2f})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
