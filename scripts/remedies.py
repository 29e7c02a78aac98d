"""docs/results.md's remedies tables and figure, from remedies sweeps (configs/experiments/remedies*.yaml).

    collapse sweep configs/experiments/remedies-pool.yaml --out runs/experiments/remedies-pool
    python scripts/remedies.py runs/experiments/remedies-pool docs/img
    python scripts/remedies.py runs/experiments/remedies-oversample runs/experiments/remedies-pool docs/img

Several folders are read as one table: the first folder's points, paired by seed with the baselines (`none`, `mix 10%
real`) of the others; the figure is named after the first folder.

For each point (a curator and the pool it chose from, or mix 10%, or none), over its seeds: the change from
generation 0 to the last generation in test perplexity and in the tail loss of ranks 1001-10000 (mean over seeds, a
t interval over the seeds, and how many of the seeds' own paired intervals exclude 0); the same changes against
`none`, against `mix 10% real` and against `random` from the same pool (its control), each paired by seed (the same
seed gives every point the same generation 0 and the same prompts); and, in a pool with real rows, the share of
the training rows that were real (mean over the curated generations and seeds; the curator never saw it).
Draws ``<folder name>-test-ppl.png``: test perplexity over generations, one line per point (mean over seeds, band:
the seeds' range). Reads everything through collapse.load_runs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

BASELINES = ("none", "mix 10% real")


def _t95(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def pool_of(row) -> str:
    """The pool a curator chose from, in words ('' for the samples alone)."""
    parts = []
    k, h = int(row.get("curate.oversample", 1) or 1), float(row.get("curate.real_share", 0.0) or 0.0)
    if k > 1:
        parts.append(f"{k} per prompt")
    if h > 0:
        parts.append(f"{h:.0%} real")
    return f" · pool {', '.join(parts)}" if parts else ""


def point_of(row) -> str:
    if row["regime.kind"] == "mix" and row["curate.kind"] == "none":
        return "mix 10% real"
    kind = row["curate.kind"]
    if kind == "perplexity":
        kind = f"perplexity ({row['curate.keep']}, {row['curate.score_with']})"
    return kind + pool_of(row)


def control_of(point: str) -> str | None:
    """The same pool's `random`, for a curator's point."""
    if point in BASELINES or point.startswith("random"):
        return None
    _, _, pool = point.partition(" · ")
    return "random" + (f" · {pool}" if pool else "")


def _mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    m = float(np.mean(x))
    h = _t95(len(x)) * float(np.std(x, ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return m, m - h, m + h


def cell(vals) -> str:
    m, lo, hi = _mean_ci(np.array(vals, np.float64))
    if math.isnan(lo):
        return f"{m:+.2f}"
    bold = "**" if lo > 0 or hi < 0 else ""
    return f"{bold}{m:+.2f} [{lo:+.2f}, {hi:+.2f}]{bold}"


def changes(df) -> dict:
    """point -> figure -> seed -> (change from generation 0 to the last, resolved by the seed's own interval)."""
    last = df.generation.max()
    out: dict = {}
    for fig, bucket in (("test_ppl", None), ("tail_loss", "1001-10000")):
        sel = df[(df.figure == fig) & (df.generation == last)]
        sel = sel[sel.bucket.isna()] if bucket is None else sel[sel.bucket == bucket]
        for p, g in sel.groupby("point"):
            out.setdefault(p, {})[fig] = {int(s): (c, bool(r)) for s, c, r in zip(g.seed, g.change, g.resolved)}
    return out


def kept_real(df) -> dict:
    sel = df[(df.figure == "kept_real_share") & df.value.notna()]
    return {p: (float(g.value.mean()), float(g.value.min()), float(g.value.max())) for p, g in sel.groupby("point")}


def table(df) -> str:
    out, real = changes(df), kept_real(df)
    order = [p for p in BASELINES if p in out] + sorted(p for p in out if p not in BASELINES)
    head = ["point", "Δ test ppl, gen 0 → last", "resolved", "Δ NLL 1001-10000", "resolved", "test ppl vs none",
            "test ppl vs mix 10%", "test ppl vs the pool's random", "NLL 1001-10000 vs none",
            "NLL 1001-10000 vs mix 10%", "NLL 1001-10000 vs the pool's random", "real rows kept (share)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in order:
        row = [p]
        for fig in ("test_ppl", "tail_loss"):
            seeds = out[p][fig]
            row += [cell([c for c, _ in seeds.values()]), f"{sum(r for _, r in seeds.values())}/{len(seeds)}"]
        for fig in ("test_ppl", "tail_loss"):
            for ref in (*BASELINES, control_of(p)):
                if ref is None or p == ref or ref not in out:
                    row.append("—")
                    continue
                both = sorted(set(out[p][fig]) & set(out[ref][fig]))
                row.append(cell([out[p][fig][s][0] - out[ref][fig][s][0] for s in both]))
        row.append(f"{real[p][0]:.3f} ({real[p][1]:.3f}–{real[p][2]:.3f})" if p in real else "—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def figure(df, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ppl = df[(df.figure == "test_ppl") & df.bucket.isna()]
    fig, ax = plt.subplots(figsize=(7.6, 4.6), layout="constrained")
    for i, (p, g) in enumerate(sorted(ppl.groupby("point"), key=lambda kv: kv[0])):
        c = g.groupby("generation").value.agg(["mean", "min", "max"])
        style = "--" if p in BASELINES else ":" if p.startswith("random") else "-"
        ax.plot(c.index, c["mean"], style, marker="o", ms=3, color=f"C{i % 10}", label=f"{p} ({g.seed.nunique()} seeds)")
        ax.fill_between(c.index, c["min"], c["max"], color=f"C{i % 10}", alpha=0.12, linewidth=0)
    ax.set_xlabel("generation")
    ax.set_ylabel("test perplexity on real text")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str]) -> int:
    import collapse

    if len(argv) < 2:
        print("usage: python scripts/remedies.py SWEEP_FOLDER [SWEEP_FOLDER ...] OUT_FOLDER", file=sys.stderr)
        return 2
    roots, out = [Path(a) for a in argv[:-1]], Path(argv[-1])
    root = roots[0]  # the figure is named after the first
    df = collapse.load_runs(roots)
    df["point"] = df.apply(point_of, axis=1)
    if len(roots) > 1:  # the first folder's points and the baselines the others lend them
        mine = set(df[df.path.str.startswith(str(root))].point)
        df = df[df.point.isin(mine | set(BASELINES))]
    print(table(df))
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{root.name}-test-ppl.png"
    figure(df, png, f"{root.name}: the embedded default (replace, T = 0.7); mean over seeds, band = the seeds' range")
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
