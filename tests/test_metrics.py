"""collapse.metrics against hand-computed examples, then properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collapse import metrics as M
from collapse.metrics.formulas import _counts_numpy

B = {name: i for i, name in enumerate(M.BUCKETS)}


def arr(*xs):
    return np.asarray(xs, dtype=np.int64)


# ---------------------------------------------------------------------- counts


def test_counts_list_of_arrays_and_vocab():
    # ids 0, 2, 2 -> c = [1, 0, 2], padded to vocab 5 -> [1, 0, 2, 0, 0]
    c = M.counts([arr(0, 2), arr(2)], vocab=5)
    assert c.tolist() == [1, 0, 2, 0, 0]
    assert c.dtype == np.int64
    assert M.counts(np.array([[1, 1], [0, 3]])).tolist() == [1, 2, 0, 1]  # 2-D array flattened
    assert M.counts([], vocab=3).tolist() == [0, 0, 0]


def test_counts_rejects_negative_ids():
    with pytest.raises(ValueError):
        M.counts(arr(1, -1))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64])
def test_counts_equal_counter_for_every_integer_dtype_and_read_only_input(dtype):
    import collections

    ids = np.random.default_rng(0).integers(0, 120, size=5000).astype(dtype)
    ids.flags.writeable = False  # arrays from pyarrow are read-only; counting must not need to write
    c = M.counts(ids, vocab=130)
    want = collections.Counter(ids.tolist())
    assert len(c) == 130 and c.dtype == np.int64
    assert {t: int(v) for t, v in enumerate(c) if v} == dict(want)
    assert np.array_equal(c, _counts_numpy(ids, 130))  # the no-torch fallback agrees exactly


def test_counts_rejects_non_integer_ids():
    with pytest.raises(ValueError, match="integers"):
        M.counts(np.array([1.0, 2.0]))


# ---------------------------------------------------------------------- ranks and buckets


def test_ranks_hand_example():
    # ref ids [0,0,0,1,1,2] -> counts [3,2,1] (+ 2 unused types of a vocab of 5)
    # rank by count descending: type 0 (3) -> 1, type 1 (2) -> 2, type 2 (1) -> 3; unused types -> 0
    c = M.counts(arr(0, 0, 0, 1, 1, 2), vocab=5)
    assert M.ranks(c).tolist() == [1, 2, 3, 0, 0]


def test_ranks_ties_broken_by_smaller_id():
    # counts: type 0 -> 2, type 1 -> 1, type 2 -> 2, type 3 -> 1
    # order: (count 2: ids 0, 2), (count 1: ids 1, 3) -> ranks 0:1, 2:2, 1:3, 3:4
    c = arr(2, 1, 2, 1)
    assert M.ranks(c).tolist() == [1, 3, 2, 4]
    # all tied -> rank = id + 1
    assert M.ranks(arr(5, 5, 5)).tolist() == [1, 2, 3]


def test_bucket_of_with_twelve_types():
    # 12 types with distinct counts 13, 12, ..., 2 (type t has count 13 - t), so rank(t) = t + 1;
    # vocab 14: types 12 and 13 never occur in the reference -> unseen.
    c = arr(*[13 - t for t in range(12)])
    b = M.bucket_of(c, vocab=14)
    assert len(b) == 14
    assert b[:10].tolist() == [B["1-10"]] * 10  # ranks 1..10
    assert b[10:12].tolist() == [B["11-100"]] * 2  # ranks 11, 12
    assert b[12:].tolist() == [B["unseen"]] * 2


def test_bucket_edges_exact_ranks():
    # 10002 types, type t has count 10002 - t -> rank t + 1; every edge rank sits where the docs say
    n = 10002
    b = M.bucket_of(np.arange(n, 0, -1, dtype=np.int64))
    rank_to_bucket = {1: "1-10", 10: "1-10", 11: "11-100", 100: "11-100", 101: "101-1000", 1000: "101-1000",
                      1001: "1001-10000", 10000: "1001-10000", 10001: "10001+", 10002: "10001+"}
    for rank, name in rank_to_bucket.items():
        assert b[rank - 1] == B[name], (rank, name)


def test_bucket_shares_hand_example():
    # ref ids [0,0,0,1,1,2]: all 3 types rank <= 10 -> every token in 1-10
    c = M.counts(arr(0, 0, 0, 1, 1, 2))
    b = M.bucket_of(c)
    assert M.bucket_shares(c, b).tolist() == [1.0, 0, 0, 0, 0, 0]
    # a count vector longer than the bucket map: types beyond it are unseen.
    # c = [1, 0, 0, 3]: type 0 in 1-10 (1 token), type 3 unseen (3 tokens): the ranked bucket holds every ranked
    # token (share 1 of the ranked), unseen 3 of all 4 tokens, apart
    s = M.bucket_shares(arr(1, 0, 0, 3), b)
    assert s[B["1-10"]] == 1.0 and s[B["unseen"]] == 0.75
    # ranked shares over the ranked tokens: 2 in 1-10 and 6 in 11-100 of 8 ranked, 2 unseen of 10
    tot = np.array([2, 6, 0, 0, 0, 2])
    assert M.shares_of(tot).tolist() == [0.25, 0.75, 0, 0, 0, 0.2]
    assert M.shares_of(np.zeros(6)).tolist() == [0.0] * 6  # nothing: no shares, no NaN
    # empty counts -> zeros, not NaN
    assert M.bucket_shares(arr(0, 0, 0), b).tolist() == [0.0] * 6


def test_bucket_shift_hand_example():
    # reference: 12 types, type t has count 13 - t (rank t + 1); total = 13 + 12 + ... + 2 = 90
    #   1-10  : types 0..9  -> 13 + ... + 4 = 85 tokens -> ref_share 85/90
    #   11-100: types 10,11 -> 3 + 2 = 5 tokens          -> ref_share 5/90
    # generated: type 0 twice, type 11 once, type 12 (absent from the reference) once -> 4 tokens, 3 of ranked types
    #   1-10 : 2/3 of the ranked -> shift = 100 * ((2/3) / (85/90) - 1) = 100 * (60/85 - 1) = -2500/85 ≈ -29.41 %
    #   11-100: 1/3              -> shift = 100 * ((1/3) / (5/90) - 1) = 100 * (6 - 1) = +500 %
    #   unseen: 1/4 of all tokens, apart; shift None (ref_share 0); 101-1000 .. 10001+: 0 / 0 -> None
    ref = arr(*[13 - t for t in range(12)])
    gen = M.counts(arr(0, 0, 11, 12))
    bs = M.bucket_shift(ref, gen)
    assert list(bs) == list(M.BUCKETS)
    assert bs["1-10"]["ref_share"] == pytest.approx(85 / 90, abs=1e-15)
    assert bs["11-100"]["ref_share"] == pytest.approx(5 / 90, abs=1e-15)
    assert bs["1-10"]["gen_share"] == pytest.approx(2 / 3, abs=1e-15)
    assert bs["11-100"]["gen_share"] == pytest.approx(1 / 3, abs=1e-15)
    assert bs["unseen"]["gen_share"] == 0.25
    assert bs["unseen"]["ref_share"] == 0.0
    assert bs["1-10"]["shift_pct"] == pytest.approx(-2500 / 85, rel=1e-12)
    assert bs["11-100"]["shift_pct"] == pytest.approx(500.0, rel=1e-12)
    for name in ("101-1000", "1001-10000", "10001+", "unseen"):
        assert bs[name]["shift_pct"] is None, name


def test_unseen_shift_is_none_even_when_generated():
    # ref uses type 0 only; gen uses type 5 only: unseen gen_share 1, shift None; 1-10 shift -100 %
    bs = M.bucket_shift(arr(4), M.counts(arr(5, 5)))
    assert bs["unseen"] == {"ref_share": 0.0, "gen_share": 1.0, "shift_pct": None}
    assert bs["1-10"]["shift_pct"] == -100.0


# ---------------------------------------------------------------------- entropy, KL, JS


def test_entropy_hand_examples():
    assert M.entropy(arr(1, 1, 1, 1)) == pytest.approx(2.0)  # uniform over 4: log2 4 = 2 bits
    assert M.entropy(arr(7, 7, 7, 7, 0, 0)) == pytest.approx(2.0)  # zero-count types do not count
    # p = (3/4, 1/4): -(0.75 log2 0.75 + 0.25 log2 0.25) = 0.75 * 0.415037 + 0.5 = 0.811278
    assert M.entropy(arr(3, 1)) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert M.entropy(arr(3, 1)) == pytest.approx(0.8112781245, abs=1e-9)
    assert M.entropy(arr(5)) == 0.0
    assert M.entropy(arr(0, 0)) == 0.0


def test_kl_alpha_half_smoothing_by_hand():
    assert M.KL_ALPHA == 0.5
    # P counts [1, 0], Q counts [0, 1]; support = both types; add 0.5 to each:
    #   p = [1.5, 0.5] / 2 = [3/4, 1/4], q = [0.5, 1.5] / 2 = [1/4, 3/4]
    #   KL = 3/4 log2 3 + 1/4 log2 (1/3) = 1/2 log2 3 = 0.792481 bits
    assert M.kl(arr(1, 0), arr(0, 1)) == pytest.approx(0.5 * math.log2(3), rel=1e-12)
    # P [2, 0, 0], Q [1, 1, 0]: type 2 is in neither -> ignored; support types 0, 1
    #   p = [2.5, 0.5] / 3 = [5/6, 1/6], q = [1.5, 1.5] / 3 = [1/2, 1/2]
    #   KL = 5/6 log2 (5/3) + 1/6 log2 (1/3) = 0.614138 - 0.264161 = 0.349978
    expect = 5 / 6 * math.log2(5 / 3) + 1 / 6 * math.log2(1 / 3)
    assert M.kl(arr(2, 0, 0), arr(1, 1, 0)) == pytest.approx(expect, rel=1e-12)
    assert expect == pytest.approx(0.349978, abs=1e-6)
    # different lengths are padded: P [1] vs Q [1, 1] -> p = [1.5, 0.5]/2, q = [1.5, 1.5]/3 = [1/2, 1/2]
    #   KL = 3/4 log2 (3/2) + 1/4 log2 (1/2) = 0.438722 - 0.25 = 0.188722
    assert M.kl(arr(1), arr(1, 1)) == pytest.approx(0.75 * math.log2(1.5) - 0.25, rel=1e-12)


def test_kl_without_smoothing_is_infinite_on_missing_type():
    assert M.kl(arr(1, 0), arr(0, 1), alpha=0.0) == math.inf
    # alpha=0 and the same support: raw KL; p = [1/2, 1/2], q = [1/4, 3/4]
    #   KL = 1/2 log2 2 + 1/2 log2 (2/3) = 0.5 + 0.5 * (-0.584963) = 0.207519
    assert M.kl(arr(1, 1), arr(1, 3), alpha=0.0) == pytest.approx(0.5 + 0.5 * math.log2(2 / 3), rel=1e-12)


def test_js_hand_examples():
    # disjoint supports: M = (1/2, 1/2); KL(P||M) = KL(Q||M) = log2 2 = 1 -> JS = 1 bit
    assert M.js(arr(1, 0), arr(0, 1)) == pytest.approx(1.0)
    assert M.js(arr(3, 0, 0), arr(0, 2, 5)) == pytest.approx(1.0)
    # P = (1/2, 1/2), Q = (1, 0): M = (3/4, 1/4)
    #   KL(P||M) = 1/2 log2 (2/3) + 1/2 log2 2 = -0.292481 + 0.5 = 0.207519
    #   KL(Q||M) = log2 (4/3) = 0.415037
    #   JS = (0.207519 + 0.415037) / 2 = 0.311278
    expect = 0.5 * (0.5 * math.log2(2 / 3) + 0.5) + 0.5 * math.log2(4 / 3)
    assert M.js(arr(1, 1), arr(1, 0)) == pytest.approx(expect, rel=1e-12)
    assert M.js(arr(2, 2), arr(5)) == pytest.approx(expect, rel=1e-12)  # scale-free, lengths padded
    assert M.js(arr(1, 0), arr(1, 1)) == pytest.approx(expect, rel=1e-12)  # symmetric
    assert M.js(arr(4, 1), arr(8, 2)) == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------------- coverage, tail mass, distinct-n


def test_coverage_hand_examples():
    # reference types {0, 1, 2}; generated types {1, 3}: only type 1 is shared -> 1/3
    assert M.coverage(arr(2, 1, 1, 0), arr(0, 3, 0, 7)) == pytest.approx(1 / 3)
    assert M.coverage(arr(2, 1, 1), arr(1, 1, 1, 9)) == 1.0  # extra generated types do not matter
    assert M.coverage(arr(2, 1, 1), arr(0)) == 0.0  # shorter gen is padded
    assert M.coverage(arr(0, 0), arr(1, 1)) == 0.0  # empty reference: no division by zero


def test_tail_mass_with_top():
    # ref counts [5, 3, 2, 1] -> ranks [1, 2, 3, 4]
    # c = [1, 1, 1, 1, 4]: 8 tokens; type 4 is absent from the reference (rank 0) -> always tail
    ref = arr(5, 3, 2, 1)
    c = arr(1, 1, 1, 1, 4)
    assert M.tail_mass(c, ref, top=1) == pytest.approx(7 / 8)  # head {0}: tail = 1+1+1+4
    assert M.tail_mass(c, ref, top=2) == pytest.approx(6 / 8)  # head {0, 1}: tail = 1+1+4
    assert M.tail_mass(c, ref, top=100) == pytest.approx(4 / 8)  # head = all 4 ref types: tail = type 4
    assert M.tail_mass(c, ref) == pytest.approx(4 / 8)  # default top=100
    assert M.tail_mass(arr(0, 0), ref, top=2) == 0.0  # empty c
    # tie in the reference: [2, 2] -> the smaller id is rank 1
    assert M.tail_mass(arr(0, 3), arr(2, 2), top=1) == 1.0
    assert M.tail_mass(arr(3, 0), arr(2, 2), top=1) == 0.0


def test_distinct_n_within_rows_not_across():
    rows = np.array([[1, 2, 1, 2], [2, 1, 2, 1]])
    # unigrams: 8 tokens, 2 unique -> 2/8
    assert M.distinct_n(rows, 1) == pytest.approx(2 / 8)
    # bigrams within rows: (1,2),(2,1),(1,2) | (2,1),(1,2),(2,1): 6 total, 2 unique -> 2/6
    # (across the row boundary (2,2) would be a 3rd unique one -> it must not be counted)
    assert M.distinct_n(rows, 2) == pytest.approx(2 / 6)
    # [[1,1],[1,1]]: within rows 2 bigrams (1,1),(1,1) -> 1/2; concatenated it would be 1/3
    assert M.distinct_n(np.array([[1, 1], [1, 1]]), 2) == pytest.approx(1 / 2)
    # the list form (ragged rows) agrees with the 2-D form
    assert M.distinct_n([arr(1, 2, 1, 2), arr(2, 1, 2, 1)], 2) == pytest.approx(2 / 6)
    # ragged: [1,2,3] and [3]: bigrams (1,2),(2,3) -> 1; the short row has no bigram
    assert M.distinct_n([arr(1, 2, 3), arr(3)], 2) == 1.0
    # unigrams 1,2,3,3 -> 3 unique of 4
    assert M.distinct_n([arr(1, 2, 3), arr(3)], 1) == pytest.approx(3 / 4)


def test_distinct_n_rows_shorter_than_n():
    assert M.distinct_n(np.array([[1, 2]]), 3) == 0.0
    assert M.distinct_n([arr(1), arr(2)], 2) == 0.0
    assert M.distinct_n([], 1) == 0.0


def test_distribution_metrics_keys_and_values():
    ref_seqs = np.array([[0, 0, 1], [0, 1, 2]])
    gen_seqs = np.array([[0, 3, 3], [1, 1, 1]])
    rc, gc = M.counts(ref_seqs, 5), M.counts(gen_seqs, 5)
    d = M.distribution_metrics(rc, gc, gen_seqs=gen_seqs, ref_seqs=ref_seqs)
    assert d["bucket_shift"] == M.bucket_shift(rc, gc)
    assert d["kl_ref_gen"] == M.kl(rc, gc) and d["kl_gen_ref"] == M.kl(gc, rc)
    assert d["js"] == M.js(rc, gc)
    assert d["entropy"] == M.entropy(gc) and d["entropy_ref"] == M.entropy(rc)
    assert d["coverage"] == pytest.approx(2 / 3)  # ref types {0,1,2}, gen types {0,1,3}
    assert d["tail_mass"] == M.tail_mass(gc, rc)
    assert (d["gen_tokens"], d["ref_tokens"], d["gen_types"], d["ref_types"]) == (6, 6, 3, 3)
    assert d["distinct_1"] == pytest.approx(3 / 6) and d["distinct_1_ref"] == pytest.approx(3 / 6)
    # gen bigrams (0,3),(3,3),(1,1),(1,1) -> 3/4; ref (0,0),(0,1),(0,1),(1,2) -> 3/4
    assert d["distinct_2"] == pytest.approx(3 / 4) and d["distinct_2_ref"] == pytest.approx(3 / 4)


# ---------------------------------------------------------------------- properties

ids = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=200)
PROP = settings(max_examples=100, deadline=None)


@PROP
@given(ref=ids, gen=ids)
def test_bucket_shares_sum_to_one(ref, gen):
    bs = M.bucket_shift(M.counts(arr(*ref)), M.counts(arr(*gen)))
    ranked = [b for b in M.BUCKETS if b != "unseen"]
    assert sum(bs[b]["ref_share"] for b in ranked) == pytest.approx(1.0, abs=1e-12)
    # the ranked buckets' shares are over the ranked tokens; unseen's is over all of them, apart
    n_gen, n_unseen = len(gen), sum(1 for t in gen if t not in set(ref))
    assert bs["unseen"]["gen_share"] == pytest.approx(n_unseen / n_gen, abs=1e-12)
    assert sum(bs[b]["gen_share"] for b in ranked) == pytest.approx(1.0 if n_unseen < n_gen else 0.0, abs=1e-12)
    assert bs["unseen"]["ref_share"] == 0.0 and bs["unseen"]["shift_pct"] is None
    for v in bs.values():
        assert (v["shift_pct"] is None) == (v["ref_share"] == 0.0)


@PROP
@given(a=ids, b=ids)
def test_kl_nonnegative_and_zero_on_identical(a, b):
    ca, cb = M.counts(arr(*a)), M.counts(arr(*b))
    assert M.kl(ca, cb) >= 0.0
    assert M.kl(cb, ca) >= 0.0
    assert M.kl(ca, ca) == pytest.approx(0.0, abs=1e-12)
    assert M.kl(cb, cb.copy()) == pytest.approx(0.0, abs=1e-12)


@PROP
@given(a=ids, b=ids)
def test_js_bounded_and_symmetric(a, b):
    ca, cb = M.counts(arr(*a)), M.counts(arr(*b))
    v = M.js(ca, cb)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(M.js(cb, ca), abs=1e-12)
    assert M.js(ca, ca) == pytest.approx(0.0, abs=1e-12)


@PROP
@given(ref=ids, k=st.integers(min_value=1, max_value=5), seed=st.integers(0, 2**32 - 1))
def test_identical_distributions_have_zero_shift(ref, k, seed):
    r = arr(*ref)
    gen_repeated = np.random.default_rng(seed).permutation(np.tile(r, k))  # same distribution, k times, shuffled
    for gen in (r, gen_repeated):
        bs = M.bucket_shift(M.counts(r), M.counts(gen))
        for name, v in bs.items():
            assert v["gen_share"] == pytest.approx(v["ref_share"], abs=1e-12), name
            if v["shift_pct"] is not None:
                assert v["shift_pct"] == pytest.approx(0.0, abs=1e-9), name


@PROP
@given(ref=ids, gen=ids)
def test_coverage_in_unit_interval(ref, gen):
    cr, cg = M.counts(arr(*ref)), M.counts(arr(*gen))
    assert 0.0 <= M.coverage(cr, cg) <= 1.0
    assert M.coverage(cr, cr) == 1.0


def test_every_registered_figure_s_vectorised_form_is_its_point_form_on_each_resample():
    """The registry's promise: a resample's figure is the point formula on that resample's counts and units."""
    from collapse.metrics import stats as S
    from collapse.metrics.units import Corpus

    rng = np.random.default_rng(3)
    V = 400
    rows = (rng.zipf(1.4, size=(60, 16)) % V).astype(np.int32)
    ref = np.bincount((rng.zipf(1.3, size=20_000) % V), minlength=V)
    head = (M.ranks(ref) >= 1) & (M.ranks(ref) <= 100)
    corpus = Corpus(rows, V, M.bucket_of(ref, V), len(M.BUCKETS))
    keep = S.draw_weights(len(rows), rng, 7).half
    C = corpus.C.toarray()
    r = M.Resampled(ref[None, :].astype(np.float64), keep @ C, head, keep, corpus, ref)
    figs = [f for f in M.corpus_figures() if f.rows is not None]
    assert {f.name for f in figs} >= {"kl_ref_gen", "js", "entropy", "coverage", "tail_mass", "distinct_2"}
    for f in figs:
        want = [f.point(s) for s in r.samples()]
        assert f.rows(r) == pytest.approx(want, rel=1e-10, abs=1e-12), f.name


