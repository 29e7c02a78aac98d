"""The neutral temperature: where the recursion's drift per generation changes sign, per learner.

Below it the loop sharpens its samples, generation after generation (the entropy falls, the head gains: the
direction of "The Curse of Recursion"); above it the samples flatten (Marchi et al. 2024: the loop either
collapses onto few outputs or becomes uniform over many). Drawn by the report when some learner, i.e. a set of
groups that differ only in ``generation.temperature``, has runs at 3 or more temperatures (sampling only: a
point with top-p, top-k, min-p or beams is listed in the table but not on the curve).

Per point the drift is the last generation's change from generation 0 over the number of generations
(``collapse.metrics.stats.drift_part``), with the run's own paired interval (one seed) or the Student-t
interval over seeds. T* is the linear interpolation of the mean drift between the two temperatures where it
changes sign; its interval runs from the highest temperature whose drift is resolved below 0 to the lowest
whose drift is resolved above 0 (``None`` on a side without one). Pure numpy (matplotlib in ``fig_neutral``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from collapse.metrics.stats import DRIFTS, drift_part
from collapse.report.runs import Group, flatten_config, short_value
from collapse.report.seeds import _ci, as_float

STEM = "neutral-temperature"
DECODING = ("generation.temperature", "generation.top_p", "generation.top_k", "generation.min_p",
            "generation.num_beams", "generation.repetition_penalty")
MIN_POINTS = 3
NAMED = ("train.method", "train.lora.r", "train.lora.modules_to_save", "train.init")  # said by learner_name


def _drift(run, name: str) -> tuple[float | None, list | None]:
    """(drift, its interval) of ``name`` at the run's last generation: from the row, else from its changes."""
    row = run.row(run.gens[-1]) or {}
    if name not in row:
        row = {**row, **drift_part(int(row.get("generation", 0)), (row.get("changes") or {}).get("from_gen0"))}
    return as_float(row.get(name)), row.get(f"{name}_ci")


def point(group: Group) -> dict:
    """One group's decoding and its drifts (mean, 95% interval, resolved) at the last generation."""
    f = flatten_config(group.runs[0].config)  # the report's own flattening of a config
    sampling = (int(f.get("generation.num_beams") or 1) == 1 and float(f.get("generation.top_p") or 1.0) == 1.0
                and int(f.get("generation.top_k") or 0) == 0 and float(f.get("generation.min_p") or 0.0) == 0.0
                and float(f.get("generation.repetition_penalty") or 1.0) == 1.0)
    out = {"temperature": float(f.get("generation.temperature", 1.0)), "sampling": sampling,
           "decoding": ", ".join(f"{k.split('.', 1)[1]}={short_value(v)}" for k, v in group.diff.items()
                                 if k in DECODING) or f"temperature={short_value(f.get('generation.temperature'))}",
           "generations": min(r.gens[-1] for r in group.runs), "seeds": group.seeds}
    ch = [((r.row(r.gens[-1]) or {}).get("changes") or {}).get("from_gen0", {}).get("test_ppl") for r in group.runs]
    ch = [c for c in ch if c and as_float(c.get("delta")) is not None]
    if ch:  # what the direction costs on real text: the test-perplexity change at the last generation
        out["test_ppl_change"] = {"mean": float(np.mean([c["delta"] for c in ch])),
                                  "ci95": ch[0]["ci95"] if len(ch) == 1 else None}
    for name, _ in DRIFTS:
        vals = [_drift(r, name) for r in group.runs]
        xs = [v for v, _ in vals if v is not None]
        if not xs:
            continue
        if len(xs) == 1:
            ci = vals[0][1] if vals[0][1] and None not in vals[0][1] else None
            lo, hi = (ci or [None, None])
        else:
            c = _ci(xs)
            lo, hi = c["mean"] - c["ci95"], c["mean"] + c["ci95"]
        mean = float(np.mean(xs))
        out[name] = {"mean": mean, "ci95": [lo, hi],
                     "resolved": lo is not None and hi is not None and (lo > 0 or hi < 0)}
    return out


def learner_name(config: dict) -> str:
    """The learner in words: ``LoRA r=8``, ``LoRA r=8 + output layer``, ``full fine-tune`` (``, from previous``)."""
    t = config.get("train") or {}
    lora = t.get("lora") or {}
    name = "full fine-tune" if t.get("method") == "full" else f"LoRA r={lora.get('r', 8)}" + (
        " + " + "/".join(lora["modules_to_save"]) if lora.get("modules_to_save") else "")
    return name + (", from previous" if t.get("init") == "previous" else "")


def learners(groups: list[Group]) -> dict[str, list[dict]]:
    """Points by learner: groups keyed by the learner and every other differing setting except the decoding,
    sorted by temperature."""
    by: dict[str, list[dict]] = {}
    for g in groups:
        rest = [f"{k}={short_value(v)}" for k, v in g.diff.items() if k not in DECODING and k not in NAMED]
        key = ", ".join([learner_name(g.runs[0].config), *rest])
        by.setdefault(key, []).append(point(g))
    return {k: sorted(v, key=lambda p: p["temperature"]) for k, v in by.items()}


