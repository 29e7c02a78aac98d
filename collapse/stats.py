"""Uncertainty inside one run: bootstrap intervals over natural units, paired changes, and power.

Pure numpy / scipy. The unit is what is independent: an example (``collapse measure``), a sample (one
continuation of one real prompt, ``collapse run``), a test block (evaluation) — never a single token,
since the tokens of one text are not independent.

How it is fast: each unit is counted once (a sparse unit × type count matrix ``C``); a bootstrap
resample is a vector of multinomial weights ``w`` over the units, so the resampled counts of every
resample are one sparse product ``W @ C`` (R × V), taken in chunks of resamples.

Conventions
-----------
* ``W`` is an (R, n) float array of resample weights (each row sums to n); row ``i`` is resample ``i``.
* An interval is the percentile interval of the resampled figures, ``[q(2.5%), q(97.5%)]`` at 95%.
* A paired change uses the SAME weights for both figures (every generation continues the same prompts;
  every evaluation reads the same test blocks), so what the prompts share cancels.
* "Resolved": the 95% interval of a change excludes 0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

RESAMPLES = 1000
LEVEL = 0.95
Z95, Z80 = 1.959964, 0.841621  # two-sided 95% and one-sided 80% normal quantiles (power)


def resample_weights(n: int, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples, n) multinomial weights: how often each of n units appears in each bootstrap resample."""
    if n <= 0:
        return np.zeros((resamples, 0))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def interval(boot: np.ndarray, level: float = LEVEL) -> list[float] | list[None]:
    """Percentile interval ``[lo, hi]`` of resampled values (NaNs ignored); ``[None, None]`` if none is finite."""
    b = np.asarray(boot, dtype=np.float64)
    b = b[np.isfinite(b)]
    if b.size == 0:
        return [None, None]
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(b, [a, 1.0 - a])
    return [float(lo), float(hi)]


def mean_ci(values: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES,
            level: float = LEVEL) -> list[float] | list[None]:
    """Interval of the mean of per-unit values (e.g. a per-document mean log-ratio)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return [None, None]
    W = resample_weights(v.size, rng, resamples)
    return interval(W @ v / v.size, level)


def ratio_boot(W: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Resampled ratio of sums ``sum(w num) / sum(w den)``; ``num``/``den`` are (n,) or (n, k) per unit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (W @ num) / (W @ den)


def unit_counts(rows: np.ndarray, vocab: int) -> sp.csr_matrix:
    """Sparse (n_units, vocab) counts: ``C[i, t]`` = occurrences of type t in unit i (rows of equal length)."""
    rows = np.asarray(rows)
    n, L = rows.shape
    indptr = np.arange(0, n * L + 1, L, dtype=np.int64)
    C = sp.csr_matrix((np.ones(n * L, dtype=np.float64), rows.reshape(-1).astype(np.int64), indptr),
                      shape=(n, max(vocab, int(rows.max()) + 1 if rows.size else vocab)))
    C.sum_duplicates()
    return C


def required_units(n: int, estimate: float | None, se: float | None, power: float = 0.8) -> int | None:
    """Units needed for an effect of this size to be resolved at 95% (two-sided) with the given power.

    From the bootstrap standard error at n units, ``se(n') = se(n) sqrt(n / n')``; resolved with power
    ``power`` when ``|estimate| >= (z_.975 + z_power) se(n')``.
    """
    if estimate is None or se is None or not np.isfinite(se) or se <= 0 or estimate == 0:
        return None
    z = Z95 + (Z80 if power == 0.8 else float(_norm_ppf(power)))
    return int(np.ceil(n * (z * se / abs(estimate)) ** 2))


def _norm_ppf(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))
