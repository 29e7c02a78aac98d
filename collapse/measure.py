"""`collapse measure`: the single-shot token-distribution shift of one model.

Take the first ``measure.window`` tokens of held-out examples, split each in half, let the model
continue the first half for exactly as many tokens as the second half has, then compare the token
frequencies of all continuations with those of the true second halves, bucketed by the rank of each
type in the true second halves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from collapse import metrics as M
from collapse.config import Config
from collapse.io import write_json, write_parquet, write_text

log = logging.getLogger("collapse")


def bucket_table(bs: dict, title: str = "", rank_by: str = "train") -> str:
    """Per bucket: the true and generated shares, the shift and its 95% interval (``*``: excludes 0); the ranked
    buckets' shares are over the tokens of ranked types, ``unseen``'s over all tokens (``metrics.shares_of``)."""
    lines = [title] if title else []
    head = "true rank" if rank_by == "reference" else "train rank"
    lines.append(f"{'bucket (' + head + ')':<21}{'true share':>11}{'gen share':>11}{'shift %':>9}  {'95% interval':<17}")
    for name, v in bs.items():
        shift = "—" if v["shift_pct"] is None else f"{v['shift_pct']:+.1f}"
        ci = v.get("ci95") or [None, None]
        ci_txt = "" if ci[0] is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]{'*' if ci[0] > 0 or ci[1] < 0 else ''}"
        lines.append(f"{name:<21}{100 * v['ref_share']:>10.2f}%{100 * v['gen_share']:>10.2f}%{shift:>9}  {ci_txt:<17}")
    lines.append("(ranked buckets: shares of the tokens of ranked types; unseen: share of all tokens, types the "
                 f"{'true halves lack' if rank_by == 'reference' else 'training split lacks'})")
    return "\n".join(lines)


def power_line(bs: dict, n: int, unit: str = "examples") -> str:
    """One line of advice: how many units would resolve each bucket's shift that the interval does not."""
    todo = [(name, v) for name, v in bs.items()
            if v.get("ci95") and v["ci95"][0] is not None and v["ci95"][0] <= 0 <= v["ci95"][1]
            and v.get(f"{unit}_to_resolve")]
    if not any(v.get("ci95") and v["ci95"][0] is not None for v in bs.values()):
        return ""
    if not todo:
        return f"power: every bucket's shift is resolved at 95% with {n:,} {unit}."
    parts = [f"the {name} bucket's {v['shift_pct']:+.1f}% use ≈ {_round_up(v[f'{unit}_to_resolve']):,} {unit}"
             for name, v in todo]
    return f"power: to resolve {'; '.join(parts)} (95% interval excluding 0, 80% power; now {n:,})."


