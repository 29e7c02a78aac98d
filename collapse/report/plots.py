"""What the figures share: matplotlib (imported on first use, headless), styles, palette, legends, saving.

matplotlib is imported inside the functions (:func:`mpl`), so that importing the report package stays light.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from collapse.io import atomic_path
from collapse.report.runs import Group
from collapse.report.seeds import series, t975

# Okabe-Ito, reordered so the first colours are the most distinct on white; yellow last (weak on white).
PALETTE = ("#000000", "#E69F00", "#0072B2", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "--", "++")
OVER, UNDER = "#2166ac", "#b2182b"  # bucket-shift bars of one run: over-represented blue, under red (hatched)
MAX_CURVES = 6  # generations drawn in the per-generation overlays (histograms, Zipf): more become unreadable
DPI = 110
# matplotlib settings of the report's figures (measure's bucket-shift figure keeps matplotlib's defaults)
RC = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
      "xtick.labelsize": 8, "ytick.labelsize": 8, "svg.hashsalt": "collapse-report"}


def mpl():
    """matplotlib.pyplot on the headless Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(i: int) -> dict:
    """Group ``i``'s colour, line style and marker (told apart without colour too)."""
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)]}


def gen_style(i: int, n: int) -> dict:
    """Ordered generations: viridis (monotone in lightness, colour-blind safe), cut before its pale yellow end."""
    import matplotlib

    c = matplotlib.colormaps["viridis"](0.78 * i / max(n - 1, 1))
    return {"color": c, "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def draw_line(ax, group: Group, i: int, value: Callable[[dict], Any], scale: float = 1.0, of: int = 1,
          paired: bool = False) -> bool:
    """Mean line of group ``i`` of ``of``, nudged sideways a little so equal values do not hide each other."""
    gens, mean, lo, hi, _ = series(group, value, paired)
    if len(gens) == 0:
        return False
    st = _style(i)
    x = gens + (0.0 if of < 2 else (i - (of - 1) / 2) * min(0.06, 0.25 / of))
    ax.plot(x, mean * scale, label=group.legend, linewidth=1.6, markersize=5, **st)
    band = np.isfinite(lo)
    if band.any():
        ax.fill_between(x[band], lo[band] * scale, hi[band] * scale, color=st["color"], alpha=0.18, linewidth=0)
    return True


def int_xaxis(ax, label: str = "generation") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def compared_text(groups: list[Group]) -> str:
    if len(groups) == 1:
        g = groups[0]
        return g.label if len(g.runs) == 1 else f"mean of {len(g.runs)} seeds"
    s = " vs ".join(g.label for g in groups)
    if len(s) <= 90:
        return s
    keys = list(groups[0].diff)
    return f"{len(groups)} configurations of {keys[0]}" if len(keys) == 1 else f"{len(groups)} configurations"


def wrap_text(text: str, width_in: float, fontsize: float = 8) -> str:
    """Wrap text to a width in inches (about 0.55 em per character)."""
    return textwrap.fill(text, max(12, int(width_in * 72 / (0.55 * fontsize))))


def legend_below(fig, axes, ncol: int | None = None) -> None:
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        # as many columns as fit the figure's width; labels longer than a column wrap
        longest = max(len(lab) for lab in labels)
        fit = max(1, int(fig.get_figwidth() / (0.06 * min(longest, 70) + 0.6)))
        ncol = max(1, min(ncol or 3, len(labels), fit))
        col_in = fig.get_figwidth() / ncol - 0.6
        fig.legend(handles, [wrap_text(lab, col_in) for lab in labels], loc="outside lower center", ncol=ncol,
                   frameon=False, fontsize=8)


def ncols(n: int, most: int) -> int:
    """Columns for n panels, at most ``most``, rows filled evenly (4 panels: 2 × 2, not 3 + 1)."""
    return max(1, math.ceil(n / math.ceil(n / most))) if n else 1


def signed(v: float) -> str:
    return "0.0" if round(v, 1) == 0 else f"{v:+.1f}"


def suptitle(fig, text: str, fontsize: float = 10) -> None:
    """A figure title wrapped to the figure's width (long titles must not run off a narrow figure)."""
    width = int(fig.get_figwidth() * 72 / (0.55 * fontsize))  # ~0.55 em per character
    fig.suptitle(textwrap.fill(text, width), fontsize=fontsize)


# what save_figure writes unless told: PNG and SVG; `collapse run`'s own report, PNG alone (make_report's vector)
FORMATS: ContextVar[tuple[str, ...]] = ContextVar("collapse_figure_formats", default=("png", "svg"))


def save_figure(fig, out: Path, stem: str) -> Path:
    """Write ``stem.png`` and ``stem.svg`` (no date in the SVG: the same figure gives the same file); with
    :data:`FORMATS` set to ("png",), the PNG alone, and an older ``stem.svg`` is removed, so a page never links a
    vector figure of other data (the SVG costs as much as the PNG or more: docs/benchmarks.md)."""
    plt = mpl()
    formats = FORMATS.get()
    if "svg" not in formats:
        (out / f"{stem}.svg").unlink(missing_ok=True)
    for ext in formats:
        with atomic_path(out / f"{stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=DPI, metadata={"Date": None} if ext == "svg" else None)
    plt.close(fig)
    return out / f"{stem}.png"


def band_note(groups: list[Group]) -> str:
    """What the shaded bands are (the seed counts and the t factor), or "" when no group has several seeds."""
    ns = sorted({len(g.runs) for g in groups if len(g.runs) > 1})
    single = any(len(g.runs) == 1 for g in groups)
    own = "95% interval inside the run (over its samples or test blocks)" if single else ""
    if not ns:
        return f"Shaded: {own}." if own else ""
    return (f"Shaded: 95% t-interval over seeds (n={'/'.join(map(str, ns))}; "
            f"t={t975(ns[0] - 1):.1f}{' — wide with so few seeds' if ns[0] <= 3 else ''})"
            + (f"; one run: {own}." if own else "."))


def pick_generations(gens: list[int], k: int = MAX_CURVES) -> list[int]:
    """Up to k generations, always the first and the last, the rest evenly spaced."""
    gens = sorted(set(gens))
    if len(gens) <= k:
        return gens
    idx = np.unique(np.round(np.linspace(0, len(gens) - 1, k)).astype(int))
    return [gens[i] for i in idx]
