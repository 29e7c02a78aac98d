"""Laws of the loop for the unigram n-gram (``model.ngram.n=1``): exact for maximum likelihood (``add_k=0``) at
temperature 1 (below), numerical for tempered sampling with add-k smoothing (the neutral temperature, at the end).

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


# ---------------------------------------------------------------------- the neutral temperature (add-k, tempered)

def tempered(p: np.ndarray, T: float, sep: int | None) -> np.ndarray:
    """What a unigram ``p`` samples at temperature T: ``p^(1/T)`` renormalised, the separator never drawn (rows)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -np.inf) / T
    if sep is not None:
        logp[..., sep] = -np.inf
    logp -= logp.max(-1, keepdims=True)
    q = np.exp(logp)
    return q / q.sum(-1, keepdims=True)


def _plugin_entropy_bits(c: np.ndarray) -> np.ndarray:
    f = c / c.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(f > 0, f * np.log2(np.where(f > 0, f, 1.0)), 0.0).sum(-1)


def entropy_drift(p0: np.ndarray, N: int, T: float, add_k: float, sep: int | None, repeats: int = 2000,
                  seed: int = 0) -> tuple[float, float]:
    """(mean, standard error) of the first generation's change of the samples' plug-in entropy, in bits.

    The step, as `collapse run` takes it for ``model.ngram.n=1`` (replace, continuations only): generation 0
    draws N tokens from ``tempered(p0, T)``; model 1 is their add-k estimate ``(c + k) / (N + k V)`` over
    all V ids (the separator's count 0); generation 1 draws N tokens from ``tempered(model 1, T)``. Both
    entropies are plug-in values of N tokens, as metrics.jsonl's ``entropy``, so the finite-sample bias of
    each is inside the expectation; it is computed by Monte Carlo over ``repeats`` two-stage draws."""
    rng = np.random.default_rng(seed)
    p0 = np.asarray(p0, dtype=np.float64)
    p0 = p0 / p0.sum()
    V = len(p0)
    c0 = rng.multinomial(N, tempered(p0, T, sep), size=repeats).astype(np.float64)
    p1 = (c0 + add_k) / (N + add_k * V)
    c1 = rng.multinomial(N, tempered(p1, T, sep)).astype(np.float64)
    d = _plugin_entropy_bits(c1) - _plugin_entropy_bits(c0)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(repeats))


def neutral_temperature(p0: np.ndarray, N: int, add_k: float, sep: int | None, lo: float = 0.5, hi: float = 2.0,
                        repeats: int = 2000, tol: float = 1e-3) -> dict:
    """The temperature T* at which :func:`entropy_drift` is 0, by bisection on [lo, hi] with the same random
    draws at every T (the drift rises with T), and its Monte Carlo standard error (the drift's standard error at
    T* over the drift's slope there). ``{"t_star": None, ...}`` when the drift has one sign over the range."""
    f = lambda t: entropy_drift(p0, N, t, add_k, sep, repeats)  # noqa: E731 - one seed: common random numbers
    (d_lo, _), (d_hi, _) = f(lo), f(hi)
    if d_lo > 0 or d_hi < 0:
        return {"t_star": None, "range": [lo, hi], "drift_at_range": [d_lo, d_hi]}
    a, b = lo, hi
    while b - a > tol:
        m = 0.5 * (a + b)
        a, b = (m, b) if f(m)[0] < 0 else (a, m)
    t = 0.5 * (a + b)
    h = max(0.02, 5 * tol)
    (d1, _), (d2, _), (_, se) = f(t - h), f(t + h), f(t)
    slope = (d2 - d1) / (2 * h)
    return {"t_star": t, "se": se / slope if slope > 0 else None, "slope_bits_per_unit_t": slope, "range": [lo, hi]}
