"""Every figure a row reports, defined once: name, label, unit, direction, format, how it is resampled and,
for a figure of a corpus of samples, how it is computed from counts.

A figure of a corpus (``point`` set) is computed by :func:`distribution_metrics` for the row's value and by
``collapse.metrics.stats.corpus_boot`` for each resample, both from this entry: ``point`` from one :class:`Sample`,
``rows`` (optional) the same formula vectorised over R resampled corpora at once (a :class:`Resampled`;
tests/test_metrics.py checks the two agree for every registered figure). Without ``rows`` each resample is
scored by ``point`` on its own counts and units: slower, never different. The figures computed by other
stages (test perplexity, tail loss, gen-0 perplexity, the truth's) are entries without ``point``: the
registry still gives their label, unit and format, so that the console table (``collapse.loop.rows``) and
the report (``collapse.report``) read every column from here, and W&B logs every scalar figure of a row
with its interval. ``unit`` and ``direction`` describe a figure for readers; nothing computes with them.

A new figure is one :func:`register` call (docs/extending.md). Imports numpy and collapse.metrics only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from collapse.metrics import formulas as F
from collapse.metrics.units import Corpus, types_present

HEAD = 100  # the reference's most frequent types that tail mass leaves out


@dataclass
class Sample:
    """One corpus against its reference: counts over one vocabulary. For the point value int64 counts; for a
    resample scored by ``point`` (no ``rows``) weighted float counts, and ``seqs`` the distinct units kept."""

    ref: np.ndarray  # the reference's counts
    gen: np.ndarray  # the generated corpus's counts
    rank: np.ndarray  # the counts that rank types (buckets, the head of tail mass): the reference's by default
    seqs: np.ndarray | list | None = None  # the generated sequences, for figures of n-grams
    alpha: float = F.KL_ALPHA

    def of_reference(self, seqs=None) -> Sample:
        """The reference scored as if it were the corpus (``<name>_ref`` figures)."""
        return Sample(self.ref, self.ref, self.rank, seqs, self.alpha)


@dataclass
class Resampled:
    """R resampled corpora at once: dense (R, V) counts, each row one resample of the units.

    ``keep`` (R, n) is each unit's weight in each resample (0: left out); ``corpus`` the generated units
    (``collapse.metrics.units.Corpus``). Intermediate arrays several figures share are computed once."""

    ref: np.ndarray  # (R, V), or (1, V) for a fixed reference
    gen: np.ndarray  # (R, V)
    head: np.ndarray  # (V,) bool: the reference's top types
    keep: np.ndarray  # (R, n)
    corpus: Corpus
    rank: np.ndarray  # the full reference's ranking counts (for ``point`` on a single resample)
    alpha: float = F.KL_ALPHA

    @cached_property
    def full_ref(self) -> np.ndarray:
        return np.broadcast_to(self.ref, self.gen.shape)

    @cached_property
    def smoothed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p, q, support): both distributions with ``alpha`` added on the union of observed types."""
        ref, gen = self.full_ref, self.gen
        sup = (ref > 0) | (gen > 0)
        p, q = np.where(sup, ref + self.alpha, 0.0), np.where(sup, gen + self.alpha, 0.0)
        return p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True), sup

    @cached_property
    def probs(self) -> tuple[np.ndarray, np.ndarray]:
        """(reference, generated) unsmoothed distributions (NaN rows where a resample holds no token)."""
        ref, gen = self.full_ref, self.gen
        with np.errstate(divide="ignore", invalid="ignore"):
            return ref / ref.sum(1, keepdims=True), gen / gen.sum(1, keepdims=True)

    @cached_property
    def kept(self) -> np.ndarray:
        return self.keep > 0

    def samples(self):
        """Each resample as a :class:`Sample` of its own units (the fallback for figures without ``rows``)."""
        for i in range(len(self.gen)):
            ref = self.full_ref[i]
            yield Sample(ref, self.gen[i], self.rank, self.corpus.rows[self.kept[i]], self.alpha)


