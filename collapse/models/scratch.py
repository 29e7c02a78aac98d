"""The scratch model: a byte-level BPE and a small GPT-2 (or Llama) pre-trained on the real training split.

Built once per (recipe, data, seed) and cached under ``$COLLAPSE_CACHE/scratch/<key>`` (default
``~/.cache/collapse``); later runs and ``collapse measure`` load the folder like any local model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from collapse.config import ScratchConfig
from collapse.errors import ConfigError, DataError, TrainingError
from collapse.io import atomic_dir
from collapse.metrics.evaluate import mean_nll
from collapse.models.skeleton import record as record_skeleton
from collapse.models.train import epoch_order, lm_loss, lr_at

log = logging.getLogger("collapse")

SCRATCH_VERSION = 2  # bump when the scratch recipe changes, so old caches are not reused
EOT = "<|endoftext|>"
TOKENS_FILE = "tokens.npz"  # the real splits' token ids, made with the folder's tokenizer (data.split_ids)
SHIPPED = Path(__file__).parent.parent / "gen0"  # the embedded default's generation 0, built by scripts/build_gen0.py
SHIPPED_INFO = "gen0.json"


def cache_root() -> Path:
    return Path(os.environ.get("COLLAPSE_CACHE", Path.home() / ".cache" / "collapse")).expanduser()


def scratch_key(cfg: ScratchConfig, data_fingerprint: str) -> str:
    """The cache key of a scratch model: recipe and data. Not the device, precision or number of processes
    that build it: they change its float sums only, and the first build of a key is the one kept."""
    blob = json.dumps({"v": SCRATCH_VERSION, "scratch": asdict(cfg), "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_info() -> dict | None:
    """What ``collapse/gen0/gen0.json`` records of the shipped generation 0 (None: not installed)."""
    try:
        return json.loads((SHIPPED / SHIPPED_INFO).read_text())
    except (OSError, ValueError):
        return None


def shipped_folder(key: str) -> Path | None:
    """The shipped generation 0 if it is the model of this key and its weights are the recorded ones."""
    info = shipped_info()
    if info is None or info.get("key") != key:
        return None
    weights = SHIPPED / "model.safetensors"
    if (not weights.is_file() or not (SHIPPED / "DONE").is_file()
            or file_sha256(weights) != info.get("weights_sha256")):
        log.warning("note: the shipped generation 0 (%s) is damaged or incomplete (its weights are not the ones "
                    "gen0.json records): building it instead; reinstall collapse to get it back.", SHIPPED)
        return None
    return SHIPPED


def train_tokenizer(docs: list[str], vocab: int):
    """Byte-level BPE trained on ``docs`` (the real training split), wrapped as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=EOT)


