"""The neutral temperature of the unigram n-gram: predicted (collapse.models.ngram.law) against measured (collapse run).

    python scripts/ngram_temperature.py [--seeds 12] [--out docs/results/ngram-temperature.json]

For each add-k (0 and 0.5), `collapse run` (in this process, one generation, replace, a unigram n-gram on a
synthetic Zipf source of 200 symbols, N = 32 x 32 = 1,024 generated tokens a generation) at temperatures around 1,
``--seeds`` seeds each; the measured drift is generation 1's entropy minus generation 0's, the same plug-in
``entropy`` metrics.jsonl holds. The measured T* is the root of a straight line fitted to the (T, drift) pairs
of the two temperatures around the sign change, with a 95% interval by the delta method; the predicted T* solves ``law.entropy_drift = 0``
for the same generation 0 (Monte Carlo: its standard error is given). Writes the JSON and prints a table.
About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

BASE = ["data.source=synthetic", "data.synthetic.vocab=200", "data.synthetic.order=0", "data.synthetic.zipf=1.1",
        "data.synthetic.documents=400", "data.synthetic.doc_tokens=64", "data.synthetic.truth_documents=2",
        "model.name_or_path=ngram", "model.ngram.n=1", "generations=1", "generation.num_sequences=32",
        "generation.batch_size=32", "generation.prompt_tokens=4", "generation.new_tokens=32", "eval.max_blocks=4",
        "stats.resamples=0", "wandb.mode=disabled"]
TEMPERATURES = (0.9, 0.95, 1.0, 1.05, 1.1)
ADD_K = (0.0, 0.5)


def measured_drifts(add_k: float, temperatures, seeds: int, root: Path) -> dict[float, list[float]]:
    from collapse.config import load_config
    from collapse.loop.run import run_loop
    from collapse.results import load_runs

    out: dict[float, list[float]] = {}
    for t in temperatures:
        out[t] = []
        for seed in range(seeds):
            d = root / f"k{add_k}-t{t}-s{seed}"
            cfg = load_config(None, [*BASE, f"model.ngram.add_k={add_k}", f"generation.temperature={t}",
                                     f"seed={seed}", f"out_dir={d}"])
            run_loop(cfg, show_progress=False)
            entropy = load_runs(d, wide=True).set_index("generation")["entropy"]
            out[t].append(float(entropy[1] - entropy[0]))
    return out


def fitted_root(drifts: dict[float, list[float]]) -> dict:
    """T* of a straight line through the (T, drift) pairs of the two temperatures whose mean drifts bracket 0 (the
    report's interpolation, with every seed), and its delta-method 95% interval. The drift is curved over the
    whole grid, so a line through all of it would put its root off the curve's."""
    ts = sorted(drifts)
    means = [np.mean(drifts[t]) for t in ts]
    i = next((i for i in range(len(ts) - 1) if means[i] < 0 <= means[i + 1]), None)
    if i is None:
        return {"t_star": None, "note": "no sign change over the grid"}
    drifts = {ts[i]: drifts[ts[i]], ts[i + 1]: drifts[ts[i + 1]]}
    t = np.array([k for k, v in drifts.items() for _ in v])
    d = np.array([x for v in drifts.values() for x in v])
    X = np.stack([np.ones_like(t), t - 1.0], 1)
    beta, res, *_ = np.linalg.lstsq(X, d, rcond=None)
    resid = d - X @ beta
    s2 = float(resid @ resid) / (len(d) - 2)
    cov = s2 * np.linalg.inv(X.T @ X)
    a, b = beta
    root = 1.0 - a / b
    grad = np.array([-1.0 / b, a / b ** 2])  # d root / d (a, b)
    se = float(np.sqrt(grad @ cov @ grad))
    return {"t_star": float(root), "ci95": [float(root - 1.96 * se), float(root + 1.96 * se)],
            "slope_bits_per_unit_t": float(b), "between": [float(min(t)), float(max(t))]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--out", default="docs/results/ngram-temperature.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("COLLAPSE_SKIP_REPORT", "1")
    logging.getLogger("collapse").setLevel(logging.WARNING)
    import collapse.io as cio
    from collapse.config import load_config
    from collapse.data import load_splits
    from collapse.models.ngram import generation0, law

    cio.os.fsync = lambda fd: None  # throw-away folders: no durability needed
    result = {"command": "python scripts/ngram_temperature.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": BASE, "seeds": args.seeds, "add_k": {}}
    with tempfile.TemporaryDirectory(prefix="ngram-temperature-") as tmp:
        for k in ADD_K:
            cfg = load_config(None, [*BASE, f"model.ngram.add_k={k}", f"out_dir={tmp}/probe"])
            model0, tok = generation0(cfg.model, load_splits(cfg.data))
            c = model0.counts
            p0 = (c.uni + k) / (c.uni.sum() + k * c.V)  # what generation 0 samples from, before tempering
            N = cfg.generation.num_sequences * cfg.generation.new_tokens
            pred = law.neutral_temperature(p0, N, k, tok.eos_token_id, repeats=4000)
            drifts = measured_drifts(k, TEMPERATURES, args.seeds, Path(tmp))
            meas = fitted_root(drifts)
            result["add_k"][str(k)] = {
                "predicted": pred, "measured": meas,
                "drift_by_temperature": {str(t): {"mean": float(np.mean(v)), "se": float(np.std(v, ddof=1) / np.sqrt(len(v))),
                                                  "predicted": law.entropy_drift(p0, N, t, k, tok.eos_token_id, 4000)[0]}
                                         for t, v in drifts.items()}}
            lo, hi = meas["ci95"]
            print(f"add_k={k}: predicted T* {pred['t_star']:.4f} (Monte Carlo SE {pred['se']:.4f}); "
                  f"measured {meas['t_star']:.4f} [{lo:.4f}, {hi:.4f}] ({args.seeds} seeds at T = {meas['between']})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
