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

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from collapse.metrics.formulas import BUCKETS, bucket_shares, shares_of, shift_pct
from collapse.metrics.registry import FIGURES, Resampled, corpus_figures, resampled_names
from collapse.metrics.units import Corpus, gram_units, types_present, unit_counts

__all__ = ["Corpus", "gram_units", "types_present", "unit_counts"]  # the units, where the resampling meets them

RESAMPLES = 1000
LEVEL = 0.95
Z95, Z80 = 1.959964, 0.841621  # two-sided 95% and one-sided 80% normal quantiles (power)


def resample_weights(n: int, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples, n) multinomial weights: how often each of n units appears in each bootstrap resample."""
    if n <= 0:
        return np.zeros((resamples, 0))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


@dataclass
class Weights:
    """Resampling weights over n units, R rows each: the bootstrap and the delete-half jackknife."""

    boot: np.ndarray  # (R, n) multinomial counts, rows sum to n
    half: np.ndarray  # (R, n) n//2 units kept per row, each with weight n / (n//2); the rest 0
    scale: float  # sqrt(kept / deleted): a half-sample deviation -> a sampling deviation (Shao & Wu 1989)


def draw_weights(n: int, rng: np.random.Generator, resamples: int = RESAMPLES, cluster: int = 1) -> Weights:
    """Both kinds of weights from one stream (bootstrap first, then the half-samples). ``cluster``: units come in
    runs of this many that resample together (k continuations of one prompt): the weights of n // cluster
    clusters, each repeated over its units."""
    if cluster > 1:
        w = draw_weights(n // cluster, rng, resamples)
        return Weights(np.repeat(w.boot, cluster, axis=1), np.repeat(w.half, cluster, axis=1), w.scale)
    boot = resample_weights(n, rng, resamples)
    keep = max(n // 2, 1)
    half = np.zeros((resamples, n))
    if n >= 2:
        idx = np.argsort(rng.random((resamples, n)), axis=1)[:, :keep]
        np.put_along_axis(half, idx, n / keep, axis=1)
    return Weights(boot, half, float(np.sqrt(keep / max(n - keep, 1))) if n >= 2 else 0.0)


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


# ---------------------------------------------------------------------- figures of resampled corpora

def corpus_boot(wts: Weights, gen: Corpus, ref: np.ndarray | Corpus, head: np.ndarray,
                alpha: float = 0.5, chunk: int = 125, rank: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every figure of ``gen`` under each resample: bucket shares (R, nb) and scalars (R,).

    Bucket shares are ratios of sums: the bootstrap (``wts.boot``). The scalars count distinct types or
    n-grams (coverage, distinct-n) or are plug-in entropies and divergences: a bootstrap resample repeats
    units, so it holds fewer distinct types than a sample of the same size and its figures are biased
    (coverage falls far below the point value). Those use the delete-half jackknife (Shao & Wu 1989),
    ``wts.half``: each row keeps half the units; its deviation from the mean of all rows, scaled by
    ``wts.scale``, stands for a sampling deviation, returned as ``point + deviation`` so that the same
    percentile and paired-difference code serves both kinds.

    ``ref`` is a fixed count vector (the real training counts, ``collapse run``) or a Corpus resampled
    with the same weights (the true second halves of the same examples, ``collapse measure``). The
    bucket of a type and the reference's head are held fixed (from the full reference).
    """
    paired_ref = isinstance(ref, Corpus)
    gs = wts.boot @ gen.B
    out = {"gen_share": shares_of(gs)}
    if paired_ref:
        out["ref_share"] = shares_of(wts.boot @ ref.B)
    V = max(gen.C.shape[1], ref.C.shape[1] if paired_ref else len(ref))
    CtT = _pad_cols(gen.C, V).T.tocsr()  # (V, n): the product below is a sparse @ dense per chunk
    RtT = _pad_cols(ref.C, V).T.tocsr() if paired_ref else None
    ref_row = None if paired_ref else np.pad(np.asarray(ref, np.float64), (0, V - len(ref)))[None, :]
    head = np.pad(head, (0, V - len(head)))
    if rank is None:  # the counts a figure's point form ranks types by: the row's (``rank_counts``), else the reference
        rank = _pad_cols(ref.C, V).sum(0).A1 if paired_ref else ref_row[0]
    rank = np.pad(np.asarray(rank), (0, max(0, V - len(rank))))[:V]

    def scored(figs, H: np.ndarray) -> dict[str, np.ndarray]:
        got = {f.name: np.empty(len(H)) for f in figs}
        for i in range(0, len(H), chunk):
            w = H[i:i + chunk]
            r = Resampled(np.asarray(RtT @ w.T).T if paired_ref else ref_row, np.asarray(CtT @ w.T).T, head, w, gen,
                          rank, alpha)
            for f in figs:
                got[f.name][i:i + chunk] = f.scored(r)
        return got

    figs = [f for f in corpus_figures() if f.resample]
    H = np.vstack([np.ones((1, gen.n)), wts.half])  # row 0: the full sample (the point value)
    half = scored([f for f in figs if f.resample == "jackknife"], H)
    boot = scored([f for f in figs if f.resample == "bootstrap"], wts.boot)
    empty = H.sum(1) == 0  # a half-sample of no unit (n = 1) has no figures: no interval, never "resolved"
    for f in figs:
        if f.resample == "bootstrap":
            out[f.name] = boot[f.name]
            continue
        v = half[f.name]
        v[empty] = np.nan
        out[f.name] = v[0] + wts.scale * (v[1:] - v[1:].mean())
    return out


