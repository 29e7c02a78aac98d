"""The report's figures over generations (test perplexity, tail loss, bucket shift, diversity), measure's bar chart,
and :func:`draw_figures`, which draws every figure of the report (the distributions: ``figures_dist``).

Each ``fig_*`` writes ``<stem>.png`` and ``<stem>.svg`` into ``out`` and returns the PNG's path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from collapse.io import atomic_path
from collapse.report.figures_dist import fig_gen0_ppl, fig_zipf
from collapse.report.plots import (
    HATCHES,
    OVER,
    PALETTE,
    RC,
    UNDER,
    band_note,
    compared_text,
    draw_line,
    int_xaxis,
    legend_below,
    mpl,
    ncols,
    pick_generations,
    save_figure,
    signed,
    suptitle,
    wrap_text,
)
from collapse.report.runs import Group, metric_getter
from collapse.report.seeds import series

# every figure of the report, in the page's order (file names: <stem>.png, <stem>.svg)
FIGURES = ("test-ppl", "tail-loss", "bucket-heatmap", "bucket-shift", "gen0-ppl", "diversity", "zipf", "harness")


def draw_figures(groups: list[Group], tail_buckets: list[str], shift_buckets: list[str], out: Path,
                 note: Callable[[str], None]) -> tuple[dict[str, Path | None], dict[str, str]]:
    """Draw every figure into ``out``: ({stem: PNG path, None if not drawn}, {stem: why it could not be drawn}).

    A figure that fails is reported through ``note`` and left out; the others are still drawn.
    """
    plt = mpl()
    figures: dict[str, Path | None] = {}
    errors: dict[str, str] = {}
    makers = {
        "test-ppl": lambda: fig_test_ppl(groups, out),
        "tail-loss": lambda: fig_tail_loss(groups, tail_buckets, out) if tail_buckets else None,
        "bucket-heatmap": lambda: fig_bucket_heatmap(groups, shift_buckets, out) if shift_buckets else None,
        "bucket-shift": lambda: fig_bucket_shift(groups, shift_buckets, out) if shift_buckets else None,
        "gen0-ppl": lambda: fig_gen0_ppl(groups, out),
        "diversity": lambda: fig_diversity(groups, out),
        "zipf": lambda: fig_zipf(groups, out),
        "harness": lambda: fig_harness(groups, out),
    }
    with plt.rc_context(RC):
        for stem, make in makers.items():
            try:
                figures[stem] = make()
            except Exception as e:  # noqa: BLE001 - one broken figure must not cost the whole report
                plt.close("all")
                figures[stem] = None
                errors[stem] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                note(f"report: figure {stem} could not be drawn ({errors[stem]}).")
    return figures, errors


# ---------------------------------------------------------------------- measure's figure


def plot_bucket_shift(bucket_shift: dict, path: str | Path, title: str = "", rank_by: str = "train") -> Path:
    """Bar chart of ``shift_pct`` per frequency bucket (the motivating figure) with its 95% interval where the
    measure has one; unseen is annotated, not drawn (it has no shift: its share stands apart)."""
    plt = mpl()
    names = [b for b, v in bucket_shift.items() if v["shift_pct"] is not None]
    vals = [bucket_shift[b]["shift_pct"] for b in names]
    cis = [bucket_shift[b].get("ci95") or [None, None] for b in names]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    colors = [OVER if v >= 0 else UNDER for v in vals]
    hatches = ["" if v >= 0 else "//" for v in vals]
    bars = ax.bar(names, vals, color=colors, edgecolor="black", linewidth=0.6)
    if all(c[0] is not None for c in cis) and cis:
        ax.errorbar(names, vals, yerr=[[max(0.0, v - c[0]) for v, c in zip(vals, cis)], [max(0.0, c[1] - v) for v, c in zip(vals, cis)]],
                    fmt="none", ecolor="black", elinewidth=1, capsize=4, label="95% interval over examples")
        ax.legend(loc="best", fontsize=8, frameon=False)
    for bar, h, v, c in zip(bars, hatches, vals, cis):
        bar.set_hatch(h)
        end = v if c[0] is None else (c[1] if v >= 0 else c[0])
        ax.annotate(f"{v:+.1f}%", (bar.get_x() + bar.get_width() / 2, end), ha="center",
                    va="bottom" if v >= 0 else "top", fontsize=9, xytext=(0, 2 if v >= 0 else -2),
                    textcoords="offset points")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("frequency rank of the token type in the " + ("real training split" if rank_by == "train"
                                                                 else "true second halves") + " (bucket)")
    ax.set_ylabel("over(+) / under(−) representation (%)")
    unseen = bucket_shift.get("unseen", {}).get("gen_share", 0.0)
    ax.set_title(title or "Generated vs true token frequencies", fontsize=10, wrap=True)
    fig.text(0.99, 0.01, f"generated tokens of types the ranking lacks ('unseen', apart from the shares): "
                         f"{100 * unseen:.2f}%", ha="right", va="bottom", fontsize=8, color="0.3")
    ends = [abs(x) for c in cis for x in c if x is not None]
    lim = max([abs(v) for v in vals] + ends + [1.0]) * 1.25
    ax.set_ylim(-lim, lim)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save_at(plt, fig, path)


def _save_at(plt, fig, path: str | Path) -> Path:
    """``fig`` written atomically to ``path`` in the format its suffix names, then closed."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path



