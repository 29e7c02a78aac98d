"""CPU part 2 of the benchmark: ``metrics.counts`` + ``bucket_shift`` against ``collections.Counter`` and a
pure-Python bucket shift over Zipf-distributed token ids."""

from __future__ import annotations

import collections
import time

import numpy as np

from collapse.bench.harness import interleaved, median, result_row, target


def zipf_ids(n: int, vocab: int = 4096, seed: int = 0, a: float = 1.1) -> np.ndarray:
    """``n`` int32 token ids with Zipf-Mandelbrot frequencies over ``vocab`` types (ids shuffled)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(vocab) + 2.7) ** a
    p /= p.sum()
    ids = rng.permutation(vocab)[np.searchsorted(np.cumsum(p), rng.random(n), side="right").clip(0, vocab - 1)]
    return ids.astype(np.int32)


def _bucket_shift_counter(ref: collections.Counter, gen: collections.Counter) -> dict:
    """The researcher's pure-Python bucket shift: rank reference types, sum shares per bucket."""
    from collapse.metrics import BUCKETS, RANK_EDGES

    ranked = sorted(ref.items(), key=lambda kv: (-kv[1], kv[0]))
    bucket = {}
    for r, (t, _) in enumerate(ranked, start=1):
        bucket[t] = next((i for i, e in enumerate(RANK_EDGES) if r <= e), len(RANK_EDGES))
    rs = [0.0] * len(BUCKETS)
    gs = [0.0] * len(BUCKETS)
    for t, c in ref.items():
        rs[bucket[t]] += c
    for t, c in gen.items():
        gs[bucket.get(t, len(BUCKETS) - 1)] += c
    rt, gt = sum(rs[:-1]), sum(gs[:-1])  # ranked buckets: shares over the ranked tokens; unseen has no shift
    return {name: (None if rs[k] == 0 or name == "unseen" else 100.0 * ((gs[k] / gt) / (rs[k] / rt) - 1.0))
            for k, name in enumerate(BUCKETS)}


def bench_counting(n: int, repeats: int, vocab: int = 4096) -> dict:
    from collapse import metrics as M

    gen = zipf_ids(n, vocab, seed=1)
    ref_ids = zipf_ids(max(n // 10, 1000), vocab, seed=2)
    ref_np = M.counts(ref_ids, vocab)
    ref_c = collections.Counter(ref_ids.tolist())
    box: dict = {}

    def ours():
        c = M.counts(gen, vocab)
        box["ours"] = (c, M.bucket_shift(ref_np, c))

    def counter_tolist():
        c = collections.Counter(gen.tolist())
        box["counter"] = (c, _bucket_shift_counter(ref_c, c))

    def tolist_only():
        gen.tolist()

    def ours_one_thread():  # Counter uses one core: the same kernel held to one thread, for a like-for-like figure
        import torch

        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            M.counts(gen[:1000], vocab)  # wake the (resized) thread pool outside the timed region
            t0 = time.perf_counter()
            M.bucket_shift(ref_np, M.counts(gen, vocab))
            return time.perf_counter() - t0
        finally:
            torch.set_num_threads(n_threads)

    t = interleaved({"ours": ours, "ours_1t": ours_one_thread, "counter": counter_tolist, "tolist": tolist_only},
                    repeats)
    c_np, bs_np = box["ours"]
    c_py, bs_py = box["counter"]
    same_counts = all(c_np[k] == v for k, v in c_py.items()) and int(c_np.sum()) == sum(c_py.values())
    same_shift = all((bs_np[k]["shift_pct"] is None and bs_py[k] is None)
                     or (bs_py[k] is not None and abs(bs_np[k]["shift_pct"] - bs_py[k]) < 1e-9) for k in bs_py)
    rows = [result_row("metrics.counts (torch.bincount, zero-copy) + bucket_shift", t["ours"], n, unit="ids"),
            result_row("collections.Counter(arr.tolist()) + pure-Python bucket shift", t["counter"], n, unit="ids",
                       note="tolist INSIDE the timed region"),
            result_row("  of which arr.tolist() alone", t["tolist"], n, unit="ids"),
            result_row("metrics.counts + bucket_shift, torch held to 1 thread", t["ours_1t"], n, unit="ids")]
    ratio = median(t["counter"]) / median(t["ours"])
    return {"rows": rows, "ratios": {"Counter / counts": ratio,
                                     "Counter / counts (1 thread)": median(t["counter"]) / median(t["ours_1t"])},
            "info": {"ids": n, "vocab": vocab, "dtype": "int32", "distribution": "Zipf-Mandelbrot a=1.1, b=2.7",
                     "same_counts": same_counts, "same_bucket_shift": same_shift},
            "targets": [target("counts speed-up over Counter", ratio, ">=", 40.0)]}
