"""The curate stage: what of generation g's samples generation g+1 trains on (the published remedies).

    generate (corpus g) ──► curate (a score and a number of repeats per sample) ──► regime ──► train g+1

A curator is one function registered by name (:func:`curator`); ``curate.kind`` accepts every registered
name, and ``none`` (the default) is no stage at all. It gets a :class:`Batch` (the samples, their prompts and
their true continuations, the real training rows, a scorer by model) and the ``curate`` settings and a seeded
generator, and returns ``(repeats, scores)``: an integer number of repeats per sample (0 = dropped) and one
score per sample. There is no weighted loss: what a curator keeps is trained on as rows.

**The training-set size is held fixed** (:func:`fill`): the kept multiset (sample i repeated ``repeats[i]``
times, m rows) becomes N rows, N the generation's sample count: every kept row ``N // m`` times, then
``N mod m`` more drawn from the multiset without replacement (seeded). So remedies differ in *what* the
next generation sees, never in how much; ``random`` at the same share is the control of any top-share curator.

The record, ``gen_g/curated.parquet`` (``sample_index``, ``score``, ``kept``: the curator's repeats,
``repeats``: the rows in the training set, summing to N) and ``gen_g/curate.json`` (settings and figures),
is checksummed, resumed and verified like every stage; under ``accumulate`` each generation's record is reused.
Imports numpy only (the config validates ``curate.kind`` against the registry); a curator that needs a
library outside the required stack names it (``needs``) and imports it when it runs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Curator = Callable[..., tuple[np.ndarray, np.ndarray]]
CURATORS: dict[str, Curator] = {}
USES: dict[str, tuple[str, ...]] = {}  # the curate.* settings each curator reads (else the plan calls them idle)
SHARE: dict[str, float | None] = {}  # each curator's default share (its paper's), used when curate.share is null
NEEDS: dict[str, tuple[str, str]] = {}  # (module, pip extra) a curator imports beyond the required stack
RECORD, SUMMARY = "curated.parquet", "curate.json"


def curator(name: str, uses: tuple[str, ...] = (), share: float | None = None, needs: tuple[str, str] | None = None,
            replace: bool = False) -> Callable[[Curator], Curator]:
    """Register ``fn(batch, cfg, rng) -> (repeats, scores)`` as ``curate.kind: <name>``. ``uses``: which curate.*
    settings it reads; ``share``: its default share (``cfg.share`` arrives resolved); ``needs``: (module, extra)
    of a library it imports. A name taken already is refused unless ``replace``."""
    def add(fn: Curator) -> Curator:
        if (name in CURATORS or name == "none") and not replace:
            raise ValueError(f"a curator named {name!r} is registered already: choose another name")
        CURATORS[name], USES[name], SHARE[name] = fn, tuple(uses), share
        if needs:
            NEEDS[name] = needs
        return fn
    return add


@dataclass
class Batch:
    """What a curator may look at: the pool's rows (collapse.loop.pool), each a prompt and a continuation, in a shuffled
    order where real rows are mixed in. ``score(model)`` is the perplexity of each row's continuation given its
    prompt under ``"trainee"`` (the model the next generation starts from), ``"current"`` (the generation that wrote
    the samples) or ``"gen0"``, scored once and cached."""

    generation: int
    samples: np.ndarray  # [P, new_tokens] the pool's continuations (generated, or real of unknown origin)
    texts: list[str]
    prompts: np.ndarray  # [P, prompt_tokens]: real prompts
    truths: np.ndarray | None  # [P, new_tokens]: each prompt's true continuation; None on a pool with real rows
    real_rows: np.ndarray  # real training rows that share no text with the pool (a detector's human examples)
    score: Callable[[str], np.ndarray]
    extras: dict = field(default_factory=dict)  # a curator's own figures (the detector's held-out accuracy)
    ignore: tuple[int, ...] = ()  # ids never sampled (EOS): real text has them, samples cannot; compare without them
    own: np.ndarray | None = None  # True where a pool row is this generation's sample: machine text a detector may
    # learn from (other folds only), never a score; None = every row is (a pool of samples alone)

    def __post_init__(self) -> None:
        if self.own is None:
            self.own = np.ones(len(self.samples), bool)


def missing_library(kind: str) -> str | None:
    """The one line for a curator whose library is not installed, else None (checked before any stage)."""
    if kind in NEEDS and importlib.util.find_spec(NEEDS[kind][0]) is None:
        module, extra = NEEDS[kind]
        return (f"curate.kind={kind} needs the {module} package: pip install 'model-collapse[{extra}]' "
                f"(or pip install {module}).")
    return None


def read_repeats(d) -> np.ndarray:
    """The training rows of each sample of a generation folder's curate record."""
    import pyarrow.parquet as pq

    return pq.read_table(f"{d}/{RECORD}", columns=["repeats"]).column("repeats").to_numpy().astype(np.int64)


