"""The report's distribution figures: per-sample perplexity under the generation-0 model (``gen0-ppl``) and
rank-frequency of token types (``zipf``), for selected generations; both read files of the run folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from collapse.loop.rundir import gen_dir
from collapse.report.plots import gen_style, mpl, ncols, pick_generations, save_figure, suptitle, wrap_text
from collapse.report.runs import Group, Run

# ---------------------------------------------------------------------- gen0-ppl


def _gen0_ppl(run: Run, g: int) -> np.ndarray | None:
    """Generation g's per-sample perplexities under the generation-0 model (finite, positive), None if unreadable."""
    p = gen_dir(run.path, g) / "gen0_ppl.npy"
    if not p.is_file():
        return None
    try:
        a = np.asarray(np.load(p, allow_pickle=False), dtype=np.float64).ravel()
    except (ValueError, OSError):
        return None
    return a[np.isfinite(a) & (a > 0)]


def fig_gen0_ppl(groups: list[Group], out: Path) -> Path | None:
    """Histograms of each sample's perplexity under the generation-0 model, overlaid per generation."""
    plt = mpl()
    panels = []  # per group: {gen: (edges, share%)}
    for grp in groups:
        gens = pick_generations([g for r in grp.runs for g in r.gens])
        data: dict[int, Any] = {}
        for g in gens:
            arrays = [a for r in grp.runs if (a := _gen0_ppl(r, g)) is not None and a.size]
            if arrays:
                data[g] = np.concatenate(arrays)
                continue
            hists = [(r.row(g) or {}).get("gen0_ppl_hist") for r in grp.runs]
            hists = [h for h in hists if h and h.get("edges") and h.get("counts")]
            if hists:  # no per-sample file: the histogram stored in metrics.jsonl (pooled over seeds)
                edges = np.asarray(hists[0]["edges"], dtype=np.float64)
                counts = np.sum([np.asarray(h["counts"], dtype=np.float64) for h in hists
                                 if len(h["counts"]) == len(edges) - 1], axis=0)
                data[g] = (edges, counts)
        panels.append(data)
    samples = [v for d in panels for v in d.values() if isinstance(v, np.ndarray)]
    if not any(panels):
        return None
    if samples:
        lo = min(float(np.quantile(a, 0.002)) for a in samples)
        hi = max(float(np.quantile(a, 0.998)) for a in samples)
        lo, hi = max(lo * 0.9, 1.0), max(hi * 1.1, lo * 1.5 + 1)
        n = min(len(a) for a in samples)
        bins = np.logspace(np.log10(lo), np.log10(hi), int(np.clip(np.sqrt(n), 12, 40)) + 1)
    ncol = ncols(len(groups), 2)
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.3 * nrow + 0.6), layout="constrained",
                             squeeze=False, sharex=True)
    span = (math.inf, 0.0)  # x range holding data: the stored histograms run over 1..10^4
    for k, (grp, data) in enumerate(zip(groups, panels)):
        ax = axes[k // ncol][k % ncol]
        for i, (g, v) in enumerate(sorted(data.items())):
            st = gen_style(i, len(data))
            if isinstance(v, np.ndarray):
                counts, edges = np.histogram(np.clip(v, bins[0], bins[-1]), bins=bins)
                med = float(np.median(v))
            else:
                edges, counts = v
                cdf = np.cumsum(counts) / max(counts.sum(), 1)
                j = int(np.searchsorted(cdf, 0.5))
                med = float(np.sqrt(edges[j] * edges[j + 1])) if counts.sum() else float("nan")
            share = 100 * counts / max(counts.sum(), 1)
            centers = np.sqrt(edges[:-1] * edges[1:])
            nz = np.flatnonzero(counts)
            if nz.size:
                span = (min(span[0], edges[nz[0]]), max(span[1], edges[nz[-1] + 1]))
            ax.stairs(share, edges, color=st["color"], linestyle=st["linestyle"], linewidth=1.5)
            ax.plot(centers, share, linestyle="none", marker=st["marker"], color=st["color"], markersize=3.5,
                    markevery=max(1, len(centers) // 8))
            ax.plot([], [], color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                    label=f"gen {g} (median {med:.0f})")
            ax.axvline(med, color=st["color"], linestyle=st["linestyle"], linewidth=0.8, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("perplexity of a sample under the generation-0 model (log scale)", fontsize=8)
        if k % ncol == 0:
            ax.set_ylabel("share of samples (%)")
        ax.set_title(wrap_text(grp.legend + (" — seeds pooled" if len(grp.runs) > 1 else ""), 4.6, 9), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, loc="best")
    if span[1] > span[0]:
        axes[0][0].set_xlim(span[0] / 1.15, span[1] * 1.15)
    for k in range(len(groups), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    suptitle(fig, "How plausible each generation's samples look to the original model "
                 "(left = more typical; vertical lines: medians)", fontsize=10)
    return save_figure(fig, out, "gen0-ppl")



# ---------------------------------------------------------------------- zipf


def _sample_counts(run: Run, g: int) -> np.ndarray | None:
    """Count of each token id in generation g's samples, None if there are none or the file is unreadable."""
    p = gen_dir(run.path, g) / "samples.parquet"
    if not p.is_file():
        return None
    try:
        import pyarrow.parquet as pq

        col = pq.read_table(p, columns=["token_ids"]).column("token_ids").combine_chunks()
        ids = col.values.to_numpy(zero_copy_only=False).astype(np.int64)
    except Exception:  # noqa: BLE001 - a damaged parquet costs one curve, not the report
        return None
    ids = ids[ids >= 0]
    return np.bincount(ids) if ids.size else None


def _rank_freq(c: np.ndarray) -> np.ndarray:
    """Shares of the types seen, most frequent first."""
    c = np.sort(c[c > 0])[::-1].astype(np.float64)
    return c / c.sum()


def fig_zipf(groups: list[Group], out: Path) -> Path | None:
    """Rank-frequency of the real text and selected generations, and below it their ratio at equal rank."""
    plt = mpl()
    ncol = ncols(len(groups), 2)
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(2 * nrow, ncol, figsize=(5.2 * ncol, 4.8 * nrow + 0.5), layout="constrained",
                             squeeze=False, sharex=True, gridspec_kw={"height_ratios": [2.4, 1] * nrow})
    drawn = False
    for k, grp in enumerate(groups):
        ax, rax = axes[2 * (k // ncol)][k % ncol], axes[2 * (k // ncol) + 1][k % ncol]
        run = grp.runs[0]
        ref_f = None
        ref_p = run.path / "reference_counts.npy"
        if ref_p.is_file():
            try:
                ref = np.asarray(np.load(ref_p, allow_pickle=False)).astype(np.int64).ravel()
                ref_f = _rank_freq(ref)
                ax.loglog(np.arange(1, len(ref_f) + 1), ref_f, color="black", linewidth=2.4,
                          label=f"real text ({int(ref.sum()):,} tokens)")
                rax.axhline(1.0, color="black", linewidth=2.0)
                drawn = True
            except (ValueError, OSError):
                ref_f = None
        gens = pick_generations(run.gens, 4)
        for i, g in enumerate(gens):
            c = _sample_counts(run, g)
            if c is None:
                continue
            f = _rank_freq(c)
            st = gen_style(i, len(gens))
            ranks = np.arange(1, len(f) + 1)
            ax.loglog(ranks, f, linewidth=1.3, markersize=4, markevery=0.1,
                      label=f"generation {g} ({int(c.sum()):,} tokens)", **st)
            if ref_f is not None:  # per-rank ratios are count noise; bins of log rank keep the trend
                m = min(len(f), len(ref_f))
                edges = np.unique(np.geomspace(1, m + 1, 16).astype(int))
                share = np.add.reduceat(f[:m], edges[:-1] - 1) / np.add.reduceat(ref_f[:m], edges[:-1] - 1)
                rax.plot(np.sqrt(edges[:-1] * np.maximum(edges[1:] - 1, edges[:-1])), share, linewidth=1.1,
                         markersize=3.5, **st)
            drawn = True
        if k % ncol == 0:
            ax.set_ylabel("share of tokens (log)")
            rax.set_ylabel("share vs real\n(ratio, by rank range)")
        rax.set_xlabel("rank of the token type (log)", fontsize=8)
        rax.set_xscale("log")
        for a in (ax, rax):
            a.minorticks_off()  # log-scale minor ticks cost seconds per figure and add no reading
        rax.grid(alpha=0.3, which="major")
        ax.set_title(wrap_text(f"{grp.legend} — run {run.name}" if len(groups) > 1 else f"run {run.name}", 4.6, 9),
                     fontsize=9)
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=7, frameon=False, loc="lower left")
    for k in range(len(groups), nrow * ncol):
        axes[2 * (k // ncol)][k % ncol].set_visible(False)
        axes[2 * (k // ncol) + 1][k % ncol].set_visible(False)
    if not drawn:
        plt.close(fig)
        return None
    suptitle(fig, "Rank–frequency (Zipf) of the real text and of generated samples (generated curves end "
                   "earlier: far fewer tokens)", fontsize=9)
    return save_figure(fig, out, "zipf")
