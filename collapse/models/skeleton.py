"""A model folder's weightless skeleton for the checks, without transformers' model code.

Importing a transformers model class costs about 2 s on 2 cores (its modeling code pulls in torch.distributed,
dynamo and the loss functions of every task), while `--check` needs only the module tree: names, linear layers and
parameter shapes. A folder may hold ``skeleton.json``, the record of the tree that ``AutoModelForCausalLM
.from_config`` builds from this folder's config (written where the folder is made: a scratch build, the shipped
generation 0). It is used only when its key matches this config, dtype, the full versions of transformers and torch
and the recorded tree itself (an edited record is not trusted), and never for a folder with its own model code; else
the skeleton is built as before.
tests/test_check.py checks that a rebuilt skeleton gives the checks what the built one gives.

May import: torch, transformers (configuration and pytorch_utils only).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

FILE = "skeleton.json"
VERSION = 2


def _key(config, dtype: torch.dtype, modules) -> str:
    """The record's key: the config, dtype, the libraries' full versions (a patch release may rename a module) and
    the recorded tree itself, so an edited tree no longer matches its key and is never trusted."""
    import transformers

    cfg = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    text = json.dumps({"config": cfg, "dtype": str(dtype), "transformers": transformers.__version__,
                       "torch": torch.__version__, "version": VERSION, "modules": modules},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _kind(mod) -> str:
    from transformers.pytorch_utils import Conv1D

    return "linear" if isinstance(mod, torch.nn.Linear) else "conv1d" if isinstance(mod, Conv1D) else "module"


def record(folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """Write ``folder``'s record: the skeleton ``from_config`` builds from its config.json (on the meta device); a
    tied parameter names the one it is tied to, so the rebuilt skeleton counts it once, as ``parameters()`` does."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    seen: dict[int, str] = {}
    modules = []
    for name, mod in model.named_modules():
        params = {}
        for pn, p in mod.named_parameters(recurse=False):
            full = f"{name}.{pn}" if name else pn
            params[pn] = [list(p.shape), str(p.dtype).removeprefix("torch."), seen.setdefault(id(p), full)]
        modules.append([name, _kind(mod), type(mod).__name__, params])
    data = {"key": _key(config, dtype, modules), "modules": modules}
    (Path(folder) / FILE).write_text(json.dumps(data, separators=(",", ":")) + "\n")


def read(folder: Path, config, dtype: torch.dtype):
    """The skeleton rebuilt from ``folder``'s record on the meta device, or None (no record, or one for another
    config, dtype or library version)."""
    try:
        data = json.loads((Path(folder) / FILE).read_text())
    except (OSError, ValueError):
        return None
    if getattr(config, "auto_map", None):  # the folder's own model code, which the key does not cover
        return None
    if not isinstance(data, dict) or data.get("key") != _key(config, dtype, data.get("modules")):
        return None
    try:
        return _rebuild(data, config)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError):  # damaged: build as before
        return None


def _bare(cls: type, **attrs) -> torch.nn.Module:
    """An instance of ``cls`` with no parameters made yet: initialising weights, even on the meta device, would
    import torch's compiler stack (about 1 s)."""
    mod = cls.__new__(cls)
    torch.nn.Module.__init__(mod)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def _rebuild(data: dict, config):
    from transformers.pytorch_utils import Conv1D

    classes: dict[str, type] = {}
    made: dict[str, torch.nn.Module] = {}
    params: dict[str, torch.nn.Parameter] = {}
    for name, kind, cls, shapes in data["modules"]:
        w = shapes.get("weight", [[0, 0]])[0]
        if kind == "linear":
            mod = _bare(torch.nn.Linear, in_features=w[1], out_features=w[0], bias=None)
        elif kind == "conv1d":
            mod = _bare(Conv1D, nf=w[1], nx=w[0], bias=None)
        else:  # a plain module of the same class name: messages name the model's classes
            mod = _bare(classes.setdefault(cls, type(cls, (torch.nn.Module,), {})))
        for pn, (shape, dt, owner) in shapes.items():
            p = params.get(owner)
            if p is None:
                p = torch.nn.Parameter(torch.empty(shape, dtype=getattr(torch, dt), device="meta"))
            setattr(mod, pn, p)
            params.setdefault(f"{name}.{pn}" if name else pn, p)
        if name:
            parent, _, leaf = name.rpartition(".")
            made[parent].add_module(leaf, mod)
        made[name] = mod
    root = made[""]
    root.config = config
    return root