def _pad_cols(C: sp.csr_matrix, V: int) -> sp.csr_matrix:
    if C.shape[1] == V:
        return C
    C = C.copy()
    C.resize((C.shape[0], V))
    return C


def block_boot(W: np.ndarray, sums: np.ndarray, counts: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Test NLL, perplexity and tail loss per bucket for each resample of the test blocks.

    ``sums``/``counts`` are (blocks, buckets): the summed NLL and the number of predicted tokens of
    each block in each bucket (``evaluate_blocks(per_block=True)``).
    """
    nll = ratio_boot(W, sums.sum(1), counts.sum(1))
    tail = ratio_boot(W, sums, counts)
    out = {"test_nll": nll, "test_ppl": np.exp(nll)}
    out.update({f"tail_loss.{b}": tail[:, k] for k, b in enumerate(names)})
    return out


def flatten_corpus_boot(boot: dict[str, np.ndarray], names: tuple[str, ...], ref_share: np.ndarray | None = None
                        ) -> dict[str, np.ndarray]:
    """``corpus_boot``'s output as flat figure → (R,) arrays: ``gen_share.<bucket>``, ``bucket_shift.<bucket>``,
    and the scalars. ``ref_share``: the fixed reference shares (else the resampled ``ref_share``)."""
    rs = boot["ref_share"] if ref_share is None else np.broadcast_to(ref_share, boot["gen_share"].shape)
    sh = shift_pct(boot["gen_share"], rs)
    out = {k: boot[k] for k in resampled_names()}
    for j, b in enumerate(names):
        out[f"gen_share.{b}"] = boot["gen_share"][:, j]
        out[f"bucket_shift.{b}"] = sh[:, j]
    return out


def intervals(boot: dict[str, np.ndarray], level: float = LEVEL) -> dict[str, list]:
    """figure → ``[lo, hi]`` percentile interval."""
    return {k: interval(v, level) for k, v in boot.items()}


def changes(point_a: dict[str, float | None], boot_a: dict[str, np.ndarray], point_b: dict[str, float | None],
            boot_b: dict[str, np.ndarray], level: float = LEVEL) -> dict[str, dict]:
    """Paired change a − b of every figure both have, from resamples drawn with the SAME weights.

    Each entry: ``delta`` (point a − point b), ``ci95`` (percentile interval of the resampled
    differences) and ``resolved`` (the interval excludes 0).
    """
    out = {}
    for k in boot_a:
        if k not in boot_b or point_a.get(k) is None or point_b.get(k) is None:
            continue
        lo, hi = interval(boot_a[k] - boot_b[k], level)
        out[k] = {"delta": float(point_a[k]) - float(point_b[k]), "ci95": [lo, hi],
                  "resolved": bool(lo is not None and (lo > 0 or hi < 0))}
    return out


def standard_errors(boot: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Bootstrap standard error of every figure (NaN resamples ignored)."""
    out = {}
    for k, v in boot.items():
        v = v[np.isfinite(v)]
        out[k] = float(v.std(ddof=1)) if v.size > 1 else None
    return out


def save_boot(path, boot: dict[str, np.ndarray]) -> None:
    """Resampled figures (float64) in one .npz, written atomically."""
    from collapse.io import write_npz

    write_npz(path, {k: np.asarray(v, np.float64) for k, v in boot.items()})


def load_boot(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k].astype(np.float64) for k in z.files}


# ---------------------------------------------------------------------- one generation of `collapse run`

def scalar_names() -> tuple[str, ...]:
    """Every registered scalar figure with an interval: the corpus figures, then the other stages' ones."""
    return (*resampled_names(),
            *(f.name for f in FIGURES.values() if f.resample and not f.buckets and f.point is None))


def bucket_names() -> tuple[str, ...]:
    """Every registered per-bucket figure with an interval (``tail_loss``, ``bucket_shift``)."""
    return tuple(f.name for f in FIGURES.values() if f.resample and f.buckets)


