"""Plots and the HTML report from one or more run folders (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bucket_shift(bucket_shift: dict, path: str | Path, title: str = "") -> Path:
    """Bar chart of ``shift_pct`` per frequency bucket (the motivating figure); unseen is annotated, not drawn."""
    plt = _mpl()
    from collapse.io import atomic_path

    names = [b for b, v in bucket_shift.items() if v["shift_pct"] is not None]
    vals = [bucket_shift[b]["shift_pct"] for b in names]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    colors = ["#2166ac" if v >= 0 else "#b2182b" for v in vals]
    hatches = ["" if v >= 0 else "//" for v in vals]
    bars = ax.bar(names, vals, color=colors, edgecolor="black", linewidth=0.6)
    for bar, h, v in zip(bars, hatches, vals):
        bar.set_hatch(h)
        ax.annotate(f"{v:+.1f}%", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                    va="bottom" if v >= 0 else "top", fontsize=9, xytext=(0, 2 if v >= 0 else -2),
                    textcoords="offset points")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("frequency rank of the token type in the true text (bucket)")
    ax.set_ylabel("over(+) / under(−) representation (%)")
    unseen = bucket_shift.get("unseen", {}).get("gen_share", 0.0)
    ax.set_title(title or "Generated vs true token frequencies", fontsize=10, wrap=True)
    fig.text(0.99, 0.01, f"generated tokens of types absent from the true text (bucket 'unseen'): {100 * unseen:.2f}%",
             ha="right", va="bottom", fontsize=8, color="0.3")
    lim = max([abs(v) for v in vals] + [1.0]) * 1.25
    ax.set_ylim(-lim, lim)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
