"""A corpus as independent units (one sample, one example): sparse unit × type counts, built once.

The resampling in ``collapse.metrics.stats`` weighs units; what a figure needs beyond the resampled counts (which
bigrams each unit holds, how many n-grams it has) is here. Imports numpy and scipy only.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def unit_counts(rows: np.ndarray, vocab: int) -> sp.csr_matrix:
    """Sparse (n_units, vocab) counts: ``C[i, t]`` = occurrences of type t in unit i (rows of equal length)."""
    rows = np.asarray(rows)
    n, L = rows.shape
    indptr = np.arange(0, n * L + 1, L, dtype=np.int64)
    C = sp.csr_matrix((np.ones(n * L, dtype=np.float64), rows.reshape(-1).astype(np.int64), indptr),
                      shape=(n, max(vocab, int(rows.max()) + 1 if rows.size else vocab)))
    C.sum_duplicates()
    return C


def gram_units(rows: np.ndarray, n: int) -> sp.csr_matrix:
    """Sparse (n_units, n_gram_types) counts of the n-grams inside each row (n-grams never cross rows)."""
    rows = np.asarray(rows, dtype=np.int64)
    N, L = rows.shape
    if L < n:
        return sp.csr_matrix((N, 0))
    V = int(rows.max()) + 1 if rows.size else 1
    if V ** n < 2**62:  # one int64 per n-gram: a 1-D unique, far faster than np.unique(axis=0)
        code = sum(rows[:, i:L - n + 1 + i] * V ** (n - 1 - i) for i in range(n)).reshape(-1)
        _, ids = np.unique(code, return_inverse=True)
    else:
        grams = np.stack([rows[:, i:L - n + 1 + i] for i in range(n)], axis=-1).reshape(-1, n)
        _, ids = np.unique(grams, axis=0, return_inverse=True)
    return unit_counts(ids.reshape(N, L - n + 1), int(ids.max()) + 1)


PRESENT_BYTES = 2**27  # types_present's working arrays per block of sub-samples stay under about 128 MiB


def types_present(G: sp.csr_matrix, keep: np.ndarray) -> np.ndarray:
    """How many types each sub-sample holds: ``G`` (types, n) marks the units holding each type, ``keep``
    (r, n) the units each of r sub-samples keeps; a type is held when any of its units is kept.

    Exactly ``((G @ keep.T) > 0).sum(0)``, faster (docs/benchmarks.md): the r keep-bits of a unit packed into 64-bit
    words, OR-ed over each type's units, then counted."""
    r = keep.shape[0]
    if G.shape[0] == 0 or G.nnz == 0:
        return np.zeros(r)
    # sub-samples at a time: the gathered bits (nnz / 8 bytes each) and the unpacked counts (types bytes each)
    step = max(64, PRESENT_BYTES // (G.nnz // 8 + G.shape[0] + 1) // 64 * 64)
    if r > step:
        return np.concatenate([types_present(G, keep[i:i + step]) for i in range(0, r, step)])
    bits = np.packbits(keep, axis=0)  # (ceil(r / 8), n) bytes
    bits = np.pad(bits, ((0, -len(bits) % 8), (0, 0)))
    words = np.ascontiguousarray(bits.T).view(np.uint64)  # (n, words): unit u's keep-bits
    occupied = np.diff(G.indptr) > 0  # a type held by no unit (never, from gram_units) is held by no sub-sample
    held = np.bitwise_or.reduceat(words[G.indices], G.indptr[:-1][occupied], axis=0)
    return np.unpackbits(held.view(np.uint8), axis=1, count=r).sum(0).astype(np.float64)


class Corpus:
    """One corpus as units: its unit × type counts, bucket counts and n-gram counts, built once.

    ``rows`` is (n_units, L) token ids (every unit of the same length); ``buckets`` maps a type to its
    bucket (``metrics.bucket_of``).
    """

    def __init__(self, rows: np.ndarray, vocab: int, buckets: np.ndarray, nb: int):
        rows = np.asarray(rows)
        self.rows = rows  # a registered figure without a vectorised form reads each resample's own units
        self.n = len(rows)
        self.C = unit_counts(rows, vocab)
        b = np.pad(buckets, (0, max(0, self.C.shape[1] - len(buckets))), constant_values=nb - 1)[: self.C.shape[1]]
        self.B = np.asarray(self.C @ sp.csr_matrix((np.ones(len(b)), (np.arange(len(b)), b)),
                                                   shape=(len(b), nb)).toarray())  # (n, buckets)
        # (bigram types, n): which units hold each bigram (distinct-1 needs none: the resampled unigram counts
        # say which types a resample holds)
        self.bigrams_T = gram_units(rows, 2).T.tocsr()
        self.grams_total = {k: np.full(self.n, max(rows.shape[1] - k + 1, 0), dtype=np.float64) for k in (1, 2)}
