"""`collapse run`: the recursion over generations, the run folder, the manifest, resume.

For g = 0 .. G:  (train model g from samples g-1, for g >= 1) -> evaluate on REAL test -> generate
samples g from REAL training prompts -> measure samples g against the REAL training counts.

Crash safety (a kill at any moment loses at most the stage in flight):

* Every file is written atomically (``collapse.io.atomic_path``: hidden temporary name, fsync, rename),
  and a stage is recorded in ``manifest.json`` only after all its files are complete. A rerun of the
  same command (``resume=auto``) skips recorded stages and redoes the one in flight; generation keeps
  its finished batch shards (``gen_NNN/shards/``) and continues after them. The train stage restarts
  from its beginning (no in-stage checkpoints).
* On resume every recorded stage's files are checked (present, readable, the right number of rows);
  a stage whose files fail is redone, with one warning line (see :func:`_verify_stages`). Temporary
  files of a killed run are deleted. A corrupt manifest.json is a clear error.
* Randomness is drawn from (seed, generation, stage, shard) -- LoRA init, the regime's draws, the epoch
  order, each sampled batch -- never from RNG state left over by earlier work of the process, so a
  resumed run equals an uninterrupted one bit for bit (on the same device type).
* ``out_dir/.lock`` (flock) keeps two processes from running in one folder at once.
* A full disk is one error line (exit 2): free space and rerun to resume. Ctrl-C stops with a note on
  how to resume (exit 130).
* W&B: the run id is kept in manifest.json before the first ``wandb.init``; a resumed run logs to the
  same id and first re-logs the finished generations (from their metrics.json), so no row a killed
  process had not flushed is lost.

``COLLAPSE_SKIP_REPORT=1`` skips drawing the report at the end (tests; ``collapse report`` draws it).
"""

from __future__ import annotations

import copy
import errno
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
from collapse.errors import CollapseError, ConfigError, DataError, ModelError, first_line
from collapse.io import (
    atomic_path,
    dumps_line,
    is_temp_name,
    read_id_column,
    read_json,
    write_json,
    write_parquet,
    write_text,
)

log = logging.getLogger("collapse")

STAGES = ("train", "evaluate", "generate", "measure")
# a stage found broken on resume is redone together with the stages that read its files
REDO_WITH = {"train": ("train",), "evaluate": ("evaluate", "measure"), "generate": ("generate", "measure"),
             "measure": ("measure",)}
PPL_BINS = np.logspace(0, 4, 81)  # gen0_ppl histogram edges, shared by all generations (1 .. 10^4)
LOCK_NAME = ".lock"


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
                if not isinstance(data, dict) or not isinstance(data.get("generations"), dict):
                    raise ValueError("no 'generations' table")
                if not all(isinstance(v, dict) and str(k).isdigit() for k, v in data["generations"].items()):
                    raise ValueError("malformed 'generations' table")
            except (ValueError, OSError, UnicodeDecodeError) as e:
                msg = first_line(e, 120)
                raise DataError(f"{path} is corrupt ({msg}): delete it to redo every stage of the run (same "
                                "results), or start over with resume=never overwrite=true.") from None
            data.pop("_current_gen", None)  # written by older versions
            return cls(path, data)
        return cls(path, {"version": 1, "fingerprint": fingerprint, "generations": {}, "complete": False,
                          "wandb_run_id": None})

    def done(self, g: int, stage: str) -> bool:
        return bool(self.data["generations"].get(str(g), {}).get(stage))

    def gen_complete(self, g: int, train: bool) -> bool:
        return all(self.done(g, s) for s in (STAGES if train else STAGES[1:]))

    def mark(self, g: int, stage: str, is_main: bool) -> None:
        self.data["generations"].setdefault(str(g), {})[stage] = True
        self.save(is_main, g, stage)
        fault.point("between", g, stage)

    def clear(self, g: int, stages: tuple[str, ...]) -> None:
        entry = self.data["generations"].get(str(g), {})
        for s in stages:
            entry.pop(s, None)
        self.data["complete"] = False

    def save(self, is_main: bool, g: int | None = None, stage: str | None = None) -> None:
        """Write the manifest; ``(g, stage)`` names the record being added (the ``manifest`` fault point)."""
        if not is_main:
            return
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(dumps_line(self.data) + "\n")
            if g is not None:
                fault.point("manifest", g, stage)  # temporary file written, rename not yet done


