"""One generation's row of ``metrics.jsonl``: its figures, their intervals and paired changes, and the
console table printed at the end of a run.

``metrics_row`` gathers what the stages wrote (evaluation, distribution metrics of the samples, their
gen-0 perplexity, training); ``interval_part`` adds every figure's 95% interval and the paired changes
from generation 0 and the previous generation (``collapse.metrics.stats``); ``metrics_table`` prints rows.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from collapse import metrics as M
from collapse.io import read_json, write_json
from collapse.loop.rundir import BOOTSTRAP, EVAL_BLOCKS
from collapse.metrics import stats as S
from collapse.metrics.registry import columns

PPL_BINS = np.logspace(0, 4, 81)  # gen0_ppl histogram edges, shared by all generations (1 .. 10^4)


def metrics_row(g: int, ev: dict, ref_counts: np.ndarray, gen_ids: np.ndarray, ppl: np.ndarray, d: Path) -> dict:
    """One generation's row of metrics.jsonl: evaluation, distribution metrics, gen0 perplexity, training."""
    dm = M.distribution_metrics(ref_counts, M.counts(gen_ids, len(ref_counts)), gen_seqs=gen_ids)
    bs = dm.pop("bucket_shift")
    train = read_json(d / "train.json") if (d / "train.json").is_file() else {}
    q = np.quantile(ppl, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(ppl) else [None] * 5
    hist, _ = np.histogram(np.clip(ppl, PPL_BINS[0], PPL_BINS[-1]), bins=PPL_BINS)
    return {
        "generation": g,
        "test_ppl": ev["test_ppl"],
        "test_nll": ev["test_nll"],
        "tail_loss": ev["tail_loss"],
        "tail_tokens": ev["tail_tokens"],
        "bucket_shift": {k: v["shift_pct"] for k, v in bs.items()},
        "bucket_share": {k: {"ref_share": v["ref_share"], "gen_share": v["gen_share"]} for k, v in bs.items()},
        **dm,
        "gen0_ppl_mean": float(np.mean(ppl)) if len(ppl) else None,
        "gen0_ppl_quantiles": {"q05": q[0], "q25": q[1], "q50": q[2], "q75": q[3], "q95": q[4]},
        "gen0_ppl_hist": {"edges": PPL_BINS.tolist(), "counts": hist.tolist()},
        "num_samples": int(len(gen_ids)),
        "train_loss": train.get("train_loss"),
        "val_nll": train.get("val_nll"),
        "train_rows": train.get("rows"),
        "train_real_rows": train.get("real_rows"),
    }


def interval_part(run, g: int, row: dict, gen_ids: np.ndarray, ppl: np.ndarray, extra: dict | None = None) -> dict:
    """Intervals of every figure of generation g and its paired changes from generation 0 and g-1.

    The units: samples (sample i continues real prompt i in every generation) and test blocks (the same
    blocks every generation). Both are resampled with the same weights in every generation, drawn from
    (seed, "bootstrap", unit): a change is the difference of two figures under the same resample. ``extra``: other
    figures' resamples under the same sample weights (the text figures, collapse.loop.text_stage).
    """
    st, d = run.cfg.stats, run.dir(g)
    if not st.resamples:
        return {"intervals": None}
    t0 = time.perf_counter()
    names = M.BUCKETS
    W = run.boot_weights("samples", len(gen_ids))
    We, sums, counts = None, None, None
    if (d / EVAL_BLOCKS).is_file():
        with np.load(d / EVAL_BLOCKS, allow_pickle=False) as z:
            sums, counts = z["sums"], z["counts"]
        We = run.boot_weights("test blocks", len(sums))
    ref = run.data.ref_counts
    r = M.ranks(ref)
    corpus = S.Corpus(gen_ids, len(ref), run.data.bucket_of, len(names))
    truth = run.data.truth  # a synthetic row's shifts are against the TRUE shares: its resamples' too
    boot = S.generation_boot(W, corpus, ref, run.data.bucket_of, (r >= 1) & (r <= 100), names, ppl, We, sums, counts,
                             ref_share=None if truth is None else np.asarray(truth.bucket_shares(), np.float64))
    boot.update(extra or {})
    point = S.flat_point(row, names)
    out = S.row_intervals(point, boot, names, st.level)
    out["changes"] = {}
    for label, k in (("from_gen0", 0), ("from_previous", g - 1)):
        dk = run.dir(k)
        if g > 0 and (dk / BOOTSTRAP).is_file():
            out["changes"][label] = S.changes(point, boot, S.flat_point(read_json(dk / "metrics.json"), names),
                                              S.load_boot(dk / BOOTSTRAP), st.level)
    out.update(S.drift_part(g, out["changes"].get("from_gen0")))
    S.save_boot(d / BOOTSTRAP, boot)
    out["intervals"] = {"method": METHOD, "level": st.level, "resamples": st.resamples,
                        "units": {"samples": int(len(gen_ids)), "test_blocks": None if sums is None else int(len(sums))}}
    # the cost, for the benchmark: beside the row, not in it (a resumed run's rows equal an uninterrupted one's)
    write_json(d / "intervals.json", {"seconds": round(time.perf_counter() - t0, 3)})
    return out


METHOD = ("percentile bootstrap (shares, shifts, losses, means); delete-half jackknife (entropy, KL, JS, coverage, "
          "tail mass, distinct-n)")


def console_columns(which: str = "console") -> list[tuple[str, str, M.Figure]]:
    """(heading, flat figure name, figure) of each console column (``which``: ``console``, or ``change`` for the
    table of changes), from the registry's :func:`collapse.metrics.registry.columns`."""
    return [(h, k, M.FIGURES[k.split(".")[0]]) for k, h, _ in columns(which, short=True)]


def _columns(head: list[str], rows: list[list[str]]) -> list[str]:
    w = [max(len(x) for x in col) for col in zip(head, *rows)]
    return [" ".join(f"{x:>{n}}" for x, n in zip(r, w)) for r in (head, *rows)]


def metrics_table(rows: list[dict]) -> str:
    """The console tables printed at the end of a run, their columns from the registry (``console_columns``).

    Each value with ± half the width of its 95% interval (over samples or test blocks); then the main
    figures' changes from generation 0 with their paired intervals, ``*`` where the interval excludes 0.
    """
    M.adopt(k for r in rows for k in r)  # lm-eval's figures, known from the rows (a resumed run's read from disk)
    body = []
    held = [c for c in console_columns() if any(c[1].split(".")[0] in r for r in rows)]  # a stage's figures where run
    for r in rows:
        point, cells = S.flat_point(r, M.BUCKETS), [str(r["generation"])]
        for _, k, f in held:
            v, ci = point.get(k), S.row_ci(r, k)
            text = "—" if v is None else format(v, f.fmt)
            if v is not None and ci and ci[0] is not None:
                text += "±" + format((ci[1] - ci[0]) / 2, f.fmt.lstrip("+"))
            cells.append(text)
        body.append(cells)
    lines = _columns(["gen", *(h for h, *_ in held)], body)
    changed = [r for r in rows if (r.get("changes") or {}).get("from_gen0")]
    if changed:
        cols = [c for c in console_columns("change") if any(c[1].split(".")[0] in r for r in rows)]
        body = []
        for r in changed:
            ch, cells = r["changes"]["from_gen0"], [str(r["generation"])]
            for _, k, f in cols:
                c = ch.get(k)
                spec = "+" + f.fmt.lstrip("+")
                cells.append("—" if c is None or c["ci95"][0] is None else
                             f"{format(c['delta'], spec)} [{format(c['ci95'][0], spec)}, "
                             f"{format(c['ci95'][1], spec)}]{'*' if c['resolved'] else ' '}")
            body.append(cells)
        lines += ["", "change from generation 0 with its 95% paired interval (* resolved: the interval excludes 0)",
                  *_columns(["gen", *(h for h, *_ in cols)], body)]
    return "\n".join(lines + harness_table(rows))


def harness_table(rows: list[dict]) -> list[str]:
    """lm-eval's figures (eval.harness), a row each: the value ± lm-eval's standard error in every generation, then
    the last generation's paired change from generation 0."""
    figs = [f for f in M.harness_figures() if any(f.name in r for r in rows)]
    if not figs:
        return []
    last = (rows[-1].get("changes") or {}).get("from_gen0") or {}
    body = []
    for f in figs:
        cells = [f.label]
        for r in rows:
            v, se = r.get(f.name), r.get(f"{f.name}_stderr")
            cells.append("—" if v is None else f"{v:.3f}" + ("" if se is None else f"±{se:.3f}"))
        c = last.get(f.name)
        cells.append("—" if c is None or c["ci95"][0] is None else
                     f"{c['delta']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]{'*' if c['resolved'] else ' '}")
        body.append(cells)
    head = ["lm-eval task metric", *(f"gen {r['generation']}" for r in rows), f"gen {rows[-1]['generation']} − gen 0"]
    return ["", "lm-eval tasks (eval.harness): value ± lm-eval's standard error; the change from generation 0 with its 95% "
            "paired interval (* resolved)", *_columns(head, body)]