def plot_decodings(columns: list[dict], path: str | Path, title: str = "", rank_by: str = "train") -> Path:
    """Grouped bars: each ranked bucket's shift per column (the control first, grey and hatched), with 95% interval
    bars; the unseen share of each column is listed below (it has no shift)."""
    plt = mpl()
    buckets = [b for b in columns[0]["bucket_shift"] if b != "unseen"
               and any(c["bucket_shift"][b]["shift_pct"] is not None for c in columns)]
    n = len(columns)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(buckets) + 0.25 * n * len(buckets)), 4.6), dpi=120)
    x = np.arange(len(buckets))
    colors = iter(PALETTE[1:])
    ends = []
    for i, c in enumerate(columns):
        vals = [c["bucket_shift"][b]["shift_pct"] for b in buckets]
        vals = [np.nan if v is None else v for v in vals]
        cis = [c["bucket_shift"][b].get("ci95") or [None, None] for b in buckets]
        control = c.get("kind") == "control"
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, vals, width, label=c["name"], color="0.75" if control else next(colors, "0.4"),
               hatch="//" if control else "", edgecolor="black", linewidth=0.5)
        lo = [max(0.0, v - ci[0]) if ci[0] is not None and np.isfinite(v) else 0.0 for v, ci in zip(vals, cis)]
        hi = [max(0.0, ci[1] - v) if ci[1] is not None and np.isfinite(v) else 0.0 for v, ci in zip(vals, cis)]
        ax.errorbar(pos, vals, yerr=[lo, hi], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        ends += [abs(e) for ci in cis for e in ci if e is not None] + [abs(v) for v in vals if np.isfinite(v)]
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, buckets)
    ax.set_xlabel("frequency rank of the token type in the " + ("real training split" if rank_by == "train"
                                                                 else "true second halves") + " (bucket)")
    ax.set_ylabel("over(+) / under(−) representation (%)\n95% interval over examples")
    lim = max(ends + [1.0]) * 1.1
    ax.set_ylim(-lim, lim)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, ncol=min(n, 3), loc="best")
    ax.set_title(title or "Generated vs true token frequencies, by decoding", fontsize=10, wrap=True)
    unseen = ", ".join(f"{c['name']} {100 * c['bucket_shift'].get('unseen', {}).get('gen_share', 0.0):.2f}%"
                       for c in columns)
    fig.text(0.99, 0.01, f"unseen share (types the ranking lacks, apart): {unseen}", ha="right", va="bottom",
             fontsize=7, color="0.3", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save_at(plt, fig, path)


# ---------------------------------------------------------------------- the report's figures over generations


def fig_test_ppl(groups: list[Group], out: Path) -> Path:
    plt = mpl()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    ax, dax = axes
    for i, g in enumerate(groups):
        draw_line(ax, g, i, metric_getter("test_ppl"), of=len(groups))
        draw_line(dax, g, i, metric_getter("test_ppl"), of=len(groups), paired=True)
    for a in axes:
        int_xaxis(a)
    ax.set_ylabel("perplexity on real test text\n(exp of mean NLL in nats/token; lower is better)")
    ax.set_title("value")
    dax.axhline(0.0, color="0.5", linewidth=0.8)
    dax.set_ylabel("change from the run's own generation 0")
    dax.set_title("change from generation 0 (paired per run)")
    suptitle(fig, f"Test perplexity by generation: {compared_text(groups)}", fontsize=10)
    note = band_note(groups)
    if note:
        dax.text(0.99, 0.02, note, transform=dax.transAxes, ha="right", va="bottom", fontsize=7, color="0.3")
    legend_below(fig, list(axes))
    return save_figure(fig, out, "test-ppl")


_BUCKET_TITLES = {"1-10": "ranks 1-10 (most frequent types)", "11-100": "ranks 11-100", "101-1000": "ranks 101-1000",
                  "1001-10000": "ranks 1001-10000 (rare types)", "10001+": "ranks 10001+ (rarest types)",
                  "unseen": "unseen in the real training text"}
_RARE = {"1001-10000", "10001+", "unseen"}


def fig_tail_loss(groups: list[Group], buckets: list[str], out: Path) -> Path:
    plt = mpl()
    ncol = ncols(len(buckets), 3)
    nrow = math.ceil(len(buckets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow + 0.6), layout="constrained", squeeze=False)
    tokens = groups[0].runs[0].rows[0].get("tail_tokens") or {}
    # with several seeds, the seeds' generation-0 models differ more than the generations do: draw each
    # run's change from its own generation 0 (the tail-loss *curve*), so the bands show the effect's spread;
    # one run with intervals: its change with the paired interval (the same test blocks every generation),
    # far narrower than the interval of each value
    paired = any(len(g.runs) > 1 for g in groups) or any(
        r.get("changes") for g in groups for run in g.runs for r in run.rows)
    for k, b in enumerate(buckets):
        ax = axes[k // ncol][k % ncol]
        for i, g in enumerate(groups):
            draw_line(ax, g, i, metric_getter(f"tail_loss.{b}"), of=len(groups), paired=paired)
        if paired:
            ax.axhline(0.0, color="0.5", linewidth=0.8)
        int_xaxis(ax)
        n = tokens.get(b)
        title = _BUCKET_TITLES.get(b, b) + (f"\n{n:,} test tokens" if isinstance(n, int) else "")
        ax.set_title(title, fontsize=9, fontweight="bold" if b in _RARE else "normal")
        if b in _RARE:  # the rare buckets are where collapse shows first: set them apart
            ax.set_facecolor("#f3f3f3")
            for s in ax.spines.values():
                s.set_linewidth(1.4)
        if k % ncol == 0:
            ax.set_ylabel("Δ mean NLL vs generation 0\n(nats/token, paired)" if paired
                          else "mean NLL (nats/token)")
    for k in range(len(buckets), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    what = "Change of the loss" if paired else "Loss"
    suptitle(fig, f"{what} on real test tokens by frequency bucket (grey panels: rare): {compared_text(groups)}",
              fontsize=10)
    legend_below(fig, axes)
    return save_figure(fig, out, "tail-loss")


def fig_harness(groups: list[Group], out: Path) -> Path | None:
    """lm-eval's figures (eval.harness) over generations, a panel each, with their 95% intervals; None without any."""
    from collapse.metrics.registry import harness_figures

    figs = [f for f in harness_figures() if any(f.name in r for g in groups for run in g.runs for r in run.rows)]
    if not figs:
        return None
    plt = mpl()
    ncol = ncols(len(figs), 4)
    nrow = math.ceil(len(figs) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow + 0.6), layout="constrained", squeeze=False)
    for k, f in enumerate(figs):
        ax = axes[k // ncol][k % ncol]
        for i, g in enumerate(groups):
            draw_line(ax, g, i, metric_getter(f.name), of=len(groups))
        vals = [r[f.name] for g in groups for run in g.runs for r in run.rows if isinstance(r.get(f.name), (int, float))]
        if vals and 0 <= min(vals) and max(vals) <= 1:  # a share (accuracy): every panel on one scale
            ax.set_ylim(0, 1.02)
        int_xaxis(ax)
        ax.set_title(f.label, fontsize=9)
    for k in range(len(figs), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    suptitle(fig, f"lm-eval tasks over generations (95% intervals): {compared_text(groups)}", fontsize=10)
    legend_below(fig, axes)
    return save_figure(fig, out, "harness")


def _shift_matrix(group: Group, buckets: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generations, the mean shift per (generation, bucket), and whether its 95% interval includes 0
    (over seeds, or inside the run for one run; False where there is no interval)."""
    gens_all = sorted({g for r in group.runs for g in r.gens})
    m = np.full((len(gens_all), len(buckets)), np.nan)
    unresolved = np.zeros(m.shape, dtype=bool)
    for j, b in enumerate(buckets):
        gens, mean, lo, hi, _ = series(group, metric_getter(f"bucket_shift.{b}"))
        for g, v, lo_, hi_ in zip(gens, mean, lo, hi):
            m[gens_all.index(int(g)), j] = v
            unresolved[gens_all.index(int(g)), j] = bool(np.isfinite(lo_) and lo_ <= 0 <= hi_)
    return np.array(gens_all), m, unresolved


def fig_bucket_heatmap(groups: list[Group], buckets: list[str], out: Path) -> Path:
    plt = mpl()
    from matplotlib.colors import TwoSlopeNorm

    mats = [_shift_matrix(g, buckets) for g in groups]
    vmax = max([np.nanmax(np.abs(m)) for _, m, _ in mats if np.isfinite(m).any()] + [1.0])
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    ncol = ncols(len(groups), 3)
    nrow = math.ceil(len(groups) / ncol)
    ngen = max(len(gs) for gs, _, _ in mats)
    marked = any(u.any() for _, _, u in mats)
    h = max(2.6, 0.32 * ngen + 1.6)
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(6.5, 0.9 * len(buckets) * ncol + 1.6), h * nrow + 0.7),
                             layout="constrained", squeeze=False)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")
    im = None
    for k, (g, (gens, m, unresolved)) in enumerate(zip(groups, mats)):
        ax = axes[k // ncol][k % ncol]
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(buckets)), buckets, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(gens)), [str(x) for x in gens], fontsize=8)
        ax.set_xlabel("frequency rank in the real text (bucket)", fontsize=8)
        ax.set_ylabel("generation", fontsize=8)
        ax.set_title(wrap_text(g.legend, max(2.5, 0.9 * len(buckets)), 9), fontsize=9)
        for (r, c), v in np.ndenumerate(m):
            txt = "n/a" if not np.isfinite(v) else signed(v)
            if unresolved[r, c]:  # its 95% interval includes 0: in parentheses, over a dotted hatch
                txt = f"({txt})"
                ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="...", edgecolor="0.55",
                                           linewidth=0))
            dark = np.isfinite(v) and abs(v) > 0.55 * vmax
            ax.text(c, r, txt, ha="center", va="center", fontsize=7 if len(buckets) > 4 else 8,
                    color="white" if dark else "black")
    for k in range(len(groups), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    cb = fig.colorbar(im, ax=axes, shrink=0.9)
    cb.set_label("generated vs real share of the bucket (%)\nblue: over-represented, red: under", fontsize=8)
    suptitle(fig, "Token-frequency shift of each generation's samples vs the real text, % per bucket"
                 + (" (mean over seeds)" if any(len(g.runs) > 1 for g in groups) else "")
                 + ("\n(parentheses, dotted: the 95% interval includes 0)" if marked else ""), fontsize=10)
    return save_figure(fig, out, "bucket-heatmap")


def fig_bucket_shift(groups: list[Group], buckets: list[str], out: Path) -> Path:
    """Bar charts like `collapse measure`'s, one panel per (selected) generation, one bar colour per group."""
    plt = mpl()
    gens = pick_generations([g for grp in groups for r in grp.runs for g in r.gens])
    ncol = ncols(len(gens), 3)
    nrow = math.ceil(len(gens) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow + 0.7), layout="constrained",
                             squeeze=False, sharey=True)
    x = np.arange(len(buckets))
    width = 0.8 / len(groups)
    stats = {}
    for gi, grp in enumerate(groups):
        for j, b in enumerate(buckets):
            gs, mean, lo, hi, _ = series(grp, metric_getter(f"bucket_shift.{b}"))
            for g, mu, lo_, hi_ in zip(gs, mean, lo, hi):
                stats[(gi, int(g), j)] = (mu, lo_, hi_)
    # the scale follows the means: with 2 seeds a t-interval can be 10× wider and would flatten every bar
    means = [abs(s_[0]) for s_ in stats.values() if np.isfinite(s_[0])]
    ci = [abs(v) for s_ in stats.values() for v in s_[1:] if np.isfinite(v)]
    lim = max(min(max(ci + [0.0]), 2.0 * max(means + [0.5])), max(means + [1.0]) * 1.3)
    single = len(groups) == 1
    whiskers = any(np.isfinite(s_[1]) for s_ in stats.values())
    label_bars = len(groups) <= 2 and not whiskers  # numbers would collide with whiskers
    for k, g in enumerate(gens):
        ax = axes[k // ncol][k % ncol]
        for gi, grp in enumerate(groups):
            mu = np.array([stats.get((gi, g, j), (np.nan,) * 3)[0] for j in range(len(buckets))])
            lo = np.array([stats.get((gi, g, j), (np.nan,) * 3)[1] for j in range(len(buckets))])
            hi = np.array([stats.get((gi, g, j), (np.nan,) * 3)[2] for j in range(len(buckets))])
            xs = x - 0.4 + width * (gi + 0.5)
            if single:  # one run: measure's colours (blue over, red under, hatched)
                colors = [OVER if v >= 0 else UNDER for v in np.nan_to_num(mu)]
                bars = ax.bar(xs, np.nan_to_num(mu), width, color=colors, edgecolor="black", linewidth=0.5,
                              label=grp.legend)
                for bar, v in zip(bars, mu):
                    bar.set_hatch("" if v >= 0 else "//")
            else:
                bars = ax.bar(xs, np.nan_to_num(mu), width, color=PALETTE[gi % len(PALETTE)],
                              hatch=HATCHES[gi % len(HATCHES)], edgecolor="black", linewidth=0.5,
                              label=grp.legend)
            err = np.isfinite(lo)
            if err.any():  # a white halo under a dark bar keeps the whisker visible on dark bars too
                yerr = [mu[err] - lo[err], hi[err] - mu[err]]
                ax.errorbar(xs[err], mu[err], yerr=yerr, fmt="none", ecolor="white", elinewidth=2.4, capsize=3,
                            capthick=2.4)
                ax.errorbar(xs[err], mu[err], yerr=yerr, fmt="none", ecolor="0.15", elinewidth=0.9, capsize=2.5)
            if label_bars:
                for xv, v in zip(xs, mu):
                    if np.isfinite(v):
                        ax.annotate(signed(v), (xv, v), ha="center", va="bottom" if v >= 0 else "top",
                                    fontsize=6.5, xytext=(0, 2 if v >= 0 else -2), textcoords="offset points")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, buckets, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(-lim, lim)
        ax.set_title(f"generation {g}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if k % ncol == 0:
            ax.set_ylabel("over(+) / under(−) (%)")
        if k + ncol >= len(gens):  # the lowest panel of its column
            ax.set_xlabel("frequency rank in the real text (bucket)", fontsize=8)
    for k in range(len(gens), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    suptitle(fig, f"Generated vs real token frequencies by rank bucket: {compared_text(groups)}"
              + ("" if not whiskers else " (whiskers: 95% interval inside the run)" if single and len(groups[0].runs) == 1
                 else " (whiskers: 95% t-interval over seeds)"), fontsize=10)
    if not single:
        legend_below(fig, axes)
    return save_figure(fig, out, "bucket-shift")


def fig_diversity(groups: list[Group], out: Path) -> Path:
    plt = mpl()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained")
    panels = [("coverage", 100.0, "coverage of real token types (%)", "Share of the real text's types generated"),
              ("entropy", 1.0, "unigram entropy (bits)", "Entropy of generated tokens"),
              ("kl_ref_gen", 1.0, "KL(real ‖ generated) (bits)", "Divergence from the real unigram distribution")]
    for ax, (key, scale, ylabel, title) in zip(axes, panels):
        for i, g in enumerate(groups):
            draw_line(ax, g, i, metric_getter(key), scale, of=len(groups))
        if key == "entropy":
            refs = [r.get("entropy_ref") for g in groups for run in g.runs for r in run.rows]
            refs = [v for v in refs if isinstance(v, (int, float))]
            if refs:
                ax.axhline(float(np.mean(refs)), color="0.4", linestyle=(0, (1, 1)), linewidth=1.2,
                           label="real text (reference)")
        int_xaxis(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
    suptitle(fig, f"Diversity of generated text by generation: {compared_text(groups)}", fontsize=10)
    legend_below(fig, axes, ncol=min(4, len(groups) + 1))
    return save_figure(fig, out, "diversity")