# ---------------------------------------------------------------------- run folder


def _prepare_out_dir(cfg: Config) -> tuple[Path, bool, bool]:
    """Check out_dir against the config; returns (path, resuming, wipe). Writes and deletes nothing.

    ``wipe``: the folder holds something and resume=never overwrite=true asks to start over; it is
    emptied only after the whole config has been validated (a typo must not cost a finished run).
    """
    out = Path(cfg.out_dir)
    cfg_path = out / "config.yaml"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} is a file, not a folder: choose another out_dir.")
    if out.is_dir() and any(p.name != LOCK_NAME and not is_temp_name(p.name) for p in out.iterdir()):
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
            return out, True, False
        if cfg.resume == "auto":
            raise ConfigError(f"{out} is not empty and holds no run: choose another out_dir or set overwrite=true "
                              "with resume=never.")
        if not cfg.overwrite:
            raise ConfigError(f"{out} is not empty: add overwrite=true to delete it and start over.")
        return out, False, True
    return out, False, False


def _lock_out_dir(out: Path):
    """Hold ``out/.lock`` (flock) for the process's lifetime; a second run in the same folder is refused."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return None
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / LOCK_NAME, "a+")  # noqa: SIM115 - held open until the run ends
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        pid = fh.read().strip()
        fh.close()
        raise ConfigError(f"another `collapse run`{f' (pid {pid})' if pid else ''} is using {out} right now: wait "
                          "for it to end, or choose another out_dir.") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _empty_out_dir(out: Path) -> None:
    for p in out.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _clean_temp(out: Path) -> None:
    """Delete what a killed run was writing: hidden ``*.tmp`` files and folders (never a finished file)."""
    folders = [out, *sorted(out.glob("gen_*")), *sorted(out.glob("gen_*/shards"))]
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if is_temp_name(p.name):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def _weights_bytes(model, trainable_only: bool) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not trainable_only)


def _lora_bytes(model, cfg: Config) -> int:
    """Size of one generation's LoRA adapter: r x (in + out) per adapted layer, plus modules_to_save."""
    from transformers.pytorch_utils import Conv1D

    from collapse.modeling import default_targets

    lc = cfg.train.lora
    targets = set(lc.target_modules or default_targets(model))
    save = set(lc.modules_to_save or [])
    total = 0
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, (torch.nn.Linear, Conv1D)) and leaf in targets:
            total += lc.r * sum(mod.weight.shape) * mod.weight.element_size()
        if leaf in save:
            total += _weights_bytes(mod, trainable_only=False)
    return total


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _disk_estimate(cfg: Config, model0, n_seq: int) -> tuple[int, int]:
    """(bytes a generation adds, bytes of the whole run) on disk: samples, weights kept, small files.

    Samples: prompt and continuation ids (int32), the text (~4 bytes a token), the index; their
    shards double them while a generation is merged. Weights: the adapter (LoRA), plus the merged model
    with train.init=previous, or the whole model (full fine-tune); keep_checkpoints bounds how many
    generations keep them. The report adds about 1 MiB.
    """
    gc, G = cfg.generation, cfg.generations
    samples = n_seq * (4 * (gc.prompt_tokens + gc.new_tokens) + 4 * gc.new_tokens + 8) + n_seq * 4  # + gen0_ppl
    small = 64 * 1024  # json files, metrics row, adapter config
    full = _weights_bytes(model0, trainable_only=False)
    if cfg.train.method == "full":
        weights = full
    else:
        weights = _lora_bytes(model0, cfg) + (full if cfg.train.init == "previous" else 0)
    kept = G if cfg.keep_checkpoints is None else min(G, cfg.keep_checkpoints)
    report = 1 << 20
    total = ((G + 1) * (samples + small) + kept * weights + samples + (full if cfg.train.gen0_epochs else 0)
             + report)
    return samples + small + weights, total


