"""Fault injection for crash tests: ``COLLAPSE_FAULT=<stage>:<generation>:<step>`` kills the process hard.

Examples: ``generate:1:2`` (after batch 2 of generation 1's samples), ``train:2:5`` (after optimizer
step 5 of generation 2), ``evaluate:1:0``, ``between:1:evaluate`` (right after a stage is recorded),
``nan:2:0`` (the training loss of generation 2 turns NaN at step 0: tests the divergence error),
``manifest:1:0`` (in the middle of a manifest write: the temporary file exists, the rename has not
happened). ``*`` matches any generation. Unset (the normal case) costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_SPEC: tuple[str, str, str] | None | bool = False


def _spec():
    global _SPEC
    if _SPEC is False:
        raw = os.environ.get("COLLAPSE_FAULT", "").strip()
        parts = raw.split(":")
        _SPEC = (parts[0], parts[1], parts[2]) if raw and len(parts) == 3 else None
    return _SPEC


def active(stage: str, generation: int, step: int | str = 0) -> bool:
    """True where the spec names this point (for faults other than a kill, e.g. ``nan:2:0``)."""
    spec = _spec()
    if spec is None:
        return False
    s, g, k = spec
    return s == stage and (g == "*" or g == str(generation)) and k == str(step)


def point(stage: str, generation: int, step: int | str = 0) -> None:
    """Die with SIGKILL if the fault spec names this point."""
    if active(stage, generation, step):
        os.kill(os.getpid(), signal.SIGKILL)
