"""Exact laws of the loop for the unigram maximum-likelihood model (``model.ngram.n=1``, ``add_k=0``).

Notation: ``p_g`` is the distribution model g samples from (its counts over the symbols, the separator
removed: generation never draws it), ``f_g`` the frequencies of the ``N`` tokens generation g generates
(``generation.num_sequences x generation.new_tokens``; a unigram ignores the prompt, so they are N
independent draws from ``p_g``), and the diversity of generation g is the Gini-Simpson index of those
tokens, ``D_g = 1 - sum_i f_g,i^2`` (the plug-in value, as ``metrics.jsonl``'s ``gini_simpson``).

One step. Given ``p_g``, ``N f_g`` is multinomial(N, p_g), so ``E[f_i^2 | p_g] = p_i^2 + p_i (1 - p_i) / N`` and

    E[D_g | p_g] = 1 - sum_i (p_i^2 (1 - 1/N) + p_i / N) = (1 - 1/N) (1 - sum_i p_g,i^2).       (1)

Replace (``regime.kind=replace``, keep_prompt off): model g+1 counts exactly the N generated tokens of
generation g, so ``p_g+1 = f_g`` and ``1 - sum p_g+1^2 = D_g``. Taking expectations of (1) at g+1:

    E[D_g+1] = (1 - 1/N) E[D_g],   hence   E[D_g] = (1 - 1/N)^g E[D_0] = (1 - 1/N)^(g+1) (1 - sum p_0^2)   (2)

with no approximation: neutral Wright-Fisher resampling with population N. (A separator in generation
0's counts only renormalizes ``p_0``; later generations contain none.) Every type is eventually lost:
D_g -> 0. :func:`replace_curve` is (2).

Mix (``regime.kind=mix``, fraction a = ``round(real_fraction n) / n`` of the n training rows fresh real
rows, the rest ``n (1 - a)`` rows chosen without replacement among generation g's rows): then
``p_g+1 = (1 - a) f'_g + a r_g``, where ``f'_g`` are the frequencies of the ``N' = (1 - a) N`` kept generated
tokens (still independent draws from ``p_g``) and ``r_g`` those of the real rows drawn this generation,
independent of ``f'_g``, with ``E[r_g] = rho`` (the real rows' frequencies; rows are drawn uniformly) and
``E[sum r_g^2] = s_r``. Write ``S_g = E[sum p_g^2]`` and ``C_g = E[sum p_g rho]``; by (1) and independence

    S_g+1 = (1 - a)^2 ((1 - 1/N') S_g + 1/N') + 2 a (1 - a) C_g + a^2 s_r
    C_g+1 = (1 - a) C_g + a sum rho^2                                                           (3)
    E[D_g] = (1 - 1/N) (1 - S_g)

a linear recursion whose fixed point ``S* < 1`` keeps the diversity bounded away from zero (the fresh
real rows put back mass on every type they hold). Drawing n_r of R real rows without replacement,
``s_r = sum_i rho_i^2 + (R - n_r) / (R - 1) / n_r sum_i var_i`` with ``var_i`` the variance over the R rows of
type i's frequency in a row (:func:`real_row_moments`). (3) is exact when the real rows hold symbols only;
in `collapse run` they also hold the document separator, which the model counts and generation drops,
so the real share of the sampled distribution varies a little from draw to draw: there (3) is an
approximation, checked by simulation (docs/results.md).
"""

from __future__ import annotations

import numpy as np


def replace_curve(p0: np.ndarray, N: int, generations: int) -> np.ndarray:
    """E[D_g] for g = 0..generations under replace: ``(1 - 1/N)^(g+1) (1 - sum p0^2)`` (law (2))."""
    p0 = np.asarray(p0, dtype=np.float64)
    p0 = p0 / p0.sum()
    g = np.arange(generations + 1)
    return (1.0 - 1.0 / N) ** (g + 1) * (1.0 - float((p0 ** 2).sum()))


def real_row_moments(rows: np.ndarray, vocab: int, n_draw: int) -> tuple[np.ndarray, float]:
    """(rho, s_r): the real rows' frequencies and E[sum r^2] for ``n_draw`` rows drawn without replacement."""
    rows = np.asarray(rows)
    R, L = rows.shape
    per_row = np.stack([np.bincount(r, minlength=vocab)[:vocab] / L for r in rows])  # [R, V]
    rho = per_row.mean(0)
    var = per_row.var(0)  # population variance over the R rows
    fpc = (R - n_draw) / (R - 1) if R > 1 else 0.0
    return rho, float((rho ** 2).sum() + fpc * var.sum() / n_draw)


def mix_curve(p0: np.ndarray, N: int, a: float, rho: np.ndarray, s_r: float, generations: int) -> np.ndarray:
    """E[D_g] for g = 0..generations under mix (recursion (3)); ``a`` the real share of the training rows."""
    p0 = np.asarray(p0, dtype=np.float64)
    p0 = p0 / p0.sum()
    rho = np.asarray(rho, dtype=np.float64)
    n_kept = (1.0 - a) * N
    S, C = float((p0 ** 2).sum()), float(p0 @ rho)
    out = []
    for _ in range(generations + 1):
        out.append((1.0 - 1.0 / N) * (1.0 - S))
        S, C = ((1 - a) ** 2 * ((1 - 1 / n_kept) * S + 1 / n_kept) + 2 * a * (1 - a) * C + a * a * s_r,
                (1 - a) * C + a * float((rho ** 2).sum()))
    return np.array(out)


def mix_limit(N: int, a: float, rho: np.ndarray, s_r: float) -> float:
    """The fixed point of (3): the diversity the mix regime keeps for ever, ``(1 - 1/N)(1 - S*)``."""
    rho = np.asarray(rho, dtype=np.float64)
    n_kept = (1.0 - a) * N
    C = float((rho ** 2).sum())  # C* = sum rho^2
    k = (1 - a) ** 2 * (1 - 1 / n_kept)
    S = ((1 - a) ** 2 / n_kept + 2 * a * (1 - a) * C + a * a * s_r) / (1.0 - k)
    return (1.0 - 1.0 / N) * (1.0 - S)
