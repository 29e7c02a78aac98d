"""The ``detector`` curator's classifier: real text against a generation's samples, trained on the spot.

Features: counts of token ids and of hashed token bigrams (``DIM`` buckets), log(1 + count), each row scaled to
unit length. Model: L2-regularised logistic regression fitted by full-batch gradient descent in numpy (fast on a
CPU at a few hundred rows; nothing to download). Cross-fitted: the samples and as many real rows are split into
2 folds, and each fold is scored by the detector trained on the other, so no sample is scored by a detector that
saw it; the accuracy on the held-out folds (real and machine rows alike) is recorded. Imports numpy only.
"""

from __future__ import annotations

import numpy as np

DIM = 1 << 12  # feature buckets
STEPS, LR, L2 = 300, 0.5, 1e-3


def features(rows: np.ndarray, dim: int = DIM, ignore: tuple[int, ...] = ()) -> np.ndarray:
    """Hashed unigram and bigram counts per row, log(1 + count), unit length; ``ignore``: ids (and the bigrams
    they are in) left out."""
    rows = np.asarray(rows, np.int64)
    n, length = rows.shape
    keep = ~np.isin(rows, np.asarray(ignore, np.int64))
    uni = rows % dim
    bi = (rows[:, :-1] * 1_000_003 + rows[:, 1:]) % dim if length > 1 else np.zeros((n, 0), np.int64)
    cols = np.concatenate([uni, bi], axis=1)
    use = np.concatenate([keep, keep[:, :-1] & keep[:, 1:]], axis=1)
    x = np.zeros((n, dim))
    r = np.repeat(np.arange(n), cols.shape[1]).reshape(cols.shape)
    np.add.at(x, (r[use], cols[use]), 1.0)
    x = np.log1p(x)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        err = p - y
        w -= LR * (x.T @ err / len(y) + L2 * w)
        b -= LR * float(err.mean())
    return w, b


def machine_probability(samples: np.ndarray, real_rows: np.ndarray, rng: np.random.Generator,
                        folds: int = 2, ignore: tuple[int, ...] = (),
                        own: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(P(machine) of each pool row, held-out accuracy) from detectors cross-fitted over ``folds`` folds.

    ``samples``: the pool's rows; ``own``: which of them the generation wrote (default: all). Every pool row is
    given a fold at random, whatever its origin; the detector of fold f learns machine text from the generation's
    own rows in the other folds and human text from ``real_rows`` (none of the pool's text) in the other folds, and
    scores every pool row of fold f. So no row is scored by a detector that saw it, and a real pool row is scored
    exactly as a sample is. The accuracy: the held-out own rows and held-out real rows."""
    n_pool, length = samples.shape
    own = np.ones(n_pool, bool) if own is None else np.asarray(own, bool)
    n = int(own.sum())
    pick = rng.choice(len(real_rows), size=n, replace=len(real_rows) < n)
    real = np.asarray(real_rows)[pick, :length]
    xg, xr = features(samples, ignore=ignore), features(real, ignore=ignore)
    fold_g, fold_r = rng.permutation(n_pool) % folds, rng.permutation(n) % folds
    p = np.zeros(n_pool)
    right = 0
    for f in range(folds):
        tg, tr = own & (fold_g != f), fold_r != f
        w, b = fit(np.concatenate([xg[tg], xr[tr]]), np.concatenate([np.ones(tg.sum()), np.zeros(tr.sum())]))
        held = fold_g == f
        pg = 1.0 / (1.0 + np.exp(-(xg[held] @ w + b)))
        pr = 1.0 / (1.0 + np.exp(-(xr[~tr] @ w + b)))
        p[held] = pg
        right += int((pg[own[held]] > 0.5).sum() + (pr <= 0.5).sum())
    return p, right / (2 * n)
