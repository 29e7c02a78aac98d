"""Transformers models and tokenizers: hub ids and local folders, threads and dtypes, decoding rows, LoRA attach.

The transformer kind (``collapse.models.transformer``) builds on these; the scratch model is built in ``scratch.py``.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Source:
    """Where transformers reads a model: a hub id or a local folder, and the GGUF file in it (if any)."""

    where: str
    local: bool
    gguf_file: str | None = None  # the file's name inside ``where``

    @property
    def file(self) -> Path | None:
        """The local GGUF file (checked, hashed into the run folder), or None."""
        return Path(self.where) / self.gguf_file if self.local and self.gguf_file else None

    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "vocab.txt")


def model_source(name_or_path: str, gguf_file: str | None = None, revision: str | None = None) -> Source:
    """A checked local folder or GGUF file, or a hub id (with ``model.gguf_file``: the file, fetched or cached)."""
    from collapse.models import gguf as G

    if name_or_path.startswith(G.PACKAGE):
        return _gguf_source(G.package_file(name_or_path), gguf_file, name_or_path)
    if not _looks_local(name_or_path) and not G.is_gguf_name(name_or_path):  # `x.gguf` is a path, never a hub id
        if gguf_file:
            return _gguf_source(_hub_file(name_or_path, gguf_file, revision), None, name_or_path)
        return Source(name_or_path, local=False)
    path = Path(name_or_path).expanduser()
    if G.is_gguf_name(name_or_path) and not path.is_dir():
        return _gguf_source(path, gguf_file, name_or_path)
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist: check model.name_or_path "
                         "(a local folder, a .gguf file, a hub id, or `scratch`).")
    if gguf_file:
        return _gguf_source(path / gguf_file, None, name_or_path)
    _check_folder(path)
    return Source(str(path), local=True)


def _gguf_source(path: Path, gguf_file: str | None, name: str) -> Source:
    from collapse.models.gguf import read_facts

    if gguf_file:
        raise ModelError(f"model.name_or_path={name} is a .gguf file and model.gguf_file={gguf_file} names another: "
                         "set model.gguf_file only with a folder or hub repo.")
    read_facts(path)  # one line for a missing, foreign, truncated or unreadable file
    return Source(str(path.parent), local=True, gguf_file=path.name)


def _hub_file(repo: str, filename: str, revision: str | None = None) -> Path:
    """The hub repo's GGUF file in the local cache (downloaded first where the network allows)."""
    from huggingface_hub import hf_hub_download

    from collapse.models.gguf import require_gguf

    require_gguf()
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as e:  # noqa: BLE001 - hub errors are many types; offline is the common one
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelError(f"cannot load `{repo}` / {filename}: offline (HF_HUB_OFFLINE=1) and not in the local "
                             "cache. Download it once with network access, or pass the local .gguf file.") from None
        raise ModelError(f"cannot fetch {filename} from `{repo}`: {first_line(e, 120)}") from None


def _check_folder(path: Path) -> None:
    """A local model folder holds a readable config.json, safetensors weights and a tokenizer: else one line
    naming what is missing, not whatever transformers stumbles on later."""
    import json

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if ggufs:
            raise ModelError(f"model folder {path} holds no config.json but GGUF file(s) {', '.join(ggufs)}: set "
                             f"model.name_or_path={path / ggufs[0]} (or model.gguf_file={ggufs[0]}).")
        raise ModelError(f"model folder {path} holds no model (no config.json): point model.name_or_path at a folder "
                         "written by save_pretrained, a .gguf file, a hub id, or `scratch`.")
    try:
        conf = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{cfg_file} is not valid JSON ({first_line(e, 100)}): restore it from where the model "
                         "came from, or save the model again with save_pretrained.") from None
    if not isinstance(conf, dict) or "model_type" not in conf:
        raise ModelError(f"{cfg_file} names no model_type: it is not a transformers model config.")
    if not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").is_file():
        pickled = sorted(p.name for p in path.glob("*.bin"))
        if pickled:
            raise ModelError(f"model folder {path} holds only pickled weights ({', '.join(pickled[:3])}), which "
                             "collapse does not load: save them as safetensors (save_pretrained(..., "
                             "safe_serialization=True)).")
        raise ModelError(f"model folder {path} holds a config.json but no weights (*.safetensors): copy the weights "
                         "in, or save the model with save_pretrained.")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"model folder {path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}): save "
                         "it there with tokenizer.save_pretrained.")


