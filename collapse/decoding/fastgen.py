"""Decode engines: hand-written forwards with a preallocated KV cache (GPT-2 / OPT here, the Llama family
in collapse/decoding/fastgen_llama.py, their shared cache / CUDA-graph / beam machinery in collapse/decoding/fastgen_base.py)
and the HF fallback.

Why: at the sizes this tool runs (tiny models on CPU, 125M-class models at batch 512 on a GPU) the
time of a decode step goes to per-step overhead, not arithmetic. HF's forward builds masks, cache
objects and output dataclasses every step; this engine does the same maths in a few fused calls on
tensors it owns: LayerNorm, one QKV matmul, SDPA over a slice of a preallocated cache, MLP (Llama:
RMSNorm, RoPE, grouped-query SDPA over the KV heads, SwiGLU).

Every engine exposes ``prefill(prompts [B, P]) -> logits [B, V]``, ``step(tokens [B]) -> logits`` and
``prefill_beams`` / ``reorder(rows [B])`` (beam search: row i of the cache becomes row ``rows[i]``);
``make_engine`` picks the fast one when the architecture is supported and the HF one otherwise.
The GPT-2 / OPT engine's logits match HF's to float tolerance (tests/test_generate.py, tests/test_fastgen.py);
the Llama engine's are bit-identical to HF's (SDPA attention), bfloat16 included (tests/test_fastgen_llama.py).

A decode step attends over a growing slice of the cache (``cache[:, :, :pos+1]``): what is fastest on a
CPU, and on a GPU its attention runs FlashAttention's decoding kernel. On CUDA the steps are also
captured in CUDA graphs: the step at position ``p`` is the same code with ``p`` a Python constant,
reading the next tokens from a fixed input buffer and writing logits into a fixed output buffer, so
each position's step is captured once (during the engine's second batch, after one eager warm-up run:
an engine used for one batch only, such as a ragged last batch, never pays for captures) and replayed
for every later batch of the same shape: one launch per step instead of ~15 per layer. All positions'
graphs share one memory pool (they run one after another). The maths and kernels are those of the
eager step, so logits are bit-identical with and without graphs. If capture fails (old GPU, driver,
an op that cannot be captured) the engine logs a warning and decodes eagerly.

One graph per position, not one static-shape step over the whole cache with a position mask: the masked
kernel loses to flash decoding over the used slots at large batches (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from collapse.decoding.fastgen_base import KVDecoder
from collapse.decoding.fastgen_llama import LlamaDecoder


class HFEngine:
    """Any causal LM through its own forward and cache (the fallback; also beam search's world)."""

    name = "hf"

    def __init__(self, model, batch: int, max_len: int):
        import inspect

        self.model = model
        self.past = None
        # transformers >= 5.2x calls the cache argument `cache`; earlier releases `past_key_values`
        self.kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @staticmethod
    def _cache(out):
        c = out.get("cache") if hasattr(out, "get") else None
        return c if c is not None else out.past_key_values

    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=prompts, use_cache=True, logits_to_keep=1)
        self.past = self._cache(out)
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tokens[:, None], use_cache=True, **{self.kw: self.past})
        self.past = self._cache(out)
        return out.logits[:, -1].float()

    def prefill_beams(self, prompts: torch.Tensor, beams: int) -> torch.Tensor:
        """Logits [B*beams, V] with every prompt repeated ``beams`` times (HF generate's own layout)."""
        return self.prefill(prompts.repeat_interleave(beams, 0))

    def reorder(self, rows: torch.Tensor, start: int = 0) -> None:
        """Row ``i`` of the cache becomes row ``rows[i]`` (beam search); ``start`` is ignored here."""
        if hasattr(self.model, "_reorder_cache"):  # as HF's beam search: a model's own reorder comes first
            self.past = self.model._reorder_cache(self.past, rows)
        else:
            self.past.reorder_cache(rows)


def _act(name: str):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise NotImplementedError(name)


