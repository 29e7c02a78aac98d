"""Plots and the HTML report from one or more run folders (matplotlib, headless).

    collapse report RUN_DIR [RUN_DIR ...] [--out DIR]

:func:`make_report` reads each run folder (``config.yaml``, ``manifest.json``, ``metrics.jsonl``,
``reference_counts.npy``, ``gen_NNN/samples.parquet``, ``gen_NNN/gen0_ppl.npy``) and writes into ``out``
(default ``RUN_DIR/report`` for one run, ``./report`` for several):

* ``report.html``: the figures (PNG files beside it, referenced relatively; no network needed), the metrics of
  every generation as a table, example samples from the same real prompt in every generation, each run's config;
* every figure as PNG and SVG: ``test-ppl``, ``tail-loss``, ``bucket-heatmap``, ``bucket-shift``, ``gen0-ppl``,
  ``diversity``, ``zipf``.

Runs whose configs agree except for ``seed`` (and ``out_dir``, ``wandb.*``, ``resume``, ``overwrite``) form a
group, drawn as the mean over seeds with a 95% t-interval band; groups are labelled by the config keys in which
they differ (``regime.kind=accumulate``). A key that only some configs have (runs written by an older version)
does not split a group; the page lists such keys.

A figure that cannot be drawn (missing files, odd data) is named in the page with the reason; the rest is written.

Exit codes
----------
0  the report was written. A run still in progress, or stopped early, gives a report marked
   ``partial: generations 0..k of N finished`` (also a 0: what is there is drawn).
2  bad input, raised as :class:`collapse.errors.DataError` (the CLI prints one line ``error: ...``): a folder
   that is not a run (no ``config.yaml`` / ``metrics.jsonl``), a run with no finished generation, an unreadable
   ``config.yaml`` or ``metrics.jsonl``, runs measured with different frequency buckets.
"""

from __future__ import annotations

import copy
import html
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from collapse.errors import DataError

log = logging.getLogger("collapse")

# Config keys that do not make two runs different experiments (a seed is a repeat, not a condition).
IGNORED_KEYS = ("seed", "out_dir", "wandb", "resume", "overwrite")
# Okabe-Ito, reordered so the first colours are the most distinct on white; yellow last (weak on white).
PALETTE = ("#000000", "#E69F00", "#0072B2", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "--", "++")
FIGURES = ("test-ppl", "tail-loss", "bucket-heatmap", "bucket-shift", "gen0-ppl", "diversity", "zipf")
MAX_CURVES = 6  # generations drawn in the per-generation overlays (histograms, Zipf): more become unreadable
EXAMPLES = 3  # example prompts per run
DPI = 110
# Two-sided 97.5% quantiles of Student's t, df = 1..30 (above: 1.96 + 2.4/df is within 0.003).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------- measure's figure


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


# ---------------------------------------------------------------------- reading run folders


@dataclass
class Run:
    """One run folder as the report sees it: its config, manifest and finished metrics rows."""

    path: Path
    name: str
    config: dict
    config_text: str
    manifest: dict
    rows: list[dict]  # one per finished generation, sorted by generation
    buckets: tuple[str, ...]  # bucket names in the order of the metrics rows

    @property
    def gens(self) -> list[int]:
        return [r["generation"] for r in self.rows]

    @property
    def planned(self) -> int | None:
        """Last generation the config asks for (``generations``), None when the config does not say."""
        g = self.config.get("generations")
        return g if isinstance(g, int) and not isinstance(g, bool) else None

    @property
    def partial(self) -> bool:
        if self.manifest.get("complete") is False:
            return True
        return self.planned is not None and not set(range(self.planned + 1)) <= set(self.gens)

    def partial_note(self) -> str:
        gens = self.gens
        done = f"0..{gens[-1]}" if gens == list(range(gens[-1] + 1)) else ", ".join(map(str, gens))
        total = "?" if self.planned is None else str(self.planned)
        planned = "" if self.planned is None else f"; the config asks for generations 0..{self.planned}"
        return f"partial: generations {done} of {total} finished (run {self.name}{planned})"

    def row(self, g: int) -> dict | None:
        return next((r for r in self.rows if r["generation"] == g), None)