@contextmanager
def _loading(name_or_path: str, source: Source):
    """Turn what transformers raises for a model that cannot be loaded into one ModelError line; its own
    progress bars (weights, GGUF dequantization) stay off: loading takes seconds and the plan says what loads."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_utils = None
    if source.gguf_file:  # its dequantization bar is a plain tqdm, deaf to the switch above
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        bar = getattr(gguf_utils, "tqdm", None)
        gguf_utils.tqdm = lambda it, *a, **k: it
    from collapse.models.gguf import one_parse

    try:
        with one_parse(bool(source.gguf_file)):
            yield
    except ModelError:
        raise
    except ImportError as e:  # a model's own code (trust_remote_code) needs a package that is not installed
        raise ModelError(f"cannot load model `{name_or_path}`: {first_line(e)} (install the package it names).") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = first_line(e)
        if not source.local and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelError(f"cannot load `{name_or_path}`: offline (HF_HUB_OFFLINE=1) and not in the local cache. "
                             "Download it once with network access, or pass a local folder.") from None
        if "trust_remote_code" in first:
            raise ModelError(f"`{name_or_path}` ships its own code: set model.trust_remote_code=true "
                             "if you trust it.") from None
        raise ModelError(f"cannot load model `{name_or_path}`: {first}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if gguf_utils is not None and bar is not None:
            gguf_utils.tqdm = bar


def _tokenizer(source: Source, cfg: ModelConfig, name: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source.where, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
                                        **source.kwargs())
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not tok("In the beginning", add_special_tokens=False)["input_ids"]:
        raise ModelError(f"the tokenizer of `{name}` turns text into no tokens: its vocabulary files are missing "
                         "or empty (save the model's tokenizer there with tokenizer.save_pretrained).")
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
    """(model, tokenizer) from a local folder, a GGUF file or a hub id; clear ModelError otherwise."""
    from transformers import AutoModelForCausalLM

    dtype = dtype or resolve_dtype(cfg.dtype, device)
    source = model_source(name_or_path, getattr(cfg, "gguf_file", None), cfg.revision)
    with _loading(name_or_path, source):
        tok = _tokenizer(source, cfg, name_or_path)
        model = AutoModelForCausalLM.from_pretrained(
            source.where, dtype=dtype, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
            **source.kwargs(), **({} if source.gguf_file else dict(use_safetensors=True)))  # GGUF: gguf reads it
    if source.gguf_file:
        from collapse.models.gguf import drop_quantizer

        drop_quantizer(model)
        if source.file is not None:  # adapters (peft's base_model_name_or_path) name the base file
            model.config._name_or_path = model.name_or_path = str(source.file)
    model.to(device)
    model.eval()
    return model, tok


def load_skeleton(name_or_path: str, cfg: ModelConfig, device: torch.device):
    """(weightless model on the meta device, tokenizer): shapes, context and module names in seconds, for checks."""
    from transformers import AutoConfig

    source = model_source(name_or_path, getattr(cfg, "gguf_file", None), cfg.revision)
    with _loading(name_or_path, source):
        tok = _tokenizer(source, cfg, name_or_path)
        mc = AutoConfig.from_pretrained(source.where, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
                                        **source.kwargs())
        dtype = resolve_dtype(cfg.dtype, device)
        if source.local and not source.gguf_file and not cfg.trust_remote_code:  # its record spares the model's code
            from collapse.models.skeleton import read

            if (model := read(Path(source.where), mc, dtype)) is not None:
                return model, tok
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(mc, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    return model, tok


def never_sampled(tok) -> tuple[int, ...]:
    """Ids no sample may contain: EOS (every continuation has its full length, as the paper forces 64 new tokens)
    and the tokenizer's other special tokens (an instruct model's chat markers are not text)."""
    ids = {tok.eos_token_id} | set(getattr(tok, "all_special_ids", None) or ())
    ids |= {i for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items() if getattr(t, "special", False)}
    return tuple(sorted(i for i in ids if i is not None))


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
