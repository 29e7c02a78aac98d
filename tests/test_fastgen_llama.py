"""The Llama-family decode engine (collapse/decoding/fastgen_llama.py) against HF: logits (float32 to 1e-5, bfloat16
bit for bit), greedy decoding and beam search against HF ``generate``, the static (CUDA-graph) step on
the CPU, and which models ``make_engine`` gives it. Tiny models built from configs: grouped-query
attention (4 heads, 2 KV heads), Qwen2's q/k/v biases, a tied head with head_dim != hidden / heads;
biases and norm weights are random (HF starts them at 0 and 1, which would hide a bias or norm bug)."""

from __future__ import annotations

import pytest
import torch

from collapse.config import GenerationConfig
from collapse.decoding.fastgen import FastDecoder, HFEngine, make_engine
from collapse.decoding.fastgen_llama import LlamaDecoder
from collapse.decoding.generate import sample_batch

P, STEPS, MAX = 12, 36, 48  # prompt, steps, cache: the steps cover positions 12..47


def _build(kind: str = "llama", dtype=torch.float32, **kw):
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    cfg = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    cfg.update(kw)
    torch.manual_seed(0)
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[kind](**cfg)
    m = AutoModelForCausalLM.from_config(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in n:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.3)
    return m.to(dtype).eval()


def _llama(dtype=torch.float32):
    return _build("llama", dtype)


def _qwen2(dtype=torch.float32):
    return _build("qwen2", dtype)


def _tied(dtype=torch.float32):
    """Tied embeddings, head_dim 24 != 64 / 4, attention and MLP biases, no GQA."""
    return _build("llama", dtype, head_dim=24, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                  num_key_value_heads=4)


def _mistral(dtype=torch.float32):
    return _build("mistral", dtype, sliding_window=64)  # a window longer than any sequence here


MODELS = [_llama, _qwen2, _tied, _mistral]


