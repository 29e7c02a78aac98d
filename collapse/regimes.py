"""The regimes: the training set of generation g+1 from the real data and the samples of generations 0..g.

Shumailov et al. train on the newest samples alone (``replace``) or keep 10% real data (``mix``);
Gerstgrasser et al. (2024) keep everything (``accumulate``), which avoids collapse.
"""

from __future__ import annotations

import numpy as np


def regime_training_set(kind: str, *, real_blocks: np.ndarray, samples: list[np.ndarray], real_fraction: float,
                        size: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training set of the next generation and the source of each row.

    ``samples[g]`` holds generation g's synthetic rows (all the same length as ``real_blocks`` rows).
    Returns ``(rows, source)`` where ``source`` is -1 for a real row and g for a row of samples g.

    - ``replace``: samples of the newest generation only.
    - ``mix``: ``round(real_fraction * N)`` real rows drawn fresh, the rest drawn from the newest samples
      (N = newest sample count).
    - ``accumulate``: every real row plus every sample of generations 0..g.
    - ``accumulate_subsample``: accumulate, then a uniform subsample of ``size`` rows (default N).
    """
    newest = samples[-1]
    n = len(newest)
    if kind == "replace":
        return newest, np.full(n, len(samples) - 1)
    if kind == "mix":
        n_real = int(round(real_fraction * n))
        ri = rng.choice(len(real_blocks), size=n_real, replace=n_real > len(real_blocks))
        si = rng.choice(n, size=n - n_real, replace=False)
        rows = np.concatenate([real_blocks[ri], newest[si]])
        src = np.concatenate([np.full(n_real, -1), np.full(n - n_real, len(samples) - 1)])
        return rows, src
    if kind in ("accumulate", "accumulate_subsample"):
        rows = np.concatenate([real_blocks, *samples])
        src = np.concatenate([np.full(len(real_blocks), -1)] + [np.full(len(s), g) for g, s in enumerate(samples)])
        if kind == "accumulate":
            return rows, src
        k = min(size or n, len(rows))
        idx = np.sort(rng.choice(len(rows), size=k, replace=False))
        return rows[idx], src[idx]
    raise ValueError(f"unknown regime {kind}")  # config validation makes this unreachable
