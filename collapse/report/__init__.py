"""Plots and the HTML report from one or more run folders (matplotlib, headless).

    collapse report RUN_DIR [RUN_DIR ...] [--out DIR]

:func:`make_report` reads each run folder (``config.yaml``, ``manifest.json``, ``metrics.jsonl``,
``reference_counts.npy``, ``gen_NNN/samples.parquet``, ``gen_NNN/gen0_ppl.npy``) and writes into ``out``
(default ``RUN_DIR/report`` for one run, ``./report`` for several):

* ``report.html``: the figures (PNG files beside it, referenced relatively; no network needed), the metrics of
  every generation as a table, example samples from the same real prompt in every generation, each run's config;
* every figure as PNG and SVG (the report at the end of ``collapse run``: PNG alone; ``collapse report`` adds
  the SVGs): ``test-ppl``, ``tail-loss``, ``bucket-heatmap``, ``bucket-shift``, ``gen0-ppl``, ``diversity``,
  ``zipf``.

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

import json
import logging
from pathlib import Path

from collapse.errors import DataError
from collapse.io import write_text
from collapse.report.figures import FIGURES, draw_figures, plot_bucket_shift
from collapse.report.neutral import STEM as NEUTRAL_STEM
from collapse.report.neutral import fig_neutral, neutral_markdown, neutral_summary
from collapse.report.page import page_html, summary_markdown
from collapse.report.plots import FORMATS
from collapse.report.runs import (
    Group,
    Run,
    check_buckets,
    group_runs,
    load_run,
    present_buckets,
    schema_drift,  # noqa: F401 - tests/test_report.py calls R.schema_drift
    unique_names,
)
from collapse.report.seeds import series, summarize

__all__ = ["FIGURES", "Group", "Run", "group_runs", "load_run", "make_report", "plot_bucket_shift", "series",
           "summarize", "summary_markdown"]

log = logging.getLogger("collapse")


def make_report(run_dirs: list[Path], out: Path | None, quiet: bool = False, vector: bool = True) -> int:
    """Write ``report.html`` and the figures (PNG + SVG; ``vector=False``: PNG alone, as at the end of
    ``collapse run``) for the given run folders; returns the exit code (0).

    ``out`` defaults to ``RUN_DIR/report`` for one run and ``./report`` for several. Bad input raises
    :class:`DataError` (exit code 2 from the CLI); see the module docstring.
    """
    if not run_dirs:
        raise DataError("no run folder given.")
    seen: set[Path] = set()
    runs = []
    for d in run_dirs:
        key = Path(d).resolve()
        if key not in seen:
            seen.add(key)
            runs.append(load_run(d))
    for r in runs:  # what the report reads must be what the run wrote (a folder without checksums: as it is)
        if (r.path / "manifest.json").is_file():
            from collapse.loop.integrity import verify_folder

            damaged, _ = verify_folder(r.path, only=("metrics.json", "samples.parquet"))
            if damaged:
                raise DataError(f"{r.path}: {damaged[0]}: rerun the same `collapse run` to redo it, then the report.")
    buckets = check_buckets(runs)
    unique_names(runs)
    out = Path(out) if out is not None else (runs[0].path / "report" if len(runs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    tail_buckets = present_buckets(groups, "tail_loss", buckets)
    shift_buckets = present_buckets(groups, "bucket_shift", buckets)
    note = log.debug if quiet else log.warning

    token = FORMATS.set(("png", "svg") if vector else ("png",))
    try:
        figures, errors = draw_figures(groups, tail_buckets, shift_buckets, out, note)
    finally:
        FORMATS.reset(token)
    summary = summarize(groups, tail_buckets, shift_buckets)
    neutral = neutral_summary(groups)  # runs at 3+ temperatures of one learner: where the drift changes sign
    if neutral:
        token = FORMATS.set(("png", "svg") if vector else ("png",))
        try:
            figures[NEUTRAL_STEM] = fig_neutral(neutral, out)
        except Exception as e:  # noqa: BLE001 - one figure must not stop the report
            errors[NEUTRAL_STEM] = f"{type(e).__name__}: {e}"
            note(f"report: figure {NEUTRAL_STEM} not drawn: {errors[NEUTRAL_STEM]}")
        finally:
            FORMATS.reset(token)
        write_text(out / "neutral-temperature.json", json.dumps(neutral, indent=1) + "\n")
    write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    write_text(out / "summary.md", summary_markdown(summary) + ("\n" + neutral_markdown(neutral) if neutral else ""))
    page = page_html(runs, groups, figures, errors, tail_buckets, shift_buckets, summary, neutral)
    write_text(out / "report.html", page)
    for r in runs:
        if r.partial:
            note(f"report: {r.partial_note()}")
    if not quiet:
        log.info(f"report: {out / 'report.html'}")
    return 0