# ---------------------------------------------------------------------- models per generation


def _attach(model0, cfg: Config, g: int):
    from collapse.modeling import attach_lora, seed_int

    # LoRA init (and dropout, if any) draw from the global torch RNG: seed it from (seed, g) right here,
    # so nothing the process did before (an earlier generation, or nothing at all on resume) matters
    torch.manual_seed(seed_int(cfg.seed, g, "init"))
    if cfg.train.method == "lora":
        return attach_lora(model0, cfg.train.lora)
    if any(p.dtype in (torch.bfloat16, torch.float16) for p in model0.parameters()):
        # a full fine-tune needs float32 master weights: in bf16, lr 2e-5 updates round away (80% of
        # the weights probed on an H200 never changed); compute stays bf16 through Accelerate's autocast
        model0 = model0.float()
    for p in model0.parameters():
        p.requires_grad_(True)
    return model0


def starting_model(init: str, base, prev):
    """A fresh copy of the weights generation g starts from: generation 0's (``base``) or model g-1's (merged)."""
    if init == "base" or prev is None:
        return copy.deepcopy(base)
    prev = copy.deepcopy(prev)
    return prev.merge_and_unload() if hasattr(prev, "merge_and_unload") else prev


def _weights_subdir(cfg: Config) -> str:
    """Where model g (g >= 1) is reloaded from: the adapter (LoRA on the base) or the (merged) model."""
    return "adapter" if cfg.train.method == "lora" and cfg.train.init == "base" else "model"


