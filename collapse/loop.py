"""`collapse run`: the recursion over generations, the run folder, the manifest, resume.

For g = 0 .. G:  (train model g from samples g-1, for g >= 1) -> evaluate on REAL test -> generate
samples g from REAL training prompts -> measure samples g against the REAL training counts.

Every stage writes its files atomically and is recorded in ``manifest.json`` only after its files
are complete; a rerun of the same command skips recorded stages and redoes the one in flight.
Randomness is drawn from (seed, generation, stage, shard), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from collapse import fault
from collapse import metrics as M
from collapse.config import Config, config_diff
from collapse.errors import ConfigError, DataError, ModelError
from collapse.io import dumps_line, read_id_column, read_json, write_json, write_parquet, write_text

log = logging.getLogger("collapse")

STAGES = ("train", "evaluate", "generate", "measure")
PPL_BINS = np.logspace(0, 4, 81)  # gen0_ppl histogram edges, shared by all generations (1 .. 10^4)


def gen_dir(out: Path, g: int) -> Path:
    return out / f"gen_{g:03d}"


# ---------------------------------------------------------------------- manifest


class Manifest:
    """Which stages of which generation are complete. Written atomically after the files it names."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    @classmethod
    def load_or_new(cls, path: Path, fingerprint: str) -> Manifest:
        if path.is_file():
            try:
                data = read_json(path)
                if not isinstance(data, dict) or "generations" not in data:
                    raise ValueError("no generations")
            except (ValueError, OSError) as e:
                raise DataError(f"{path} is corrupt ({e}): move the run folder away or rerun with resume=never "
                                "overwrite=true.") from None
            return cls(path, data)
        return cls(path, {"version": 1, "fingerprint": fingerprint, "generations": {}, "complete": False,
                          "wandb_run_id": None})

    def done(self, g: int, stage: str) -> bool:
        return bool(self.data["generations"].get(str(g), {}).get(stage))

    def mark(self, g: int, stage: str, is_main: bool) -> None:
        self.data["generations"].setdefault(str(g), {})[stage] = True
        self.save(is_main)
        fault.point("between", g, stage)

    def save(self, is_main: bool) -> None:
        if not is_main:
            return
        from collapse.io import atomic_path

        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(dumps_line(self.data) + "\n")
            fault.point("manifest", self.data.get("_current_gen", 0), 0)


# ---------------------------------------------------------------------- run folder


def _prepare_out_dir(cfg: Config, is_main: bool) -> tuple[Path, bool]:
    """Check out_dir against the config; returns (path, resuming). Raises ConfigError before writing anything."""
    out = Path(cfg.out_dir)
    cfg_path = out / "config.yaml"
    if out.exists() and any(out.iterdir()):
        if cfg.resume == "auto" and cfg_path.is_file():
            from collapse.config import load_config

            try:
                old = load_config(cfg_path)
            except ConfigError as e:
                raise ConfigError(f"{cfg_path} cannot be read ({e}); rerun with resume=never overwrite=true.") from None
            if old.fingerprint() != cfg.fingerprint():
                keys = [k for k in config_diff(old.to_dict(), cfg.to_dict())
                        if k.split(".")[0] not in ("resume", "overwrite", "wandb", "out_dir", "keep_checkpoints")]
                raise ConfigError(f"{out} holds a run with a different config ({', '.join(keys)}): use another "
                                  "out_dir, or resume=never overwrite=true to start over.")
            return out, True
        if cfg.resume == "auto" and not cfg_path.is_file():
            raise ConfigError(f"{out} is not empty and holds no run: choose another out_dir or set overwrite=true "
                              "with resume=never.")
        if not cfg.overwrite:
            raise ConfigError(f"{out} is not empty: add overwrite=true to delete it and start over.")
        if is_main:
            shutil.rmtree(out)
    return out, False


def _weights_bytes(model, trainable_only: bool) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------- models per generation


def _attach(model0, cfg: Config, g: int):
    from collapse.modeling import attach_lora, seed_int

    torch.manual_seed(seed_int(cfg.seed, g, "init"))
    if cfg.train.method == "lora":
        return attach_lora(model0, cfg.train.lora)
    for p in model0.parameters():
        p.requires_grad_(True)
    return model0


