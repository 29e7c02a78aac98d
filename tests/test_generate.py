"""The sampler and the decode engines: exactness against HF, seeding, the logits processors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collapse.config import GenerationConfig
from collapse.decoding.fastgen import FastDecoder, HFEngine, make_engine
from collapse.decoding.generate import _filter_logits, _penalize_ids, generate_corpus, sample_batch


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                    num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                                    bos_token_id=2, eos_token_id=2, pad_token_id=1)).eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()


@pytest.mark.parametrize("build", [_gpt2, _opt])
def test_fast_engine_logits_match_hf(build):
    m = build()
    assert FastDecoder.supports(m)
    ids = torch.randint(3, 300, (3, 10), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast, hf = FastDecoder(m, 3, 20), HFEngine(m, 3, 20)
        a, b = fast.prefill(ids), hf.prefill(ids)
        assert torch.allclose(a, b, atol=1e-5)
        for _ in range(6):
            nxt = a.argmax(-1)
            a, b = fast.step(nxt), hf.step(nxt)
            assert torch.allclose(a, b, atol=1e-5)


def test_unsupported_architecture_falls_back_to_hf():
    from transformers import LlamaConfig, LlamaForCausalLM

    m = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=64,  # linear RoPE scaling:
                                     rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})).eval()
    assert not FastDecoder.supports(m)
    assert isinstance(make_engine(m, 2, 10), HFEngine)


@pytest.mark.parametrize("build", [_gpt2, _opt, _llama])
def test_greedy_matches_hf_generate(build):
    m = build()
    eos = m.config.eos_token_id
    prompts = torch.randint(3, 300, (4, 8), generator=torch.Generator().manual_seed(2))
    ours = sample_batch(m, prompts, 12, GenerationConfig(temperature=0.0), torch.Generator(), suppress_ids=(eos,))
    ref = m.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=12,
                     min_new_tokens=12, pad_token_id=eos)[:, 8:]
    assert torch.equal(ours, ref)


def test_sampling_is_seeded_and_exactly_new_tokens_long():
    m = _gpt2()
    prompts = torch.randint(3, 300, (5, 6), generator=torch.Generator().manual_seed(3))
    cfg = GenerationConfig(temperature=1.0)
    a = sample_batch(m, prompts, 9, cfg, torch.Generator().manual_seed(7), suppress_ids=(0,))
    b = sample_batch(m, prompts, 9, cfg, torch.Generator().manual_seed(7), suppress_ids=(0,))
    c = sample_batch(m, prompts, 9, cfg, torch.Generator().manual_seed(8), suppress_ids=(0,))
    assert a.shape == (5, 9) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a != 0).all()  # EOS suppressed: every continuation has its full length


def test_engines_sample_the_same_tokens():
    m = _gpt2()
    prompts = torch.randint(3, 300, (4, 6), generator=torch.Generator().manual_seed(4))
    a = sample_batch(m, prompts, 10, GenerationConfig(engine="auto"), torch.Generator().manual_seed(1))
    b = sample_batch(m, prompts, 10, GenerationConfig(engine="hf"), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    k2 = _filter_logits(logits, GenerationConfig(top_k=2))
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    # softmax([3,2,1,0]) = .644 .237 .087 .032: top_p=0.7 keeps the two tokens whose mass first reaches 0.7
    p = _filter_logits(logits, GenerationConfig(top_p=0.7))
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    assert torch.equal(_filter_logits(logits, GenerationConfig(top_p=0.5)).isfinite(),
                       torch.tensor([[True, False, False, False]]))
    t = _filter_logits(logits, GenerationConfig(temperature=2.0))
    assert torch.allclose(t, logits / 2)


def test_min_p_keeps_the_tokens_within_min_p_of_the_top_and_matches_hf():
    from transformers.generation.logits_process import MinPLogitsWarper

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])  # p = .644 .237 .087 .032
    assert torch.equal(_filter_logits(logits, GenerationConfig(min_p=0.0)), logits)  # off: untouched
    kept = _filter_logits(logits, GenerationConfig(min_p=0.3)).isfinite()  # p >= 0.3 * .644 = .193
    assert kept.tolist() == [[True, True, False, False]]
    assert _filter_logits(logits, GenerationConfig(min_p=0.99)).isfinite().tolist() == [[True, False, False, False]]
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(5, 200, generator=g) * 3
    ours = _filter_logits(rows, GenerationConfig(min_p=0.05))
    ref = MinPLogitsWarper(0.05)(torch.zeros(5, 1, dtype=torch.long), rows.clone())
    assert torch.equal(ours.isfinite(), ref.isfinite()) and torch.equal(ours[ours.isfinite()], rows[ours.isfinite()])


@pytest.mark.parametrize("bad", ["1.0", "1.5", "-0.1"])
def test_min_p_out_of_range_is_one_line(bad):
    from collapse.config import load_config
    from collapse.errors import ConfigError

    with pytest.raises(ConfigError, match=r"generation.min_p=.* is out of range"):
        load_config(None, [f"generation.min_p={bad}"])


def test_min_p_with_greedy_or_beams_is_a_warning():
    from collapse.check import ineffective_settings
    from collapse.config import load_config

    greedy = ineffective_settings(load_config(None, ["generation.temperature=0", "generation.min_p=0.1"]), "run")
    assert any("min_p" in w and "greedy" in w for w in greedy)
    beams = ineffective_settings(load_config(None, ["generation.num_beams=2", "generation.min_p=0.1"]), "run")
    assert any("generation.min_p=0.1" in w and "beam search" in w for w in beams)


def test_repetition_penalty_matches_hf():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    seen = torch.randint(0, 50, (3, 7), generator=g)
    ref = RepetitionPenaltyLogitsProcessor(3.0)(seen, logits.clone())
    assert torch.allclose(_penalize_ids(logits.clone(), seen, 3.0), ref)


def test_beam_search_path_shape():
    m = _gpt2()
    prompts = torch.randint(3, 300, (2, 5), generator=torch.Generator().manual_seed(5))
    out = sample_batch(m, prompts, 6, GenerationConfig(num_beams=3, repetition_penalty=3.0), torch.Generator())
    assert out.shape == (2, 6)


CORPUS_CFG = GenerationConfig(batch_size=4, temperature=1.0)


def small_corpus(m, **kw) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """10 random 5-token prompts continued by 6 tokens in batches of 4: (prompts, batch index -> rows)."""
    prompts = np.random.default_rng(0).integers(3, 300, size=(10, 5)).astype(np.int32)
    got: dict[int, np.ndarray] = {}
    generate_corpus(m, prompts, 6, CORPUS_CFG, key=(0, 1, "generate"), sink=lambda b, p, g: got.__setitem__(b, g),
                    progress=False, **kw)
    return prompts, got


def test_generate_corpus_batches_are_independent_of_skips():
    """A resumed stage that skips finished batches produces the same remaining batches."""
    m = _gpt2()
    _, full = small_corpus(m)
    _, part = small_corpus(m, skip_batches={0})
    assert sorted(full) == [0, 1, 2] and sorted(part) == [1, 2]
    assert all(np.array_equal(full[b], part[b]) for b in part)
    assert full[2].shape == (2, 6)  # the ragged last batch


def test_decode_rows_gives_batch_decodes_strings():
    """The fast decode of corpora gives transformers' strings exactly: the shipped BPE tokenizer (special tokens
    kept), the synthetic word tokenizer, and a WordPiece one whose decode cleans spaces (transformers' path)."""
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    import collapse
    from collapse.data.synthetic import word_tokenizer
    from collapse.models.hf import decode_rows

    wp = Tokenizer(models.WordPiece(vocab={"[UNK]": 0, "a": 1, ",": 2, "b": 3, "##c": 4, ".": 5}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    wp.decoder = decoders.WordPiece(cleanup=False)  # the spaces before punctuation: transformers cleans them
    wordpiece = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", clean_up_tokenization_spaces=True)
    gen0 = Path(collapse.__file__).parent / "gen0"
    bpe = AutoTokenizer.from_pretrained(gen0)

    class OwnDecode(type(bpe)):  # a class that decodes its own way (as Whisper's and CPM's do)
        def _decode(self, *args, **kwargs):
            return "<" + super()._decode(*args, **kwargs) + ">"

    rng = np.random.default_rng(0)
    for tok in (bpe, AutoTokenizer.from_pretrained(gen0, clean_up_tokenization_spaces=True),
                OwnDecode.from_pretrained(gen0), word_tokenizer(40), wordpiece):
        rows = rng.integers(0, len(tok), size=(64, 24))
        assert decode_rows(tok, rows) == tok.batch_decode(rows.tolist())
    assert decode_rows(OwnDecode.from_pretrained(gen0), rows[:1])[0].startswith("<")
    rows = np.array([[1, 2, 3, 4, 5]])
    assert wordpiece.backend_tokenizer.decode_batch(rows.tolist()) == ["a , bc ."]
    assert decode_rows(wordpiece, rows) == ["a, bc."]  # cleaned up as transformers does


def test_min_p_acts_on_every_engine_and_the_n_gram_s_own_sampler_steps_aside():
    m = _gpt2()
    prompts = torch.randint(1, 300, (16, 5), generator=torch.Generator().manual_seed(2))

    def draw(engine: str, min_p: float):  # temperature 0.05: a random tiny model's near-uniform softmax sharpened
        cfg = GenerationConfig(engine=engine, temperature=0.05, min_p=min_p)
        return sample_batch(m, prompts, 8, cfg, torch.Generator().manual_seed(3))

    def within(rows: torch.Tensor) -> torch.Tensor:  # each drawn token within min_p=0.5 of its step's top one
        with torch.no_grad():
            p = (m(torch.cat([prompts, rows], 1)).logits[:, prompts.shape[1] - 1:-1] / 0.05).softmax(-1)
        return p.gather(-1, rows[..., None])[..., 0] >= 0.5 * p.max(-1).values - 1e-6

    fast, hf = draw("auto", 0.5), draw("hf", 0.5)
    assert torch.equal(fast, hf) and within(fast).all()
    assert not within(draw("auto", 0.0)).all()  # the check can fail: without min_p such tokens are drawn

    from collapse.models.ngram import fit

    lm = fit(np.random.default_rng(0).integers(0, 20, (8, 30)), 20, 2, 0.1, 0)
    u = torch.rand(4, 3, dtype=torch.float64)
    x = torch.randint(1, 20, (3, 4))
    kind = lm.collapse_kind
    assert kind.sample(lm, x, 4, GenerationConfig(), u, ()) is not None  # plain draws: its own sampler
    assert kind.sample(lm, x, 4, GenerationConfig(min_p=0.2), u, ()) is None  # a filter: the shared loop
