"""Models and tokenizers: hub ids, local folders, and the tiny scratch model; LoRA attach / merge / save / load."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from collapse.config import LoraConfig, ModelConfig, ScratchConfig
from collapse.errors import DataError, ModelError, first_line

log = logging.getLogger("collapse")

SCRATCH_VERSION = 1  # bump when the scratch recipe changes, so old caches are not reused
EOT = "<|endoftext|>"


# ---------------------------------------------------------------------- devices / dtypes


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def set_threads() -> None:
    """Use the cores this process may run on (2 busy processes on 2 cores slow each other a lot)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        n = os.cpu_count() or 1
    world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    want = max(1, n // max(1, world))
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(want)


def cache_root() -> Path:
    return Path(os.environ.get("COLLAPSE_CACHE", Path.home() / ".cache" / "collapse")).expanduser()


# ---------------------------------------------------------------------- loading


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1 or Path(name).expanduser().exists()


def load_pretrained(name_or_path: str, cfg: ModelConfig, device: torch.device, dtype: torch.dtype | None = None):
    """(model, tokenizer) from a local folder or a hub id; clear ModelError otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or resolve_dtype(cfg.dtype, device)
    path = Path(name_or_path).expanduser()
    if _looks_local(name_or_path):
        if not path.is_dir():
            raise ModelError(f"model folder {path} does not exist: check model.name_or_path "
                             "(a local folder, a hub id, or `scratch`).")
        source = str(path)
    else:
        source = name_or_path
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision, use_safetensors=True
        )
    except (OSError, ValueError) as e:
        first = first_line(e)
        if source == name_or_path and offline:
            raise ModelError(f"cannot load `{name_or_path}`: offline (HF_HUB_OFFLINE=1) and not in the local cache. "
                             "Download it once with network access, or pass a local folder.") from None
        if "trust_remote_code" in first:
            raise ModelError(f"`{name_or_path}` ships its own code: set model.trust_remote_code=true "
                             "if you trust it.") from None
        raise ModelError(f"cannot load model `{name_or_path}`: {first}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device)
    model.eval()
    return model, tok


def context_length(model) -> int:
    c = model.config
    for k in ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length"):
        v = getattr(c, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return 1 << 30


def vocab_size(model, tokenizer) -> int:
    return max(int(model.config.vocab_size), len(tokenizer))


# ---------------------------------------------------------------------- scratch model


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


def get_scratch_model(cfg: ScratchConfig, splits, seed: int, show_progress: bool = True) -> Path:
    """Folder of the scratch tokenizer + model for these settings and data, built once and cached by hash."""
    from collapse.data import concat_blocks, tokenize
    from collapse.train import pretrain

    key = scratch_key(cfg, splits.fingerprint(), seed)
    final = cache_root() / "scratch" / key
    if (final / "DONE").is_file():
        return final
    t0 = time.time()
    tok = train_tokenizer(splits.train, cfg.vocab_size)
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    model = build_scratch_model(cfg, len(tok), eos)
    train_ids = tokenize(tok, splits.train)
    train_blocks = concat_blocks(train_ids, cfg.block_size, eos)
    if len(train_blocks) == 0:
        n = sum(len(i) + 1 for i in train_ids)
        raise DataError(f"the training split has {n} tokens, fewer than one model.scratch.block_size="
                        f"{cfg.block_size} block: use more data or lower model.scratch.block_size.")
    val_blocks = concat_blocks(tokenize(tok, splits.validation), cfg.block_size, eos)
    log.info("building the scratch model %s (tokenizer + %d pre-training steps); cached for later runs", key, cfg.steps)
    stats = pretrain(model, train_blocks, val_blocks, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                     seed=seed, show_progress=show_progress)
    tmp = final.parent / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    info = {"key": key, "scratch": asdict(cfg), "seed": seed, "seconds": round(time.time() - t0, 1), **stats}
    (tmp / "scratch.json").write_text(json.dumps(info, indent=2))
    (tmp / "DONE").write_text("ok\n")
    try:
        os.replace(tmp, final) if not final.exists() else shutil.rmtree(tmp)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("scratch model ready in %.0f s (validation perplexity %.1f)", time.time() - t0, stats["val_ppl"])
    return final


def load_model(cfg: ModelConfig, splits, seed: int, device: torch.device, show_progress: bool = True):
    """(model, tokenizer, folder) for ``model.name_or_path``; the scratch model is built or reused."""
    if cfg.name_or_path == "scratch":
        folder = get_scratch_model(cfg.scratch, splits, seed, show_progress)
        model, tok = load_pretrained(str(folder), cfg, device)
        return model, tok, str(folder)
    model, tok = load_pretrained(cfg.name_or_path, cfg, device)
    return model, tok, cfg.name_or_path


# ---------------------------------------------------------------------- LoRA


def linear_module_names(model) -> set[str]:
    """Leaf names of the linear / Conv1D layers (excluding the output head)."""
    from transformers.pytorch_utils import Conv1D

    names = set()
    for full, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, Conv1D)):
            leaf = full.rsplit(".", 1)[-1]
            if leaf not in ("lm_head", "embed_out", "output"):
                names.add(leaf)
    return names


def default_targets(model) -> list[str]:
    return sorted(linear_module_names(model))


def attach_lora(model, cfg: LoraConfig):
    """Wrap ``model`` with a fresh peft LoRA adapter (trainable), checking that the targets exist."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    available = linear_module_names(model)
    targets = cfg.target_modules or default_targets(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ModelError(f"train.lora.target_modules {missing} do not exist in {type(model).__name__}: "
                         f"choose from {sorted(available)}.")
    all_modules = {n.rsplit('.', 1)[-1] for n, _ in model.named_modules()}
    bad_save = [m for m in (cfg.modules_to_save or []) if m not in all_modules]
    if bad_save:
        raise ModelError(f"train.lora.modules_to_save {bad_save} do not exist in {type(model).__name__}.")
    pc = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                        modules_to_save=cfg.modules_to_save, task_type="CAUSAL_LM",
                        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2")
    return get_peft_model(model, pc)


def seeded_generator(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded from a tuple (seed, generation, stage, shard ...).

    Noise is drawn where it is used (a GPU draws its own), so a corpus is reproducible per device type.
    """
    h = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    return g


def seed_int(*parts: int | str) -> int:
    h = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def numpy_rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(seed_int(*parts))
