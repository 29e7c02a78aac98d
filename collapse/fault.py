"""Fault injection for crash tests: ``COLLAPSE_FAULT=<stage>:<generation>:<step>[:<action>]``.

The default action kills the process hard (SIGKILL: no cleanup, no flush, like a power cut or the
OOM killer). Points:

* ``generate:1:0``   after batch shard 0 of generation 1's samples is on disk
* ``train:2:5``      after optimizer step 5 of generation 2's fine-tune
* ``evaluate:1:0``   before generation 1's evaluation (``evaluate:1:1``: after it, before its file)
* ``measure:1:0``    before generation 1's gen0 perplexities
* ``between:1:evaluate``  right after a stage is recorded in manifest.json
* ``manifest:1:train``    in the middle of the manifest write that records gen 1's train stage: the
  temporary file is written, the rename has not happened
* ``nan:2:0``        (not a kill) the training loss of generation 2 turns NaN at step 0

``*`` matches any generation. Other actions: ``pause`` sleeps at the point instead (a test sends a
signal meanwhile, e.g. SIGINT), ``enospc`` raises ``OSError(ENOSPC)`` there (a full disk).
Unset (the normal case) costs one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time

_SPEC: tuple[str, str, str, str] | None | bool = False


def _spec():
    global _SPEC
    if _SPEC is False:
        raw = os.environ.get("COLLAPSE_FAULT", "").strip()
        parts = raw.split(":")
        if raw and len(parts) in (3, 4):
            _SPEC = (parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else "kill")
        else:
            _SPEC = None
    return _SPEC


def active(stage: str, generation: int, step: int | str = 0) -> bool:
    """True where the spec names this point (for faults other than a kill, e.g. ``nan:2:0``)."""
    spec = _spec()
    if spec is None:
        return False
    s, g, k, _ = spec
    return s == stage and (g == "*" or g == str(generation)) and k == str(step)


def point(stage: str, generation: int, step: int | str = 0) -> None:
    """Act (by default: die with SIGKILL) if the fault spec names this point."""
    if not active(stage, generation, step):
        return
    action = _spec()[3]
    if action == "pause":
        time.sleep(3600)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<fault {stage}:{generation}:{step}>")
    else:
        os.kill(os.getpid(), signal.SIGKILL)