class FastDecoder(KVDecoder):
    """GPT-2 and (pre-LayerNorm) OPT: weights pulled out once, KV cache preallocated for ``max_len``."""

    @staticmethod
    def supports(model) -> bool:
        if hasattr(model, "peft_config"):
            return False  # merge the adapter first (generate_corpus does)
        c = model.config
        mt = getattr(c, "model_type", "")
        if mt == "gpt2":
            return (not c.scale_attn_by_inverse_layer_idx and not c.reorder_and_upcast_attn
                    and c.activation_function in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu"))
        if mt == "opt":
            return (c.do_layer_norm_before and c.word_embed_proj_dim == c.hidden_size
                    and not getattr(c, "_remove_final_layer_norm", False) and c.activation_function in ("relu", "gelu"))
        return False

    def _load(self, model) -> None:
        c = model.config
        self.mt = c.model_type
        self.layers = []
        if self.mt == "gpt2":
            t = model.transformer
            self.wte, self.wpe, self.pos_offset = t.wte.weight, t.wpe.weight, 0
            self.H = c.n_head
            self.act = _act(c.activation_function)
            self.eps = c.layer_norm_epsilon
            for blk in t.h:
                self.layers.append(dict(
                    ln1=(blk.ln_1.weight, blk.ln_1.bias), ln2=(blk.ln_2.weight, blk.ln_2.bias),
                    qkv=(blk.attn.c_attn.weight, blk.attn.c_attn.bias),  # Conv1D: x @ W + b, W [in, out]
                    o=(blk.attn.c_proj.weight, blk.attn.c_proj.bias),
                    fc1=(blk.mlp.c_fc.weight, blk.mlp.c_fc.bias), fc2=(blk.mlp.c_proj.weight, blk.mlp.c_proj.bias)))
            self.lnf = (t.ln_f.weight, t.ln_f.bias)
        else:  # opt
            d = model.model.decoder
            self.wte, self.wpe, self.pos_offset = d.embed_tokens.weight, d.embed_positions.weight, 2
            self.H = c.num_attention_heads
            self.act = _act(c.activation_function)
            self.eps = 1e-5
            for blk in d.layers:
                a = blk.self_attn
                w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0).t().contiguous()
                b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], 0)
                self.layers.append(dict(
                    ln1=(blk.self_attn_layer_norm.weight, blk.self_attn_layer_norm.bias),
                    ln2=(blk.final_layer_norm.weight, blk.final_layer_norm.bias),
                    qkv=(w, b), o=(a.out_proj.weight.t().contiguous(), a.out_proj.bias),
                    fc1=(blk.fc1.weight.t().contiguous(), blk.fc1.bias),
                    fc2=(blk.fc2.weight.t().contiguous(), blk.fc2.bias)))
            self.lnf = (d.final_layer_norm.weight, d.final_layer_norm.bias)
        self.head = model.get_output_embeddings().weight  # [V, d], tied or not
        self.d = self.wte.shape[1]
        self.Dh = self.d // self.H
        self.kv_heads = self.H

    def _ln(self, x, wb):
        return F.layer_norm(x, (self.d,), wb[0], wb[1], self.eps)

    def _run(self, ids: torch.Tensor, p0: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] (float32) after ``ids`` [B, T] placed at positions ``p0..p0+T-1``; K/V written there."""
        B, T = ids.shape
        h = F.embedding(ids, self.wte) + self.wpe[p0 + self.pos_offset:p0 + self.pos_offset + T]
        for i, L in enumerate(self.layers):
            a = self._ln(h, L["ln1"])
            qkv = torch.addmm(L["qkv"][1], a.reshape(B * T, self.d), L["qkv"][0]).view(B, T, 3, self.H, self.Dh)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, Dh]
            self.k[i, :B, :, p0:p0 + T] = k
            self.v[i, :B, :, p0:p0 + T] = v
            kk, vv = self.k[i, :B, :, :p0 + T], self.v[i, :B, :, :p0 + T]
            att = F.scaled_dot_product_attention(q, kk, vv, is_causal=T > 1)
            att = att.transpose(1, 2).reshape(B * T, self.d)
            h = h + torch.addmm(L["o"][1], att, L["o"][0]).view(B, T, self.d)
            m = self._ln(h, L["ln2"]).reshape(B * T, self.d)
            m = torch.addmm(L["fc2"][1], self.act(torch.addmm(L["fc1"][1], m, L["fc1"][0])), L["fc2"][0])
            h = h + m.view(B, T, self.d)
        last = self._ln(h[:, -1], self.lnf)
        if out is not None:
            return out.copy_(last @ self.head.t())  # the float32 conversion, into the caller's buffer
        return (last @ self.head.t()).float()


def graphs_available(device: torch.device) -> bool:
    """CUDA graphs for the decode step: a CUDA device, not disabled by ``COLLAPSE_CUDA_GRAPHS=0``."""
    import os

    return device.type == "cuda" and os.environ.get("COLLAPSE_CUDA_GRAPHS", "1") != "0"


def make_engine(model, batch: int, max_len: int, prefer: str = "auto", graphs: bool | None = None):
    """The fast engine where supported (``prefer='auto'``/``'fast'``), else HF's own forward: GPT-2 / OPT
    on :class:`FastDecoder`, the Llama family on :class:`~collapse.decoding.fastgen_llama.LlamaDecoder`.

    ``graphs``: None = CUDA graphs wherever the device is CUDA (see :func:`graphs_available`).
    """
    cls = None
    if prefer != "hf":
        if FastDecoder.supports(model):
            cls = FastDecoder
        elif LlamaDecoder.supports(model, max_len):
            cls = LlamaDecoder
    if cls is not None:
        if graphs is None:
            graphs = graphs_available(next(model.parameters()).device)
        return cls(model, batch, max_len, graphs=graphs)
    if prefer == "fast":
        raise NotImplementedError(f"no fast decode path for {model.config.model_type}")
    return HFEngine(model, batch, max_len)