@dataclass(frozen=True)
class Figure:
    """One figure of a metrics row (see the module docstring)."""

    name: str  # its key in metrics.jsonl / measure.json (a per-bucket figure: a map by bucket)
    label: str  # column heading; ``{b}`` takes the bucket of a per-bucket figure
    unit: str  # what the number is in: bits, nats, share, %, perplexity, count
    direction: int  # +1: collapse raises it; -1: collapse lowers it; 0: no fixed direction
    fmt: str = ".4f"  # how a value is shown (in its unit: a share as a share, not a percent)
    resample: str | None = None  # "bootstrap", "jackknife" (delete-half) or None (no interval)
    point: Callable[[Sample], float] | None = None  # the value from counts (None: another stage computes it)
    rows: Callable[[Resampled], np.ndarray] | None = None  # the same for R resampled corpora at once
    sequences: bool = False  # needs the generated sequences, not only counts (n-gram figures)
    reference: bool = False  # also reported for the reference itself, as ``<name>_ref``
    buckets: bool = False  # one value per frequency bucket
    console: bool | tuple[str, ...] = False  # a column of the console table (per bucket: which buckets)
    change: bool | tuple[str, ...] = False  # a column of the console's change-from-generation-0 table
    report: bool = True  # a column of the report's table (where some row has it)
    summary: bool = False  # in the report's last-generation summary
    short: dict[str, str] = field(default_factory=dict)  # shorter bucket names for the console

    def heading(self, bucket: str | None = None, short: bool = False) -> str:
        b = (self.short.get(bucket, bucket) if short else bucket) or ""
        return self.label.format(b=b)

    def scored(self, r: Resampled) -> np.ndarray:
        """This figure for every resample in ``r``: its vectorised form, else ``point`` resample by resample."""
        if self.rows is not None:
            return np.asarray(self.rows(r), np.float64)
        return np.array([self.point(s) if s.gen.sum() > 0 else np.nan for s in r.samples()], np.float64)

    def keys(self, buckets: tuple[str, ...] | list[str] = F.BUCKETS) -> list[str]:
        """Its flat names: ``name``, or ``name.<bucket>`` per bucket."""
        return [f"{self.name}.{b}" for b in buckets] if self.buckets else [self.name]


FIGURES: dict[str, Figure] = {}
# keys a metrics row or measure.json holds besides the registered figures (a figure must not shadow one)
RESERVED = frozenset({"generation", "bucket_share", "gen_share", "gen_tokens", "ref_tokens", "gen_types", "ref_types",
                      "num_samples", "val_nll", "train_rows", "train_real_rows", "tail_tokens", "changes", "intervals",
                      "gen0_ppl_quantiles", "gen0_ppl_hist", "extras", "settings", "samples", "model", "rank_by",
                      "seconds", "shares_against"})


def register(fig: Figure, replace: bool = False) -> Figure:
    """Add ``fig`` to the registry (after the figures already there); a second figure of one name is refused."""
    if fig.name in FIGURES and not replace:
        raise ValueError(f"a figure named {fig.name!r} is registered already: choose another name")
    if fig.resample not in (None, "bootstrap", "jackknife"):
        raise ValueError(f"figure {fig.name!r}: resample={fig.resample!r} is not bootstrap, jackknife or None")
    if fig.point is None and fig.rows is not None:
        raise ValueError(f"figure {fig.name!r}: a vectorised form needs its point form")
    if not fig.name.isidentifier() or fig.name in RESERVED:
        raise ValueError(f"figure name {fig.name!r}: use an identifier that is not a key of the row already "
                         f"({', '.join(sorted(RESERVED))})")
    if fig.change and not fig.resample:
        raise ValueError(f"figure {fig.name!r}: a change from generation 0 needs resampling (resample=...)")
    for sel in (fig.console, fig.change):
        if isinstance(sel, tuple) and (not fig.buckets or not set(sel) <= set(F.BUCKETS)):
            raise ValueError(f"figure {fig.name!r}: console/change name buckets only for a per-bucket figure, "
                             f"among {', '.join(F.BUCKETS)}")
    if fig.point is not None and fig.buckets:
        raise ValueError(f"figure {fig.name!r}: a figure computed from counts is one number (per-bucket figures come "
                         "from the stages that write them)")
    FIGURES[fig.name] = fig
    return fig


