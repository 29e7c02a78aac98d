"""`collapse measure`: the single-shot token-distribution shift of one model.

Take the first ``measure.window`` tokens of held-out examples, split each in half, let the model
continue the first half for exactly as many tokens as the second half has, then compare the token
frequencies of all continuations with those of the true second halves, bucketed by the rank of each
type in the true second halves.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from collapse import metrics as M
from collapse.config import Config
from collapse.io import write_json, write_parquet, write_text

log = logging.getLogger("collapse")


def bucket_table(bs: dict, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'bucket (true rank)':<20}{'true share':>12}{'gen share':>12}{'shift %':>10}")
    for name, v in bs.items():
        shift = "—" if v["shift_pct"] is None else f"{v['shift_pct']:+.1f}"
        lines.append(f"{name:<20}{100 * v['ref_share']:>11.2f}%{100 * v['gen_share']:>11.2f}%{shift:>10}")
    return "\n".join(lines)


def _model_label(cfg: Config) -> str:
    if cfg.model.name_or_path == "scratch":
        s = cfg.model.scratch
        return f"scratch {s.arch} ({s.n_layer} layers, d={s.d_model})"
    return cfg.model.name_or_path


def run_measure(cfg: Config, show_progress: bool = True, check_only: bool = False):
    """Measure one model; with ``check_only`` return the checks' plan instead (``collapse measure --check``)."""
    from collapse.check import check_measure
    from collapse.data import measure_windows, split_ids
    from collapse.generate import generate_corpus
    from collapse.modeling import load_model, set_threads
    from collapse.report import plot_bucket_shift
    from collapse.runtime import make_accelerator
    from collapse.scratch import TOKENS_FILE
    from collapse.tracking import make_logger

    t0 = time.perf_counter()
    set_threads()
    accelerator = make_accelerator()
    is_main = accelerator.is_main_process
    plan = check_measure(cfg, accelerator)  # data and out_dir first: before a scratch model is built for nothing
    if check_only:
        accelerator.end_training()
        return plan
    for w in plan.warnings if is_main else ():
        log.warning(f"warning: {w}")
    model, tok, model_ref = load_model(cfg.model, plan.splits, accelerator.device, show_progress,
                                             accelerator=accelerator)
    windows = plan.data  # made by the check where the tokenizer was at hand; else with the scratch one, just built
    if windows is None:  # the scratch model was built just now, with its splits' token ids
        ids = split_ids(tok, plan.splits, Path(model_ref) / TOKENS_FILE)[cfg.measure.split]
        windows = measure_windows(ids, cfg.measure.window, cfg.measure.samples, cfg.measure.split)
    half = cfg.measure.window // 2
    prompts, refs = windows[:, :half], windows[:, half:]
    if len(windows) < cfg.measure.samples:
        log.warning("only %d %s examples have %d tokens (asked for %d): measuring those.", len(windows),
                    cfg.measure.split, cfg.measure.window, cfg.measure.samples)

    gens: dict[int, np.ndarray] = {}
    stats = generate_corpus(model, prompts, half, cfg.generation, key=(cfg.seed, "measure"),
                            sink=lambda b, p, g: gens.__setitem__(b, g), accelerator=accelerator,
                            suppress_ids=(tok.eos_token_id,) if tok.eos_token_id is not None else (),
                            progress=show_progress, desc="continue")
    result: dict = {}
    if is_main:
        gen = np.concatenate([gens[b] for b in sorted(gens)]).astype(np.int32)
        vocab = max(int(model.config.vocab_size), len(tok))
        ref_c, gen_c = M.counts(refs, vocab), M.counts(gen, vocab)
        result = {
            "model": model_ref,
            "settings": {"window": cfg.measure.window, "split": cfg.measure.split, "prompt_tokens": half,
                         "new_tokens": half, "temperature": cfg.generation.temperature,
                         "top_k": cfg.generation.top_k, "top_p": cfg.generation.top_p,
                         "num_beams": cfg.generation.num_beams,
                         "repetition_penalty": cfg.generation.repetition_penalty, "seed": cfg.seed},
            "samples": int(len(windows)),
            "reference_tokens": int(refs.size),
            "generated_tokens": int(gen.size),
            **M.distribution_metrics(ref_c, gen_c, gen_seqs=gen, ref_seqs=refs),
            "generation_tokens_per_s": stats["tokens_per_s"],
            "seconds": None,
        }
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", cfg.to_yaml())
        write_parquet(out / "continuations.parquet", {
            "prompt_ids": prompts, "generated_ids": gen, "reference_ids": refs,
            "prompt_text": tok.batch_decode(prompts.tolist()),
            "generated_text": tok.batch_decode(gen.tolist()),
            "reference_text": tok.batch_decode(refs.tolist()),
        })
        plot_bucket_shift(result["bucket_shift"], out / "buckets.png",
                          title=f"Token frequencies of {half}-token continuations vs the true second halves\n"
                                f"{_model_label(cfg)}, {len(windows)} {cfg.measure.split} examples, "
                                f"window {cfg.measure.window}")
        result["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(out / "measure.json", result)

        logger = make_logger(cfg.wandb, out, cfg.to_dict(), is_main)
        flat = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        flat["bucket_shift"] = {k: v["shift_pct"] for k, v in result["bucket_shift"].items()}
        logger.log(flat, step=0)
        logger.log_image("buckets", out / "buckets.png", step=0)
        texts = tok.batch_decode(prompts[:20].tolist()), tok.batch_decode(gen[:20].tolist()), \
            tok.batch_decode(refs[:20].tolist())
        logger.log_table("continuations", ["prompt", "generated", "reference"], [list(r) for r in zip(*texts)],
                         step=0)
        logger.close()
        log.info("\n" + bucket_table(result["bucket_shift"],
                                     f"Token-frequency shift of {len(windows)} continuations ({half} tokens each)"))
        log.info(f"KL(true‖gen) {result['kl_ref_gen']:.4f} bits · JS {result['js']:.4f} bits · coverage "
                 f"{result['coverage']:.3f} · entropy {result['entropy']:.2f} vs {result['entropy_ref']:.2f} bits")
        log.info(f"wrote {out}/measure.json, continuations.parquet, buckets.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result
