"""``report.html``: the page, the summary tables (also as Markdown for ``summary.md``), each run's metrics table
and example samples (the same real prompt in every generation).
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from collapse.loop.rundir import gen_dir
from collapse.metrics.registry import columns
from collapse.report.figures import FIGURES
from collapse.report.neutral import STEM as NEUTRAL_STEM
from collapse.report.plots import band_note
from collapse.report.runs import IGNORED_KEYS, Group, Run, metric_getter, schema_drift, short_value

EXAMPLES = 3  # example prompts per run

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
    "harness": "Each generation's model on lm-evaluation-harness tasks (<code>eval.harness.tasks</code>). The shipped "
               "<code>kjv_cloze</code> asks which of four words ends a held-out KJV passage, a task per frequency bucket "
               "of the answer (chance 0.25): the downstream face of the tail loss. Bands: 95% intervals over the "
               "task's examples (one run) or over seeds.",
}
_FIG_TITLES = {"test-ppl": "Test perplexity", "tail-loss": "Tail loss by frequency bucket",
               "bucket-heatmap": "Bucket shift (heatmap)", "bucket-shift": "Bucket shift (bars)",
               "gen0-ppl": "Perplexity of samples under the generation-0 model", "diversity": "Coverage, entropy, KL",
               "zipf": "Zipf plot", "harness": "lm-eval tasks"}


def _neutral_html(neutral: dict, png: Path) -> str:
    """The neutral temperature: the figure and, per learner, T* with its interval (collapse.report.neutral)."""
    esc = html.escape
    rows = []
    for learner, s in neutral.items():
        t = s["t_star"]
        lo, hi = t["interval"]
        val = t.get("note", "") if t["t_star"] is None else (
            f"{t['t_star']:.3f} [{'—' if lo is None else f'{lo:g}'}, {'—' if hi is None else f'{hi:g}'}]")
        t10 = s["t_star_top10"]
        val10 = t10.get("note", "") if t10["t_star"] is None else f"{t10['t_star']:.3f}"
        rows.append(f"<tr><td>{esc(learner)}</td><td>{esc(val)}</td><td>{esc(val10)}</td></tr>")
    return (f'<h3 id="{NEUTRAL_STEM}">The neutral temperature</h3><figure><img src="{esc(png.name)}" '
            'alt="drift per generation against temperature"><figcaption>The drift per generation (the last '
            "generation's change from generation 0 over the number of generations) at each sampling temperature: "
            "below 0 the samples sharpen generation after generation (the Curse of Recursion's direction), above 0 "
            "they flatten. T*: where the entropy drift changes sign (interpolated), between the nearest points "
            "resolved on either side.</figcaption></figure><table class=\"groups\"><thead><tr><th>learner</th>"
            "<th>T* (entropy) [interval]</th><th>T* (top-10 share)</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def page_html(runs: list[Run], groups: list[Group], figures: dict[str, Path | None], errors: dict[str, str],
              tail_buckets: list[str], shift_buckets: list[str], summary: list[dict] | None = None,
              neutral: dict | None = None) -> str:
    """The whole of ``report.html``; ``figures`` and ``errors`` as :func:`~collapse.report.figures.draw_figures`
    returns them (a figure not drawn is named with the reason)."""
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
                       + "".join(f"<td>{esc(short_value(g.diff[k]))}</td>" for k in keys) + "</tr>" for g in groups)
        parts.append("<p>Runs are grouped by config (ignoring " + esc(", ".join(IGNORED_KEYS))
                     + "); the groups differ in:</p>"
                     f"<table class=\"groups\"><thead><tr><th>group</th>{head}</tr></thead><tbody>{body}</tbody>"
                     "</table>")
    drift = schema_drift(runs)
    if drift:
        parts.append('<p class="note">Config keys only some runs have (written by different versions of collapse; '
                     "not used for grouping): " + esc(", ".join(drift)) + ".</p>")
    if summary:
        parts.append(_summary_html(summary))
    band = band_note(groups)
    parts.append("<h2>Figures</h2>")
    if band:
        parts.append(f'<p class="note">Lines: mean over seeds. {esc(band)}</p>')
    for stem in FIGURES:
        png = figures.get(stem)
        if png is None:
            if stem == "harness" and stem not in errors:
                continue  # a run without lm-eval tasks: nothing to say
            why = errors.get(stem, "no data for this figure")
            parts.append(f"<h3>{esc(_FIG_TITLES[stem])}</h3><p class=\"note\">not drawn: {esc(why)}</p>")
            continue
        parts.append(f'<h3 id="{stem}">{esc(_FIG_TITLES[stem])}</h3><figure>'
                     f'<img src="{esc(png.name)}" alt="{esc(_FIG_TITLES[stem])}">'
                     f'<figcaption>{_CAPTIONS[stem]}'
                     + (f' <a href="{esc(stem)}.svg">SVG</a>' if png.with_suffix(".svg").is_file() else "")
                     + '</figcaption></figure>')
    if neutral and figures.get(NEUTRAL_STEM) is not None:
        parts.append(_neutral_html(neutral, figures[NEUTRAL_STEM]))
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
    return r.finished_text + ("" if r.planned is None else f" of 0..{r.planned}") + (" (partial)" if r.partial else "")


# ---------------------------------------------------------------------- summary tables


def _pm(m: dict | None, signed: bool = False) -> str:
    """mean ± over-seed half-width; a change also says in how many runs its own interval excludes 0
    (one run: that interval, ``*`` when it excludes 0)."""
    if m is None:
        return "—"
    spec = ("+" if signed else "") + m["format"].lstrip("+")  # a figure's format may carry its own sign
    text = f"{m['mean']:{spec}}" + ("" if m["ci95"] is None else f" ± {m['ci95']:{m['format'].lstrip('+')}}")
    within = m.get("within")
    if within and m["n"] == 1:
        lo, hi = within[0]["ci95"]
        text += f" [{lo:{spec}}, {hi:{spec}}]{'*' if within[0].get('resolved') else ''}"
    elif within:
        text += f" ({m['resolved_runs']}/{len(within)} resolved)"
    return text


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
    keys = list(dict.fromkeys(k for e in summary for p in e.get("per_run", []) for k in p["changes"]))
    if keys and any(len(e.get("per_run", [])) > 1 for e in summary):  # one run: the table above says it all
        labels = {k: e["changes"][k]["label"] for e in summary for k in e["changes"]}
        fmts = {k: e["changes"][k]["format"] for e in summary for k in e["changes"]}
        rows = [[e["group"], str(p["seed"]), str(e["generation"])]
                + [_within(p["changes"].get(k), fmts.get(k, ".3f")) for k in keys]
                for e in summary for p in e.get("per_run", [])]
        tables.append(("change from generation 0, each run with its own paired 95% interval (* resolved)",
                       ["group", "seed", "gen"] + [labels.get(k, k) for k in keys], rows))
    return tables


def _within(c: dict | None, fmt: str) -> str:
    if not c or c["ci95"][0] is None:
        return "—"
    spec = "+" + fmt.lstrip("+")
    return (f"{c['delta']:{spec}} [{c['ci95'][0]:{spec}}, {c['ci95'][1]:{spec}}]"
            f"{'*' if c['resolved'] else ''}")


def summary_markdown(summary: list[dict]) -> str:
    """The summary as Markdown tables (groups as rows), as ``docs/results.md`` quotes them."""
    parts = []
    for title, head, rows in _summary_tables(summary):
        parts.append(f"**{title}**\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
                     + "".join("| " + " | ".join(r) + " |\n" for r in rows))
    return "\n".join(parts) + ("\nmean ± half-width of the 95% t-interval over seeds (none for one seed). A change "
                               "also says in how many runs its paired 95% interval inside the run excludes 0 "
                               "(resolved); with one run, that interval, * when resolved.\n")


def _summary_html(summary: list[dict]) -> str:
    esc = html.escape
    parts = ['<h2 id="summary">Last generation, mean ± 95% CI over seeds</h2><p class="note">At the last '
             "generation every run of a group finished; ± is the half-width of the 95% t-interval over seeds. "
             "Changes are paired: each run against its own generation 0 (the seeds' generation-0 models differ "
             "too). A change also says in how many runs its own paired 95% interval (resampled over the run's "
             "samples or test blocks) excludes 0 — resolved inside that run; with one run, that interval, * when "
             "resolved. Also in <code>summary.json</code> and <code>summary.md</code>.</p>"]
    for title, head, rows in _summary_tables(summary):
        parts.append(f"<h3>{esc(title[0].upper() + title[1:])}</h3>"
                     '<div class="scroll"><table class="summary"><thead><tr>'
                     + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
                     + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
                     + "</tbody></table></div>")
    return "".join(parts)


# ---------------------------------------------------------------------- the metrics table


def format_value(v: Any, spec: str, scale: float = 1.0) -> str:
    """A number (times ``scale``) in the format ``spec``; "—" for a missing, non-finite or non-number value."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "—"
    return format(v * scale if scale != 1.0 else v, spec)