def unregister(name: str) -> None:
    FIGURES.pop(name, None)


HARNESS = "harness/"  # lm-eval's figures (eval.harness): named by their task, known from their name


def harness_name(task: str, metric: str) -> str:
    """The figure of lm-eval task ``task``'s ``metric``: ``harness/<task>/<metric>`` (a dot would read as a bucket)."""
    return f"{HARNESS}{task.replace('.', '_')}/{metric.replace('.', '_')}"


def adopt(keys) -> None:
    """Register the harness figures among ``keys`` (a metrics row's) not registered yet: a task is a config entry,
    so its figures are known from the rows that hold them, in any process (their value and lm-eval's ``_stderr``)."""
    for k in keys:
        if not isinstance(k, str) or not k.startswith(HARNESS) or k in FIGURES or k.endswith("_ci"):
            continue
        task, metric = k[len(HARNESS):].rsplit("/", 1)
        se = metric.endswith("_stderr")
        label = f"{task} {metric[:-len('_stderr')]} stderr" if se else f"{task} {metric}"
        # console: a table of their own (collapse.loop.rows); a stderr is for load_runs and W&B, not the report
        FIGURES[k] = Figure(k, label, "score", 0, ".4f" if se else ".3f", resample=None if se else "bootstrap",
                            report=not se)


def harness_figures() -> list[Figure]:
    """The registered harness figures' values (not their standard errors), in the order first seen."""
    return [f for n, f in FIGURES.items() if n.startswith(HARNESS) and f.resample]


def corpus_figures() -> list[Figure]:
    """The scalar figures of a corpus of samples, in registry order (each with an interval where ``resample``)."""
    return [f for f in FIGURES.values() if f.point is not None]


def resampled_names() -> tuple[str, ...]:
    """The names of the corpus figures that carry an interval (the scalars of ``collapse.metrics.stats``)."""
    return tuple(f.name for f in corpus_figures() if f.resample)


def columns(flag: str, buckets: dict[str, list[str]] | None = None, short: bool = False) -> list[tuple[str, str, str]]:
    """(flat key, heading, format) of the figures whose ``flag`` (``console``, ``change``, ``report``, ``summary``)
    is set, in registry order; a per-bucket figure once per bucket: those its flag names, else ``buckets[name]``,
    else every bucket. ``short``: the console's shorter bucket names in the headings."""
    cols = []
    for f in FIGURES.values():
        sel = getattr(f, flag)
        if not sel:
            continue
        if not f.buckets:
            cols.append((f.name, f.heading(short=short), f.fmt))
            continue
        names = sel if isinstance(sel, tuple) else (buckets or {}).get(f.name, F.BUCKETS)
        cols += [(f"{f.name}.{b}", f.heading(b, short=short), f.fmt) for b in names]
    return cols


def distribution_metrics(ref_counts: np.ndarray, gen_counts: np.ndarray, gen_seqs=None, ref_seqs=None,
                         rank_counts: np.ndarray | None = None) -> dict:
    """Every figure of ``gen`` against ``ref`` with its sizes (the keys of ``measure.json`` / ``metrics.jsonl``):
    ``bucket_shift``, the figures from counts (each followed by its ``_ref``), the sizes, then the figures of
    sequences where sequences are given (then their ``_ref`` where the reference's sequences are).

    ``rank_counts``: the counts that rank types into buckets and the head of ``tail_mass`` (default: ``ref``).
    """
    s = Sample(ref_counts, gen_counts, ref_counts if rank_counts is None else rank_counts, gen_seqs)
    figs = corpus_figures()
    out: dict = {"bucket_shift": F.bucket_shift(ref_counts, gen_counts, rank_counts)}
    for f in figs:
        if not f.sequences:
            out[f.name] = f.point(s)
            if f.reference:
                out[f"{f.name}_ref"] = f.point(s.of_reference())
    out.update(gen_tokens=int(gen_counts.sum()), ref_tokens=int(ref_counts.sum()),
               gen_types=int((gen_counts > 0).sum()), ref_types=int((ref_counts > 0).sum()))
    for seqs, suffix, sample in ((gen_seqs, "", s), (ref_seqs, "_ref", s.of_reference(ref_seqs))):
        if seqs is not None:
            out.update({f"{f.name}{suffix}": f.point(sample) for f in figs
                        if f.sequences and (f.reference or not suffix)})
    return out


