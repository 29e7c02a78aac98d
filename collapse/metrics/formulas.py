"""The formulas on token counts: histograms, frequency ranks and buckets, divergences, coverage, distinct-n.

Pure numpy (torch only to count faster). The registry (``collapse.metrics.registry``) names which of them
are the figures of a corpus; these are the exact point values.

Conventions
-----------
* ``ref`` is the real (reference) text, ``gen`` the generated text; both are arrays of token ids.
* Counts are exact int64 histograms (``counts``) over a common vocabulary size ``V``.
* Frequency buckets rank the token types of the *reference* by count (descending, ties broken by
  the smaller token id): ranks 1-10, 11-100, 101-1000, 1001-10000, 10001+, and ``unseen`` for types
  the reference never uses.
* Entropies and the Jensen-Shannon divergence are in bits; KL divergences in bits too.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

BUCKETS = ("1-10", "11-100", "101-1000", "1001-10000", "10001+", "unseen")
RANK_EDGES = (10, 100, 1000, 10000)  # upper rank of each bounded bucket
UNSEEN = len(BUCKETS) - 1
KL_ALPHA = 0.5  # additive smoothing for KL (Jeffreys prior), over the union of observed types


def counts(ids: np.ndarray | Iterable[np.ndarray], vocab: int | None = None) -> np.ndarray:
    """Histogram of token ids: ``c[t]`` = number of occurrences of type t (int64, length >= vocab).

    ``torch.bincount`` on a zero-copy view counts int32 ids without the int64 copy ``np.bincount`` makes
    and uses the torch threads (docs/benchmarks.md); without torch, chunked ``np.bincount``: the same counts.
    """
    if not isinstance(ids, np.ndarray):
        parts = [np.asarray(x).ravel() for x in ids]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    ids = np.asarray(ids).ravel()
    if ids.size == 0:
        return np.zeros(vocab or 0, dtype=np.int64)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.dtype.kind == "u":  # torch.bincount counts signed types only; widen (exact)
        ids = ids.astype(np.int32 if ids.dtype.itemsize <= 2 else np.int64)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; kept for metric-only installs
        return _counts_numpy(ids, vocab)
    with warnings.catch_warnings():  # read-only arrays (e.g. from pyarrow) are only read here
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(np.ascontiguousarray(ids))
    lo, hi = (int(v) for v in torch.aminmax(t))
    if lo < 0:
        raise ValueError("token ids must be non-negative")
    return torch.bincount(t, minlength=max(hi + 1, vocab or 0)).numpy()


def _counts_numpy(ids: np.ndarray, vocab: int | None = None) -> np.ndarray:
    if ids.min() < 0:
        raise ValueError("token ids must be non-negative")
    # bincount casts its input to int64: chunks keep that copy in cache
    out = np.zeros(max(int(ids.max()) + 1, vocab or 0), dtype=np.int64)
    for i in range(0, ids.size, 1 << 16):
        chunk = ids[i:i + (1 << 16)]
        out[: int(chunk.max()) + 1] += np.bincount(chunk)
    return out


def _pad(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = max(len(a), len(b))
    return np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))


def ranks(ref_counts: np.ndarray) -> np.ndarray:
    """1-based frequency rank of every type in the reference (count descending, then id ascending).

    Types with zero reference count get rank 0 (they are ``unseen``).
    """
    order = np.lexsort((np.arange(len(ref_counts)), -ref_counts))
    r = np.empty(len(ref_counts), dtype=np.int64)
    r[order] = np.arange(1, len(ref_counts) + 1)
    r[ref_counts == 0] = 0
    return r


def bucket_of(ref_counts: np.ndarray, vocab: int | None = None) -> np.ndarray:
    """Bucket index (into ``BUCKETS``) of every type id ``0..max(V, vocab)-1``."""
    ref_counts = np.pad(ref_counts, (0, max(0, (vocab or 0) - len(ref_counts))))
    r = ranks(ref_counts)
    b = np.searchsorted(np.asarray(RANK_EDGES), r, side="left")  # rank 1..10 -> 0, 11..100 -> 1, ...
    b[r == 0] = UNSEEN
    return b.astype(np.int64)


def shares_of(tot: np.ndarray) -> np.ndarray:
    """Tokens per bucket ``[..., len(BUCKETS)]`` -> shares. A ranked bucket's share is over the tokens of ranked
    types (those shares sum to 1); ``unseen``'s is over all tokens and stands apart. Mass outside the ranking
    (a model writing types the ranking corpus lacks) would otherwise pull every bucket's shift down alike
    (README, "How the buckets are ranked")."""
    tot = np.asarray(tot, np.float64)
    ranked = tot[..., :UNSEEN].sum(-1, keepdims=True)
    every = tot.sum(-1, keepdims=True)
    out = tot / np.where(ranked > 0, ranked, 1.0)
    out[..., UNSEEN] = tot[..., UNSEEN] / np.where(every[..., 0] > 0, every[..., 0], 1.0)
    return out


def bucket_shares(c: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """Share of the tokens in ``c`` in each bucket (:func:`shares_of`: ranked buckets over ranked tokens)."""
    if len(buckets) < len(c):  # types beyond the reference vocabulary are unseen by definition
        buckets = np.pad(buckets, (0, len(c) - len(buckets)), constant_values=UNSEEN)
    return shares_of(np.bincount(buckets[: len(c)], weights=c, minlength=len(BUCKETS)))


def shift_pct(gen_share: np.ndarray, ref_share: np.ndarray) -> np.ndarray:
    """``100 (gen / ref - 1)`` elementwise (per bucket, per resample), NaN where the reference share is 0 and
    for ``unseen``."""
    gen_share, ref_share = np.asarray(gen_share, np.float64), np.asarray(ref_share, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ref_share > 0, 100.0 * (gen_share / np.where(ref_share > 0, ref_share, 1.0) - 1.0), np.nan)
    if out.shape[-1:] == (len(BUCKETS),):
        out[..., UNSEEN] = np.nan  # unseen has a share (over all tokens), not a shift: it stands apart
    return out


def shift_map(gen_share: np.ndarray, ref_share: np.ndarray) -> dict[str, float | None]:
    """:func:`shift_pct` per bucket name, None where the reference share is 0 (as rows store it)."""
    return {b: (None if np.isnan(v) else float(v)) for b, v in zip(BUCKETS, shift_pct(gen_share, ref_share))}


def bucket_shift(ref_counts: np.ndarray, gen_counts: np.ndarray,
                 rank_counts: np.ndarray | None = None) -> dict[str, dict[str, float | None]]:
    """Per bucket: ``ref_share``, ``gen_share`` and ``shift_pct = 100 * (gen_share / ref_share - 1)``.

    ``shift_pct`` is None where ``ref_share`` is 0 (always for ``unseen``, and for empty buckets).
    Negative: the generated text under-represents that bucket; positive: over-represents it.
    Types are ranked by ``rank_counts`` (default: the reference itself).
    """
    ref_counts, gen_counts = _pad(ref_counts, gen_counts)
    b = bucket_of(ref_counts if rank_counts is None else rank_counts, len(ref_counts))[: len(ref_counts)]
    rs, gs = bucket_shares(ref_counts, b), bucket_shares(gen_counts, b)
    shift = shift_map(gs, rs)
    return {name: {"ref_share": float(rs[k]), "gen_share": float(gs[k]), "shift_pct": shift[name]}
            for k, name in enumerate(BUCKETS)}


def _probs(c: np.ndarray) -> np.ndarray:
    s = c.sum()
    return c / s if s > 0 else c.astype(np.float64)


def entropy(c: np.ndarray) -> float:
    """Shannon entropy of the unigram distribution, bits: ``-sum p log2 p``."""
    p = _probs(c)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def kl(p_counts: np.ndarray, q_counts: np.ndarray, alpha: float = KL_ALPHA) -> float:
    """KL(P‖Q) in bits between two unigram distributions, with additive smoothing.

    Both counts get ``alpha`` added on the *union* of types observed in either (types seen in neither
    are ignored), then ``KL = sum_t p_t log2(p_t / q_t)``. Without smoothing a single type seen in P
    but not in Q would make KL infinite. ``alpha=0`` gives the raw value (inf where Q misses a type).
    """
    p_counts, q_counts = _pad(p_counts, q_counts)
    support = (p_counts > 0) | (q_counts > 0)
    p = p_counts[support] + alpha
    q = q_counts[support] + alpha
    p, q = p / p.sum(), q / q.sum()
    nz = p > 0
    with np.errstate(divide="ignore"):
        return float(max(0.0, (p[nz] * np.log2(p[nz] / q[nz])).sum()))


def js(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (in [0, 1]): ``0.5 KL(P‖M) + 0.5 KL(Q‖M)``, ``M = (P+Q)/2``; no smoothing."""
    p_counts, q_counts = _pad(p_counts, q_counts)
    p, q = _probs(p_counts), _probs(q_counts)
    m = 0.5 * (p + q)

    def _kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return float(min(1.0, max(0.0, 0.5 * _kl(p) + 0.5 * _kl(q))))