def t_star(points: list[dict], name: str = "entropy_drift") -> dict:
    """T* of one learner's sampling points (see the module docstring)."""
    pts = [p for p in points if p["sampling"] and name in p]
    ts = [p["temperature"] for p in pts]
    d = [p[name]["mean"] for p in pts]
    out: dict = {"points": len(pts), "range": [min(ts), max(ts)] if ts else None, "t_star": None,
                 "interval": [None, None]}
    for i in range(len(pts) - 1):
        if d[i] == 0:
            out["t_star"] = ts[i]
            break
        if d[i] * d[i + 1] < 0:
            out["t_star"] = ts[i] + (ts[i + 1] - ts[i]) * (-d[i]) / (d[i + 1] - d[i])
            break
    if out["t_star"] is None:
        out["note"] = ("no sign change in the range: the drift is " + ("negative" if d and max(d) < 0 else "positive")
                       + f" at every temperature from {min(ts):g} to {max(ts):g}") if ts else "no sampling point"
        return out
    below = [p for p in pts if p["temperature"] <= out["t_star"] and p[name]["resolved"] and p[name]["mean"] < 0]
    above = [p for p in pts if p["temperature"] >= out["t_star"] and p[name]["resolved"] and p[name]["mean"] > 0]
    out["interval"] = [max(p["temperature"] for p in below) if below else None,
                       min(p["temperature"] for p in above) if above else None]
    return out


def neutral_summary(groups: list[Group]) -> dict | None:
    """Per learner: its points and T* (from the entropy drift; the top-10 drift's sign change beside it), or
    None when no learner has runs at ``MIN_POINTS`` temperatures."""
    out = {}
    for key, pts in learners(groups).items():
        if len({p["temperature"] for p in pts if p["sampling"]}) >= MIN_POINTS:
            out[key] = {"points": pts, "t_star": t_star(pts, "entropy_drift"), "t_star_top10": t_star(pts, "top10_drift")}
    return out or None


def fig_neutral(summary: dict, out: Path) -> Path:
    """Drift per generation against temperature, one line per learner with its band, the zero line and T*."""
    from collapse.report.plots import PALETTE, mpl, save_figure

    plt = mpl()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = {"entropy_drift": "entropy drift per generation (bits)",
              "top10_drift": "top-10 shift drift per generation (points)"}
    for ax, (name, _) in zip(axes, DRIFTS):
        for i, (learner, s) in enumerate(summary.items()):
            pts = [p for p in s["points"] if p["sampling"] and name in p]
            if not pts:
                continue
            c = PALETTE[i % len(PALETTE)]
            t = np.array([p["temperature"] for p in pts])
            m = np.array([p[name]["mean"] for p in pts])
            lo = np.array([np.nan if p[name]["ci95"][0] is None else p[name]["ci95"][0] for p in pts])
            hi = np.array([np.nan if p[name]["ci95"][1] is None else p[name]["ci95"][1] for p in pts])
            ax.plot(t, m, "o-", color=c, label=learner, lw=1.5, ms=4)
            ax.fill_between(t, lo, hi, color=c, alpha=0.2, lw=0)
            ts = s["t_star" if name == "entropy_drift" else "t_star_top10"]["t_star"]
            if ts is not None:
                ax.axvline(ts, color=c, ls=":", lw=1)
            for p in s["points"]:
                if not p["sampling"] and name in p:
                    ax.errorbar([p["temperature"]], [p[name]["mean"]], fmt="s", color=c, mfc="white", ms=5,
                                yerr=None if None in p[name]["ci95"] else
                                [[p[name]["mean"] - p[name]["ci95"][0]], [p[name]["ci95"][1] - p[name]["mean"]]])
                    ax.annotate(p["decoding"], (p["temperature"], p[name]["mean"]), fontsize=6,
                                xytext=(4, 4), textcoords="offset points")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("sampling temperature")
        ax.set_ylabel(labels[name])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False, loc="best")
    fig.suptitle("Drift per generation against temperature (95% band; dotted: T*, where it changes sign; "
                 "squares: other decodings)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, STEM)


def neutral_markdown(summary: dict) -> str:
    """The T* table of ``summary.md``."""
    lines = ["## The neutral temperature", "",
             "| learner | T* (entropy) | interval | T* (top-10 share) | points |", "|---|---|---|---|---|"]
    for learner, s in summary.items():
        t, t10 = s["t_star"], s["t_star_top10"]
        lo, hi = t["interval"]
        iv = f"[{'—' if lo is None else f'{lo:g}'}, {'—' if hi is None else f'{hi:g}'}]" if t["t_star"] is not None else ""
        ts = t.get("note") if t["t_star"] is None else f"{t['t_star']:.3f}"
        ts10 = t10.get("note", "") if t10["t_star"] is None else f"{t10['t_star']:.3f}"
        lines.append(f"| {learner} | {ts} | {iv} | {ts10} | {t['points']} |")
    lines += ["", "| learner | decoding | gens | entropy drift / gen (bits) | top-10 drift / gen (points) |",
              "|---|---|---|---|---|"]
    for learner, s in summary.items():
        for p in s["points"]:
            cells = []
            for (name, _), fmt in zip(DRIFTS, ("+.4f", "+.2f")):
                d = p.get(name)
                if d is None:
                    cells.append("—")
                    continue
                lo, hi = d["ci95"]
                iv = "" if lo is None else f" [{lo:{fmt}}, {hi:{fmt}}]"
                cells.append(f"{d['mean']:{fmt}}{iv}{'*' if d['resolved'] else ''}")
            lines.append(f"| {learner} | {p['decoding']} | {p['generations']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"