# ---------------------------------------------------------------------- the built-in figures

def _log2_ratio_sum(p: np.ndarray, q: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row sums of ``p log2(p / q)`` over ``mask`` (p, q > 0 there)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(mask, p * np.log2(np.where(mask, p, 1.0) / np.where(mask, q, 1.0)), 0.0)
    return t.sum(axis=1)


def _head(rank: np.ndarray, top: int = HEAD) -> np.ndarray:
    r = F.ranks(rank)
    return (r >= 1) & (r <= top)


def _js_rows(r: Resampled) -> np.ndarray:
    pr, pg = r.probs
    m = 0.5 * (pr + pg)
    return np.clip(0.5 * _log2_ratio_sum(pr, m, pr > 0) + 0.5 * _log2_ratio_sum(pg, m, pg > 0), 0.0, 1.0)


def _entropy_rows(r: Resampled) -> np.ndarray:
    pg = r.probs[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(pg > 0, pg * np.log2(np.where(pg > 0, pg, 1.0)), 0.0).sum(1)


def _coverage_rows(r: Resampled) -> np.ndarray:
    seen = r.full_ref > 0
    return ((r.gen > 0) & seen).sum(1) / np.maximum(seen.sum(1), 1)


def _tail_rows(r: Resampled) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty row (a half-sample of no unit): NaN
        return r.gen[:, ~r.head].sum(1) / r.gen.sum(1)


def _distinct_1_rows(r: Resampled) -> np.ndarray:
    # the resample's own unigrams over its own tokens: its units, not their weights (a weight n/keep would
    # halve a count of types over a count of tokens)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (r.gen > 0).sum(1) / (r.kept @ r.corpus.grams_total[1])


def _distinct_2_rows(r: Resampled) -> np.ndarray:
    if r.corpus.bigrams_T.shape[0] == 0:  # units one token long: no bigram, distinct-2 is 0
        return np.zeros(len(r.keep))
    with np.errstate(divide="ignore", invalid="ignore"):
        return types_present(r.corpus.bigrams_T, r.kept) / (r.kept @ r.corpus.grams_total[2])


BUCKET_SHORT = {"101-1000": "101-1k", "1001-10000": "1k-10k", "10001+": "10k+"}

for _fig in (  # the order of the columns of the tables
    # computed by evaluation (over test blocks); then the corpus figures; then by other stages
    Figure("test_ppl", "test ppl", "perplexity", +1, ".2f", resample="bootstrap", console=True, change=True,
           summary=True),
    Figure("test_nll", "test NLL", "nats", +1, ".3f", resample="bootstrap"),
    Figure("tail_loss", "NLL {b}", "nats", +1, ".3f", resample="bootstrap", buckets=True,
           console=("1-10", "1001-10000"), change=("1001-10000",), summary=True, short=BUCKET_SHORT),
    Figure("bucket_shift", "shift {b} (%)", "%", 0, "+.1f", resample="bootstrap", buckets=True,
           console=("1-10", "101-1000", "1001-10000"), change=("1-10", "1001-10000"), summary=True,
           short=BUCKET_SHORT),
    Figure("kl_ref_gen", "KL real‖gen", "bits", +1, ".4f", resample="jackknife", console=True, summary=True,
           point=lambda s: F.kl(s.ref, s.gen, s.alpha),
           rows=lambda r: np.maximum(0.0, _log2_ratio_sum(r.smoothed[0], r.smoothed[1], r.smoothed[2]))),
    Figure("kl_gen_ref", "KL gen‖real", "bits", +1, ".4f", resample="jackknife", report=False,
           point=lambda s: F.kl(s.gen, s.ref, s.alpha),
           rows=lambda r: np.maximum(0.0, _log2_ratio_sum(r.smoothed[1], r.smoothed[0], r.smoothed[2]))),
    Figure("js", "JS", "bits", +1, ".4f", resample="jackknife", point=lambda s: F.js(s.ref, s.gen), rows=_js_rows),
    Figure("entropy", "entropy", "bits", -1, ".3f", resample="jackknife", reference=True, console=True,
           change=True, summary=True, point=lambda s: F.entropy(s.gen), rows=_entropy_rows),
    Figure("coverage", "coverage", "share", -1, ".4f", resample="jackknife", console=True, summary=True,
           point=lambda s: F.coverage(s.ref, s.gen), rows=_coverage_rows),
    Figure("tail_mass", "tail mass", "share", -1, ".4f", resample="jackknife", reference=True,
           point=lambda s: F.tail_mass(s.gen, s.rank, HEAD), rows=_tail_rows),
    Figure("distinct_1", "distinct-1", "share", -1, ".3f", resample="jackknife", sequences=True, reference=True,
           report=False, point=lambda s: F.distinct_n(s.seqs, 1), rows=_distinct_1_rows),
    Figure("distinct_2", "distinct-2", "share", -1, ".3f", resample="jackknife", sequences=True, reference=True,
           point=lambda s: F.distinct_n(s.seqs, 2), rows=_distinct_2_rows),
    # the gen-0 model on the samples, training, a synthetic source's truth
    Figure("gen0_ppl_mean", "gen-0 ppl", "perplexity", -1, ".1f", resample="bootstrap", console=True),
    # the drift per generation: the paired change from generation 0 over g (collapse.metrics.stats.drift_part)
    Figure("entropy_drift", "entropy drift / gen", "bits", -1, "+.4f", summary=True),
    Figure("top10_drift", "top-10 shift drift / gen (%)", "%", +1, "+.2f", summary=True),
    Figure("train_loss", "train loss", "nats", 0, ".3f"),
    Figure("kl_truth", "KL truth‖model (nats/token)", "nats", +1, ".4f", resample="bootstrap", summary=True),
    Figure("kl_truth_zero", "share of truth tokens at probability 0", "share", +1, ".4f", report=False),
    Figure("mass_forgotten", "true mass forgotten", "share", +1, ".4f", summary=True),
    Figure("gini_simpson", "Gini–Simpson", "share", -1, ".4f"),
    # the curate stage (a remedy, collapse.loop.curate): only in the rows of a run with a curate.kind
    Figure("kept_share", "kept", "share", 0, ".3f", console=True),
    Figure("curate_score_q10", "curate score q10", "score", 0, ".3g"),
    Figure("curate_score_q50", "curate score median", "score", 0, ".3g", console=True),
    Figure("curate_score_q90", "curate score q90", "score", 0, ".3g"),
    Figure("detector_accuracy", "detector accuracy", "share", 0, ".3f", console=True),
    # a pool with real rows of unknown origin (curate.real_share): the training rows that are real (read from the record,
    # never by the curator)
    Figure("kept_real_share", "kept real", "share", 0, ".3f", console=True),
    # the text figures other papers report (eval.mauve, eval.self_bleu; collapse.metrics.text): only where asked for
    Figure("mauve", "MAUVE", "share", -1, ".3f", resample="jackknife", console=True, change=True, summary=True),
    Figure("self_bleu", "self-BLEU", "share", +1, ".3f", resample="bootstrap", console=True, change=True, summary=True),
):
    register(_fig)
