"""`collapse measure`: the single-shot token-distribution shift of one model.

Take the first ``measure.window`` tokens of held-out examples, split each in half, let the model
continue the first half for exactly as many tokens as the second half has, then compare the token
frequencies of all continuations with those of the true second halves, bucketed by the frequency rank of each
type (in the real training split by default, `measure.rank_by`). Several decodings at once: `measure_decodings`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from collapse import metrics as M
from collapse.config import Config
from collapse.continuations import continue_prompts, measure_intervals, prepare, shift_result  # noqa: F401 - measure_intervals: the measure's public helper
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


def figure_text(result: dict, f) -> str:
    """``label value [lo, hi]`` of a registered figure in measure.json, in its format."""
    lo, hi = result.get(f"{f.name}_ci") or (None, None)
    return f"{f.label} {result[f.name]:{f.fmt}}" + ("" if lo is None else f" [{lo:{f.fmt}}, {hi:{f.fmt}}]")


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
        from collapse.measure_decodings import run_decodings  # its own module: it imports the shared parts

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
        for k in [k for k in result if k.endswith("_ci") or k == "intervals"]:  # after the figures, as always
            result[k] = result.pop(k)
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

        logger = make_logger(cfg.wandb, out, cfg.to_dict(), is_main, job_type="measure")
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