def coverage(ref_counts: np.ndarray, gen_counts: np.ndarray) -> float:
    """Share of the reference's types that occur at least once in the generated tokens."""
    ref_counts, gen_counts = _pad(ref_counts, gen_counts)
    seen = ref_counts > 0
    return float(((gen_counts > 0) & seen).sum() / max(seen.sum(), 1))


def tail_mass(c: np.ndarray, ref_counts: np.ndarray, top: int = 100) -> float:
    """Share of the tokens in ``c`` whose type is outside the reference's ``top`` most frequent types."""
    c, ref_counts = _pad(c, ref_counts)
    r = ranks(ref_counts)
    head = (r >= 1) & (r <= top)
    s = c.sum()
    return float(c[~head].sum() / s) if s > 0 else 0.0


def distinct_n(seqs: Sequence[np.ndarray] | np.ndarray, n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, n-grams taken within each sequence (not across)."""
    if isinstance(seqs, np.ndarray) and seqs.ndim == 2:
        rows = seqs.astype(np.int64)
        if rows.shape[1] < n:
            return 0.0
        grams = np.stack([rows[:, i:rows.shape[1] - n + 1 + i] for i in range(n)], axis=-1).reshape(-1, n)
    else:
        chunks = [np.stack([np.asarray(s, np.int64)[i:len(s) - n + 1 + i] for i in range(n)], axis=-1)
                  for s in seqs if len(s) >= n]
        if not chunks:
            return 0.0
        grams = np.concatenate(chunks)
    if len(grams) == 0:
        return 0.0
    base = int(grams.max()) + 1
    if base ** n < 2 ** 62:  # one int64 code per n-gram: a 1-D unique, far faster than unique(axis=0)
        code = np.zeros(len(grams), dtype=np.int64)
        for i in range(n):
            code = code * base + grams[:, i]
        return float(len(np.unique(code)) / len(grams))
    return float(len(np.unique(grams, axis=0)) / len(grams))