def _round_up(n: int) -> int:
    """Two significant digits, rounded up (advice, not a measurement)."""
    if n < 100:
        return int(n)
    e = 10 ** (len(str(int(n))) - 2)
    return int(-(-n // e) * e)


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


def figure_text(result: dict, f) -> str:
    """``label value [lo, hi]`` of a registered figure in measure.json, in its format."""
    lo, hi = result.get(f"{f.name}_ci") or (None, None)
    return f"{f.label} {result[f.name]:{f.fmt}}" + ("" if lo is None else f" [{lo:{f.fmt}}, {hi:{f.fmt}}]")


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
    from collapse.runtime import make_accelerator

    t0 = time.perf_counter()
    set_threads()
    accelerator = make_accelerator()
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


def run_measure(cfg: Config, show_progress: bool = True, check_only: bool = False):
    """Measure one model; with ``check_only`` return the checks' plan instead (``collapse measure --check``).
    With ``measure.decodings`` every decoding of the list, beside real text (``collapse.measure_decodings``)."""
    from collapse.data import split_label
    from collapse.models import kind_for
    from collapse.models.gguf import sha256 as gguf_sha256
    from collapse.models.hf import decode_rows
    from collapse.report import plot_bucket_shift
    from collapse.tracking import make_logger

    p = prepare(cfg, show_progress, check_only)
    if check_only:
        return p
    if cfg.measure.decodings:
        from collapse.measure_decodings import run_decodings

        return run_decodings(p, show_progress)
    accelerator, tok, model_ref, windows = p.accelerator, p.tok, p.model_ref, p.windows
    is_main, half, prompts, refs, t0 = accelerator.is_main_process, p.half, p.prompts, p.refs, p.t0
    gen, stats = continue_prompts(p, cfg.generation, show_progress)
    result: dict = {}
    if is_main:
        result = {
            "model": model_ref,
            **({"model_sha256": gguf_sha256(p.file)} if p.file is not None else {}),
            "settings": {"window": cfg.measure.window, "split": cfg.measure.split, "prompt_tokens": half,
                         "new_tokens": half, "temperature": cfg.generation.temperature,
                         "top_k": cfg.generation.top_k, "top_p": cfg.generation.top_p, "min_p": cfg.generation.min_p,
                         "num_beams": cfg.generation.num_beams,
                         "repetition_penalty": cfg.generation.repetition_penalty, "seed": cfg.seed},
            "samples": int(len(windows)),
            **shift_result(p, gen),
            "rank_by": cfg.measure.rank_by,
            "generation_tokens_per_s": stats["tokens_per_s"],
            "seconds": None,
        }
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", cfg.to_yaml())
        write_parquet(out / "continuations.parquet", {
            "prompt_ids": prompts, "generated_ids": gen, "reference_ids": refs,
            "prompt_text": decode_rows(tok, prompts),
            "generated_text": decode_rows(tok, gen),
            "reference_text": decode_rows(tok, refs),
        })
        plot_bucket_shift(result["bucket_shift"], out / "buckets.png",
                          title=f"Token frequencies of {half}-token continuations vs the true second halves\n"
                                f"{kind_for(cfg.model.name_or_path).title(cfg)}, {len(windows)} {split_label(cfg.measure.split)} "
                                "examples, "
                                f"window {cfg.measure.window}", rank_by=cfg.measure.rank_by)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(out / "measure.json", result)

        logger = make_logger(cfg.wandb, out, cfg.to_dict(), is_main)
        flat = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        flat["bucket_shift"] = {k: v["shift_pct"] for k, v in result["bucket_shift"].items()}
        for end, i in (("lo", 0), ("hi", 1)):  # the intervals as series beside the values
            flat[f"bucket_shift_{end}"] = {k: v["ci95"][i] for k, v in result["bucket_shift"].items()
                                           if (v.get("ci95") or [None])[0] is not None}
            flat.update({f"{k[:-3]}_{end}": v[i] for k, v in result.items()
                         if k.endswith("_ci") and isinstance(v, list) and v[i] is not None})
        logger.log(flat, step=0)
        logger.log_image("buckets", out / "buckets.png", step=0)
        texts = decode_rows(tok, prompts[:20]), decode_rows(tok, gen[:20]), \
            decode_rows(tok, refs[:20])
        logger.log_table("continuations", ["prompt", "generated", "reference"], [list(r) for r in zip(*texts)],
                         step=0)
        logger.close()
        log.info("\n" + bucket_table(result["bucket_shift"],
                                     f"Token-frequency shift of {len(windows)} continuations ({half} tokens each)"
                                     + (", 95% intervals over examples (* resolved)" if cfg.stats.resamples else ""),
                                     cfg.measure.rank_by))
        if cfg.stats.resamples:
            log.info(power_line(result["bucket_shift"], len(windows)))
        log.info(" · ".join(figure_text(result, f) for f in M.corpus_figures() if f.console)
                 + f" (entropy of the true halves {result['entropy_ref']:.3f} bits)")
        log.info(f"wrote {out}/measure.json, continuations.parquet, buckets.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result
