"""The measure stage's text figures (``eval.mauve``, ``eval.self_bleu``): their values for the metrics row and
their resamples under the run's weights (the same in every generation: self-BLEU's bootstrap, MAUVE's delete-half
samples), from which ``interval_part`` gives intervals and paired changes like every other figure's. Computed on
the main process only. With ``curate.oversample: k`` both read each prompt's first continuation only.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import numpy as np

from collapse.io import write_json

REF_FEATURES = "mauve-reference-features"  # run.samples_cache key: the true continuations' features, once a run


@dataclass
class TextPart:
    point: dict = field(default_factory=dict)  # figure -> value, for the row
    boot: dict = field(default_factory=dict)  # figure -> (R,) resampled values (NaN: not resampled)

    def __or__(self, other: TextPart) -> TextPart:
        return TextPart({**self.point, **other.point}, {**self.boot, **other.boot})


@contextlib.contextmanager
def _quiet_stderr():
    """faiss's k-means warns on stderr from C++ (few points per centroid, as MAUVE's n/10 buckets always have): fd 2
    goes to a file meanwhile, and every other line is written back, so a native error still shows."""
    import sys
    import tempfile

    sys.stderr.flush()
    fd = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 2)
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not ln.startswith("WARNING clustering")]
            if kept:
                sys.stderr.write("".join(kept))


def _features(run, base, rows: np.ndarray) -> np.ndarray:
    from collapse.decoding.generate import kind_of
    from collapse.metrics.text import features, text_features

    ec = run.cfg.eval
    if ec.mauve_features != "gen0":
        from collapse.models.hf import decode_rows

        return text_features(ec.mauve_features, decode_rows(run.tok, rows))
    return features(kind_of(base).for_sampling(base), rows, ec.batch_size)


def text_part(run, g: int, base, gen_ids: np.ndarray) -> TextPart:
    """MAUVE and self-BLEU of generation g's samples (continuations only), as the config asks."""
    ec, st = run.cfg.eval, run.cfg.stats
    if not (ec.mauve or ec.self_bleu) or not run.is_main:
        return TextPart()
    from collapse.metrics import text as T
    from collapse.models.hf import decode_rows
    from collapse.seeding import numpy_rng

    t0, out = time.perf_counter(), TextPart()
    wts = run.boot_weights("samples", len(gen_ids)) if st.resamples else None
    W = wts.boot if wts is not None else None
    k = run.data.oversample  # k continuations a prompt: only each prompt's first (no siblings, no repeated truth)
    if ec.self_bleu:  # the same subsample of prompts every generation: the changes are paired
        idx = k * T.subsample(len(gen_ids) // k, ec.self_bleu_samples, numpy_rng(run.cfg.seed, "self-bleu"))
        scores = T.self_bleu_scores(decode_rows(run.tok, gen_ids[idx]))
        out.point["self_bleu"] = float(scores.mean())
        if W is not None:
            w = W[:, idx]
            with np.errstate(invalid="ignore", divide="ignore"):
                out.boot["self_bleu"] = (w @ scores) / w.sum(1)
    if ec.mauve:
        if REF_FEATURES not in run.samples_cache:
            run.samples_cache[REF_FEATURES] = _features(run, base, run.data.truths[::k])
        p, q = run.samples_cache[REF_FEATURES], _features(run, base, gen_ids[::k])
        seed = int(numpy_rng(run.cfg.seed, "mauve").integers(2**31 - 1))
        buckets = max(2, int(round(len(q) / 10)))  # mauve-text's n/10, kept for the half-samples
        with _quiet_stderr():
            out.point["mauve"] = T.mauve_score(p, q, seed=seed, buckets=buckets)
            if wts is not None and ec.mauve_resamples:  # the delete-half jackknife: point + scaled deviation
                B = min(ec.mauve_resamples, len(wts.half))
                v = T.mauve_half(p, q, wts.half[:B, ::k], seed=seed, buckets=buckets)  # a prompt's weight, once
                out.boot["mauve"] = np.full(len(wts.half), np.nan)
                out.boot["mauve"][:B] = out.point["mauve"] + wts.scale * (v - np.nanmean(v))
    # the cost, for the benchmark: beside the row, not in it (a resumed run's rows equal an uninterrupted one's)
    write_json(run.dir(g) / "text.json", {"seconds": round(time.perf_counter() - t0, 3)})
    return out