def flat_point(row: dict, names: tuple[str, ...] = BUCKETS) -> dict[str, float | None]:
    """The figures of a metrics row under the flat names of the resamples (``bucket_shift.1-10`` ...)."""
    out = {f.name: row.get(f.name) for f in FIGURES.values() if not f.buckets}  # with an interval or not
    for b in names:
        for fig in bucket_names():
            out[f"{fig}.{b}"] = (row.get(fig) or {}).get(b)
        out[f"gen_share.{b}"] = ((row.get("bucket_share") or {}).get(b) or {}).get("gen_share")
    return out


def row_ci(row: dict, name: str) -> list | None:
    """The interval of figure ``name`` (flat: ``test_ppl``, ``tail_loss.1-10``, ``gen_share.1-10``) in a metrics row."""
    if "." in name:
        fig, b = name.split(".", 1)
        return (row.get("bucket_share_ci" if fig == "gen_share" else f"{fig}_ci") or {}).get(b)
    return row.get(f"{name}_ci")


DRIFTS = (("entropy_drift", "entropy"), ("top10_drift", "bucket_shift.1-10"))  # figure, the change it divides


def drift_part(g: int, from_gen0: dict | None) -> dict:
    """The drift per generation of generation g: each paired change from generation 0 over g, with its interval
    (a linear map of the same resamples: exact). Over a whole run it is the mean step, whatever the curve's shape;
    its sign tells which end of the recursion a setting lands on (docs/results.md: the neutral temperature)."""
    out: dict = {}
    for name, key in DRIFTS:
        c = (from_gen0 or {}).get(key)
        if g > 0 and c is not None and c.get("delta") is not None:
            out[name] = c["delta"] / g
            out[f"{name}_ci"] = [None if x is None else x / g for x in c["ci95"]]
    return out


def row_change(row: dict, name: str, since: str = "from_gen0") -> dict | None:
    """The paired change of figure ``name`` in a metrics row (``delta``, ``ci95``, ``resolved``), or None."""
    return ((row.get("changes") or {}).get(since) or {}).get(name)


def generation_boot(wts: Weights, corpus: Corpus, ref_counts: np.ndarray, buckets: np.ndarray, head: np.ndarray,
                    names: tuple[str, ...], ppl: np.ndarray | None = None, We: Weights | None = None,
                    block_sums: np.ndarray | None = None, block_counts: np.ndarray | None = None,
                    ref_share: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every figure of one generation under each resample: the samples' figures (``wts``, over samples),
    their gen-0 perplexity, and the test figures (``We``, over test blocks). The bucket shifts are against
    ``ref_share`` (a synthetic source's TRUE shares, as its row's are), else the shares of ``ref_counts``."""
    boot = flatten_corpus_boot(corpus_boot(wts, corpus, ref_counts, head), names,
                               ref_share=bucket_shares(ref_counts, buckets) if ref_share is None else ref_share)
    if ppl is not None and len(ppl):
        boot["gen0_ppl_mean"] = wts.boot @ np.asarray(ppl, np.float64) / len(ppl)
    if We is not None and block_sums is not None:
        boot.update(block_boot(We.boot, block_sums, block_counts, names))
    return boot


def row_intervals(point: dict, boot: dict[str, np.ndarray], names: tuple[str, ...], level: float = LEVEL) -> dict:
    """The ``*_ci`` keys of a metrics row: scalars as ``<name>_ci``, per-bucket figures as maps."""
    ci = intervals(boot, level)
    out: dict = {f"{k}_ci": ci[k] for k in scalar_names() if k in ci}
    for fig, key in (*((f, f"{f}_ci") for f in bucket_names()), ("gen_share", "bucket_share_ci")):
        if f"{fig}.{names[0]}" in ci:
            out[key] = {b: (ci[f"{fig}.{b}"] if point.get(f"{fig}.{b}") is not None else [None, None]) for b in names}
    return out


def interval_series(row: dict) -> dict:
    """A row's intervals as W&B series beside each value: ``<name>_lo`` / ``<name>_hi`` for scalars,
    ``<map>_lo`` / ``<map>_hi`` bucket maps (``tail_loss_lo/1-10``), and each paired change from
    generation 0 as ``change/<figure>`` with ``change_lo`` / ``change_hi``."""
    out: dict = {}
    for k, v in row.items():
        if not k.endswith("_ci") or v is None:
            continue
        name = k[:-3].replace("bucket_share", "gen_share")
        if isinstance(v, dict):
            out[f"{name}_lo"] = {b: c[0] for b, c in v.items() if c and c[0] is not None}
            out[f"{name}_hi"] = {b: c[1] for b, c in v.items() if c and c[1] is not None}
        elif v[0] is not None:
            out[f"{name}_lo"], out[f"{name}_hi"] = v
    ch = (row.get("changes") or {}).get("from_gen0") or {}
    if ch:
        out["change"] = {k: c["delta"] for k, c in ch.items()}
        out["change_lo"] = {k: c["ci95"][0] for k, c in ch.items() if c["ci95"][0] is not None}
        out["change_hi"] = {k: c["ci95"][1] for k, c in ch.items() if c["ci95"][1] is not None}
    return out