def starting_model(init: str, base, prev):
    """A fresh copy of the weights generation g starts from: generation 0's (``base``) or model g-1's (merged)."""
    if init == "base" or prev is None:
        return copy.deepcopy(base)
    prev = copy.deepcopy(prev)
    return prev.merge_and_unload() if hasattr(prev, "merge_and_unload") else prev


def _save_model(model, folder: Path, cfg: Config, is_main: bool) -> None:
    """gen_g/adapter (LoRA) and, where a later generation must continue from it, gen_g/model (merged)."""
    if not is_main:
        return
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if cfg.train.method == "lora":
        model.save_pretrained(tmp / "adapter", safe_serialization=True)
        if cfg.train.init == "previous":
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp / "model", safe_serialization=True)
    else:
        model.save_pretrained(tmp / "model", safe_serialization=True)
    folder.mkdir(parents=True, exist_ok=True)
    for sub in tmp.iterdir():
        dest = folder / sub.name
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(sub, dest)
    shutil.rmtree(tmp, ignore_errors=True)


def _load_generation_model(model0, g: int, out: Path, cfg: Config, device):
    """Model g rebuilt from disk (on resume)."""
    from transformers import AutoModelForCausalLM

    d = gen_dir(out, g)
    if g == 0 and not (d / "model").is_dir():
        return model0
    if cfg.train.method == "lora" and cfg.train.init == "base" and g > 0:
        from peft import PeftModel

        return PeftModel.from_pretrained(copy.deepcopy(model0), d / "adapter").to(device).eval()
    if not (d / "model").is_dir():
        raise DataError(f"the weights of generation {g} are missing from {d} (removed by keep_checkpoints?): "
                        "raise keep_checkpoints or start over with resume=never overwrite=true.")
    return AutoModelForCausalLM.from_pretrained(d / "model", dtype=next(model0.parameters()).dtype,
                                                use_safetensors=True).to(device).eval()


def _prune_checkpoints(out: Path, g: int, cfg: Config, is_main: bool) -> None:
    if not is_main or cfg.keep_checkpoints is None:
        return
    for old in range(1, g - cfg.keep_checkpoints + 1):
        for sub in ("adapter", "model"):
            shutil.rmtree(gen_dir(out, old) / sub, ignore_errors=True)


# ---------------------------------------------------------------------- samples on disk


def _shard_path(d: Path, b: int) -> Path:
    return d / "shards" / f"b{b:06d}.parquet"


def _finished_shards(d: Path) -> set[int]:
    s = d / "shards"
    if not s.is_dir():
        return set()
    out = set()
    for f in s.glob("b*.parquet"):
        try:
            out.add(int(f.stem[1:]))
        except ValueError:
            continue
    return out


def _merge_shards(d: Path, n_batches: int) -> None:
    """Stream the batch shards, in order, into one samples.parquet (one shard in memory at a time)."""
    import pyarrow.parquet as pq

    from collapse.io import atomic_path

    writer = None
    with atomic_path(d / "samples.parquet") as tmp:
        for b in range(n_batches):
            t = pq.read_table(_shard_path(d, b))
            if writer is None:
                writer = pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
        if writer is not None:
            writer.close()
    shutil.rmtree(d / "shards", ignore_errors=True)


def load_samples(out: Path, g: int, keep_prompt: bool = False) -> np.ndarray:
    """Generation g's corpus as rows of token ids (continuations, or prompt + continuation)."""
    path = gen_dir(out, g) / "samples.parquet"
    try:
        gen = read_id_column(path, "token_ids")
        if keep_prompt:
            gen = np.concatenate([read_id_column(path, "prompt_ids"), gen], axis=1)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"{path} cannot be read ({str(e).splitlines()[0][:120]}): delete it and the "
                        f"generation's 'generate' entry will be redone on resume.") from None
    return gen


# ---------------------------------------------------------------------- the loop


