"""Statistics over seeds: means with 95% Student-t intervals per generation and at the last generation.

Pure numpy: no matplotlib, no file I/O. A group's runs are its seeds; a value missing or not finite in a
metrics row is left out (:func:`as_float`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from collapse.metrics.registry import columns
from collapse.metrics.stats import row_change, row_ci
from collapse.report.runs import Group, metric_getter

# Two-sided 97.5% quantiles of Student's t, df = 1..30 (above: 1.96 + 2.4/df is within 0.003).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (the two-sided 95% interval's factor)."""
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def as_float(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (not a bool), else None (missing, null, NaN, text)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _ci(values: list[float]) -> dict:
    """Mean, 95% t-interval half-width (None for n < 2), n, and the values themselves.

    The keys (``mean``, ``ci95``, ``n``, ``values``) are those ``summary.json`` stores for each metric.
    """
    a = np.asarray(values, dtype=np.float64)
    half = t975(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)) if len(a) >= 2 else None
    return {"mean": float(a.mean()), "ci95": None if half is None else float(half), "n": int(len(a)),
            "values": [float(v) for v in a]}


def within_ci(row: dict, key: str, paired: bool = False) -> tuple[float, float] | None:
    """A run's own 95% interval of ``key`` in one generation (``collapse.metrics.stats``: over samples or test blocks);
    ``paired``: the interval of its change from generation 0. None where the row has none."""
    ci = (row_change(row, key) or {}).get("ci95") if paired else row_ci(row, key)
    if not ci or as_float(ci[0]) is None or as_float(ci[1]) is None:
        return None
    return float(ci[0]), float(ci[1])


def series(group: Group, value: Callable[[dict], Any], paired: bool = False) -> tuple[np.ndarray, ...]:
    """Per generation: mean over the group's runs, 95% interval (lo, hi; NaN where there is none) and n.

    Several runs: the t-interval over them (seeds). One run: its own interval inside the run, where the
    getter names its figure (``metric_getter``) and the row holds it (a run made before intervals has none).
    ``paired``: each run's value minus its own generation 0's, so differences between the seeds'
    generation-0 models drop out of the interval.
    """
    by_gen: dict[int, list[float]] = defaultdict(list)
    for run in group.runs:
        base = as_float(value(run.row(0) or {})) if paired else 0.0
        if base is None:
            continue
        for row in run.rows:
            v = as_float(value(row))
            if v is not None:
                by_gen[row["generation"]].append(v - base)
    gens = np.array(sorted(by_gen), dtype=np.int64)
    mean, lo, hi, n = (np.full(len(gens), np.nan) for _ in range(4))
    for i, g in enumerate(gens):
        c = _ci(by_gen[g])
        mean[i], n[i] = c["mean"], c["n"]
        if c["ci95"] is not None:
            lo[i], hi[i] = mean[i] - c["ci95"], mean[i] + c["ci95"]
    key = getattr(value, "key", None)
    if len(group.runs) == 1 and key is not None:
        for i, g in enumerate(gens):
            if paired and g == 0:  # a change from itself: no interval
                continue
            ci = within_ci(group.runs[0].row(int(g)) or {}, key, paired)
            if ci is not None:
                lo[i], hi[i] = ci
    return gens, mean, lo, hi, n


def summary_metrics(tail_buckets: list[str], shift_buckets: list[str]) -> list[tuple[str, str, str]]:
    """(key, label, number format) of the last-generation summary: the registered figures marked ``summary``
    (a figure no run has, as the truth's on real text, is left out by the summary)."""
    return columns("summary", {"tail_loss": tail_buckets, "bucket_shift": shift_buckets})


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
            get = metric_getter(key)
            now = [(as_float(get(r.row(last) or {})), as_float(get(r.row(0) or {}))) for r in grp.runs]
            vals = [v for v, _ in now if v is not None]
            diffs = [v - v0 for v, v0 in now if v is not None and v0 is not None]
            if vals:
                entry["metrics"][key] = {"label": label, "format": fmt, **_ci(vals)}
                own = [within_ci(r.row(last) or {}, key) for r in grp.runs]
                if len(grp.runs) == 1 and own[0] is not None:  # one run: its interval inside the run
                    entry["metrics"][key]["within"] = [{"ci95": list(own[0])}]
            if diffs and last > 0:
                entry["changes"][key] = {"label": "Δ " + label, "format": fmt, **_ci(diffs)}
                within = [row_change(r.row(last) or {}, key) for r in grp.runs]
                within = [w for w in within if w and w.get("ci95") and w["ci95"][0] is not None]
                if within:  # each run's own paired interval: is the change resolved inside that run?
                    entry["changes"][key]["within"] = [{"ci95": w["ci95"], "resolved": w["resolved"]} for w in within]
                    entry["changes"][key]["resolved_runs"] = sum(w["resolved"] for w in within)
        entry["per_run"] = [
            {"run": r.name, "seed": r.config.get("seed"),
             "changes": {key: row_change(r.row(last) or {}, key) for key, _, _ in summary_metrics(tail_buckets,
                                                                                                shift_buckets)
                         if row_change(r.row(last) or {}, key) is not None}}
            for r in grp.runs] if last > 0 else []
        out.append(entry)
    return out
