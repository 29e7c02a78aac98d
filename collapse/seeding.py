"""Every random stream of a run, drawn from a key (seed, generation, stage, shard ...).

Nothing reads RNG state left over by earlier work of the process, so a resumed run, or a stage run in
another process, draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch


def seed_int(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of parts (stable across processes, machines and Python versions)."""
    h = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def numpy_rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(seed_int(*parts))


def seeded_generator(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded from (seed, generation, stage, shard ...).

    Noise is drawn where it is used (a GPU draws its own), so a corpus is reproducible per device type.
    """
    g = torch.Generator(device=device)
    g.manual_seed(seed_int(*parts))
    return g


def seed_torch(*parts: int | str) -> None:
    """Seed the global torch RNG from a key, for libraries that draw from it (peft's LoRA init, dropout)."""
    torch.manual_seed(seed_int(*parts))