def table_columns(tail_buckets: list[str], shift_buckets: list[str]) -> list[tuple[str, str, str, float]]:
    """(metrics key, header, format spec, scale) of each column of the per-generation table."""
    return [("generation", "gen", "d", 1.0),
            *((k, h, spec, 1.0) for k, h, spec in
              columns("report", {"tail_loss": tail_buckets, "bucket_shift": shift_buckets}))]


def format_cell(row: dict, key: str, spec: str, scale: float = 1.0) -> str:
    """The table cell of metrics key ``key`` (dotted for a nested one) in a metrics row."""
    return format_value(metric_getter(key)(row), spec, scale)


def _table_html(run: Run, tail_buckets: list[str], shift_buckets: list[str]) -> str:
    cols = [c for c in table_columns(tail_buckets, shift_buckets)  # a figure no row has (the truth's on real text)
            if c[0] == "generation" or any(metric_getter(c[0])(r) is not None for r in run.rows)]
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
        p = gen_dir(run.path, g) / "samples.parquet"
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
    p = gen_dir(run.path, g) / "gen0_ppl.npy"
    try:
        a = np.load(p, allow_pickle=False, mmap_mode="r")
        return float(a[i]) if i < len(a) else None
    except (ValueError, OSError):
        return None


def _examples_html(run: Run) -> str:
    exs, note = _examples(run)
    parts = [f'<p class="note">{html.escape(note)}</p>' if note else ""]
    for ex in exs:
        rows = "".join(f"<tr><td>{g}</td><td>{format_value(ppl, '.1f')}</td><td class=\"text\">{html.escape(t)}</td></tr>"
                       for g, t, ppl in ex["gens"])
        prompt = html.escape(ex["prompt"] or "(no prompt stored)")
        parts.append(f'<div class="example"><p><b>sample {ex["index"]}</b>, real prompt:</p>'
                     f'<blockquote class="text">{prompt}</blockquote>'
                     '<table class="samples"><thead><tr><th>gen</th><th>gen-0 ppl</th>'
                     '<th style="text-align:left">continuation</th></tr></thead>'
                     f"<tbody>{rows}</tbody></table></div>")
    return "".join(parts)
