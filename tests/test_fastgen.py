"""Decode-engine and sampler details beyond tests/test_generate.py: the per-position step that CUDA graphs
capture (fixed buffers), run eagerly on the CPU; engine reuse; chunk invariance; the inverse-CDF sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_generate import CORPUS_CFG, _gpt2, _opt, small_corpus

from collapse.config import GenerationConfig
from collapse.decoding.fastgen import FastDecoder, HFEngine, make_engine
from collapse.decoding.generate import sample_batch, sample_icdf


@pytest.mark.parametrize("build", [_gpt2, _opt])
def test_static_step_logits_match_hf(build):
    """The step a CUDA graph captures (fixed token and logits buffers, the position a constant)."""
    m = build()
    ids = torch.randint(3, 300, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast, hf = FastDecoder(m, 3, 40, static=True), HFEngine(m, 3, 40)
        assert fast.static and fast.graph is None
        a, b = fast.prefill(ids), hf.prefill(ids)
        assert torch.allclose(a, b, atol=1e-5)
        buf = None
        for _ in range(33):  # fills the cache to its last slot
            nxt = b.argmax(-1)
            a, b = fast.step(nxt), hf.step(nxt)
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
            assert buf is None or a.data_ptr() == buf  # the same output buffer every step
            buf = a.data_ptr()
        with pytest.raises(IndexError):
            fast.step(nxt)


def test_static_engine_reused_for_a_new_batch_forgets_the_old_one():
    m = _gpt2()
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randint(3, 300, (2, 9), generator=g), torch.randint(3, 300, (2, 5), generator=g)
    with torch.inference_mode():
        reused = FastDecoder(m, 2, 12, static=True)
        reused.prefill(x1)
        for _ in range(3):
            reused.step(torch.tensor([4, 5]))
        fresh = FastDecoder(m, 2, 12, static=True)
        a, b = reused.prefill(x2), fresh.prefill(x2)
        assert torch.equal(a, b)
        for t in (7, 8, 9):
            a, b = reused.step(torch.tensor([t, t])), fresh.step(torch.tensor([t, t]))
            assert torch.allclose(a, b, atol=1e-6)


def test_cpu_engines_never_use_graphs():
    e = make_engine(_gpt2(), 2, 10)
    assert isinstance(e, FastDecoder) and not e.static and e.graph is None


def test_icdf_sampler_is_exact_on_a_uniform_grid():
    """With u on a fine grid, each token's share of draws is its softmax probability (to 1/N)."""
    logits = torch.tensor([3.0, 0.0, -9.0, float("-inf"), 1.5, -2.0])
    p = torch.softmax(logits.double(), -1)
    n = 200_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    draws = sample_icdf(logits.expand(n, -1), u)
    freq = np.bincount(draws.numpy(), minlength=6) / n
    assert freq[3] == 0  # -inf is never drawn
    assert np.abs(freq - p.numpy()).max() <= 1.5 / n  # incl. the 1.7e-5 token at -9
    assert draws.dtype == torch.long and draws.shape == (n,)


def test_icdf_sampler_matches_softmax_frequencies():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 50, generator=g) * 2
    n = 20000
    u = torch.rand(n, 8, dtype=torch.float64, generator=g)
    draws = torch.stack([sample_icdf(logits, u[i]) for i in range(n)])  # [n, 8]
    p = torch.softmax(logits.double(), -1).numpy()
    for r in range(8):
        freq = np.bincount(draws[:, r].numpy(), minlength=50) / n
        assert np.abs(freq - p[r]).max() < 0.015  # > 4 sigma for p <= 0.5 at n = 20k


@pytest.mark.parametrize("build", [_gpt2, _opt])
def test_chunking_does_not_change_the_tokens(build):
    m = build()
    prompts = torch.randint(3, 300, (7, 6), generator=torch.Generator().manual_seed(3))
    cfg = GenerationConfig(temperature=0.9, top_k=40, repetition_penalty=1.3)
    outs = [sample_batch(m, prompts, 8, cfg, torch.Generator().manual_seed(5), suppress_ids=(0,), chunk=c)
            for c in (7, 3, 1)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert (outs[0] != 0).all()


def test_generate_corpus_reuses_engines_without_changing_the_corpus():
    m = _gpt2()
    prompts, got = small_corpus(m)
    from collapse.seeding import seeded_generator

    for b in range(3):
        rows = torch.as_tensor(prompts[b * 4:(b + 1) * 4], dtype=torch.long)
        alone = sample_batch(m, rows, 6, CORPUS_CFG, seeded_generator(0, 1, "generate", b))
        assert np.array_equal(got[b], alone.numpy())
