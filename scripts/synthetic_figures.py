"""Figures and tables of docs/results.md's synthetic-source section, from the sweeps of configs/synthetic/.

    collapse sweep configs/synthetic/ngram-law.yaml --out runs/synthetic/ngram-law
    collapse sweep configs/synthetic/ngram-regimes.yaml --out runs/synthetic/ngram-regimes
    collapse sweep configs/synthetic/transformer-regimes.yaml --out runs/synthetic/transformer-regimes
    python scripts/synthetic_figures.py runs/synthetic docs/img

Writes ``synthetic-law.png`` (measured diversity of each generation's samples, mean over seeds with its 95%
interval, against the exact Wright-Fisher curve and the mix recursion of collapse/models/ngram/law.py) and
``synthetic-kl.png`` (kl_truth per generation), and prints the markdown tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _runs(parent: Path) -> dict[str, list[list[dict]]]:
    """{group (the point name without the seed): [each seed's rows: {figure: value, figure_ci: [lo, hi]} by
    generation]}, from the tidy table of the sweep (collapse.load_runs); a missing value is None."""
    from collapse.results import load_runs

    def _v(x):
        return None if x != x else float(x)  # NaN: the figure is null in metrics.jsonl

    df = load_runs(parent)
    df = df[df.bucket.isna()]
    out: dict[str, list[list[dict]]] = {}
    for path, run in sorted(df.groupby("path"), key=lambda kv: Path(kv[0])):
        key = ",".join(x for x in Path(path).name.split(",") if not x.startswith("seed=")) or "all"
        rows = []
        for g, at in run.groupby("generation"):
            r: dict = {"generation": int(g)}
            for f in at.itertuples():
                r[f.figure], r[f"{f.figure}_ci"] = _v(f.value), [_v(f.lo), _v(f.hi)]
            rows.append(r)
        out.setdefault(key, []).append(rows)
    return out


def _t95(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def law_curves(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(replace curve, mix curve) for the config of one run of the law sweep (collapse/models/ngram/law.py)."""
    from collapse.config import load_config
    from collapse.data import load_splits, real_data, split_ids
    from collapse.models.ngram import generation0, law

    cfg = load_config(run_dir / "config.yaml", embedded=True)
    splits = load_splits(cfg.data)
    model0, tok = generation0(cfg.model, splits)
    eos, V = tok.eos_token_id, len(tok)
    p0 = model0.counts.uni.astype(np.float64)
    p0[eos] = 0.0
    gc = cfg.generation
    N = gc.num_sequences * gc.new_tokens
    replace = law.replace_curve(p0, N, cfg.generations)
    # mix: the real rows also hold the separator, which the model counts and generation drops: recursion (3)
    # with the real rows' symbol moments and the real share of the SYMBOL tokens (an approximation)
    real = real_data(cfg, split_ids(tok, splits), eos, V).real_rows
    n_real = round(cfg.regime.real_fraction * gc.num_sequences)
    rho, s_r = law.real_row_moments(real, V, n_real)
    e = rho[eos]
    rho_s = np.delete(rho, eos) / (1 - e)
    s_r_s = (s_r - (rho[eos] ** 2)) / (1 - e) ** 2  # drops the separator's own term (its variance is small)
    real_tok = n_real * gc.new_tokens * (1 - e)
    a = real_tok / (real_tok + (gc.num_sequences - n_real) * gc.new_tokens)
    mix = law.mix_curve(np.delete(p0, eos), N, a, rho_s, s_r_s, cfg.generations)
    return replace, mix


