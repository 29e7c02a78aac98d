"""W&B's step of every row, the same in a resumed process as in the killed one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


class StepAxis:
    """W&B's ``_step`` for every row, the same in a resumed process as in the killed one.

    Rows come in this order: generation 0's fine-tune steps (``train.gen0_epochs``), generation 0's row,
    generation 1's fine-tune steps, generation 1's row, ... ``steps_of(g)`` is the number of optimizer steps
    of generation g's fine-tune (0 when it has none), read from the finished fine-tunes' train.json.
    """

    def __init__(self, steps_of: Callable[[int], int] = lambda g: 0):
        self.steps_of = steps_of

    def _trained_before(self, g: int) -> int:
        return sum(self.steps_of(k) for k in range(g))

    def train_step(self, g: int, s: int) -> int:
        """``train/step`` of step s (1-based) of generation g's fine-tune: continues across generations."""
        return self._trained_before(g) + s

    def train(self, g: int, s: int) -> int:
        return self._trained_before(g) + g + s - 1

    def row(self, g: int) -> int:
        return self._trained_before(g) + g + self.steps_of(g)


def train_steps(out: Path) -> Callable[[int], int]:
    """``steps_of`` for :class:`StepAxis` from a run folder: gen_g/train.json's ``steps`` (kept once read)."""
    known: dict[int, int] = {}

    def steps_of(g: int) -> int:
        if g not in known:
            p = Path(out) / f"gen_{g:03d}" / "train.json"
            if not p.is_file():
                return 0
            known[g] = int(json.loads(p.read_text()).get("steps", 0))
        return known[g]

    return steps_of