def read_pool_record(d) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(sample_index, real_block or None, repeats) of a generation folder's curate record: which pool row is which
    sample or real block, and its rows in the training set (collapse.loop.pool.pool_rows)."""
    import pyarrow.parquet as pq

    t = pq.read_table(f"{d}/{RECORD}")
    col = lambda k: t.column(k).to_numpy().astype(np.int64)  # noqa: E731
    return col("sample_index"), col("real_block") if "real_block" in t.column_names else None, col("repeats")


def fill(kept: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The kept multiset as exactly ``n`` training rows: rows per sample (see the module docstring)."""
    kept = np.asarray(kept, np.int64)
    m = int(kept.sum())
    if m == 0:
        raise ValueError("the curator kept no sample")
    q, r = divmod(n, m)
    extra = rng.choice(np.repeat(np.arange(len(kept)), kept), size=r, replace=False)
    return q * kept + np.bincount(extra, minlength=len(kept))


def top_share(scores: np.ndarray, share: float, rng: np.random.Generator, where: str = "highest") -> np.ndarray:
    """1 for the ``ceil(share × N)`` samples of highest (``lowest``, ``middle``) score, else 0; ties broken at random."""
    n = len(scores)
    k = max(1, int(np.ceil(share * n - 1e-9)))
    s = np.asarray(scores, np.float64)
    s = np.where(np.isnan(s), -np.inf if where == "highest" else np.inf, s)  # a NaN score is never kept first
    order = np.lexsort((rng.permutation(n), s))  # ascending, random among ties
    if where == "highest":
        pick = order[n - k:]
    elif where == "lowest":
        pick = order[:k]
    else:  # the band around the median
        start = (n - k) // 2
        pick = order[start:start + k]
    out = np.zeros(n, np.int64)
    out[pick] = 1
    return out


# ---------------------------------------------------------------------- the built-in curators


@curator("perplexity", uses=("share", "keep", "score_with"), share=0.5)
def perplexity(batch: Batch, cfg, rng):
    """Gambetta et al., "Learning by Surprise" (arXiv 2410.12341): score each row by its perplexity under the model
    about to learn from it (``score_with: trainee``) and keep the most surprising share (``keep: highest``); keeping
    the least surprising worsens collapse."""
    scores = batch.score(cfg.score_with)
    return top_share(scores, cfg.share, rng, cfg.keep), scores


def rouge1_f1(a: np.ndarray, b: np.ndarray) -> float:
    """ROUGE-1 F1 on token ids: the clipped unigram overlap of two id sequences (the same words, the same ids)."""
    ua, ca = np.unique(a, return_counts=True)
    ub, cb = np.unique(b, return_counts=True)
    _, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
    overlap = np.minimum(ca[ia], cb[ib]).sum()
    return 0.0 if overlap == 0 else float(2 * overlap / (len(a) + len(b)))


@curator("reference", uses=("share",), share=0.125)
def reference(batch: Batch, cfg, rng):
    """Yi et al. (ICLR 2026, "Verified Synthetic Data"; Feng et al. 2024): a verifier against the ground truth;
    here exact, since each sample continues a real prompt whose true continuation is known: ROUGE-1 F1 on token
    ids against it, the top share kept (Yi: 12.5%)."""
    ign = np.asarray(batch.ignore, np.int64)
    scores = np.array([rouge1_f1(s, t[~np.isin(t, ign)]) for s, t in zip(batch.samples, batch.truths)])
    return top_share(scores, cfg.share, rng), scores