def _check_model_fits(cfg: Config, model) -> None:
    """Block lengths within the model's context; LoRA targets that exist in it. Raises ModelError."""
    from collapse.modeling import context_length, linear_module_names

    ctx = context_length(model)
    L = cfg.generation.prompt_tokens + cfg.generation.new_tokens
    if L > ctx:
        raise ModelError(f"generation.prompt_tokens + generation.new_tokens = {L} exceeds the model's context of "
                         f"{ctx} tokens: shorten them.")
    eval_len = cfg.eval.block_size or L
    if eval_len > ctx:
        raise ModelError(f"eval.block_size={eval_len} exceeds the model's context of {ctx} tokens.")
    if cfg.train.method == "lora" and cfg.train.lora.target_modules:
        avail = linear_module_names(model)
        missing = [t for t in cfg.train.lora.target_modules if t not in avail]
        if missing:
            raise ModelError(f"train.lora.target_modules {missing} do not exist in {type(model).__name__}: "
                             f"choose from {sorted(avail)}.")


def run_loop(cfg: Config, show_progress: bool = True) -> int:
    from collapse.data import concat_blocks, flat_ids, load_splits, regime_training_set, tokenize
    from collapse.evaluate import evaluate_blocks, sequence_ppl
    from collapse.modeling import load_model, numpy_rng, set_threads
    from collapse.runtime import StageClock, fmt_s, make_accelerator
    from collapse.tracking import make_logger
    from collapse.train import finetune

    t_run = time.perf_counter()
    set_threads()
    accelerator = make_accelerator(cfg.train.mixed_precision)
    is_main = accelerator.is_main_process
    if not is_main:
        log.setLevel(logging.WARNING)
    show = show_progress and is_main
    gc, G = cfg.generation, cfg.generations

    # ---- validate everything before the first byte is written
    out, resuming = _prepare_out_dir(cfg, is_main)
    accelerator.wait_for_everyone()
    splits = load_splits(cfg.data)
    if cfg.model.name_or_path == "scratch":  # check on a weightless skeleton before the scratch model is built
        from collapse.modeling import build_scratch_model

        with torch.device("meta"):
            _check_model_fits(cfg, build_scratch_model(cfg.model.scratch, cfg.model.scratch.vocab_size, 0))
    model0, tok, model_ref = load_model(cfg.model, splits, cfg.seed, accelerator.device, show)
    _check_model_fits(cfg, model0)
    L = gc.prompt_tokens + gc.new_tokens
    eval_len = cfg.eval.block_size or L
    eos = tok.eos_token_id
    vocab = max(int(model0.config.vocab_size), len(tok))
    train_ids = tokenize(tok, splits.train)
    prompt_blocks = concat_blocks(train_ids, L, eos)
    row_len = L if gc.keep_prompt else gc.new_tokens
    real_rows = concat_blocks(train_ids, row_len, eos)
    val_blocks = concat_blocks(tokenize(tok, splits.validation), eval_len, eos)
    test_blocks = concat_blocks(tokenize(tok, splits.test), eval_len, eos)
    if cfg.eval.max_blocks:
        test_blocks, val_blocks = test_blocks[: cfg.eval.max_blocks], val_blocks[: cfg.eval.max_blocks]
    if len(prompt_blocks) == 0 or len(test_blocks) == 0 or len(val_blocks) == 0:
        raise DataError(f"the corpus is too small for {L}-token blocks (train {len(prompt_blocks)}, validation "
                        f"{len(val_blocks)}, test {len(test_blocks)} blocks): use more data or shorter blocks.")
    ref_counts = M.counts(flat_ids(train_ids), vocab)
    bucket_of = M.bucket_of(ref_counts, vocab)
    n_seq = gc.num_sequences or len(prompt_blocks)
    order = numpy_rng(cfg.seed, "prompts").permutation(len(prompt_blocks))
    if n_seq > len(order):
        order = np.resize(order, n_seq)  # more samples than blocks: prompts repeat, in the same order
    prompts = prompt_blocks[order[:n_seq], : gc.prompt_tokens]
    n_batches = math.ceil(n_seq / gc.batch_size)
    suppress = (eos,) if eos is not None else ()

    # ---- the run folder
    manifest = Manifest.load_or_new(out / "manifest.json", cfg.fingerprint())
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", cfg.to_yaml())
        if not (out / "reference_counts.npy").is_file():
            from collapse.io import atomic_path

            with atomic_path(out / "reference_counts.npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, ref_counts, allow_pickle=False)
        manifest.data.setdefault("base_model", model_ref)
        manifest.data["world_size"] = accelerator.num_processes  # of the latest (re)start
        manifest.save(is_main)
    logger = make_logger(cfg.wandb, out, cfg.to_dict(), is_main, run_id=manifest.data.get("wandb_run_id"),
                         resume=resuming)
    if is_main and getattr(logger, "id", None) and manifest.data.get("wandb_run_id") != logger.id:
        manifest.data["wandb_run_id"] = logger.id
        manifest.save(is_main)

    weight_bytes = _weights_bytes(model0, trainable_only=False)
    per_gen = n_seq * (L * 4 * 2 + 16 * L) + (weight_bytes if cfg.train.method == "full" or cfg.train.init == "previous"
                                              else weight_bytes // 50)
    log.info(f"collapse run → {out} ({'resuming' if resuming else 'new run'}); model {model_ref}; "
             f"{G} generations × {n_seq} samples of {gc.new_tokens} tokens; regime {cfg.regime.kind}; "
             f"train {cfg.train.method}/{cfg.train.init}; {accelerator.num_processes} process(es) on "
             f"{accelerator.device.type}; disk ≈ {per_gen / 2**20:.0f} MiB per generation")

    clock = StageClock(total_stages=4 * (G + 1) - 1 + (1 if cfg.train.gen0_epochs else 0), log=log)
    base = model0
    if cfg.train.gen0_epochs:
        base = _gen0_finetune(cfg, model0, real_rows, val_blocks, out, manifest, accelerator, clock, show)
    samples_cache: dict[int, np.ndarray] = {}
    model_g = base
    exit_code = 0
    try:
        for g in range(G + 1):
            d = gen_dir(out, g)
            manifest.data["_current_gen"] = g
            # -- train model g on samples g-1 (per the regime)
            if g > 0:
                if manifest.done(g, "train"):
                    model_g = None  # loaded lazily below if a later stage of g needs it
                    if not all(manifest.done(g, s) for s in STAGES[1:]) or (cfg.train.init == "previous"
                                                                          and g < G):
                        model_g = _load_generation_model(base, g, out, cfg, accelerator.device)
                    clock.done += 1
                else:
                    t0 = clock.start()
                    for k in range(g):
                        if k not in samples_cache:
                            samples_cache[k] = load_samples(out, k, gc.keep_prompt)
                    rows, src = regime_training_set(
                        cfg.regime.kind, real_blocks=real_rows, samples=[samples_cache[k] for k in range(g)],
                        real_fraction=cfg.regime.real_fraction, size=cfg.regime.size,
                        rng=numpy_rng(cfg.seed, g, "regime"))
                    prev = None
                    if cfg.train.init == "previous" and g > 1:
                        prev = model_g if model_g is not None else _load_generation_model(base, g - 1, out, cfg,
                                                                                           accelerator.device)
                    model_g = _attach(starting_model(cfg.train.init, base, prev), cfg, g)
                    stats = finetune(model_g, rows, val_blocks, cfg.train, accelerator, key=(cfg.seed, g, "train"),
                                     show_progress=show, desc=f"gen {g} train",
                                     on_step=lambda s, g=g: fault.point("train", g, s))
                    _save_model(model_g, d, cfg, is_main)
                    if is_main:
                        write_json(d / "train.json", {**stats, "rows": int(len(rows)),
                                                      "real_rows": int((src == -1).sum()),
                                                      "rows_by_source": {str(k): int((src == k).sum())
                                                                         for k in np.unique(src)}})
                    accelerator.wait_for_everyone()
                    manifest.mark(g, "train", is_main)
                    _prune_checkpoints(out, g, cfg, is_main)
                    clock.finish(f"gen {g}: train", t0, f"{len(rows)} rows, val NLL {stats['val_nll']:.3f} "
                                 f"(epoch {stats['epoch_selected']}), {stats['tokens_per_s'] / 1e3:.1f}k tok/s")
            if model_g is None:
                model_g = _load_generation_model(base, g, out, cfg, accelerator.device)
            # -- evaluate model g on REAL test text
            if manifest.done(g, "evaluate"):
                clock.done += 1
            else:
                t0 = clock.start()
                fault.point("evaluate", g, 0)
                ev = evaluate_blocks(model_g, test_blocks, bucket_of, cfg.eval.batch_size, accelerator)
                fault.point("evaluate", g, 1)
                if is_main:
                    write_json(d / "eval.json", ev)
                accelerator.wait_for_everyone()
                manifest.mark(g, "evaluate", is_main)
                clock.finish(f"gen {g}: evaluate", t0, f"test ppl {ev['test_ppl']:.2f}")
            # -- generate samples g from REAL prompts, streamed to shards
            if manifest.done(g, "generate"):
                clock.done += 1
            else:
                t0 = clock.start()
                _generate_stage(model_g, prompts, cfg, g, d, n_batches, tok, accelerator, suppress, show)
                manifest.mark(g, "generate", is_main)
                clock.finish(f"gen {g}: generate", t0, f"{n_seq} × {gc.new_tokens} tokens")
            # -- measure samples g against the REAL training counts
            if manifest.done(g, "measure"):
                clock.done += 1
            else:
                t0 = clock.start()
                samples_cache[g] = load_samples(out, g, gc.keep_prompt)
                gen_ids = load_samples(out, g, False)
                prompt_ids = read_id_column(d / "samples.parquet", "prompt_ids")
                fault.point("measure", g, 0)
                ppl = sequence_ppl(base, np.concatenate([prompt_ids, gen_ids], axis=1), gc.prompt_tokens,
                                   cfg.eval.batch_size, accelerator)
                row = _metrics_row(g, read_json(d / "eval.json"), ref_counts, gen_ids, ppl, d)
                if is_main:
                    from collapse.io import atomic_path

                    with atomic_path(d / "gen0_ppl.npy") as tmp, open(tmp, "wb") as fh:
                        np.save(fh, ppl.astype(np.float32), allow_pickle=False)
                    write_json(d / "metrics.json", row)
                    _rewrite_metrics_jsonl(out, g)
                accelerator.wait_for_everyone()
                manifest.mark(g, "measure", is_main)
                clock.finish(f"gen {g}: measure", t0, f"shift 1-10 {_fmt(row['bucket_shift']['1-10'])}, "
                             f"1001-10000 {_fmt(row['bucket_shift']['1001-10000'])}")
                _log_generation(logger, row, ppl, d, tok, g)
            if cfg.train.init == "base" and g < G:
                model_g = None  # the next generation starts from the base again
        manifest.data["complete"] = True
        manifest.data.pop("_current_gen", None)
        manifest.save(is_main)
    except KeyboardInterrupt:
        log.error(f"interrupted: finished stages are kept in {out}. Rerun the same command to resume.")
        exit_code = 130
        logger.close(exit_code=1)
        raise
    if is_main:
        rows = [read_json(gen_dir(out, g) / "metrics.json") for g in range(G + 1)]
        log.info("\n" + metrics_table(rows))
        try:
            from collapse.report import make_report

            make_report([out], out / "report", quiet=True)
            log.info(f"report: {out / 'report' / 'report.html'}")
        except Exception as e:  # noqa: BLE001 - the run's data are safe; the report can be redrawn
            log.warning(f"the report could not be drawn ({e}); run `collapse report {out}` to retry.")
        log.info(f"done in {fmt_s(time.perf_counter() - t_run)}: {out}/metrics.jsonl")
    logger.close(exit_code=0)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return exit_code


def _fmt(v) -> str:
    return "—" if v is None else f"{v:+.1f}%"


def _gen0_finetune(cfg, model0, real_rows, val_blocks, out, manifest, accelerator, clock, show):
    """The paper's generation 0: the base model fine-tuned on the REAL training split."""
    from collapse.train import finetune

    d = gen_dir(out, 0)
    is_main = accelerator.is_main_process
    if manifest.done(0, "train"):
        clock.done += 1
        return _load_generation_model(model0, 0, out, cfg, accelerator.device)
    t0 = clock.start()
    m = _attach(copy.deepcopy(model0), cfg, 0)
    tcfg = copy.deepcopy(cfg.train)
    tcfg.epochs = cfg.train.gen0_epochs
    stats = finetune(m, real_rows, val_blocks, tcfg, accelerator, key=(cfg.seed, 0, "train"), show_progress=show,
                     desc="gen 0 fine-tune on real")
    if hasattr(m, "merge_and_unload"):
        m = m.merge_and_unload()
    if is_main:
        tmp = d / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        m.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(d / "model", ignore_errors=True)
        os.replace(tmp, d / "model")
        write_json(d / "train.json", stats)
    accelerator.wait_for_everyone()
    manifest.mark(0, "train", is_main)
    clock.finish("gen 0: fine-tune on real", t0, f"val NLL {stats['val_nll']:.3f}")
    return m.eval()


def _generate_stage(model, prompts, cfg, g, d, n_batches, tok, accelerator, suppress, show):
    from collapse.generate import generate_corpus

    is_main = accelerator.is_main_process
    done = _finished_shards(d) if is_main else set()
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [sorted(done)]
        broadcast_object_list(box)
        done = set(box[0])
    bs = cfg.generation.batch_size

    def sink(b: int, prompt_rows: np.ndarray, gen_rows: np.ndarray) -> None:
        idx = np.arange(b * bs, b * bs + len(gen_rows), dtype=np.int64)
        write_parquet(_shard_path(d, b), {"sample_index": idx, "prompt_ids": prompt_rows, "token_ids": gen_rows,
                                          "text": tok.batch_decode(gen_rows.tolist())})
        fault.point("generate", g, b)

    generate_corpus(model, prompts, cfg.generation.new_tokens, cfg.generation, key=(cfg.seed, g, "generate"),
                    sink=sink, accelerator=accelerator, suppress_ids=suppress, skip_batches=done, progress=show,
                    desc=f"gen {g} generate")
    if is_main:
        _merge_shards(d, n_batches)
    accelerator.wait_for_everyone()


def _metrics_row(g: int, ev: dict, ref_counts: np.ndarray, gen_ids: np.ndarray, ppl: np.ndarray, d: Path) -> dict:
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


def _rewrite_metrics_jsonl(out: Path, upto: int) -> None:
    """metrics.jsonl = the per-generation metrics.json rows, rewritten whole (idempotent on resume)."""
    lines = []
    for g in range(upto + 1):
        p = gen_dir(out, g) / "metrics.json"
        if p.is_file():
            lines.append(dumps_line(read_json(p)))
    write_text(out / "metrics.jsonl", "\n".join(lines) + "\n")


def _log_generation(logger, row: dict, ppl: np.ndarray, d: Path, tok, g: int) -> None:
    scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    logger.log({**scalars, "tail_loss": row["tail_loss"], "bucket_shift": row["bucket_shift"],
                "gen0_ppl": {"q50": row["gen0_ppl_quantiles"]["q50"], "q95": row["gen0_ppl_quantiles"]["q95"]}},
               step=g)
    logger.log_histogram("gen0_ppl_hist", ppl, step=g, bins=PPL_BINS)
    try:
        import pyarrow.parquet as pq

        t = pq.read_table(d / "samples.parquet", columns=["sample_index", "text"]).slice(0, 8).to_pylist()
        logger.log_table("samples", ["generation", "sample_index", "text"],
                         [[g, r["sample_index"], r["text"]] for r in t], step=g)
    except Exception:  # noqa: BLE001 - a missing table must not stop the run
        pass


def metrics_table(rows: list[dict]) -> str:
    head = (f"{'gen':>3} {'test ppl':>9} {'NLL 1-10':>9} {'NLL 1001+':>10} {'shift 1-10':>11} {'shift 101-1k':>13} "
            f"{'shift 1001+':>12} {'KL':>7} {'coverage':>9} {'entropy':>8} {'gen0 ppl':>9}")
    lines = [head]
    for r in rows:
        tl = r["tail_loss"]
        lines.append(f"{r['generation']:>3} {r['test_ppl']:>9.2f} {_num(tl.get('1-10')):>9} "
                     f"{_num(tl.get('1001-10000')):>10} {_fmt(r['bucket_shift']['1-10']):>11} "
                     f"{_fmt(r['bucket_shift']['101-1000']):>13} {_fmt(r['bucket_shift']['1001-10000']):>12} "
                     f"{r['kl_ref_gen']:>7.4f} {r['coverage']:>9.3f} {r['entropy']:>8.3f} "
                     f"{_num(r['gen0_ppl_mean'], 1):>9}")
    return "\n".join(lines)


def _num(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"