def _compare(m, static: bool, exact: bool, shift_rope: bool = False) -> None:
    ids = torch.randint(3, 300, (3, P), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        fast, hf = LlamaDecoder(m, 3, MAX, static=static), HFEngine(m, 3, MAX)
        assert fast.static == static and fast.graph is None
        pairs = [(fast.prefill(ids), hf.prefill(ids))]
        if shift_rope:  # a bug: the steps rotate q and k as if one position later
            fast.cos, fast.sin = fast.cos.roll(-1, 0), fast.sin.roll(-1, 0)
        for _ in range(STEPS):
            nxt = pairs[-1][1].argmax(-1)
            pairs.append((fast.step(nxt).clone(), hf.step(nxt)))
        assert fast.pos == MAX
    for t, (a, b) in enumerate(pairs):
        assert a.dtype == b.dtype == torch.float32
        if exact:
            assert torch.equal(a, b), (t, (a - b).abs().max())
        else:
            assert torch.allclose(a, b, rtol=0, atol=1e-5), (t, (a - b).abs().max())


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("build", MODELS)
def test_logits_match_hf_in_float32(build, static):
    _compare(build(), static, exact=False)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("build", MODELS)
def test_logits_are_bit_identical_to_hf_in_bfloat16(build, static):
    m = build(torch.bfloat16)
    assert m.dtype == torch.bfloat16
    _compare(m, static, exact=True)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_are_bit_identical_to_hf_at_smollm_width(dtype, frozen):
    """SmolLM-135M's widths (hidden 576, 9 heads, 3 KV heads, head_dim 64) on 2 layers, 8 rows, weights with
    and without requires_grad: the CPU kernels (their blocking, which path a matmul takes) depend on shapes,
    strides and that flag, so the engine's products must be HF's own. E.g. the prompt's last position goes
    to the head as HF's strided [B, 1, d] slice: a plain [B, d] product differed by 2e-7 (float32, frozen)."""
    m = _build("llama", dtype, hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)
    m.requires_grad_(not frozen)
    ids = torch.randint(3, 300, (8, 16), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        fast, hf = LlamaDecoder(m, 8, 32), HFEngine(m, 8, 32)
        a, b = fast.prefill(ids), hf.prefill(ids)
        assert torch.equal(a, b), (a - b).abs().max()
        for _ in range(16):
            nxt = b.argmax(-1)
            a, b = fast.step(nxt), hf.step(nxt)
            assert torch.equal(a, b), (a - b).abs().max()


def test_the_comparison_catches_rope_at_the_wrong_position():
    """RoPE one position off in the steps (the prompt's cache right): the step logits differ."""
    with pytest.raises(AssertionError):
        _compare(_llama(), False, exact=False, shift_rope=True)


def test_the_static_step_writes_one_buffer_and_stops_at_max_len():
    m = _qwen2()
    with torch.inference_mode():
        e = LlamaDecoder(m, 2, 6, static=True)
        e.prefill(torch.tensor([[5, 6, 7], [8, 9, 10]]))
        bufs = {e.step(torch.tensor([3, 4])).data_ptr() for _ in range(3)}
        assert len(bufs) == 1 and e.k.shape == (2, 2, 2, 6, 16)  # [layers, batch, KV heads, max_len, head_dim]
        with pytest.raises(IndexError):
            e.step(torch.tensor([3, 4]))


@pytest.mark.parametrize("build", [_llama, _qwen2, _tied])
def test_greedy_matches_hf_generate(build):
    m = build()
    prompts = torch.randint(3, 300, (4, 8), generator=torch.Generator().manual_seed(2))
    ours = sample_batch(m, prompts, 30, GenerationConfig(temperature=0.0), torch.Generator(), suppress_ids=(0,))
    ref = m.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=30,
                     min_new_tokens=30, pad_token_id=0)[:, 8:]
    assert torch.equal(ours, ref)


def _beams(m, prompts, new, engine, chunk=None, **kw):
    return sample_batch(m, prompts, new, GenerationConfig(engine=engine, **kw), torch.Generator(), (0,), chunk=chunk)


@pytest.mark.parametrize("build", [_llama, _qwen2])
@pytest.mark.parametrize("beams,penalty", [(2, 1.0), (5, 3.0), (4, 1.3)])
def test_beam_search_equals_hf_generate(build, beams, penalty):
    m = build()
    prompts = torch.randint(3, 300, (6, 9), generator=torch.Generator().manual_seed(beams))
    ref = _beams(m, prompts, 20, "hf-generate", num_beams=beams, repetition_penalty=penalty)
    assert torch.equal(_beams(m, prompts, 20, "auto", chunk=4, num_beams=beams, repetition_penalty=penalty), ref)


@pytest.mark.parametrize("build", [_llama, _qwen2])
@pytest.mark.parametrize("new", [1, 20])
def test_beam_search_equals_hf_generate_on_a_peaked_model(build, new):
    """A peakier next-token distribution (as tests/test_beam.py's): the surviving beams depend on the
    scores and the reordered caches, not on near-uniform noise."""
    m = build()
    with torch.no_grad():
        m.get_output_embeddings().weight.mul_(3.0)
    prompts = torch.randint(3, 300, (7, 9), generator=torch.Generator().manual_seed(new))
    ref = _beams(m, prompts, new, "hf-generate", num_beams=5, repetition_penalty=3.0)
    assert torch.equal(_beams(m, prompts, new, "auto", chunk=3, num_beams=5, repetition_penalty=3.0), ref)


def test_beam_search_on_the_static_engine_equals_hf_generate():
    m = _qwen2()
    prompts = torch.randint(3, 300, (4, 9), generator=torch.Generator().manual_seed(3))
    ref = _beams(m, prompts, 15, "hf-generate", num_beams=3, repetition_penalty=3.0)
    eng = LlamaDecoder(m, batch=12, max_len=24, static=True)
    engines = {(id(m), 12, 9, 24, "auto"): eng}
    cfg = GenerationConfig(num_beams=3, repetition_penalty=3.0)
    out = sample_batch(m, prompts, 15, cfg, torch.Generator(), (0,), chunk=4, engines=engines)
    assert eng.static and eng.pos == 9 + 14  # the static engine did the decoding
    assert torch.equal(out, ref)


@pytest.mark.parametrize("build", MODELS)
def test_make_engine_picks_the_llama_engine(build):
    m = build()
    assert LlamaDecoder.supports(m, 32) and not FastDecoder.supports(m)
    e = make_engine(m, 2, 32)
    assert type(e) is LlamaDecoder and not e.static and e.graph is None  # no graphs on a CPU
    assert isinstance(make_engine(m, 2, 32, prefer="hf"), HFEngine)


def _peft(m):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(m, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


@pytest.mark.parametrize("unsupported", [
    lambda: _build(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    lambda: _build(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    lambda: _build("mistral", sliding_window=16),  # shorter than the 32 positions
    lambda: _build("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=0),
    lambda: _build(hidden_act="gelu"),
    lambda: _peft(_llama()),
], ids=["rope-linear", "rope-dynamic", "mistral-window", "qwen2-window", "gelu", "peft"])
def test_make_engine_falls_back_to_hf_where_unsupported(unsupported):
    m = unsupported()
    assert not LlamaDecoder.supports(m, 32)
    assert isinstance(make_engine(m, 2, 32), HFEngine)
    with pytest.raises(NotImplementedError):
        make_engine(m, 2, 32, prefer="fast")


def test_a_sliding_window_covering_the_cache_is_supported():
    m = _build("mistral", sliding_window=16)
    assert LlamaDecoder.supports(m, 16) and not LlamaDecoder.supports(m, 17)
    assert type(make_engine(m, 2, 16)) is LlamaDecoder
