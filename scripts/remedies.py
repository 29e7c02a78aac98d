"""docs/results.md's remedies table and figure, from the sweep of configs/experiments/remedies.yaml.

    collapse sweep configs/experiments/remedies.yaml --out runs/experiments/remedies
    python scripts/remedies.py runs/experiments/remedies docs/img

For each point (a curator, or mix 10%), over its seeds: the change from generation 0 to the last generation in
test perplexity and in the tail loss of ranks 1001-10000 (mean over seeds, a t interval over the seeds, and how
many of the seeds' own paired intervals exclude 0), then the same changes against `none` and against `mix`,
paired by seed (the same seed gives every point the same generation 0 and the same first corpus). Draws
``remedies-test-ppl.png``: test perplexity over generations, one line per point (mean over seeds, band: the
seeds' range). Reads everything through collapse.load_runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _t95(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def point_of(row) -> str:
    if row["regime.kind"] == "mix":
        return "mix 10% real"
    kind = row["curate.kind"]
    if kind == "perplexity":
        return f"perplexity ({row['curate.keep']})"
    return kind


def _mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    m = float(np.mean(x))
    h = _t95(len(x)) * float(np.std(x, ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return m, m - h, m + h


def table(df) -> tuple[str, dict]:
    last = df.generation.max()
    out = {}
    for fig, bucket in (("test_ppl", None), ("tail_loss", "1001-10000")):
        sel = df[(df.figure == fig) & (df.generation == last)]
        sel = sel[sel.bucket.isna()] if bucket is None else sel[sel.bucket == bucket]
        for p, g in sel.groupby("point"):
            out.setdefault(p, {})[fig] = {int(s): (c, bool(r)) for s, c, r in zip(g.seed, g.change, g.resolved)}
    order = ["none", "perplexity (highest)", "perplexity (lowest)", "reference", "random", "detector", "dedupe",
             "mix 10% real"]
    order = [p for p in order if p in out] + sorted(p for p in out if p not in order)
    lines = ["| remedy | Δ test ppl, gen 0 → last | resolved | Δ NLL 1001-10000 | resolved | test ppl vs none | "
             "test ppl vs mix | NLL 1001-10000 vs none | NLL 1001-10000 vs mix |", "|---|---|---|---|---|---|---|---|---|"]

    def cell(vals) -> str:
        m, lo, hi = _mean_ci(np.array(vals))
        return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"

    for p in order:
        row = [p]
        for fig in ("test_ppl", "tail_loss"):
            seeds = out[p][fig]
            row += [cell([c for c, _ in seeds.values()]), f"{sum(r for _, r in seeds.values())}/{len(seeds)}"]
        for fig in ("test_ppl", "tail_loss"):
            for ref in ("none", "mix 10% real"):
                if p == ref or ref not in out:
                    row.append("—")
                    continue
                both = sorted(set(out[p][fig]) & set(out[ref][fig]))
                row.append(cell([out[p][fig][s][0] - out[ref][fig][s][0] for s in both]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), out


def figure(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ppl = df[(df.figure == "test_ppl") & df.bucket.isna()]
    fig, ax = plt.subplots(figsize=(7.2, 4.4), layout="constrained")
    for i, (p, g) in enumerate(sorted(ppl.groupby("point"), key=lambda kv: kv[0])):
        c = g.groupby("generation").value.agg(["mean", "min", "max"])
        style = "--" if p in ("none", "mix 10% real") else "-"
        ax.plot(c.index, c["mean"], style, marker="o", ms=3, color=f"C{i}", label=f"{p} ({g.seed.nunique()} seeds)")
        ax.fill_between(c.index, c["min"], c["max"], color=f"C{i}", alpha=0.15, linewidth=0)
    ax.set_xlabel("generation")
    ax.set_ylabel("test perplexity on real text")
    ax.set_title("Remedies on the embedded default (replace, T = 0.7): mean over seeds, band = the seeds' range",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str]) -> int:
    import collapse

    root, out = Path(argv[0]), Path(argv[1])
    df = collapse.load_runs(root)
    df["point"] = df.apply(point_of, axis=1)
    text, _ = table(df)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    figure(df, out / "remedies-test-ppl.png")
    print(f"wrote {out / 'remedies-test-ppl.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
