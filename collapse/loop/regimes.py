"""The regimes: the training set of generation g+1 from the real data and the samples of generations 0..g.

Shumailov et al. train on the newest samples alone (``replace``) or keep 10% real data (``mix``);
Gerstgrasser et al. (2024) keep everything (``accumulate``), which avoids collapse.

A regime is one function registered by name (:func:`regime`); ``regime.kind`` accepts every registered
name. It gets the real training rows, the sample rows of generations 0..g (all of the same length), the
``regime`` config section and a seeded generator, and returns ``(rows, source)``: ``source`` is -1 for a
real row and g for a row of samples g. Imports numpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Regime = Callable[..., tuple[np.ndarray, np.ndarray]]
REGIMES: dict[str, Regime] = {}


USES: dict[str, tuple[str, ...]] = {}  # the regime.* settings each regime reads (else the plan calls them idle)


def regime(name: str, uses: tuple[str, ...] = (), replace: bool = False) -> Callable[[Regime], Regime]:
    """Register ``fn(real_blocks, samples, cfg, rng) -> (rows, source)`` as ``regime.kind: <name>``; ``uses``:
    which of ``real_fraction`` / ``size`` it reads. A name taken already is refused unless ``replace``."""
    def add(fn: Regime) -> Regime:
        if name in REGIMES and not replace:
            raise ValueError(f"a regime named {name!r} is registered already: choose another name")
        REGIMES[name], USES[name] = fn, tuple(uses)
        return fn
    return add


@regime("replace")
def replace(real_blocks, samples, cfg, rng):
    """Samples of the newest generation only."""
    return samples[-1], np.full(len(samples[-1]), len(samples) - 1)


@regime("mix", uses=("real_fraction",))
def mix(real_blocks, samples, cfg, rng):
    """``round(real_fraction * N)`` real rows drawn fresh, the rest drawn from the newest samples (N of them)."""
    newest = samples[-1]
    n = len(newest)
    n_real = int(round(cfg.real_fraction * n))
    ri = rng.choice(len(real_blocks), size=n_real, replace=n_real > len(real_blocks))
    si = rng.choice(n, size=n - n_real, replace=False)
    rows = np.concatenate([real_blocks[ri], newest[si]])
    src = np.concatenate([np.full(n_real, -1), np.full(n - n_real, len(samples) - 1)])
    return rows, src


@regime("accumulate")
def accumulate(real_blocks, samples, cfg, rng):
    """Every real row plus every sample of generations 0..g."""
    rows = np.concatenate([real_blocks, *samples])
    src = np.concatenate([np.full(len(real_blocks), -1)] + [np.full(len(s), g) for g, s in enumerate(samples)])
    return rows, src


@regime("accumulate_subsample", uses=("size",))
def accumulate_subsample(real_blocks, samples, cfg, rng):
    """Accumulate, then a uniform subsample of ``size`` rows (default: one generation's sample count)."""
    rows, src = accumulate(real_blocks, samples, cfg, rng)
    k = min(cfg.size or len(samples[-1]), len(rows))
    idx = np.sort(rng.choice(len(rows), size=k, replace=False))
    return rows[idx], src[idx]


def regime_training_set(kind: str, *, real_blocks: np.ndarray, samples: list[np.ndarray], real_fraction: float,
                        size: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training set of the next generation and the source of each row (see the module docstring)."""
    from types import SimpleNamespace

    if kind not in REGIMES:
        raise ValueError(f"unknown regime {kind}")  # config validation makes this unreachable
    return REGIMES[kind](real_blocks, samples, SimpleNamespace(kind=kind, real_fraction=real_fraction, size=size), rng)