def test_the_registry_refuses_what_it_cannot_serve():
    from collapse.metrics import Figure, register

    with pytest.raises(ValueError, match="registered already"):
        register(Figure("entropy", "entropy", "bits", -1, point=lambda s: 0.0))
    with pytest.raises(ValueError, match="resample"):
        register(Figure("toy_a", "a", "share", 0, resample="both", point=lambda s: 0.0))
    with pytest.raises(ValueError, match="point form"):
        register(Figure("toy_b", "b", "share", 0, rows=lambda r: np.zeros(len(r.gen))))
    with pytest.raises(ValueError, match="one number"):
        register(Figure("toy_c", "c", "share", 0, buckets=True, point=lambda s: 0.0))
    assert not {"toy_a", "toy_b", "toy_c"} & set(M.FIGURES)


def test_a_figure_without_an_interval_still_shows_in_the_console_table():
    from collapse.loop.rows import metrics_table
    from collapse.metrics import Figure, register, unregister

    register(Figure("toy_plain", "toy plain", "share", 0, ".3f", console=True, point=lambda s: 0.25))
    try:
        table = metrics_table([{"generation": 0, "toy_plain": 0.25}])
    finally:
        unregister("toy_plain")
    head, row = table.splitlines()[:2]
    assert "toy plain" in head and "0.250" in row


