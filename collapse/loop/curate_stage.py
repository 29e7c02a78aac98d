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


def scorer_of(which: str, continues_previous: bool, g: int) -> str:
    """The model a ``score_with`` names, as ``current`` or ``gen0``: the trainee of generation g+1 starts from model
    g where the model kind continues from the previous generation (``train.init: previous``), else from generation
    0 (``base``); generation 0 is its own current."""
    if which not in ("trainee", "current", "gen0"):
        raise ValueError(f"no model {which!r} to score with: `trainee`, `current` or `gen0`")
    if which == "trainee":
        which = "current" if continues_previous else "gen0"
    return "gen0" if g == 0 else which


def curate_stage(run, g: int, base, model) -> str:
    """Build generation g's pool, score it and keep what the curator keeps, as N training rows (``fill``); write
    the record."""
    import pyarrow.parquet as pq

    from collapse import fault
    from collapse.errors import DataError
    from collapse.io import write_json, write_parquet
    from collapse.loop.pool import build_pool
    from collapse.loop.rundir import load_samples
    from collapse.metrics.evaluate import sequence_ppl
    from collapse.models.hf import decode_rows
    from collapse.seeding import numpy_rng

    cfg, d, gc = run.cfg, run.dir(g), run.cfg.generation
    full = load_samples(run.out, g, keep_prompt=True)
    pool = build_pool(full, run.data.blocks, run.data.real_rows, cfg.curate.real_share, gc.prompt_tokens,
                      tuple(run.data.suppress), numpy_rng(cfg.seed, g, "pool") if cfg.curate.real_share else None,
                      run.data.prompt_blocks)
    texts = pq.read_table(d / "samples.parquet", columns=["text"]).column("text").to_pylist()
    if pool.mixed:  # the real rows' continuations decoded as a sample's are
        real = ~pool.own
        texts = [texts[i] if i >= 0 else "" for i in pool.sample_index]
        for j, t in zip(np.flatnonzero(real), decode_rows(run.tok, pool.full[real, gc.prompt_tokens:])):
            texts[j] = t
    # a real row's true continuation is itself: handing truths over a mixed pool would tell which rows are real
    truths = None if pool.mixed else run.data.truths[pool.sample_index]
    scored: dict[str, np.ndarray] = {}

    def score(which: str) -> np.ndarray:
        which = scorer_of(which, run.ckpt.continues_previous, g)
        if which not in scored:
            by_gen0 = which == "gen0"
            raw = sequence_ppl(base if by_gen0 else model(), pool.full, gc.prompt_tokens, cfg.eval.batch_size,
                               run.accelerator)
            if by_gen0 and not pool.mixed:  # the measure stage scores the same rows with the same model next
                run.samples_cache[(GEN0_KEY, g)] = raw
            scored[which] = np.asarray(raw, np.float64)
        return scored[which]

    c = resolved(cfg.curate)
    batch = Batch(g, pool.full[:, gc.prompt_tokens:], texts, pool.full[:, :gc.prompt_tokens], truths,
                  pool.human_rows, score, ignore=tuple(run.data.suppress), own=pool.own)
    rng = numpy_rng(cfg.seed, g, "curate")
    fault.point("curate", g, 0)
    kept, scores = CURATORS[c.kind](batch, c, rng)
    n, n_train = len(pool.full), run.data.n_train
    kept, scores = np.asarray(kept), np.asarray(scores, np.float64)
    if kept.shape != (n,) or scores.shape != (n,) or (kept < 0).any() or not np.issubdtype(kept.dtype, np.integer):
        raise DataError(f"curator {c.kind!r} returned repeats of shape {kept.shape} and scores of shape "
                        f"{scores.shape}: it must return {n} non-negative integers and {n} scores.")
    if kept.sum() == 0:
        raise DataError(f"curator {c.kind!r} kept none of generation {g}'s {n} pool rows: the next generation would "
                        "have nothing to train on (raise curate.share, or curate.threshold for dedupe).")
    repeats = fill(kept, n_train, rng)
    q = np.nanquantile(scores, [0.1, 0.5, 0.9]) if np.isfinite(scores).any() else [None] * 3
    summary = {"kind": c.kind, "settings": {k: getattr(c, k) for k in USES.get(c.kind, ())},
               "kept_share": float((kept > 0).mean()), "kept_rows": int(kept.sum()), "rows": n_train,
               "distinct_rows": int((repeats > 0).sum()),
               "curate_score_q10": q[0], "curate_score_q50": q[1], "curate_score_q90": q[2], **batch.extras}
    if c.pooled:  # the pool, and (for the analysis: the curator never saw it) how much real text it kept
        real = ~pool.own
        summary["pool"] = {"oversample": c.oversample, "real_share": c.real_share, "rows": n,
                           "real_rows": int(real.sum()), "human_rows": int(len(pool.human_rows))}
        if pool.mixed:
            summary["kept_real_share"] = float(repeats[real].sum() / n_train)
            summary["pool_real_share"] = float(real.mean())
    fault.point("curate", g, 1)
    if run.is_main:
        record = {"sample_index": pool.sample_index, "score": scores, "kept": kept.astype(np.int64), "repeats": repeats}
        if pool.mixed:
            record["real_block"] = pool.real_block
        write_parquet(d / RECORD, record)
        write_json(d / SUMMARY, {k: (float(v) if isinstance(v, np.floating) else v) for k, v in summary.items()})
    real_note = f", {summary['kept_real_share']:.1%} of the rows real" if pool.mixed else ""
    return (f"{c.kind}: kept {summary['kept_share']:.1%} of {n} pool rows ({summary['distinct_rows']} in the "
            f"{n_train} rows{real_note})")


def curated_rows(run, g: int, rows: np.ndarray) -> np.ndarray:
    """Corpus g as the next generations train on it: each pool row (``rows``: the samples as training rows, or a
    real block cut like them) as often as the record says."""
    from collapse.loop.curate import read_pool_record
    from collapse.loop.pool import pool_rows

    index, real_block, repeats = read_pool_record(run.dir(g))
    gc = run.cfg.generation
    return np.repeat(pool_rows(rows, index, real_block, run.data.blocks, gc.prompt_tokens, gc.keep_prompt), repeats,
                     axis=0)


def row_figures(d) -> dict:
    """The curate figures of a generation folder's record for its metrics row ({} without a record)."""
    from pathlib import Path

    from collapse.io import read_json

    p = Path(d) / SUMMARY
    if not p.is_file():
        return {}
    s = read_json(p)
    return {k: s.get(k) for k in (*FIGURES, "detector_accuracy", "kept_real_share") if k in s}