def build_scratch_model(cfg: ScratchConfig, vocab: int, eos_id: int):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    common = dict(vocab_size=vocab, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                  tie_word_embeddings=True)
    if cfg.arch == "gpt2":
        mc = GPT2Config(n_positions=cfg.context, n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    else:
        mc = LlamaConfig(hidden_size=cfg.d_model, intermediate_size=4 * cfg.d_model, num_hidden_layers=cfg.n_layer,
                         num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
                         max_position_embeddings=cfg.context, **common)
    return AutoModelForCausalLM.from_config(mc)


def scratch_folder(cfg: ScratchConfig, splits) -> Path:
    """Where the scratch model of these settings and data is: the shipped generation 0 when it is that model,
    else the cache (complete once it holds ``DONE``)."""
    key = scratch_key(cfg, splits.fingerprint())
    shipped = shipped_folder(key)
    if shipped is not None:
        return shipped
    if cfg == ScratchConfig() and shipped_info() is None:
        log.warning("note: the shipped generation 0 of the embedded default is not installed (%s is missing): "
                    "building it once (about half an hour on 2 cores), cached for later runs.", SHIPPED)
    return cache_root() / "scratch" / key


def get_scratch_model(cfg: ScratchConfig, splits, show_progress: bool = True, accelerator=None) -> Path:
    """Folder of the scratch tokenizer + model for these settings and data: shipped, cached, or built now.

    With an ``accelerator`` the pre-training runs on its device and processes (every process calls this;
    the main one writes the folder, the others wait for it); without one, on the CPU in this process.
    """
    final = scratch_folder(cfg, splits)
    if (final / "DONE").is_file():
        return final
    is_main = accelerator is None or accelerator.is_local_main_process  # one writer per node
    folder = build(cfg, splits, final if is_main else None, show_progress=show_progress and is_main,
                   accelerator=accelerator)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return folder if is_main else final


def build(cfg: ScratchConfig, splits, dest: Path | None, show_progress: bool = True, accelerator=None) -> Path | None:
    """Train the tokenizer and pre-train the model on ``splits``; write them to ``dest`` (atomically) with
    ``scratch.json`` (recipe, curve, timings) and the splits' token ids. Returns ``dest``."""
    from collapse.data import SPLITS, concat_blocks, save_split_ids, tokenize

    t0 = time.time()
    data = splits.fingerprint()  # hashes every document: once
    key = scratch_key(cfg, data)
    # the synthetic source brings its word-level tokenizer (one id per symbol); real text gets a BPE trained here
    tok = splits.tokenizer if getattr(splits, "tokenizer", None) is not None else train_tokenizer(splits.train,
                                                                                                 cfg.vocab_size)
    eos = tok.eos_token_id
    torch.manual_seed(cfg.seed)
    model = build_scratch_model(cfg, len(tok), eos)
    ids = {s: tokenize(tok, splits[s]) for s in SPLITS}  # kept beside the model: later runs need not tokenize
    train_blocks = concat_blocks(ids["train"], cfg.block_size, eos)
    if len(train_blocks) == 0:
        n = sum(len(i) + 1 for i in ids["train"])
        raise DataError(f"the training split has {n} tokens, fewer than one model.scratch.block_size="
                        f"{cfg.block_size} block: use more data or lower model.scratch.block_size.")
    val_blocks = concat_blocks(ids["validation"], cfg.block_size, eos)
    what = (f"until converged, at most {cfg.steps} steps" if cfg.until == "converged" else f"{cfg.steps} steps")
    log.info("building the scratch model %s (tokenizer + pre-training %s); cached for later runs", key, what)
    stats = pretrain(model, train_blocks, val_blocks, cfg, show_progress=show_progress, accelerator=accelerator)
    if dest is None:
        return None
    model = model.to("cpu", dtype=torch.float32)
    with atomic_dir(dest, replace=False) as tmp:  # a concurrent build of the same key may finish first
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        save_split_ids(tmp / TOKENS_FILE, splits, ids)
        try:  # `--check` reads the model's shapes from it (collapse.models.skeleton); only a speed-up
            record_skeleton(tmp)
        except Exception as e:  # noqa: BLE001 - never lose a finished pre-training for it
            log.debug("no skeleton record: %s", e)
        info = {"key": key, "scratch": asdict(cfg), "data": data,
                "seconds": round(time.time() - t0, 1), **stats}
        (tmp / "scratch.json").write_text(json.dumps(info, indent=1))
        (tmp / "DONE").write_text("ok\n")
    conv = {True: "converged", False: "not converged: raise model.scratch.steps"}.get(stats.get("converged"), "")
    log.info("scratch model ready in %.0f s: %d steps, validation perplexity %.1f%s", time.time() - t0,
             stats["steps"], stats["val_ppl"], f" ({conv})" if conv else "")
    return dest


class Convergence:
    """The stopping rule of ``until: converged``, fed one validation loss every ``eval_every`` steps.

    Stop at step s once the best loss so far improved by less than ``min_delta`` (relative) on the best
    loss up to step s - w, where the window w = max(patience, 10% of s): a plateau shorter than ``patience``
    cannot stop it, and at the stop the last 10% of training improved the loss by under ``min_delta``.
    """

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.curve: list[tuple[int, float]] = []  # (step, validation loss)
        self.best = (math.inf, -1)  # (loss, step)

    def window(self, step: int) -> int:
        return max(self.patience, math.ceil(0.1 * step))

    def update(self, step: int, loss: float) -> bool:
        """Record the loss at ``step``; True when training should stop."""
        self.curve.append((step, loss))
        if loss < self.best[0]:
            self.best = (loss, step)
        w = self.window(step)
        if step < w:
            return False
        before = min((v for s, v in self.curve if s <= step - w), default=math.inf)
        return math.isfinite(before) and before - self.best[0] <= self.min_delta * before


class ConvergedSchedule:
    """The learning rate of ``until: converged``, and when to stop: warmup, then the peak rate until the rule
    first fires (the loss has flattened at that rate), then a linear cooldown to 10% of the peak over
    max(patience, 20% of the steps so far), then 10% until the rule fires again (the cooldown's gain is
    then out of its window: the model is converged at its annealed rate, not only on a noisy plateau)."""

    def __init__(self, peak: float, warmup: int, rule: Convergence):
        self.peak, self.warmup, self.rule = peak, warmup, rule
        self.cooldown: tuple[int, int] | None = None  # (first step, length)

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.cooldown is None:
            return self.peak
        s0, n = self.cooldown
        return self.peak * (1.0 - 0.9 * min(1.0, (step - s0) / n))

    def update(self, step: int, loss: float) -> bool:
        """Record the validation loss at ``step``; True when training should stop."""
        flat = self.rule.update(step, loss)
        if self.cooldown is None:
            if flat:
                self.cooldown = (step, max(self.rule.patience, math.ceil(0.2 * step)))
            return False
        return flat and step >= sum(self.cooldown)


def pretrain(model, train_blocks: np.ndarray, val_blocks: np.ndarray, cfg: ScratchConfig, *,
             show_progress: bool = True, accelerator=None) -> dict:
    """Pre-train the scratch model on real blocks (AdamW, warmup over 5% of ``cfg.steps``).

    ``until: steps`` runs ``cfg.steps`` steps, the rate decaying by a cosine over them; ``until: converged``
    evaluates the validation loss every ``cfg.eval_every`` steps, follows :class:`ConvergedSchedule` (at
    most ``cfg.steps`` steps) and keeps the best evaluated weights. With an ``accelerator``: its device, its processes (each takes its share of the global batch)
    and its autocast; the result is the same computation as one process's, up to float sums.
    """
    from tqdm.auto import tqdm

    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    device = accelerator.device if accelerator else torch.device("cpu")
    if cfg.batch_size % world:
        raise ConfigError(f"model.scratch.batch_size={cfg.batch_size} must be divisible by the {world} processes.")
    micro = cfg.batch_size // world
    model.to(device)
    model.train()
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=fused or None)
    pmodel = model
    if accelerator is not None:
        pmodel, opt = accelerator.prepare(model, opt)
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    steps = cfg.steps
    warmup = max(1, steps // 20)
    rule = Convergence(cfg.patience, cfg.min_delta) if cfg.until == "converged" else None
    sched = ConvergedSchedule(cfg.lr, warmup, rule) if rule is not None else None

    def lr(step: int) -> float:
        return sched.lr(step) if sched is not None else lr_at(step, steps, cfg.lr, warmup)
    best_state = None
    order = np.zeros(0, dtype=np.int64)
    epoch = 0
    # no step waits for the device (as in train.finetune): blocks on the device once, losses kept there
    dev_blocks = torch.as_tensor(train_blocks, device=device).long()
    losses: list[torch.Tensor] = []
    curve: list[dict] = []

    def check_losses(step: int) -> list[float]:
        vals = torch.stack(losses).cpu().tolist() if losses else []
        bad = [i for i, v in enumerate(vals) if not math.isfinite(v)]
        if bad:
            raise TrainingError(f"scratch pre-training diverged (loss {vals[bad[0]]}) at step "
                                f"{step - len(vals) + bad[0]}: lower model.scratch.lr.")
        return vals

    eval_s = 0.0

    def evaluate(step: int) -> bool:
        nonlocal best_state, eval_s
        vals = check_losses(step)
        losses.clear()
        te = time.perf_counter()
        val = mean_nll(pmodel, val_blocks, accelerator=accelerator)
        eval_s += time.perf_counter() - te
        pmodel.train()
        curve.append({"step": step, "val_nll": round(val, 6), "train_loss": round(float(np.mean(vals)), 6)
                      if vals else None, "lr": lr(step - 1) if step else None})
        log.debug("scratch step %d: validation loss %.4f (perplexity %.2f), lr %s", step, val, math.exp(val),
                  f"{curve[-1]['lr']:.2e}" if step else "-")
        stop = sched.update(step, val)
        if rule.best[1] == step:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{curve[-1]['train_loss'] or float('nan'):.3f}", val=f"{val:.3f}", refresh=False)
        return stop

    step = 0
    last_loss = float("nan")
    with tqdm(total=steps, desc="pre-train scratch model", leave=False, disable=not show_progress,
              dynamic_ncols=True) as bar:
        t0 = time.perf_counter()
        stopped = rule is not None and evaluate(0)
        while step < steps and not stopped:
            if len(order) < cfg.batch_size:
                order = np.concatenate([order, epoch_order(len(train_blocks), 1, cfg.seed, "pretrain", epoch)])
                epoch += 1
            rows, order = order[:cfg.batch_size], order[cfg.batch_size:]
            for g in opt.param_groups:
                g["lr"] = lr(step)
            batch = dev_blocks[torch.as_tensor(rows[rank * micro:(rank + 1) * micro]).to(device, non_blocking=True)]
            with autocast():
                loss = lm_loss(pmodel, batch)
            opt.zero_grad(set_to_none=True)
            if accelerator is not None:
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.detach().float())
            step += 1
            bar.update(1)
            if rule is not None and (step % cfg.eval_every == 0 or step == steps):
                stopped = evaluate(step)
            elif rule is None and (step % 50 == 0 or step == steps):
                last_loss = check_losses(step)[-1]
                losses.clear()
                bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
        dt = time.perf_counter() - t0 - eval_s  # training steps only (the validation passes: eval_s)
    out = {"until": cfg.until, "steps": step, "seconds_training": round(dt, 1), "seconds_validating": round(eval_s, 1),
           "tokens_per_s": step * cfg.batch_size * train_blocks.shape[1] / dt if dt > 0 else 0.0,
           "processes": world, "device": device.type}
    if rule is not None:
        if best_state is not None:
            model.load_state_dict(best_state)
        out.update(converged=stopped, best_step=rule.best[1], patience_window=rule.window(step),
                   cooldown=list(sched.cooldown) if sched.cooldown else None, curve=curve)
        val = rule.best[0]
    else:
        val = mean_nll(pmodel, val_blocks, accelerator=accelerator)
        out["train_loss"] = last_loss
    model.eval()
    opt.zero_grad(set_to_none=True)
    opt = pmodel = best_state = dev_blocks = None  # nothing of the training left on the device
    if accelerator is not None:
        accelerator.free_memory()  # the optimizer's moments and DDP buffers it still holds
    out.update(val_nll=val, val_ppl=math.exp(val))
    return out