@curator("random", uses=("share",), share=0.125)
def random(batch: Batch, cfg, rng):
    """The control of a top-share curator (Yi et al.'s random 12.5%): the same share, kept uniformly at random."""
    scores = rng.random(len(batch.samples))
    return top_share(scores, cfg.share, rng), scores


@curator("detector", uses=("power", "repeats", "draw"))
def detector(batch: Batch, cfg, rng):
    """Drayson et al. (EMNLP 2025, "Machine-generated text detection prevents language model collapse"): a detector
    gives p = P(machine) per sample; weight (1 - p)^10; each index repeated 3 times, round(1.5 N) drawn without
    replacement ∝ weight. The detector here: logistic regression on hashed token uni- and bigram counts, trained on
    the spot on real training rows against the samples, cross-fitted over 2 folds so no sample is scored by a
    detector that saw it (the held-out accuracy is recorded). Ids the samples cannot hold (EOS) are left out of
    both sides, so the detector cannot tell them apart by a token that only real text has."""
    from collapse.loop.detector import machine_probability

    p, accuracy = machine_probability(batch.samples, batch.real_rows, rng, ignore=batch.ignore, own=batch.own)
    batch.extras["detector_accuracy"] = accuracy
    w = (1.0 - p) ** cfg.power
    n = len(p)
    pool = np.repeat(np.arange(n), cfg.repeats)
    k = min(len(pool), max(1, int(round(cfg.draw * n))))
    wp = np.repeat(w, cfg.repeats)
    if wp.sum() <= 0 or np.count_nonzero(wp) < k:  # too few samples with weight (p = 1): the rest drawn uniformly
        batch.extras["detector_uniform_draw"] = True
        wp = np.where(wp > 0, wp, wp[wp > 0].min() * 1e-6 if (wp > 0).any() else 1.0)
    drawn = rng.choice(len(pool), size=k, replace=False, p=wp / wp.sum())
    return np.bincount(pool[drawn], minlength=n), p


@curator("dedupe", uses=("threshold", "ngram"), needs=("datasketch", "curate"))
def dedupe(batch: Batch, cfg, rng):
    """Exact and near-duplicate removal (as in the pre-training pipelines' MinHash dedup, Lee et al. 2022): a sample
    whose token n-grams' estimated Jaccard similarity to an earlier kept sample reaches ``threshold`` is dropped
    (datasketch's MinHash LSH, 128 permutations); the score is the highest similarity found (1 = an exact copy)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=128)
    seen: set[bytes] = set()
    hashes: dict[int, MinHash] = {}
    kept, scores = np.zeros(len(batch.samples), np.int64), np.zeros(len(batch.samples))
    for i, row in enumerate(batch.samples):
        key = np.ascontiguousarray(row).tobytes()
        if key in seen:  # an exact copy of an earlier sample
            scores[i] = 1.0
            continue
        seen.add(key)
        m = MinHash(num_perm=128, seed=1)
        n = min(cfg.ngram, len(row))
        m.update_batch([np.ascontiguousarray(row[j:j + n]).tobytes() for j in range(len(row) - n + 1)])
        near = lsh.query(m)
        if near:
            scores[i] = max(m.jaccard(hashes[int(j)]) for j in near)
            continue
        lsh.insert(str(i), m)
        hashes[i] = m
        kept[i] = 1
    return kept, scores


# ---------------------------------------------------------------------- the stage


FIGURES = ("kept_share", "curate_score_q10", "curate_score_q50", "curate_score_q90")  # the row's figures (registry)


def resolved(cfg):
    """The curate settings with ``share`` set where it is null: the curator's default, or for a pool larger than the
    training set the share that keeps N rows of it."""
    import copy

    c = copy.copy(cfg)
    if c.share is None:  # a pool larger than the training set: keep as many rows as it needs
        pooled = c.oversample > 1 or c.real_share > 0
        c.share = (1.0 - c.real_share) / c.oversample if pooled else SHARE.get(c.kind) or 1.0
    return c
