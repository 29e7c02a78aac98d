"""The curate stage of `collapse run` (registry and curators: :mod:`collapse.loop.curate`): score generation g's
samples, keep what the curator keeps as N training rows, write the record; and the record's figures for the row."""

from __future__ import annotations

import numpy as np

from collapse.loop.curate import CURATORS, FIGURES, RECORD, SUMMARY, USES, Batch, fill, resolved

GEN0_KEY = "gen0_ppl"  # run.samples_cache[(GEN0_KEY, g)]: generation g's samples scored by generation 0


def gen0_scores(run, g: int, base, full: np.ndarray) -> np.ndarray:
    """The samples' perplexity under generation 0: the curate stage's where it scored with that model (the same
    rows, model and batches: the same numbers), else scored here."""
    cached = run.samples_cache.pop((GEN0_KEY, g), None)
    if cached is not None:
        return cached
    from collapse.metrics.evaluate import sequence_ppl

    return sequence_ppl(base, full, run.cfg.generation.prompt_tokens, run.cfg.eval.batch_size, run.accelerator)


def curate_stage(run, g: int, base, model) -> str:
    """Score generation g's samples and keep what the curator keeps, as N training rows (``fill``); write the record."""
    import pyarrow.parquet as pq

    from collapse import fault
    from collapse.errors import DataError
    from collapse.io import write_json, write_parquet
    from collapse.loop.rundir import load_samples
    from collapse.metrics.evaluate import sequence_ppl
    from collapse.seeding import numpy_rng

    cfg, d, gc = run.cfg, run.dir(g), run.cfg.generation
    full = load_samples(run.out, g, keep_prompt=True)
    texts = pq.read_table(d / "samples.parquet", columns=["text"]).column("text").to_pylist()
    scored: dict[str, np.ndarray] = {}

    def score(which: str) -> np.ndarray:
        if which not in ("current", "gen0"):
            raise ValueError(f"no model {which!r} to score with: `current` or `gen0`")
        if which not in scored:
            by_gen0 = which == "gen0" or g == 0  # generation 0 is the current model of generation 0
            raw = sequence_ppl(base if by_gen0 else model(), full, gc.prompt_tokens, cfg.eval.batch_size, run.accelerator)
            if by_gen0:  # the measure stage scores the same rows with the same model next: it takes these
                run.samples_cache[(GEN0_KEY, g)] = raw
            scored[which] = np.asarray(raw, np.float64)
        return scored[which]

    c = resolved(cfg.curate)
    batch = Batch(g, full[:, gc.prompt_tokens:], texts, full[:, :gc.prompt_tokens], run.data.truths,
                  run.data.real_rows, score, ignore=tuple(run.data.suppress))
    rng = numpy_rng(cfg.seed, g, "curate")
    fault.point("curate", g, 0)
    kept, scores = CURATORS[c.kind](batch, c, rng)
    n = len(full)
    kept, scores = np.asarray(kept), np.asarray(scores, np.float64)
    if kept.shape != (n,) or scores.shape != (n,) or (kept < 0).any() or not np.issubdtype(kept.dtype, np.integer):
        raise DataError(f"curator {c.kind!r} returned repeats of shape {kept.shape} and scores of shape "
                        f"{scores.shape}: it must return {n} non-negative integers and {n} scores.")
    if kept.sum() == 0:
        raise DataError(f"curator {c.kind!r} kept none of generation {g}'s {n} samples: the next generation would "
                        "have nothing to train on (raise curate.share, or curate.threshold for dedupe).")
    repeats = fill(kept, n, rng)
    q = np.nanquantile(scores, [0.1, 0.5, 0.9]) if np.isfinite(scores).any() else [None] * 3
    summary = {"kind": c.kind, "settings": {k: getattr(c, k) for k in USES.get(c.kind, ())},
               "kept_share": float((kept > 0).mean()), "kept_rows": int(kept.sum()), "rows": n,
               "distinct_rows": int((repeats > 0).sum()),
               "curate_score_q10": q[0], "curate_score_q50": q[1], "curate_score_q90": q[2], **batch.extras}
    fault.point("curate", g, 1)
    if run.is_main:
        write_parquet(d / RECORD, {"sample_index": np.arange(n, dtype=np.int64), "score": scores,
                                   "kept": kept.astype(np.int64), "repeats": repeats})
        write_json(d / SUMMARY, {k: (float(v) if isinstance(v, np.floating) else v) for k, v in summary.items()})
    return f"{c.kind}: kept {summary['kept_share']:.1%} of {n} samples ({summary['distinct_rows']} in the {n} rows)"


def row_figures(d) -> dict:
    """The curate figures of a generation folder's record for its metrics row ({} without a record)."""
    from pathlib import Path

    from collapse.io import read_json

    p = Path(d) / SUMMARY
    if not p.is_file():
        return {}
    s = read_json(p)
    return {k: s.get(k) for k in (*FIGURES, "detector_accuracy") if k in s}
