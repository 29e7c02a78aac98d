"""The scratch model: a byte-level BPE and a small GPT-2 (or Llama) pre-trained on the real training split.

Built once per (recipe, data, seed) and cached under ``$COLLAPSE_CACHE/scratch/<key>`` (default
``~/.cache/collapse``); later runs and ``collapse measure`` load the folder like any local model.
"""

from __future__ import annotations

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
from collapse.errors import DataError, TrainingError
from collapse.evaluate import mean_nll
from collapse.io import atomic_dir
from collapse.train import epoch_order, lm_loss, lr_at

log = logging.getLogger("collapse")

SCRATCH_VERSION = 1  # bump when the scratch recipe changes, so old caches are not reused
EOT = "<|endoftext|>"
TOKENS_FILE = "tokens.npz"  # the real splits' token ids, made with the folder's tokenizer (data.split_ids)


def cache_root() -> Path:
    return Path(os.environ.get("COLLAPSE_CACHE", Path.home() / ".cache" / "collapse")).expanduser()


def scratch_key(cfg: ScratchConfig, data_fingerprint: str, seed: int) -> str:
    blob = json.dumps({"v": SCRATCH_VERSION, "scratch": asdict(cfg), "data": data_fingerprint, "seed": seed},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


def scratch_folder(cfg: ScratchConfig, splits, seed: int) -> Path:
    """Where the scratch model of these settings and data is cached (complete once it holds ``DONE``)."""
    return cache_root() / "scratch" / scratch_key(cfg, splits.fingerprint(), seed)


def get_scratch_model(cfg: ScratchConfig, splits, seed: int, show_progress: bool = True) -> Path:
    """Folder of the scratch tokenizer + model for these settings and data, built once and cached by hash."""
    from collapse.data import SPLITS, concat_blocks, save_split_ids, tokenize

    final = scratch_folder(cfg, splits, seed)
    key = final.name
    if (final / "DONE").is_file():
        return final
    t0 = time.time()
    tok = train_tokenizer(splits.train, cfg.vocab_size)
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    model = build_scratch_model(cfg, len(tok), eos)
    ids = {s: tokenize(tok, splits[s]) for s in SPLITS}  # kept beside the model: later runs need not tokenize
    train_ids = ids["train"]
    train_blocks = concat_blocks(train_ids, cfg.block_size, eos)
    if len(train_blocks) == 0:
        n = sum(len(i) + 1 for i in train_ids)
        raise DataError(f"the training split has {n} tokens, fewer than one model.scratch.block_size="
                        f"{cfg.block_size} block: use more data or lower model.scratch.block_size.")
    val_blocks = concat_blocks(ids["validation"], cfg.block_size, eos)
    log.info("building the scratch model %s (tokenizer + %d pre-training steps); cached for later runs", key, cfg.steps)
    stats = pretrain(model, train_blocks, val_blocks, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                     seed=seed, show_progress=show_progress)
    with atomic_dir(final, replace=False) as tmp:  # a concurrent build of the same key may finish first
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        save_split_ids(tmp / TOKENS_FILE, splits, ids)
        info = {"key": key, "scratch": asdict(cfg), "seed": seed, "seconds": round(time.time() - t0, 1), **stats}
        (tmp / "scratch.json").write_text(json.dumps(info, indent=2))
        (tmp / "DONE").write_text("ok\n")
    log.info("scratch model ready in %.0f s (validation perplexity %.1f)", time.time() - t0, stats["val_ppl"])
    return final


def pretrain(model, train_blocks: np.ndarray, val_blocks: np.ndarray, *, steps: int, batch_size: int, lr: float,
             seed: int, show_progress: bool = True) -> dict:
    """Pre-train the scratch model on real blocks for ``steps`` steps (single process, CPU-sized)."""
    from tqdm.auto import tqdm

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    order = np.zeros(0, dtype=np.int64)
    epoch = 0
    with tqdm(total=steps, desc="pre-train scratch model", leave=False, disable=not show_progress,
              dynamic_ncols=True) as bar:
        t0 = time.perf_counter()
        loss_v = float("nan")
        for step in range(steps):
            if len(order) < batch_size:
                order = np.concatenate([order, epoch_order(len(train_blocks), 1, seed, "pretrain", epoch)])
                epoch += 1
            rows, order = order[:batch_size], order[batch_size:]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, warmup)
            loss = lm_loss(model, torch.as_tensor(train_blocks[rows], dtype=torch.long))
            if not torch.isfinite(loss):
                raise TrainingError(f"scratch pre-training diverged (loss {loss.item()}) at step {step}: "
                                    "lower model.scratch.lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_v = loss.item()
            bar.set_postfix(loss=f"{loss_v:.3f}", refresh=False)
            bar.update(1)
    dt = time.perf_counter() - t0
    model.eval()
    val = mean_nll(model, val_blocks)
    return {"steps": steps, "train_loss": loss_v, "val_nll": val, "val_ppl": math.exp(val),
            "tokens_per_s": steps * batch_size * train_blocks.shape[1] / dt}
