"""Transformers models and tokenizers: hub ids and local folders, threads and dtypes, decoding rows, LoRA attach.

The transformer kind (``collapse.models.transformer``) builds on these; the scratch model is built in ``scratch.py``.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from collapse.config import LoraConfig, ModelConfig
from collapse.errors import ModelError, first_line

log = logging.getLogger("collapse")


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


# ---------------------------------------------------------------------- loading


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1 or Path(name).expanduser().exists()


def model_source(name_or_path: str) -> str:
    """A local model folder (checked: it exists and holds a config.json) or a hub id, as transformers takes it."""
    if not _looks_local(name_or_path):
        return name_or_path
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist: check model.name_or_path "
                         "(a local folder, a hub id, or `scratch`).")
    if not (path / "config.json").is_file():
        raise ModelError(f"model folder {path} holds no model (no config.json): point model.name_or_path at a folder "
                         "written by save_pretrained, a hub id, or `scratch`.")
    return str(path)


@contextmanager
def _loading(name_or_path: str, source: str):
    """Turn what transformers raises for a model that cannot be loaded into one ModelError line."""
    try:
        yield
    except ImportError as e:  # a model's own code (trust_remote_code) needs a package that is not installed
        raise ModelError(f"cannot load model `{name_or_path}`: {first_line(e)} (install the package it names).") from None
    except (OSError, ValueError, KeyError) as e:
        first = first_line(e)
        if source == name_or_path and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelError(f"cannot load `{name_or_path}`: offline (HF_HUB_OFFLINE=1) and not in the local cache. "
                             "Download it once with network access, or pass a local folder.") from None
        if "trust_remote_code" in first:
            raise ModelError(f"`{name_or_path}` ships its own code: set model.trust_remote_code=true "
                             "if you trust it.") from None
        raise ModelError(f"cannot load model `{name_or_path}`: {first}") from None


def _tokenizer(source: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def decode_rows(tok, rows) -> list[str]:
    """``tok.batch_decode(rows)``, the same strings, straight from the Rust tokenizer where that is what
    transformers would return: ``batch_decode`` first checks every id of every row in Python, a cost
    that grows with the corpus (docs/benchmarks.md). Slow tokenizers, classes that decode their own way (Whisper, CPM...) and fast ones whose
    decode would clean up spaces take transformers' path."""
    from transformers import PreTrainedTokenizerFast as Fast

    rows = rows.tolist() if hasattr(rows, "tolist") else [list(r) for r in rows]
    backend = getattr(tok, "backend_tokenizer", None)
    plain = isinstance(tok, Fast) and all(getattr(type(tok), m) is getattr(Fast, m)
                                          for m in ("decode", "batch_decode", "_decode"))
    # transformers >= 5.7 skips the clean-up for BPE unless forced; older 5.x (no such flag) cleans up
    cleans = bool(getattr(tok, "clean_up_tokenization_spaces", False)) and not (
        backend is not None and type(backend.model).__name__ == "BPE"
        and not getattr(tok, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", True))
    if backend is None or not plain or cleans:
        return tok.batch_decode(rows)
    return backend.decode_batch(rows, skip_special_tokens=False)


def load_pretrained(name_or_path: str, cfg: ModelConfig, device: torch.device, dtype: torch.dtype | None = None):
    """(model, tokenizer) from a local folder or a hub id; clear ModelError otherwise."""
    from transformers import AutoModelForCausalLM

    dtype = dtype or resolve_dtype(cfg.dtype, device)
    source = model_source(name_or_path)
    with _loading(name_or_path, source):
        tok = _tokenizer(source, cfg)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision, use_safetensors=True
        )
    model.to(device)
    model.eval()
    return model, tok


def load_skeleton(name_or_path: str, cfg: ModelConfig, device: torch.device):
    """(weightless model on the meta device, tokenizer): shapes, context and module names in seconds, for checks."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = model_source(name_or_path)
    with _loading(name_or_path, source):
        tok = _tokenizer(source, cfg)
        mc = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(mc, dtype=resolve_dtype(cfg.dtype, device),
                                                     trust_remote_code=cfg.trust_remote_code)
    return model, tok


def vocab_size(model, tokenizer) -> int:
    return max(int(model.config.vocab_size), len(tokenizer))


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


def check_lora_targets(model, targets: list[str], modules_to_save: list[str] | None = None) -> None:
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ModelError(f"train.lora.target_modules {missing} do not exist in {type(model).__name__}: "
                         f"choose from {sorted(available)}.")
    all_modules = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    bad_save = [m for m in (modules_to_save or []) if m not in all_modules]
    if bad_save:
        raise ModelError(f"train.lora.modules_to_save {bad_save} do not exist in {type(model).__name__}.")


def attach_lora(model, cfg: LoraConfig):
    """Wrap ``model`` with a fresh peft LoRA adapter (trainable), checking that the targets exist."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = cfg.target_modules or default_targets(model)
    check_lora_targets(model, targets, cfg.modules_to_save)
    pc = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                        modules_to_save=cfg.modules_to_save, task_type="CAUSAL_LM",
                        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2")
    return get_peft_model(model, pc)