def test_the_registry_refuses_names_and_selections_it_cannot_serve():
    from collapse.metrics import Figure, register

    for bad in (Figure("a.b", "x", "share", 0, point=lambda s: 0.0), Figure("gen_tokens", "x", "count", 0,
                                                                             point=lambda s: 0.0),
                Figure("toy_d", "x", "share", 0, change=True, point=lambda s: 0.0),
                Figure("toy_e", "x", "share", 0, resample="bootstrap", console=("1-10",), point=lambda s: 0.0)):
        with pytest.raises(ValueError):
            register(bad)
    assert not {"a.b", "toy_d", "toy_e"} & set(M.FIGURES) and M.FIGURES.get("gen_tokens") is None


def test_unseen_has_a_share_but_never_a_shift():
    # ranked by other counts (measure.rank_by=train): type 2 is in the reference but not in the ranking counts
    ref, gen, rank = M.counts(arr(0, 1, 2, 2)), M.counts(arr(0, 2, 2, 2)), M.counts(arr(0, 0, 1))
    bs = M.bucket_shift(ref, gen, rank_counts=rank)
    assert bs["unseen"]["ref_share"] == 0.5 and bs["unseen"]["gen_share"] == 0.75
    assert bs["unseen"]["shift_pct"] is None
    assert bs["1-10"]["ref_share"] == 1.0 and bs["1-10"]["gen_share"] == 1.0 and bs["1-10"]["shift_pct"] == 0.0
