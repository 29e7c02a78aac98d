"""What a corpus of tokens is measured by: the formulas on counts (``formulas``), a corpus as independent
units for resampling (``units``) and the registry of every figure a row reports (``registry``).

This package owns the definitions; ``collapse.metrics.stats`` resamples them and ``collapse.loop.rows`` /
``collapse.report`` / W&B show them, all by reading the registry. It imports numpy and scipy only
(torch, where present, to count faster).
"""

from collapse.metrics.formulas import (
    BUCKETS,
    KL_ALPHA,
    RANK_EDGES,
    UNSEEN,
    bucket_of,
    bucket_shares,
    bucket_shift,
    counts,
    coverage,
    distinct_n,
    entropy,
    js,
    kl,
    ranks,
    shares_of,
    shift_map,
    shift_pct,
    tail_mass,
)
from collapse.metrics.registry import (
    FIGURES,
    Figure,
    Resampled,
    Sample,
    adopt,
    columns,
    corpus_figures,
    distribution_metrics,
    harness_figures,
    register,
    resampled_names,
    unregister,
)

__all__ = ["BUCKETS", "FIGURES", "KL_ALPHA", "RANK_EDGES", "UNSEEN", "Figure", "Resampled", "Sample", "adopt", "bucket_of",
           "bucket_shares", "bucket_shift", "columns", "corpus_figures", "counts", "coverage", "distinct_n",
           "distribution_metrics", "entropy", "harness_figures", "js", "kl", "ranks", "register", "resampled_names", "shift_map",
           "shares_of", "shift_pct", "tail_mass", "unregister"]
