"""What every `collapse measure` shares, one decoding or several: the checked model and examples (:func:`prepare`),
the continuations of the first halves (:func:`continue_prompts`), and their figures against the true second halves
with intervals over examples (:func:`shift_result`, :func:`measure_intervals`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from collapse import metrics as M
from collapse.config import Config

log = logging.getLogger("collapse")


def measure_intervals(refs: np.ndarray, gen: np.ndarray, vocab: int, rank_counts: np.ndarray, result: dict,
                      key: tuple, resamples: int, level: float) -> None:
    """Add every figure's interval to ``result`` (in place), the unit being the example: its true second
    half and its continuation are resampled together. Bucket membership is held fixed."""
    from collapse.metrics import stats as S
    from collapse.seeding import numpy_rng

    t0 = time.perf_counter()
    names = M.BUCKETS
    buckets = M.bucket_of(rank_counts, vocab)
    r = M.ranks(np.pad(rank_counts, (0, max(0, vocab - len(rank_counts)))))
    wts = S.draw_weights(len(gen), numpy_rng(*key), resamples)
    gc, rc = S.Corpus(gen, vocab, buckets, len(names)), S.Corpus(refs, vocab, buckets, len(names))
    boot = S.flatten_corpus_boot(S.corpus_boot(wts, gc, rc, (r >= 1) & (r <= 100), rank=rank_counts), names)
    ci, se = S.intervals(boot, level), S.standard_errors(boot)
    for b, v in result["bucket_shift"].items():
        ok = v["shift_pct"] is not None
        v["ci95"] = ci[f"bucket_shift.{b}"] if ok else [None, None]
        v["gen_share_ci95"] = ci[f"gen_share.{b}"]
        v["examples_to_resolve"] = S.required_units(len(gen), v["shift_pct"], se[f"bucket_shift.{b}"]) if ok else None
    for k in S.resampled_names():
        result[f"{k}_ci"] = ci[k]
    result["intervals"] = {"method": "percentile bootstrap (shares, shifts); delete-half jackknife (entropy, "
                                     "KL, JS, coverage, tail mass, distinct-n)",
                           "level": level, "resamples": resamples, "unit": "examples", "units": int(len(gen)),
                           "seed_key": list(key), "seconds": round(time.perf_counter() - t0, 3)}


@dataclass
class Prepared:
    """What every decoding of one `collapse measure` shares: the model, the paired prompts and true halves."""

    cfg: Config
    accelerator: object
    plan: object
    model: object
    tok: object
    model_ref: str
    file: Path | None
    windows: np.ndarray
    train_docs: list  # token ids of every training document (the ranking, and the control's windows)
    t0: float

    @property
    def half(self) -> int:
        return self.cfg.measure.window // 2

    @property
    def prompts(self) -> np.ndarray:
        return self.windows[:, :self.half]

    @property
    def refs(self) -> np.ndarray:
        return self.windows[:, self.half:]

    @property
    def vocab(self) -> int:
        return max(int(self.model.config.vocab_size), len(self.tok))

    def rank_counts(self, ref_c: np.ndarray) -> np.ndarray:
        return ref_c if self.cfg.measure.rank_by == "reference" else M.counts(self.train_docs, self.vocab)


def prepare(cfg: Config, show_progress: bool, check_only: bool = False):
    """The checks (their plan alone with ``check_only``), then the model and the examples."""
    from collapse.check import check_measure
    from collapse.data import measure_docs, measure_windows, split_ids, split_label
    from collapse.models import kind_for
    from collapse.models.hf import set_threads
    from collapse.runtime import LaunchWorld, make_accelerator

    t0 = time.perf_counter()
    set_threads()
    accelerator = LaunchWorld() if check_only else make_accelerator()
    plan, checked = check_measure(cfg, accelerator)  # data and out_dir first: before a scratch model is built for nothing
    if check_only:
        accelerator.end_training()
        return plan
    for w in plan.warnings if accelerator.is_main_process else ():
        log.warning(f"warning: {w}")
    loaded = kind_for(cfg.model.name_or_path).load(cfg.model, checked.splits, accelerator.device, show_progress,
                                                   accelerator=accelerator)
    windows, ids = checked.data, checked.ids  # made by the checks where the tokenizer was at hand
    if checked.facts.tokenizer is None:  # else with the one that came with the model just built
        ids = split_ids(loaded.tokenizer, checked.splits, loaded.token_cache)
        windows = measure_windows(measure_docs(ids, cfg.measure.split), cfg.measure.window, cfg.measure.samples, cfg.measure.split)
    if len(windows) < cfg.measure.samples:
        log.warning("only %d %s examples have %d tokens (asked for %d): measuring those.", len(windows),
                    split_label(cfg.measure.split), cfg.measure.window, cfg.measure.samples)
    return Prepared(cfg, accelerator, plan, loaded.model, loaded.tokenizer, loaded.ref, loaded.file, windows,
                    ids["train"], t0)


def continue_prompts(p: Prepared, gen_cfg, show_progress: bool, desc: str = "continue"):
    """(the continuations [n, half] on the main process, else None; the generator's stats). Every decoding draws
    from the same key, so a decodings measure's column equals the plain measure of the same settings."""
    from collapse.decoding.generate import generate_corpus
    from collapse.models.hf import never_sampled

    gens: dict[int, np.ndarray] = {}
    stats = generate_corpus(p.model, p.prompts, p.half, gen_cfg, key=(p.cfg.seed, "measure"),
                            sink=lambda b, _, g: gens.__setitem__(b, g), accelerator=p.accelerator,
                            suppress_ids=never_sampled(p.tok), progress=show_progress, desc=desc)
    if not p.accelerator.is_main_process:
        return None, stats
    return np.concatenate([gens[b] for b in sorted(gens)]).astype(np.int32), stats


def shift_result(p: Prepared, gen: np.ndarray, key_suffix: tuple = ()) -> dict:
    """The distribution figures of ``gen`` against the true second halves, with their intervals over examples."""
    cfg, refs = p.cfg, p.refs
    ref_c, gen_c = M.counts(refs, p.vocab), M.counts(gen, p.vocab)
    rank_c = p.rank_counts(ref_c)
    result = {"reference_tokens": int(refs.size), "generated_tokens": int(gen.size),
              **M.distribution_metrics(ref_c, gen_c, gen_seqs=gen, ref_seqs=refs, rank_counts=rank_c)}
    if cfg.stats.resamples:
        measure_intervals(refs, gen, p.vocab, rank_c, result, (cfg.seed, "measure", "bootstrap", *key_suffix),
                          cfg.stats.resamples, cfg.stats.level)
    return result
