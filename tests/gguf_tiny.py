"""A tiny GGUF checkpoint written here, the way llama.cpp's converter writes one (no download).

A random 2-layer Llama and a byte-level BPE trained on a few KJV chapters go into one ``.gguf`` file with
``gguf``'s writer: llama.cpp's tensor names, q/k projection rows permuted to its rotary layout (transformers
undoes that on load), the tokenizer as a ``gpt2``-model token list with its merges.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"


def tiny_llama(vocab_docs: list[str], tied: bool = True, seed: int = 0):
    """(model, tokenizer): a random 2-layer d=64 Llama and a 384-entry byte-level BPE."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(vocab_docs, trainer=trainers.BpeTrainer(
        vocab_size=384, special_tokens=[EOT], show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token=EOT, bos_token=EOT)
    eos = hf_tok.eos_token_id
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(hf_tok), max_position_embeddings=512, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        tie_word_embeddings=tied, rms_norm_eps=1e-5))
    with torch.no_grad():  # norms away from 1, so a misplaced norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval(), hf_tok


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout: per head, the two halves of the rows interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, hf_tok, qtype: str = "F32", permute: bool = True) -> dict[str, np.ndarray]:
    """Write ``model`` + ``hf_tok`` as a llama GGUF; returns each HF weight as the file holds it after
    dequantization (F32: the weights themselves)."""
    import gguf

    c = model.config
    n_layer, heads, kv = c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads
    theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 10000.0))
    q = getattr(gguf.GGMLQuantizationType, qtype)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // heads)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0)

    spec = json.loads(hf_tok.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tokens = hf_tok.convert_ids_to_tokens(list(range(len(hf_tok))))
    special = set(hf_tok.all_special_ids)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(hf_tok.bos_token_id)
    w.add_eos_token_id(hf_tok.eos_token_id)
    w.add_pad_token_id(hf_tok.pad_token_id)
    w.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    held: dict[str, np.ndarray] = {}
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, hf_name
        a = t.detach().float().numpy()
        if permute and hf_name.endswith("q_proj.weight"):
            a = _permute(a, heads)
        elif permute and hf_name.endswith("k_proj.weight"):
            a = _permute(a, kv)
        if a.ndim == 2 and q != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(a, q)
            w.add_tensor(gname, data, raw_dtype=q)
            back = gguf.quants.dequantize(data, q).reshape(a.shape)
        else:
            w.add_tensor(gname, a)
            back = a
        held[hf_name] = _unpermute(back, hf_name, heads, kv) if permute else back
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def _unpermute(a: np.ndarray, name: str, heads: int, kv: int) -> np.ndarray:
    n = heads if name.endswith("q_proj.weight") else kv if name.endswith("k_proj.weight") else 0
    if not n:
        return a
    return a.reshape(n, a.shape[0] // n // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