def figure_law(parent: Path, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _runs(parent)
    first = next(p for p in sorted(parent.iterdir()) if (p / "config.yaml").is_file())
    replace, mix = law_curves(first)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    lines = ["| generation | replace: measured (95% CI over seeds) | replace: exact | mix: measured | "
             "mix: recursion (3) |", "|---:|---|---:|---|---:|"]
    stats = {}
    for name, curve, color in (("regime.kind=replace", replace, "C0"), ("regime.kind=mix", mix, "C1")):
        D = np.array([[r["gini_simpson"] for r in rows] for rows in groups[name]])
        m, h = D.mean(0), _t95(len(D)) * D.std(0, ddof=1) / np.sqrt(len(D))
        g = np.arange(D.shape[1])
        label = name.split("=")[1]
        ax.fill_between(g, m - h, m + h, color=color, alpha=0.25, linewidth=0)
        ax.plot(g, m, "o", color=color, ms=3.5, label=f"{label}: measured, mean of {len(D)} seeds (95% CI)")
        ax.plot(g, curve, "-", color=color, lw=1.2,
                label=f"{label}: {'exact (1 - 1/N)^(g+1) (1 - Σp₀²)' if label == 'replace' else 'recursion (3)'}")
        stats[label] = (m, h, curve)
    ax.set_xlabel("generation")
    ax.set_ylabel("Gini–Simpson diversity 1 − Σf² of the samples")
    ax.set_title("Unigram MLE retrained on its own N = 32 tokens: measured vs the exact law", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(out / "synthetic-law.png", dpi=130)
    plt.close(fig)
    for g in (0, 1, 2, 5, 10, 15, 20):
        (rm, rh, rc), (mm, mh, mc) = stats["replace"], stats["mix"]
        lines.append(f"| {g} | {rm[g]:.4f} [{rm[g] - rh[g]:.4f}, {rm[g] + rh[g]:.4f}] | {rc[g]:.4f} | "
                     f"{mm[g]:.4f} [{mm[g] - mh[g]:.4f}, {mm[g] + mh[g]:.4f}] | {mc[g]:.4f} |")
    return "\n".join(lines)


def figure_kl(parents: dict[str, Path], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(parents), figsize=(5.2 * len(parents), 3.8), layout="constrained", squeeze=False)
    text = []
    for ax, (title, parent) in zip(axes[0], parents.items()):
        groups = _runs(parent)
        text += [f"**{title}** — kl_truth (nats/token) per generation: mean of the seeds [lowest, highest bound "
                 "of the seeds' 95% bootstrap intervals over the truth documents]; ∞: a model gives probability 0 "
                 "to some truth tokens (their share in brackets, mean of the seeds)", "",
                 "| group | " + " | ".join(f"gen {g}" for g in range(len(next(iter(groups.values()))[0]))) + " |",
                 "|---|" + "---|" * len(next(iter(groups.values()))[0])]
        for i, (name, runs) in enumerate(sorted(groups.items())):
            K = np.array([[np.nan if r["kl_truth"] is None else r["kl_truth"] for r in rows] for rows in runs])
            g = np.arange(K.shape[1])
            for j, rows in enumerate(runs):
                lo = np.array([np.nan if r["kl_truth_ci"][0] is None else r["kl_truth_ci"][0] for r in rows])
                hi = np.array([np.nan if r["kl_truth_ci"][1] is None else r["kl_truth_ci"][1] for r in rows])
                ax.errorbar(g + 0.06 * (j - 1) + 0.02 * i, K[j], yerr=[K[j] - lo, hi - K[j]], color=f"C{i}",
                            fmt="o-" if j == 0 else "o:", ms=2.5, lw=0.8, capsize=1.5,
                            label=name.replace("regime.kind=", "").replace("model.ngram.", "") if j == 0 else None)
            cells = []
            for gg in g:
                at = [rows[gg] for rows in runs]
                if all(r["kl_truth"] is not None for r in at):
                    cells.append(f"{np.mean([r['kl_truth'] for r in at]):.3f} [{min(r['kl_truth_ci'][0] for r in at):.3f}"
                                 f", {max(r['kl_truth_ci'][1] for r in at):.3f}]")
                else:
                    cells.append(f"∞ ({100 * np.mean([r['kl_truth_zero'] for r in at]):.2f}%)")
            text.append(f"| {name} | " + " | ".join(cells) + " |")
        text.append("")
        ax.set_xlabel("generation")
        ax.set_ylabel("KL(truth ‖ model g), nats/token")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("KL to the known truth per generation (3 seeds; bars: each run's 95% bootstrap interval over "
                 "256 truth documents)", fontsize=9)
    fig.savefig(out / "synthetic-kl.png", dpi=130)
    plt.close(fig)
    return "\n".join(text)


def main(argv: list[str]) -> int:
    root, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    if (root / "ngram-law").is_dir():
        print(figure_law(root / "ngram-law", out))
    kl = {t: root / d for t, d in (("bigram (n-gram kind)", "ngram-regimes"),
                                   ("tiny transformer (scratch GPT-2, full fine-tune)", "transformer-regimes"))
          if (root / d).is_dir()}
    if kl:
        print(figure_kl(kl, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
