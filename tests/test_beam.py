"""Beam search on the decode engines: exactly HF ``generate``'s beam search for fixed-length output.

``sample_batch`` with ``num_beams > 1`` runs its own beam loop on the fast engines (GPT-2/OPT, the Llama
family; HF's forward for other models); ``generation.engine=hf-generate`` calls HF ``generate`` itself.
The two must give the same tokens: same beams, same repetition penalty on log-probabilities, same final
choice.
"""

from __future__ import annotations

import pytest
import torch
from test_generate import _gpt2, _llama, _opt

from collapse.config import ConfigError, GenerationConfig
from collapse.decoding import generate as G
from collapse.decoding.fastgen import FastDecoder
from collapse.decoding.generate import sample_batch


def _beams(m, prompts, new, engine, chunk=None, **kw):
    cfg = GenerationConfig(engine=engine, **kw)
    eos = (m.config.eos_token_id,)
    return sample_batch(m, prompts, new, cfg, torch.Generator(), eos, chunk=chunk)


@pytest.mark.parametrize("build", [_gpt2, _opt, _llama])
@pytest.mark.parametrize("engine", ["auto", "hf"])
@pytest.mark.parametrize("beams,penalty", [(2, 1.0), (5, 3.0), (4, 1.3)])
def test_beam_search_equals_hf_generate(build, engine, beams, penalty):
    m = build()
    prompts = torch.randint(3, 300, (6, 9), generator=torch.Generator().manual_seed(beams))
    ref = _beams(m, prompts, 20, "hf-generate", num_beams=beams, repetition_penalty=penalty)
    out = _beams(m, prompts, 20, engine, num_beams=beams, repetition_penalty=penalty)
    assert out.shape == ref.shape == (6, 20)
    assert torch.equal(out, ref)


def test_beam_search_is_not_greedy_or_sampling():
    """A check that the comparison above can fail: beams differ from greedy decoding on these prompts."""
    m = _gpt2()
    prompts = torch.randint(3, 300, (6, 9), generator=torch.Generator().manual_seed(5))
    beam = _beams(m, prompts, 20, "auto", num_beams=5, repetition_penalty=3.0)
    greedy = _beams(m, prompts, 20, "auto", temperature=0.0, repetition_penalty=3.0)
    assert not torch.equal(beam, greedy)


def test_beam_rows_do_not_depend_on_chunking():
    m = _opt()
    prompts = torch.randint(3, 300, (7, 9), generator=torch.Generator().manual_seed(2))
    whole = _beams(m, prompts, 12, "auto", chunk=7, num_beams=3, repetition_penalty=3.0)
    for chunk in (1, 3):
        assert torch.equal(_beams(m, prompts, 12, "auto", chunk=chunk, num_beams=3, repetition_penalty=3.0), whole)


def test_reorder_moves_the_generated_positions_only():
    m = _gpt2()
    eng = FastDecoder(m, batch=4, max_len=16)
    eng.prefill(torch.randint(3, 300, (4, 5), generator=torch.Generator().manual_seed(0)))
    eng.step(torch.tensor([7, 8, 9, 10]))
    before = eng.k[:, :4, :, :6].clone()
    rows = torch.tensor([2, 2, 0, 1])
    eng.reorder(rows, start=5)
    assert torch.equal(eng.k[:, :4, :, :5], before[:, :, :, :5])  # the prompt part is left alone
    assert torch.equal(eng.k[:, :4, :, 5], before[:, rows, :, 5])


def test_hf_generate_engine_is_for_beams_only():
    with pytest.raises(ConfigError, match="beam search only"):
        GenerationConfig(engine="hf-generate")


def test_beam_search_on_the_static_engine_equals_hf_generate():
    """The fixed-buffer step that CUDA graphs capture (run eagerly here): reorder works on its cache too."""
    m = _opt()
    prompts = torch.randint(3, 300, (4, 9), generator=torch.Generator().manual_seed(3))
    ref = _beams(m, prompts, 15, "hf-generate", num_beams=3, repetition_penalty=3.0)
    eng = FastDecoder(m, batch=12, max_len=24, static=True)
    cfg = GenerationConfig(num_beams=3, repetition_penalty=3.0)
    engines = {(id(m), 12, 9, 24, "auto"): eng}
    out = sample_batch(m, prompts, 15, cfg, torch.Generator(), (m.config.eos_token_id,), chunk=4, engines=engines)
    assert eng.static and eng.pos == 9 + 14  # the static engine did the decoding
    assert torch.equal(out, ref)


def _peaked(build):
    """A test model with a peakier next-token distribution (top token at log-prob ~ -4 instead of ~ -5.7),
    so that which beam survives depends on the scores and the caches, not on near-uniform noise."""
    m = build()
    with torch.no_grad():
        m.get_output_embeddings().weight.mul_(3.0)
    return m


@pytest.mark.parametrize("build", [_gpt2, _opt])
@pytest.mark.parametrize("engine", ["auto", "hf"])
@pytest.mark.parametrize("new", [1, 2, 20])
@pytest.mark.parametrize("beams,penalty", [(2, 1.0), (5, 3.0)])
def test_beam_search_equals_hf_generate_on_a_peaked_model(build, engine, new, beams, penalty):
    m = _peaked(build)
    prompts = torch.randint(3, 300, (7, 9), generator=torch.Generator().manual_seed(new))
    ref = _beams(m, prompts, new, "hf-generate", num_beams=beams, repetition_penalty=penalty)
    assert torch.equal(_beams(m, prompts, new, engine, chunk=3, num_beams=beams, repetition_penalty=penalty), ref)


@pytest.mark.parametrize("broken", ["reorder", "penalty"])
def test_the_peaked_comparison_catches_a_missing_cache_reorder_or_penalty(broken, monkeypatch):
    """The test above can fail: without the cache reorder, or without the penalty, the rows differ."""
    m = _peaked(_gpt2)
    prompts = torch.randint(3, 300, (7, 9), generator=torch.Generator().manual_seed(20))
    ref = _beams(m, prompts, 20, "hf-generate", num_beams=5, repetition_penalty=3.0)
    if broken == "reorder":
        monkeypatch.setattr(FastDecoder, "reorder", lambda self, rows, start=0: None)
    else:
        monkeypatch.setattr(G, "_penalize_ids", lambda scores, ids, penalty: scores)
    assert not torch.equal(_beams(m, prompts, 20, "auto", chunk=3, num_beams=5, repetition_penalty=3.0), ref)


def test_every_eos_id_of_the_model_is_blocked():
    """HF's min_new_tokens blocks all EOS ids of the generation config; so does the beam loop."""
    m = _peaked(_gpt2)
    prompts = torch.randint(3, 300, (4, 9), generator=torch.Generator().manual_seed(1))
    free = _beams(m, prompts, 12, "auto", num_beams=3)
    banned = sorted(set(free.flatten().tolist()))[:3]
    m.generation_config.eos_token_id = banned
    out = _beams(m, prompts, 12, "auto", num_beams=3)
    assert not (out[..., None] == torch.tensor(banned)).any()
    assert torch.equal(out, _beams(m, prompts, 12, "hf-generate", num_beams=3))