def load_run(path: str | Path) -> Run:
    """Read a run folder; :class:`DataError` (one line) when it is not a run or has no finished generation."""
    import yaml

    from collapse.io import read_json

    path = Path(path)
    cfg_p, met_p, man_p = path / "config.yaml", path / "metrics.jsonl", path / "manifest.json"
    if not path.is_dir():
        raise DataError(f"{path} is not a folder: pass the out_dir of a `collapse run`.")
    if not cfg_p.is_file():
        inner = sorted(d.name for d in path.iterdir() if (d / "config.yaml").is_file()
                       and ((d / "metrics.jsonl").is_file() or (d / "manifest.json").is_file()))
        hint = (f"; it holds {len(inner)} run folder(s) ({', '.join(inner[:3])}{', …' if len(inner) > 3 else ''}): "
                f"pass them, e.g. `collapse report {path}/*`" if inner else ": pass the out_dir of a `collapse run`")
        raise DataError(f"{path} is not a run folder (no config.yaml){hint}.")
    text = cfg_p.read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{cfg_p} is not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(config, dict):
        raise DataError(f"{cfg_p} is not a mapping of config keys.")
    manifest: dict = {}
    if man_p.is_file():
        try:
            manifest = read_json(man_p)
        except (ValueError, OSError):
            manifest = {}  # the report does not need it; partial runs are still detected from the config
        manifest = manifest if isinstance(manifest, dict) else {}
    if not met_p.is_file():
        if man_p.is_file():
            raise DataError(f"{path} has no finished generation yet (no metrics.jsonl): wait for generation 0 "
                            "to be measured.")
        raise DataError(f"{path} is not a run folder (no metrics.jsonl): pass the out_dir of a `collapse run`.")
    by_gen: dict[int, dict] = {}
    for i, line in enumerate(met_p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{met_p}:{i} is not valid JSON ({e.msg}).") from None
        g = row.get("generation") if isinstance(row, dict) else None
        if not isinstance(g, int) or isinstance(g, bool) or g < 0:
            raise DataError(f"{met_p}:{i} has no integer 'generation'.")
        by_gen[g] = row  # a rewritten generation: the last row wins
    if not by_gen:
        raise DataError(f"{path} has no finished generation yet (metrics.jsonl is empty).")
    rows = [by_gen[g] for g in sorted(by_gen)]
    schemes = {_bucket_keys(r) for r in rows}
    if len(schemes) > 1:
        raise DataError(f"{met_p} mixes frequency-bucket schemes between generations: "
                        + " vs ".join(", ".join(s) for s in schemes) + ".")
    buckets = _bucket_keys(rows[0])
    name = path.resolve().name or str(path)
    return Run(path=path, name=name, config=config, config_text=text, manifest=manifest, rows=rows, buckets=buckets)


def _bucket_keys(row: dict) -> tuple[str, ...]:
    keys: list[str] = []
    for field_ in ("bucket_shift", "tail_loss"):
        for k in (row.get(field_) or {}):
            if k not in keys:
                keys.append(k)
    return tuple(keys)


def _check_buckets(runs: list[Run]) -> tuple[str, ...]:
    first = runs[0]
    for r in runs[1:]:
        if set(r.buckets) != set(first.buckets):
            raise DataError(f"runs use different frequency buckets: {first.path} has {', '.join(first.buckets)}; "
                            f"{r.path} has {', '.join(r.buckets)}. Report them separately.")
    return first.buckets


def _unique_names(runs: list[Run]) -> None:
    """Two runs named alike (a/seed0, b/seed0) are told apart by their parent folder."""
    counts = defaultdict(int)
    for r in runs:
        counts[r.name] += 1
    for r in runs:
        if counts[r.name] > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"


# ---------------------------------------------------------------------- grouping by config


def _strip(config: dict) -> dict:
    c = copy.deepcopy(config)
    for k in IGNORED_KEYS:
        c.pop(k, None)
    return c


def _dotted(config: dict, key: str) -> Any:
    cur: Any = config
    for part in key.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


@dataclass
class Group:
    """Runs that differ only by seed; ``label`` names what sets the group apart from the others."""

    runs: list[Run]
    label: str = ""
    diff: dict[str, Any] = field(default_factory=dict)  # the differing keys with this group's values

    @property
    def seeds(self) -> list:
        return [r.config.get("seed") for r in self.runs]

    @property
    def legend(self) -> str:
        s = self.label
        if len(self.runs) > 1:
            s += f" (n={len(self.runs)} seeds)"
        if any(r.partial for r in self.runs):
            s += " [partial]"
        return s


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def group_runs(runs: list[Run]) -> list[Group]:
    """Group runs whose configs agree once seed, out_dir, wandb.*, resume and overwrite are removed.

    Only keys every run's config has are compared: a run written before a key existed cannot have set it, so
    a key missing from some configs (an older version of the package) does not split a group by itself.
    """
    flat = [_flatten(_strip(r.config)) for r in runs]
    common = set(flat[0]).intersection(*flat[1:])
    keyed: dict[str, Group] = {}
    values: dict[str, dict] = {}
    for r, f in zip(runs, flat):
        v = {k: f[k] for k in sorted(common)}
        key = json.dumps(v, sort_keys=True, default=str)
        if key not in keyed:
            keyed[key] = Group(runs=[])
            values[key] = v
        keyed[key].runs.append(r)
    groups = list(keyed.values())
    vals = list(values.values())
    diff_keys = [k for k in sorted(common) if len({json.dumps(v[k], default=str) for v in vals}) > 1]
    for grp, v in zip(groups, vals):
        grp.diff = {k: v[k] for k in diff_keys}
        if len(groups) == 1:
            grp.label = grp.runs[0].name if len(grp.runs) == 1 else ", ".join(r.name for r in grp.runs)
        else:
            parts = [f"{k}={_short(x)}" for k, x in grp.diff.items()]
            grp.label = ", ".join(parts[:3]) + (f" (+{len(parts) - 3} more)" if len(parts) > 3 else "")
    return groups


def _schema_drift(runs: list[Run]) -> list[str]:
    """Config keys some runs have and others lack (runs made by different versions of the package)."""
    flat = [set(_flatten(_strip(r.config))) for r in runs]
    return sorted(set().union(*flat) - set(flat[0]).intersection(*flat[1:]))


def _short(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s if len(s) <= 40 else "…" + s[-39:]


def _t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def series(group: Group, value: Callable[[dict], Any], paired: bool = False) -> tuple[np.ndarray, ...]:
    """Per generation: mean over the group's runs, 95% t-interval (lo, hi; NaN where n < 2) and n.

    ``paired``: each run's value minus its own generation 0's, so differences between the seeds'
    generation-0 models drop out of the interval.
    """
    by_gen: dict[int, list[float]] = defaultdict(list)
    for run in group.runs:
        base = _num(value(run.row(0) or {})) if paired else 0.0
        if base is None:
            continue
        for row in run.rows:
            v = _num(value(row))
            if v is not None:
                by_gen[row["generation"]].append(v - base)
    gens = np.array(sorted(by_gen), dtype=np.int64)
    mean, lo, hi, n = (np.full(len(gens), np.nan) for _ in range(4))
    for i, g in enumerate(gens):
        c = _ci(by_gen[g])
        mean[i], n[i] = c["mean"], c["n"]
        if c["ci95"] is not None:
            lo[i], hi[i] = mean[i] - c["ci95"], mean[i] + c["ci95"]
    return gens, mean, lo, hi, n


def _ci(values: list[float]) -> dict:
    """Mean, 95% t-interval half-width (None for n < 2), n, and the values themselves."""
    a = np.asarray(values, dtype=np.float64)
    half = _t975(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)) if len(a) >= 2 else None
    return {"mean": float(a.mean()), "ci95": None if half is None else float(half), "n": int(len(a)),
            "values": [float(v) for v in a]}


def summary_metrics(tail_buckets: list[str], shift_buckets: list[str]) -> list[tuple[str, str, str]]:
    """(key, label, number format) of the last-generation summary; keys are dotted metrics.jsonl keys."""
    out = [("test_ppl", "test ppl", ".2f")]
    out += [(f"bucket_shift.{b}", f"shift {b} (%)", ".1f") for b in shift_buckets]
    out += [(f"tail_loss.{b}", f"NLL {b}", ".3f") for b in tail_buckets]
    out += [("entropy", "entropy (bits)", ".3f"), ("coverage", "coverage", ".4f"), ("kl_ref_gen", "KL(real‖gen)", ".4f")]
    return out


def _num(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def summarize(groups: list[Group], tail_buckets: list[str], shift_buckets: list[str]) -> list[dict]:
    """Per seed group, at the last generation every run of the group finished: mean ± 95% t-interval over seeds
    of each metric (``metrics``) and of its change from generation 0 (``changes``).

    Changes are paired: each run's value minus its own generation 0's (seeds differ in their generation-0
    model too, which the absolute values carry), then averaged over the group.
    """
    out = []
    for grp in groups:
        last = min(r.gens[-1] for r in grp.runs)
        entry = {"group": grp.legend, "diff": {k: grp.diff[k] for k in grp.diff}, "generation": last,
                 "seeds": grp.seeds, "runs": [str(r.path) for r in grp.runs], "metrics": {}, "changes": {}}
        for key, label, fmt in summary_metrics(tail_buckets, shift_buckets):
            get = _get(key)
            now = [(_num(get(r.row(last) or {})), _num(get(r.row(0) or {}))) for r in grp.runs]
            vals = [v for v, _ in now if v is not None]
            diffs = [v - v0 for v, v0 in now if v is not None and v0 is not None]
            if vals:
                entry["metrics"][key] = {"label": label, "format": fmt, **_ci(vals)}
            if diffs and last > 0:
                entry["changes"][key] = {"label": "Δ " + label, "format": fmt, **_ci(diffs)}
        out.append(entry)
    return out


def _pm(m: dict | None, signed: bool = False) -> str:
    if m is None:
        return "—"
    spec = ("+" if signed else "") + m["format"]
    return f"{m['mean']:{spec}}" + ("" if m["ci95"] is None else f" ± {m['ci95']:{m['format']}}")


def _summary_tables(summary: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the two summary tables: values at the last generation, changes from gen 0."""
    tables = []
    for part, title in (("metrics", "at the last generation"), ("changes", "change from generation 0 (paired)")):
        keys = list(dict.fromkeys(k for e in summary for k in e[part]))
        if not keys:
            continue
        labels = {k: e[part][k]["label"] for e in summary for k in e[part]}
        rows = [[e["group"], str(e["generation"]), str(max((m["n"] for m in e[part].values()), default=0))]
                + [_pm(e[part].get(k), signed=part == "changes") for k in keys] for e in summary]
        tables.append((title, ["group", "gen", "n"] + [labels[k] for k in keys], rows))
    return tables


def summary_markdown(summary: list[dict]) -> str:
    """The summary as Markdown tables (groups as rows), as ``docs/results.md`` quotes them."""
    parts = []
    for title, head, rows in _summary_tables(summary):
        parts.append(f"**{title}**\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
                     + "".join("| " + " | ".join(r) + " |\n" for r in rows))
    return "\n".join(parts) + "\nmean ± half-width of the 95% t-interval over seeds (none for one seed).\n"


def _summary_html(summary: list[dict]) -> str:
    esc = html.escape
    parts = ['<h2 id="summary">Last generation, mean ± 95% CI over seeds</h2><p class="note">At the last '
             "generation every run of a group finished; ± is the half-width of the 95% t-interval over seeds. "
             "Changes are paired: each run against its own generation 0 (the seeds' generation-0 models differ "
             "too). Also in <code>summary.json</code> and <code>summary.md</code>.</p>"]
    for title, head, rows in _summary_tables(summary):
        parts.append(f"<h3>{esc(title[0].upper() + title[1:])}</h3>"
                     '<div class="scroll"><table class="summary"><thead><tr>'
                     + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
                     + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
                     + "</tbody></table></div>")
    return "".join(parts)


# ---------------------------------------------------------------------- figures


def _get(key: str) -> Callable[[dict], Any]:
    """A getter for a dotted metrics key: ``tail_loss.1-10`` (buckets contain dots? no; split once)."""
    if "." in key:
        top, sub = key.split(".", 1)
        return lambda r: (r.get(top) or {}).get(sub)
    return lambda r: r.get(key)


def _present(groups: list[Group], fld: str, buckets: tuple[str, ...]) -> list[str]:
    """Buckets with at least one value in ``fld`` (``10001+`` with a 4k vocabulary, ``unseen`` shift: dropped)."""
    return [b for b in buckets
            if any(isinstance((r.get(fld) or {}).get(b), (int, float)) for g in groups for run in g.runs
                   for r in run.rows)]


def _style(i: int) -> dict:
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)]}


def _gen_style(i: int, n: int) -> dict:
    """Ordered generations: viridis (monotone in lightness, colour-blind safe), cut before its pale yellow end."""
    import matplotlib

    c = matplotlib.colormaps["viridis"](0.78 * i / max(n - 1, 1))
    return {"color": c, "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def _line(ax, group: Group, i: int, value: Callable[[dict], Any], scale: float = 1.0, of: int = 1,
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


def _int_xaxis(ax, label: str = "generation") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def _compared(groups: list[Group]) -> str:
    if len(groups) == 1:
        g = groups[0]
        return g.label if len(g.runs) == 1 else f"mean of {len(g.runs)} seeds"
    s = " vs ".join(g.label for g in groups)
    if len(s) <= 90:
        return s
    keys = list(groups[0].diff)
    return f"{len(groups)} configurations of {keys[0]}" if len(keys) == 1 else f"{len(groups)} configurations"


def _wrap(text: str, width_in: float, fontsize: float = 8) -> str:
    """Wrap text to a width in inches (about 0.55 em per character)."""
    import textwrap

    return textwrap.fill(text, max(12, int(width_in * 72 / (0.55 * fontsize))))


def _legend_below(fig, axes, ncol: int | None = None) -> None:
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
        fig.legend(handles, [_wrap(lab, col_in) for lab in labels], loc="outside lower center", ncol=ncol,
                   frameon=False, fontsize=8)


def _ncols(n: int, most: int) -> int:
    """Columns for n panels, at most ``most``, rows filled evenly (4 panels: 2 × 2, not 3 + 1)."""
    return max(1, math.ceil(n / math.ceil(n / most))) if n else 1


def _signed(v: float) -> str:
    return "0.0" if round(v, 1) == 0 else f"{v:+.1f}"


def _suptitle(fig, text: str, fontsize: float = 10) -> None:
    """A figure title wrapped to the figure's width (long titles must not run off a narrow figure)."""
    import textwrap

    width = int(fig.get_figwidth() * 72 / (0.55 * fontsize))  # ~0.55 em per character
    fig.suptitle(textwrap.fill(text, width), fontsize=fontsize)


def _save(fig, out: Path, stem: str) -> Path:
    from collapse.io import atomic_path

    plt = _mpl()
    for ext in ("png", "svg"):
        with atomic_path(out / f"{stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=DPI, metadata={"Date": None} if ext == "svg" else None)
    plt.close(fig)
    return out / f"{stem}.png"


def _band_note(groups: list[Group]) -> str:
    ns = sorted({len(g.runs) for g in groups if len(g.runs) > 1})
    if not ns:
        return ""
    return (f"Shaded: 95% t-interval over seeds (n={'/'.join(map(str, ns))}; "
            f"t={_t975(ns[0] - 1):.1f}{' — wide with so few seeds' if ns[0] <= 3 else ''}).")


def fig_test_ppl(groups: list[Group], out: Path) -> Path:
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    ax, dax = axes
    for i, g in enumerate(groups):
        _line(ax, g, i, _get("test_ppl"), of=len(groups))
        _line(dax, g, i, _get("test_ppl"), of=len(groups), paired=True)
    for a in axes:
        _int_xaxis(a)
    ax.set_ylabel("perplexity on real test text\n(exp of mean NLL in nats/token; lower is better)")
    ax.set_title("value")
    dax.axhline(0.0, color="0.5", linewidth=0.8)
    dax.set_ylabel("change from the run's own generation 0")
    dax.set_title("change from generation 0 (paired per run)")
    _suptitle(fig, f"Test perplexity by generation: {_compared(groups)}", fontsize=10)
    note = _band_note(groups)
    if note:
        dax.text(0.99, 0.02, note, transform=dax.transAxes, ha="right", va="bottom", fontsize=7, color="0.3")
    _legend_below(fig, list(axes))
    return _save(fig, out, "test-ppl")


_BUCKET_TITLES = {"1-10": "ranks 1-10 (most frequent types)", "11-100": "ranks 11-100", "101-1000": "ranks 101-1000",
                  "1001-10000": "ranks 1001-10000 (rare types)", "10001+": "ranks 10001+ (rarest types)",
                  "unseen": "unseen in the real training text"}
_RARE = {"1001-10000", "10001+", "unseen"}


def fig_tail_loss(groups: list[Group], buckets: list[str], out: Path) -> Path:
    plt = _mpl()
    ncol = _ncols(len(buckets), 3)
    nrow = math.ceil(len(buckets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow + 0.6), layout="constrained", squeeze=False)
    tokens = groups[0].runs[0].rows[0].get("tail_tokens") or {}
    # with several seeds, the seeds' generation-0 models differ more than the generations do: draw each
    # run's change from its own generation 0 (the tail-loss *curve*), so the bands show the effect's spread
    paired = any(len(g.runs) > 1 for g in groups)
    for k, b in enumerate(buckets):
        ax = axes[k // ncol][k % ncol]
        for i, g in enumerate(groups):
            _line(ax, g, i, _get(f"tail_loss.{b}"), of=len(groups), paired=paired)
        if paired:
            ax.axhline(0.0, color="0.5", linewidth=0.8)
        _int_xaxis(ax)
        n = tokens.get(b)
        title = _BUCKET_TITLES.get(b, b) + (f"\n{n:,} test tokens" if isinstance(n, int) else "")
        ax.set_title(title, fontsize=9, fontweight="bold" if b in _RARE else "normal")
        if b in _RARE:  # the rare buckets are where collapse shows first: set them apart
            ax.set_facecolor("#f3f3f3")
            for s in ax.spines.values():
                s.set_linewidth(1.4)
        if k % ncol == 0:
            ax.set_ylabel("Δ mean NLL vs generation 0\n(nats/token, paired per run)" if paired
                          else "mean NLL (nats/token)")
    for k in range(len(buckets), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    what = "Change of the loss" if paired else "Loss"
    _suptitle(fig, f"{what} on real test tokens by frequency bucket (grey panels: rare): {_compared(groups)}",
              fontsize=10)
    _legend_below(fig, axes)
    return _save(fig, out, "tail-loss")


def _shift_matrix(group: Group, buckets: list[str]) -> tuple[np.ndarray, np.ndarray]:
    gens_all = sorted({g for r in group.runs for g in r.gens})
    m = np.full((len(gens_all), len(buckets)), np.nan)
    for j, b in enumerate(buckets):
        gens, mean, *_ = series(group, _get(f"bucket_shift.{b}"))
        for g, v in zip(gens, mean):
            m[gens_all.index(int(g)), j] = v
    return np.array(gens_all), m


def fig_bucket_heatmap(groups: list[Group], buckets: list[str], out: Path) -> Path:
    plt = _mpl()
    from matplotlib.colors import TwoSlopeNorm

    mats = [_shift_matrix(g, buckets) for g in groups]
    vmax = max([np.nanmax(np.abs(m)) for _, m in mats if np.isfinite(m).any()] + [1.0])
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    ncol = _ncols(len(groups), 3)
    nrow = math.ceil(len(groups) / ncol)
    ngen = max(len(gs) for gs, _ in mats)
    h = max(2.6, 0.32 * ngen + 1.6)
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(6.5, 0.9 * len(buckets) * ncol + 1.6), h * nrow + 0.7),
                             layout="constrained", squeeze=False)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")
    im = None
    for k, (g, (gens, m)) in enumerate(zip(groups, mats)):
        ax = axes[k // ncol][k % ncol]
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(buckets)), buckets, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(gens)), [str(x) for x in gens], fontsize=8)
        ax.set_xlabel("frequency rank in the real text (bucket)", fontsize=8)
        ax.set_ylabel("generation", fontsize=8)
        ax.set_title(_wrap(g.legend, max(2.5, 0.9 * len(buckets)), 9), fontsize=9)
        for (r, c), v in np.ndenumerate(m):
            txt = "n/a" if not np.isfinite(v) else _signed(v)
            dark = np.isfinite(v) and abs(v) > 0.55 * vmax
            ax.text(c, r, txt, ha="center", va="center", fontsize=7 if len(buckets) > 4 else 8,
                    color="white" if dark else "black")
    for k in range(len(groups), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    cb = fig.colorbar(im, ax=axes, shrink=0.9)
    cb.set_label("generated vs real share of the bucket (%)\nblue: over-represented, red: under", fontsize=8)
    _suptitle(fig, "Token-frequency shift of each generation's samples vs the real text, % per bucket"
                 + (" (mean over seeds)" if any(len(g.runs) > 1 for g in groups) else ""), fontsize=10)
    return _save(fig, out, "bucket-heatmap")


def fig_bucket_shift(groups: list[Group], buckets: list[str], out: Path) -> Path:
    """Bar charts like `collapse measure`'s, one panel per (selected) generation, one bar colour per group."""
    plt = _mpl()
    gens = _pick([g for grp in groups for r in grp.runs for g in r.gens])
    ncol = _ncols(len(gens), 3)
    nrow = math.ceil(len(gens) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow + 0.7), layout="constrained",
                             squeeze=False, sharey=True)
    x = np.arange(len(buckets))
    width = 0.8 / len(groups)
    stats = {}
    for gi, grp in enumerate(groups):
        for j, b in enumerate(buckets):
            gs, mean, lo, hi, _ = series(grp, _get(f"bucket_shift.{b}"))
            for g, mu, lo_, hi_ in zip(gs, mean, lo, hi):
                stats[(gi, int(g), j)] = (mu, lo_, hi_)
    # the scale follows the means: with 2 seeds a t-interval can be 10× wider and would flatten every bar
    means = [abs(s_[0]) for s_ in stats.values() if np.isfinite(s_[0])]
    ci = [abs(v) for s_ in stats.values() for v in s_[1:] if np.isfinite(v)]
    lim = max(min(max(ci + [0.0]), 2.0 * max(means + [0.5])), max(means + [1.0]) * 1.3)
    single = len(groups) == 1
    label_bars = len(groups) <= 2 and all(len(g.runs) == 1 for g in groups)  # numbers would collide with whiskers
    for k, g in enumerate(gens):
        ax = axes[k // ncol][k % ncol]
        for gi, grp in enumerate(groups):
            mu = np.array([stats.get((gi, g, j), (np.nan,) * 3)[0] for j in range(len(buckets))])
            lo = np.array([stats.get((gi, g, j), (np.nan,) * 3)[1] for j in range(len(buckets))])
            hi = np.array([stats.get((gi, g, j), (np.nan,) * 3)[2] for j in range(len(buckets))])
            xs = x - 0.4 + width * (gi + 0.5)
            if single:  # one run: measure's colours (blue over, red under, hatched)
                colors = ["#2166ac" if v >= 0 else "#b2182b" for v in np.nan_to_num(mu)]
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
                        ax.annotate(_signed(v), (xv, v), ha="center", va="bottom" if v >= 0 else "top",
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
    _suptitle(fig, f"Generated vs real token frequencies by rank bucket: {_compared(groups)}"
              + (" (whiskers: 95% t-interval over seeds)" if not label_bars and not single else ""), fontsize=10)
    if not single:
        _legend_below(fig, axes)
    return _save(fig, out, "bucket-shift")


def _pick(gens: list[int], k: int = MAX_CURVES) -> list[int]:
    """Up to k generations, always the first and the last, the rest evenly spaced."""
    gens = sorted(set(gens))
    if len(gens) <= k:
        return gens
    idx = np.unique(np.round(np.linspace(0, len(gens) - 1, k)).astype(int))
    return [gens[i] for i in idx]


def _gen0_ppl(run: Run, g: int) -> np.ndarray | None:
    p = run.path / f"gen_{g:03d}" / "gen0_ppl.npy"
    if not p.is_file():
        return None
    try:
        a = np.asarray(np.load(p, allow_pickle=False), dtype=np.float64).ravel()
    except (ValueError, OSError):
        return None
    return a[np.isfinite(a) & (a > 0)]


def fig_gen0_ppl(groups: list[Group], out: Path) -> Path | None:
    """Histograms of each sample's perplexity under the generation-0 model, overlaid per generation."""
    plt = _mpl()
    panels = []  # per group: {gen: (edges, share%)}
    for grp in groups:
        gens = _pick([g for r in grp.runs for g in r.gens])
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
    ncol = _ncols(len(groups), 2)
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.3 * nrow + 0.6), layout="constrained",
                             squeeze=False, sharex=True)
    span = (math.inf, 0.0)  # x range holding data: the stored histograms run over 1..10^4
    for k, (grp, data) in enumerate(zip(groups, panels)):
        ax = axes[k // ncol][k % ncol]
        for i, (g, v) in enumerate(sorted(data.items())):
            st = _gen_style(i, len(data))
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
        ax.set_title(_wrap(grp.legend + (" — seeds pooled" if len(grp.runs) > 1 else ""), 4.6, 9), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, loc="best")
    if span[1] > span[0]:
        axes[0][0].set_xlim(span[0] / 1.15, span[1] * 1.15)
    for k in range(len(groups), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    _suptitle(fig, "How plausible each generation's samples look to the original model "
                 "(left = more typical; vertical lines: medians)", fontsize=10)
    return _save(fig, out, "gen0-ppl")


def fig_diversity(groups: list[Group], out: Path) -> Path:
    plt = _mpl()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained")
    panels = [("coverage", 100.0, "coverage of real token types (%)", "Share of the real text's types generated"),
              ("entropy", 1.0, "unigram entropy (bits)", "Entropy of generated tokens"),
              ("kl_ref_gen", 1.0, "KL(real ‖ generated) (bits)", "Divergence from the real unigram distribution")]
    for ax, (key, scale, ylabel, title) in zip(axes, panels):
        for i, g in enumerate(groups):
            _line(ax, g, i, _get(key), scale, of=len(groups))
        if key == "entropy":
            refs = [r.get("entropy_ref") for g in groups for run in g.runs for r in run.rows]
            refs = [v for v in refs if isinstance(v, (int, float))]
            if refs:
                ax.axhline(float(np.mean(refs)), color="0.4", linestyle=(0, (1, 1)), linewidth=1.2,
                           label="real text (reference)")
        _int_xaxis(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
    _suptitle(fig, f"Diversity of generated text by generation: {_compared(groups)}", fontsize=10)
    _legend_below(fig, axes, ncol=min(4, len(groups) + 1))
    return _save(fig, out, "diversity")


def _sample_counts(run: Run, g: int) -> np.ndarray | None:
    p = run.path / f"gen_{g:03d}" / "samples.parquet"
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
    c = np.sort(c[c > 0])[::-1].astype(np.float64)
    return c / c.sum()


def fig_zipf(groups: list[Group], out: Path) -> Path | None:
    """Rank-frequency of the real text and selected generations, and below it their ratio at equal rank."""
    plt = _mpl()
    ncol = _ncols(len(groups), 2)
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
        gens = _pick(run.gens, 4)
        for i, g in enumerate(gens):
            c = _sample_counts(run, g)
            if c is None:
                continue
            f = _rank_freq(c)
            st = _gen_style(i, len(gens))
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
        ax.set_title(_wrap(f"{grp.legend} — run {run.name}" if len(groups) > 1 else f"run {run.name}", 4.6, 9),
                     fontsize=9)
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=7, frameon=False, loc="lower left")
    for k in range(len(groups), nrow * ncol):
        axes[2 * (k // ncol)][k % ncol].set_visible(False)
        axes[2 * (k // ncol) + 1][k % ncol].set_visible(False)
    if not drawn:
        plt.close(fig)
        return None
    _suptitle(fig, "Rank–frequency (Zipf) of the real text and of generated samples (generated curves end "
                   "earlier: far fewer tokens)", fontsize=9)
    return _save(fig, out, "zipf")


# ---------------------------------------------------------------------- the metrics table


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "—"
    return format(v * scale if scale != 1.0 else v, spec)


def table_columns(tail_buckets: list[str], shift_buckets: list[str]) -> list[tuple[str, str, str, float]]:
    """(metrics key, header, format spec, scale) of each column of the per-generation table."""
    cols = [("generation", "gen", "d", 1.0), ("test_ppl", "test ppl", ".2f", 1.0),
            ("test_nll", "test NLL", ".3f", 1.0)]
    cols += [(f"tail_loss.{b}", f"NLL {b}", ".3f", 1.0) for b in tail_buckets]
    cols += [(f"bucket_shift.{b}", f"shift {b} (%)", "+.1f", 1.0) for b in shift_buckets]
    cols += [("kl_ref_gen", "KL real‖gen", ".4f", 1.0), ("js", "JS", ".4f", 1.0),
             ("entropy", "entropy", ".3f", 1.0), ("coverage", "coverage (%)", ".1f", 100.0),
             ("tail_mass", "tail mass (%)", ".1f", 100.0), ("distinct_2", "distinct-2", ".3f", 1.0),
             ("gen0_ppl_mean", "gen-0 ppl (mean)", ".1f", 1.0),
             ("train_loss", "train loss", ".3f", 1.0)]
    return cols


def format_cell(row: dict, key: str, spec: str, scale: float = 1.0) -> str:
    return _fmt(_get(key)(row), spec, scale)


def _table_html(run: Run, tail_buckets: list[str], shift_buckets: list[str]) -> str:
    cols = table_columns(tail_buckets, shift_buckets)
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for _, h, _, _ in cols)
    body = []
    for r in run.rows:
        cells = "".join(f'<td data-key="{html.escape(k)}">{html.escape(format_cell(r, k, s, sc))}</td>'
                        for k, _, s, sc in cols)
        body.append(f"<tr>{cells}</tr>")
    return (f'<div class="scroll"><table class="metrics" data-run="{html.escape(run.name)}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


# ---------------------------------------------------------------------- example samples


_TOKENIZERS: dict[str, Any] = {}


def _decoder(base_model: str | None) -> Callable[[list[int]], str] | None:
    """Decode token ids with the run's tokenizer when it is on this machine (no network), else None."""
    if not base_model:
        return None
    if base_model in _TOKENIZERS:
        return _TOKENIZERS[base_model]
    dec = None
    p = Path(base_model)
    try:
        if (p / "tokenizer.json").is_file():  # the tokenizers library alone: no transformers import
            from tokenizers import Tokenizer

            tk = Tokenizer.from_file(str(p / "tokenizer.json"))
            dec = lambda ids: tk.decode(list(ids))
        elif p.is_dir() or not (p.is_absolute() or base_model.startswith((".", "~"))):
            # a model folder without tokenizer.json, or a hub id: only what is cached here (no network)
            from transformers import AutoTokenizer

            tk = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
            dec = lambda ids: tk.decode(list(ids))
    except Exception:  # noqa: BLE001 - no tokenizer: the page shows generated text only
        dec = None
    _TOKENIZERS[base_model] = dec
    return dec


def _examples(run: Run) -> tuple[list[dict], str]:
    """The same ``EXAMPLES`` prompts in every generation: [{index, prompt, gens: [(g, text, ppl)]}], and a note.

    Only the ``sample_index`` column is read whole; the example rows are read one generation at a time.
    """
    import pyarrow.parquet as pq

    files, position = {}, {}  # generation -> parquet path, {sample_index: row position}
    for g in run.gens:
        p = run.path / f"gen_{g:03d}" / "samples.parquet"
        try:
            pf = pq.ParquetFile(p)
            n = pf.metadata.num_rows
            idx = (pq.read_table(p, columns=["sample_index"]).column("sample_index").to_numpy()
                   if "sample_index" in pf.schema_arrow.names else np.arange(n, dtype=np.int64))
        except Exception:  # noqa: BLE001 - missing or damaged: costs its generation's examples only
            continue
        files[g] = p
        position[g] = {int(v): i for i, v in enumerate(idx)}
    if not files:
        return [], "no readable samples.parquet found."
    common = sorted(set.intersection(*(set(d) for d in position.values())))
    if not common:
        return [], "no sample index occurs in every generation."
    pick = [common[i] for i in np.unique(np.linspace(0, len(common) - 1, EXAMPLES).round().astype(int))]
    dec = _decoder(run.manifest.get("base_model"))
    note = "" if dec else ("the run's tokenizer is not on this machine: prompts are shown as token ids, "
                           "generations as stored.")
    rows: dict[tuple[int, int], dict] = {}
    for g, p in files.items():
        try:
            names = pq.read_schema(p).names
            cols = [c for c in ("prompt_ids", "token_ids", "text") if c in names]
            t = pq.read_table(p, columns=cols)
            for s_ in pick:
                rows[(g, s_)] = t.slice(position[g][s_], 1).to_pylist()[0]
            del t
        except Exception:  # noqa: BLE001
            continue
    out = []
    for s_ in pick:
        ex = {"index": s_, "prompt": None, "gens": []}
        for g in sorted(files):
            row = rows.get((g, s_), {})
            if ex["prompt"] is None and row.get("prompt_ids") is not None:
                ids = row["prompt_ids"]
                ex["prompt"] = _safe_decode(dec, ids) if dec else f"[{len(ids)} token ids] " + " ".join(
                    map(str, ids[:24])) + (" …" if len(ids) > 24 else "")
            text = row.get("text")
            if text is None and dec and row.get("token_ids") is not None:
                text = _safe_decode(dec, row["token_ids"])
            ppl = _gen0_ppl_at(run, g, position[g][s_])
            ex["gens"].append((g, text if text is not None else "(no text stored)", ppl))
        out.append(ex)
    return out, note


def _safe_decode(dec, ids) -> str:
    try:
        return dec(ids)
    except Exception:  # noqa: BLE001
        return " ".join(map(str, ids))


def _gen0_ppl_at(run: Run, g: int, i: int) -> float | None:
    p = run.path / f"gen_{g:03d}" / "gen0_ppl.npy"
    try:
        a = np.load(p, allow_pickle=False, mmap_mode="r")
        return float(a[i]) if i < len(a) else None
    except (ValueError, OSError):
        return None


def _examples_html(run: Run) -> str:
    exs, note = _examples(run)
    parts = [f'<p class="note">{html.escape(note)}</p>' if note else ""]
    for ex in exs:
        rows = "".join(f"<tr><td>{g}</td><td>{_fmt(ppl, '.1f')}</td><td class=\"text\">{html.escape(t)}</td></tr>"
                       for g, t, ppl in ex["gens"])
        prompt = html.escape(ex["prompt"] or "(no prompt stored)")
        parts.append(f'<div class="example"><p><b>sample {ex["index"]}</b>, real prompt:</p>'
                     f'<blockquote class="text">{prompt}</blockquote>'
                     '<table class="samples"><thead><tr><th>gen</th><th>gen-0 ppl</th>'
                     '<th style="text-align:left">continuation</th></tr></thead>'
                     f"<tbody>{rows}</tbody></table></div>")
    return "".join(parts)


# ---------------------------------------------------------------------- the page


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;
color:#111;line-height:1.4}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#333;max-width:900px}
.partial{background:#fff3cd;border:2px solid #b8860b;padding:.6em 1em;font-weight:bold}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
table.metrics td,table.metrics th,table.samples td{text-align:right}
th{background:#f2f2f2}
table.samples td.text,blockquote.text{text-align:left !important;white-space:pre-wrap;font-family:ui-monospace,monospace;
font-size:.95em}
table.samples{max-width:100%}
blockquote{margin:.3em 0 .3em 1em;padding:.3em .6em;background:#f7f7f7;border-left:4px solid #999}
.note{color:#555;font-size:.9em}nav{font-size:.9em;margin:.8em 0}
details{margin:.4em 0}summary{cursor:pointer}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
"""

# Counts the images the browser could decode (a headless check that every <img> resolves).
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.dataset.imagesLoaded = String(ok);
  document.body.dataset.imagesTotal = String(imgs.length);
});
"""

_CAPTIONS = {
    "test-ppl": "Perplexity of each generation's model on the <b>real</b> held-out test text. Rising curves: the "
                "model forgets the real distribution. Right: each run's change from its own generation 0, averaged over "
                "seeds (the seeds' generation-0 models differ, which widens the bands on the left).",
    "tail-loss": "Mean negative log-likelihood of real test tokens, split by how frequent the token type is in the "
                 "real training text. Collapse shows first in the rare buckets (grey panels): their loss climbs "
                 "while the frequent ones stay put. Each panel has its own y scale. With several seeds the panels show each "
                 "run's change from its own generation 0 (paired), averaged over seeds.",
    "bucket-heatmap": "Share of generated tokens falling in each frequency bucket, relative to the real text's "
                      "share: +10 means the bucket is 10% over-represented. Red cells in the rare buckets are the "
                      "tails disappearing. Buckets without data (e.g. ranks beyond the vocabulary) are left out.",
    "bucket-shift": "The same shift as bars, for selected generations (whiskers: 95% t-interval over seeds; with "
                    "few seeds they can run off the panel, which is scaled to the means).",
    "gen0-ppl": "Distribution of each generated sample's perplexity under the generation-0 model (log x axis). "
                "Later generations drifting left produce ever more 'typical' text; a long right tail is "
                "text the original model finds implausible.",
    "diversity": "Coverage: share of the real text's token types that appear at least once in the samples. Entropy "
                 "of the generated unigram distribution (dotted: the real text's). KL(real ‖ generated) in bits, "
                 "with additive smoothing.",
    "zipf": "Rank–frequency plot of token types: the real training text (black) and generated samples of the "
            "group's first run. A steeper or shorter tail means rare types vanish. Generated curves come from far "
            "fewer tokens than the real one, so they end at lower ranks by construction. Below: the share of tokens "
            "in each rank range relative to the real text at the same ranks (above 1: mass concentrated on fewer "
            "types).",
}
_FIG_TITLES = {"test-ppl": "Test perplexity", "tail-loss": "Tail loss by frequency bucket",
               "bucket-heatmap": "Bucket shift (heatmap)", "bucket-shift": "Bucket shift (bars)",
               "gen0-ppl": "Perplexity of samples under the generation-0 model", "diversity": "Coverage, entropy, KL",
               "zipf": "Zipf plot"}


def _page(runs: list[Run], groups: list[Group], figures: dict[str, Path | None], errors: dict[str, str],
          tail_buckets: list[str], shift_buckets: list[str], summary: list[dict] | None = None) -> str:
    esc = html.escape
    title = "Model-collapse report: " + ", ".join(r.name for r in runs)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style>"
             f"<script>{_SCRIPT}</script></head><body>", f"<h1>{esc(title)}</h1>",
             f'<p class="note">written {esc(time.strftime("%Y-%m-%d %H:%M:%S"))} by <code>collapse report</code>'
             "</p>"]
    for r in runs:
        if r.partial:
            parts.append(f'<p class="partial">{esc(r.partial_note())}</p>')
    links = [(stem, _FIG_TITLES[stem]) for stem in FIGURES if figures.get(stem) is not None]
    links = ([("summary", "Last generation, mean ± CI")] if summary else []) + links
    links += [("metrics", "Metrics per generation"), ("samples", "Example samples"), ("configs", "Configs")]
    parts.append("<nav><b>Contents:</b> " + " · ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in links) + "</nav>")
    rows = "".join(
        f"<tr><td>{esc(r.name)}</td><td><code>{esc(str(r.path))}"
        f"</code></td><td>{esc(str(r.config.get('seed')))}</td><td>{esc(_gens_text(r))}</td>"
        f"<td>{esc(next(g.legend for g in groups if r in g.runs))}</td></tr>"
        for r in runs)
    parts.append("<h2>Runs</h2><table class=\"runs\"><thead><tr><th>run</th><th>folder</th><th>seed</th>"
                 f"<th>generations finished</th><th>group</th></tr></thead><tbody>{rows}</tbody></table>")
    if len(groups) > 1:
        keys = list(groups[0].diff)
        head = "".join(f"<th>{esc(k)}</th>" for k in keys)
        body = "".join("<tr><td>" + esc(g.legend) + "</td>"
                       + "".join(f"<td>{esc(_short(g.diff[k]))}</td>" for k in keys) + "</tr>" for g in groups)
        parts.append("<p>Runs are grouped by config (ignoring " + esc(", ".join(IGNORED_KEYS))
                     + "); the groups differ in:</p>"
                     f"<table class=\"groups\"><thead><tr><th>group</th>{head}</tr></thead><tbody>{body}</tbody>"
                     "</table>")
    drift = _schema_drift(runs)
    if drift:
        parts.append('<p class="note">Config keys only some runs have (written by different versions of collapse; '
                     "not used for grouping): " + esc(", ".join(drift)) + ".</p>")
    if summary:
        parts.append(_summary_html(summary))
    band = _band_note(groups)
    parts.append("<h2>Figures</h2>")
    if band:
        parts.append(f'<p class="note">Lines: mean over seeds. {esc(band)}</p>')
    for stem in FIGURES:
        png = figures.get(stem)
        if png is None:
            why = errors.get(stem, "no data for this figure")
            parts.append(f"<h3>{esc(_FIG_TITLES[stem])}</h3><p class=\"note\">not drawn: {esc(why)}</p>")
            continue
        parts.append(f'<h3 id="{stem}">{esc(_FIG_TITLES[stem])}</h3><figure>'
                     f'<img src="{esc(png.name)}" alt="{esc(_FIG_TITLES[stem])}">'
                     f'<figcaption>{_CAPTIONS[stem]} <a href="{esc(stem)}.svg">SVG</a></figcaption></figure>')
    parts.append('<h2 id="metrics">Metrics per generation</h2><p class="note">test ppl / NLL: on the real test text, '
                 "NLL in "
                 "nats/token (also per frequency bucket); shift: generated vs real share of a frequency bucket (%); "
                 "KL(real‖gen), JS and entropy in bits over token unigrams; coverage: share of the real text's "
                 "types generated; tail mass: share of generated tokens outside the real top-100 types; gen-0 ppl: "
                 "mean perplexity of the samples under the generation-0 model; train loss in nats/token. "
                 "—: not measured in that generation.</p>")
    for r in runs:
        parts.append(f"<h3>{esc(r.name)}</h3>" + _table_html(r, tail_buckets, shift_buckets))
    parts.append('<h2 id="samples">Example samples</h2><p class="note">The same real prompt (same '
                 "<code>sample_index</code>) "
                 "in every generation, so the text can be seen to degrade; gen-0 ppl: that sample's perplexity "
                 "under the generation-0 model.</p>")
    for i, r in enumerate(runs):
        parts.append(f"<details{' open' if i == 0 else ''}><summary>{esc(r.name)}</summary>"
                     f"{_examples_html(r)}</details>")
    parts.append("<h2 id=\"configs\">Configs</h2>")
    for r in runs:
        parts.append(f"<details><summary>{esc(r.name)}: <code>config.yaml</code></summary>"
                     f"<pre>{esc(r.config_text)}</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _gens_text(r: Run) -> str:
    gens = r.gens
    done = f"0..{gens[-1]}" if gens == list(range(gens[-1] + 1)) else ", ".join(map(str, gens))
    return done + ("" if r.planned is None else f" of 0..{r.planned}") + (" (partial)" if r.partial else "")


# ---------------------------------------------------------------------- entry point


def make_report(run_dirs: list[Path], out: Path | None, quiet: bool = False) -> int:
    """Write ``report.html`` and the figures (PNG + SVG) for the given run folders; returns the exit code (0).

    ``out`` defaults to ``RUN_DIR/report`` for one run and ``./report`` for several. Bad input raises
    :class:`DataError` (exit code 2 from the CLI); see the module docstring.
    """
    from collapse.io import write_text

    if not run_dirs:
        raise DataError("no run folder given.")
    seen: set[Path] = set()
    runs = []
    for d in run_dirs:
        key = Path(d).resolve()
        if key not in seen:
            seen.add(key)
            runs.append(load_run(d))
    buckets = _check_buckets(runs)
    _unique_names(runs)
    out = Path(out) if out is not None else (runs[0].path / "report" if len(runs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    tail_buckets = _present(groups, "tail_loss", buckets)
    shift_buckets = _present(groups, "bucket_shift", buckets)
    note = log.debug if quiet else log.warning

    plt = _mpl()
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
    }
    style = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
             "xtick.labelsize": 8, "ytick.labelsize": 8, "svg.hashsalt": "collapse-report"}
    with plt.rc_context(style):
        for stem, make in makers.items():
            try:
                figures[stem] = make()
            except Exception as e:  # noqa: BLE001 - one broken figure must not cost the whole report
                plt.close("all")
                figures[stem] = None
                errors[stem] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                note(f"report: figure {stem} could not be drawn ({errors[stem]}).")
    summary = summarize(groups, tail_buckets, shift_buckets)
    write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    write_text(out / "summary.md", summary_markdown(summary))
    page = _page(runs, groups, figures, errors, tail_buckets, shift_buckets, summary)
    write_text(out / "report.html", page)
    for r in runs:
        if r.partial:
            note(f"report: {r.partial_note()}")
    if not quiet:
        log.info(f"report: {out / 'report.html'}")
    return 0