def _save_model(model, folder: Path, cfg: Config, is_main: bool):
    """gen_g/adapter (LoRA) and, where a later generation must continue from it, gen_g/model (merged).

    Returns the model the later stages of generation g use: with LoRA and train.init=previous the merged
    model -- exactly the weights saved in gen_g/model, so a resumed run that reloads them evaluates and
    samples the same numbers.
    """
    merged = None
    if cfg.train.method == "lora" and cfg.train.init == "previous":
        merged = copy.deepcopy(model).merge_and_unload().eval()
    if is_main:
        tmp = folder.parent / f".{folder.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            if cfg.train.method == "lora":
                model.save_pretrained(tmp / "adapter", safe_serialization=True)
                if merged is not None:
                    merged.save_pretrained(tmp / "model", safe_serialization=True)
            else:
                model.save_pretrained(tmp / "model", safe_serialization=True)
            folder.mkdir(parents=True, exist_ok=True)
            for sub in tmp.iterdir():
                dest = folder / sub.name
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(sub, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return merged if merged is not None else model


def _load_model_dir(folder: Path, like, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=next(like.parameters()).dtype,
                                                use_safetensors=True).to(device).eval()


def _load_generation_model(base, g: int, out: Path, cfg: Config, device):
    """Model g rebuilt from disk (on resume): the base with adapter g, or the saved (merged) model g."""
    if g == 0:
        return base
    d = gen_dir(out, g)
    sub = _weights_subdir(cfg)
    if not (d / sub).is_dir():
        raise DataError(f"the weights of generation {g} are missing from {d} (removed by keep_checkpoints?): "
                        "raise keep_checkpoints or start over with resume=never overwrite=true.")
    if not any((d / sub).glob("*.safetensors")):  # never let a library fall back to a pickled .bin
        raise DataError(f"the weights of generation {g} in {d / sub} are not in safetensors format: "
                        "delete the folder and rerun the same command to retrain it.")
    try:
        if sub == "adapter":
            from peft import PeftModel

            return PeftModel.from_pretrained(copy.deepcopy(base), d / sub).to(device).eval()
        return _load_model_dir(d / sub, base, device)
    except Exception as e:  # noqa: BLE001 - safetensors / peft / transformers raise several types
        raise DataError(f"the weights of generation {g} in {d / sub} cannot be read "
                        f"({first_line(e, 120)}): delete {d / sub} "
                        "and rerun the same command to retrain it.") from None


def _prune_checkpoints(out: Path, g: int, cfg: Config, is_main: bool) -> None:
    """Delete the weights of generations 1 .. g - keep_checkpoints (generation 0's are never deleted).

    Called after generation g's weights are saved and recorded, so what a resume needs is kept: model g
    (the stages of g still to run; with train.init=previous also generation g+1's training). Earlier
    weights are never read again (stages are only redone for the generation in flight).
    """
    if not is_main or cfg.keep_checkpoints is None:
        return
    for old in range(1, g - cfg.keep_checkpoints + 1):
        for sub in ("adapter", "model"):
            shutil.rmtree(gen_dir(out, old) / sub, ignore_errors=True)


# ---------------------------------------------------------------------- checks on resume


def _safetensors_problem(folder: Path) -> str | None:
    """None if every *.safetensors file in ``folder`` is complete (header and data covered), else why not."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return f"{folder.name}/ holds no weights"
    for f in files:
        try:
            with safe_open(str(f), "pt") as fh:
                fh.keys()
        except Exception as e:  # noqa: BLE001 - SafetensorError and OSError
            return f"{f.relative_to(folder.parent.parent)} cannot be read ({first_line(e, 120)})"
    return None


def _stage_problem(stage: str, g: int, out: Path, cfg: Config, n_seq: int) -> str | None:
    """Why the recorded stage ``stage`` of generation g cannot be trusted, or None. Reads metadata only."""
    import pyarrow.parquet as pq

    d = gen_dir(out, g)

    def json_problem(name: str, key: str) -> str | None:
        try:
            obj = read_json(d / name)
            if not isinstance(obj, dict) or key not in obj:
                raise ValueError(f"no '{key}'")
        except FileNotFoundError:
            return f"{d.name}/{name} is missing"
        except Exception as e:  # noqa: BLE001
            return f"{d.name}/{name} cannot be read ({first_line(e, 120)})"
        return None

    if stage == "train":
        if g == 0:  # the fine-tune on real text (train.gen0_epochs)
            return _safetensors_problem(d / "model")
        return json_problem("train.json", "val_nll")
    if stage == "evaluate":
        return json_problem("eval.json", "test_ppl")
    if stage == "generate":
        path = d / "samples.parquet"
        if not path.is_file():
            return f"{d.name}/samples.parquet is missing"
        try:
            pf = pq.ParquetFile(path)
            rows, names = pf.metadata.num_rows, set(pf.schema_arrow.names)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            return f"{d.name}/samples.parquet cannot be read ({first_line(e, 120)})"
        if not {"token_ids", "prompt_ids"} <= names:
            return f"{d.name}/samples.parquet lacks the token_ids/prompt_ids columns"
        if rows != n_seq:
            return f"{d.name}/samples.parquet holds {rows} rows, not {n_seq}"
        return None
    problem = json_problem("metrics.json", "test_ppl")
    if problem is None:
        try:
            np.load(d / "gen0_ppl.npy", allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            problem = f"{d.name}/gen0_ppl.npy cannot be read ({first_line(e, 120)})"
    return problem


def _verify_stages(manifest: Manifest, out: Path, cfg: Config, n_seq: int) -> list[str]:
    """On resume: un-record every stage whose files are missing or damaged, so it is redone.

    A stage found broken is redone with the stages of its generation that read its files (samples ->
    measure, eval.json -> measure). Later generations stay: they were computed from the intact file,
    and the redone stage reproduces it exactly (every stage is deterministic). Weights are checked
    where a stage still to run needs them (they may be pruned by keep_checkpoints otherwise); if they are
    missing or damaged, that generation's training is redone. Returns one note per redone stage.
    """
    G = cfg.generations
    notes = []
    for g in range(G, -1, -1):  # newest first: a redone training needs the weights of the generation before
        if str(g) not in manifest.data["generations"]:
            continue
        for stage in STAGES:
            if not manifest.done(g, stage):
                continue
            why = _stage_problem(stage, g, out, cfg, n_seq)
            if why:
                redo = REDO_WITH[stage]
                manifest.clear(g, redo)
                notes.append(f"gen {g}: {why}: redoing {'/'.join(redo)}")
        if g > 0 and manifest.done(g, "train"):
            needed = (not manifest.done(g, "evaluate") or not manifest.done(g, "generate")
                      or (cfg.train.init == "previous" and g < G and not manifest.done(g + 1, "train")))
            if needed:
                why = _safetensors_problem(gen_dir(out, g) / _weights_subdir(cfg))
                if why:
                    manifest.clear(g, ("train",))
                    notes.append(f"gen {g}: weights needed to resume: {why}: redoing train")
    return notes


def _disk_full(e: BaseException | None) -> bool:
    """An OSError ENOSPC, or a library's wrapping of one (pyarrow, safetensors, torch say it in words)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


# ---------------------------------------------------------------------- samples on disk


def _shard_path(d: Path, b: int) -> Path:
    return d / "shards" / f"b{b:06d}.parquet"


def _finished_shards(d: Path) -> set[int]:
    """Batch shards on disk (written atomically: a shard that exists is complete)."""
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
        raise DataError(f"{path} cannot be read ({first_line(e, 120)}): delete it and rerun the same command; "
                        "it is regenerated (identically) on resume.") from None
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
    from collapse.tracking import NullLogger, make_logger
    from collapse.train import finetune

    t_run = time.perf_counter()
    set_threads()
    accelerator = make_accelerator(cfg.train.mixed_precision)
    is_main = accelerator.is_main_process
    if not is_main:
        log.setLevel(logging.WARNING)
    show = show_progress and is_main
    gc, G = cfg.generation, cfg.generations

    # ---- validate everything before the first byte is written (or deleted)
    out, resuming, wipe = _prepare_out_dir(cfg)
    accelerator.wait_for_everyone()
    splits = load_splits(cfg.data)
    if cfg.model.name_or_path == "scratch":  # check on a weightless skeleton before the scratch model is built
        from collapse.scratch import build_scratch_model

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

    lock = logger = None
    try:
        # ---- the run folder: locked, emptied (resume=never overwrite=true) or cleaned and checked (resume)
        if is_main:
            lock = _lock_out_dir(out)
            if wipe:
                _empty_out_dir(out)
            elif out.is_dir():
                _clean_temp(out)
        accelerator.wait_for_everyone()
        manifest = Manifest.load_or_new(out / "manifest.json", cfg.fingerprint())
        if resuming:  # every process checks (read-only) so all agree on what is redone; the main one says it
            for note in _verify_stages(manifest, out, cfg, n_seq):
                if is_main:
                    log.warning(note)
        accelerator.wait_for_everyone()
        if is_main:
            write_text(out / "config.yaml", cfg.to_yaml())
            if not (out / "reference_counts.npy").is_file():
                with atomic_path(out / "reference_counts.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, ref_counts, allow_pickle=False)
            manifest.data.setdefault("base_model", model_ref)
            manifest.data["world_size"] = accelerator.num_processes  # of the latest (re)start
            if cfg.wandb.mode != "disabled" and not manifest.data.get("wandb_run_id"):
                # recorded before wandb.init: a process killed at any later moment resumes the same W&B run
                manifest.data["wandb_run_id"] = _new_wandb_id()
            manifest.save(is_main)
            if resuming:  # idempotent; repairs a metrics.jsonl damaged after the fact
                _rewrite_metrics_jsonl(out, [g for g in range(G + 1) if manifest.done(g, "measure")])
        logger = make_logger(cfg.wandb, out, cfg.to_dict(), is_main, run_id=manifest.data.get("wandb_run_id"),
                             resume=resuming)
        if is_main and getattr(logger, "id", None) and manifest.data.get("wandb_run_id") != logger.id:
            manifest.data["wandb_run_id"] = logger.id
            manifest.save(is_main)

        per_gen, total = _disk_estimate(cfg, model0, n_seq)
        log.info(f"collapse run → {out} ({'resuming' if resuming else 'new run'}); model {model_ref}; "
                 f"{G} generations × {n_seq} samples of {gc.new_tokens} tokens; regime {cfg.regime.kind}; "
                 f"train {cfg.train.method}/{cfg.train.init}; {accelerator.num_processes} process(es) on "
                 f"{accelerator.device.type}; disk ≈ {fmt_bytes(per_gen)} per generation, {fmt_bytes(total)} "
                 "for the run")
        try:
            free = shutil.disk_usage(out).free
            if free < total:
                log.warning(f"only {fmt_bytes(free)} free on the disk of {out}; the run may need about "
                            f"{fmt_bytes(total)} (a full disk stops it cleanly: free space and rerun to resume).")
        except OSError:  # pragma: no cover
            pass
        if resuming and not isinstance(logger, NullLogger):
            # the killed process may not have flushed its last rows: log the finished generations again,
            # from the first step the W&B server lacks (online: starting_step; offline it is 0)
            first = getattr(getattr(logger, "run", None), "starting_step", 0)
            for g in range(first if isinstance(first, int) else 0, G + 1):
                if manifest.done(g, "measure"):
                    d = gen_dir(out, g)
                    _log_generation(logger, read_json(d / "metrics.json"),
                                    np.load(d / "gen0_ppl.npy", allow_pickle=False), d, tok, g)

        clock = StageClock(total_stages=4 * (G + 1) - 1 + (1 if cfg.train.gen0_epochs else 0), log=log)
        base = model0
        if cfg.train.gen0_epochs:
            base = _gen0_finetune(cfg, model0, real_rows, val_blocks, out, manifest, accelerator, clock, show)
        samples_cache: dict[int, np.ndarray] = {}
        prev_model = base  # model g-1 in memory, or None (reloaded from disk where a stage needs it)
        for g in range(G + 1):
            d = gen_dir(out, g)
            model_g = base if g == 0 else None  # model g; None: not in memory (loaded when a stage needs it)
            # -- train model g on samples g-1 (per the regime)
            if g > 0:
                if manifest.done(g, "train"):
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
                    if cfg.train.init == "previous":
                        prev = prev_model if prev_model is not None else _load_generation_model(
                            base, g - 1, out, cfg, accelerator.device)
                    model_g = _attach(starting_model(cfg.train.init, base, prev), cfg, g)
                    prev = None
                    stats = finetune(model_g, rows, val_blocks, cfg.train, accelerator, key=(cfg.seed, g, "train"),
                                     show_progress=show, desc=f"gen {g} train",
                                     on_step=lambda s, g=g: fault.point("train", g, s))
                    model_g = _save_model(model_g, d, cfg, is_main)
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
            prev_model = None
            # -- evaluate model g on REAL test text
            if manifest.done(g, "evaluate"):
                clock.done += 1
            else:
                t0 = clock.start()
                if model_g is None:
                    model_g = _load_generation_model(base, g, out, cfg, accelerator.device)
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
                if model_g is None:
                    model_g = _load_generation_model(base, g, out, cfg, accelerator.device)
                _generate_stage(model_g, prompts, cfg, g, d, n_batches, tok, accelerator, suppress, show)
                manifest.mark(g, "generate", is_main)
                clock.finish(f"gen {g}: generate", t0, f"{n_seq} × {gc.new_tokens} tokens")
            # -- measure samples g against the REAL training counts
            if manifest.done(g, "measure"):
                clock.done += 1
            else:
                t0 = clock.start()
                full = load_samples(out, g, keep_prompt=True)  # prompt + continuation, read once
                gen_ids = full[:, gc.prompt_tokens:]
                samples_cache[g] = full if gc.keep_prompt else gen_ids
                fault.point("measure", g, 0)
                ppl = sequence_ppl(base, full, gc.prompt_tokens, cfg.eval.batch_size, accelerator)
                row = _metrics_row(g, read_json(d / "eval.json"), ref_counts, gen_ids, ppl, d)
                if is_main:
                    with atomic_path(d / "gen0_ppl.npy") as tmp, open(tmp, "wb") as fh:
                        np.save(fh, ppl.astype(np.float32), allow_pickle=False)
                    write_json(d / "metrics.json", row)
                    _rewrite_metrics_jsonl(out, [k for k in range(G + 1) if k == g or manifest.done(k, "measure")])
                accelerator.wait_for_everyone()
                manifest.mark(g, "measure", is_main)
                clock.finish(f"gen {g}: measure", t0, f"shift 1-10 {_fmt(row['bucket_shift']['1-10'])}, "
                             f"1001-10000 {_fmt(row['bucket_shift']['1001-10000'])}")
                _log_generation(logger, row, ppl, d, tok, g)
            # with train.init=previous generation g+1 starts from model g (kept in memory if it is there)
            prev_model = model_g if cfg.train.init == "previous" else None
            model_g = None
        manifest.data["complete"] = True
        manifest.save(is_main)
        _prune_checkpoints(out, G, cfg, is_main)
        if is_main:
            rows = [read_json(gen_dir(out, g) / "metrics.json") for g in range(G + 1)]
            log.info("\n" + metrics_table(rows))
            if os.environ.get("COLLAPSE_SKIP_REPORT") != "1":
                try:
                    from collapse.report import make_report

                    make_report([out], out / "report", quiet=True)
                    log.info(f"report: {out / 'report' / 'report.html'}")
                except Exception as e:  # noqa: BLE001 - the run's data are safe; the report can be redrawn
                    log.warning(f"the report could not be drawn ({e}); run `collapse report {out}` to retry.")
            log.info(f"done in {fmt_s(time.perf_counter() - t_run)}: {out}/metrics.jsonl")
        logger.close(exit_code=0)
        logger = None
    except KeyboardInterrupt:
        log.error(f"interrupted: finished stages are kept in {out}; rerun the same command to resume.")
        _close_quietly(logger, 1)
        raise
    except CollapseError:
        _close_quietly(logger, 1)
        raise
    except Exception as e:
        _close_quietly(logger, 1)
        if _disk_full(e):
            where = getattr(e, "filename", None)
            where = where if isinstance(where, str) and not where.startswith("<") else str(out)
            raise DataError(f"no space left on device (writing {where}): free space and rerun the same command "
                            "to resume; finished stages are kept.") from None
        raise
    finally:
        if lock is not None:
            lock.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def _close_quietly(logger, exit_code: int) -> None:
    if logger is None:
        return
    try:
        logger.close(exit_code=exit_code)
    except Exception:  # noqa: BLE001 - closing the logger must not hide the error that stopped the run
        pass


def _new_wandb_id() -> str:
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _fmt(v) -> str:
    return "—" if v is None else f"{v:+.1f}%"


def _gen0_finetune(cfg, model0, real_rows, val_blocks, out, manifest, accelerator, clock, show):
    """The paper's generation 0: the base model fine-tuned on the REAL training split."""
    from collapse.train import finetune

    d = gen_dir(out, 0)
    is_main = accelerator.is_main_process
    if manifest.done(0, "train"):
        clock.done += 1
        try:
            return _load_model_dir(d / "model", model0, accelerator.device)
        except Exception as e:  # noqa: BLE001 - checked on resume already; this is a race with a deletion
            raise DataError(f"the fine-tuned generation 0 in {d / 'model'} cannot be read ({first_line(e, 120)}): "
                            "rerun the same command to redo it.") from None
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
        try:
            m.save_pretrained(tmp, safe_serialization=True)
            shutil.rmtree(d / "model", ignore_errors=True)
            os.replace(tmp, d / "model")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
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


def _rewrite_metrics_jsonl(out: Path, gens: list[int]) -> None:
    """metrics.jsonl = the metrics.json rows of the measured generations ``gens``, rewritten whole (idempotent)."""
    lines = [dumps_line(read_json(gen_dir(out, g) / "metrics.json")) for g in sorted(gens)]
    write_text(out / "metrics.jsonl", "".join(line + "\n" for line in lines))


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
