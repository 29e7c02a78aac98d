"""The Llama family's decode engine (Llama, Qwen2, Mistral, SmolLM...): RoPE, grouped-query attention,
RMSNorm, SwiGLU, on the KV cache and CUDA-graph machinery of :class:`collapse.decoding.fastgen_base.KVDecoder`.

The maths is HF's forward (transformers' ``modeling_llama`` / ``modeling_qwen2`` / ``modeling_mistral``)
op for op, in the same dtypes, shapes and layouts, so that its logits are bit-identical to those of HF's
forward with SDPA attention (the default) in bfloat16 as well as float32 (tests/test_fastgen_llama.py);
what it leaves out is the per-step overhead (masks, cache objects, rotary tables, output dataclasses).
Choices that follow from bit-identity:

- q, k and v are three matmuls, as in HF. One fused QKV matmul (weights concatenated) is not: CPU oneDNN
  and GPU BLAS pick their blocking (the order of the sums) by shape, and on the CPU a fused bf16 matmul of
  unit-scale random data differed from the three separate ones by up to 0.25 (hidden 576 or 896, 128-576
  rows; float32 by 7e-5). Likewise gate and up stay two matmuls.
- RMSNorm in float32 in HF's order: ``w * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(dtype)``.
- RoPE: the cos / sin of positions ``0..max_len-1`` come from the model's own rotary module (float32
  ``inv_freq``, float32 cos / sin, cast to the model's dtype), computed once; ``rotate_half`` as in HF.
- Grouped-query attention: the cache holds the KV heads only ([layers, batch, kv_heads, max_len, head_dim])
  and SDPA gets ``enable_gqa=True`` with HF's ``scale``: the call HF's SDPA attention makes when there is
  no mask (prefill of equal-length prompts: ``is_causal``; decode: one query row), on CPU and CUDA.
- The head gets the prompt's last position as HF's ``[B, 1, d]`` slice of all positions' final norm.

Logits are bit-identical to HF's in bf16 and float32, eager, static and with CUDA graphs (checked on an
H200; the timings are in docs/benchmarks.md, "Measurements behind the code's choices").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from collapse.decoding.fastgen_base import KVDecoder


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _lin(m) -> tuple:
    return (m.weight, m.bias)


class LlamaDecoder(KVDecoder):
    """Llama / Qwen2 / Mistral decoder layers: weights pulled out once, KV heads cached for ``max_len``."""

    @staticmethod
    def supports(model, max_len: int | None = None) -> bool:
        """``max_len``: positions the engine holds (default: the model's ``max_position_embeddings``); a
        sliding window shorter than that is not supported."""
        if hasattr(model, "peft_config"):
            return False  # merge the adapter first (generate_corpus does)
        c = model.config
        if getattr(c, "model_type", "") not in ("llama", "qwen2", "mistral"):
            return False
        if getattr(c, "hidden_act", None) not in ("silu", "swish"):
            return False
        for rp in (getattr(c, "rope_parameters", None), getattr(c, "rope_scaling", None)):
            if rp is not None and (not isinstance(rp, dict) or rp.get("rope_type", rp.get("type")) != "default"):
                return False  # linear, dynamic, yarn, llama3, per-layer-type parameters...
        base = getattr(model, "model", None)
        rot = getattr(base, "rotary_emb", None)
        if rot is None or getattr(rot, "rope_type", None) != "default" or getattr(rot, "attention_scaling", 1.0) != 1.0:
            return False
        n = max_len or getattr(c, "max_position_embeddings", 0)
        sw = getattr(c, "sliding_window", None)
        if sw is not None and getattr(c, "use_sliding_window", True) and sw < n:
            return False  # HF masks keys further back than the window
        if any(t not in ("full_attention", "sliding_attention") for t in getattr(c, "layer_types", None) or ()):
            return False
        H, KV = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        if KV > H or H % KV:
            return False
        blk = base.layers[0]
        mods = [blk.self_attn.q_proj, blk.self_attn.k_proj, blk.self_attn.v_proj, blk.self_attn.o_proj,
                blk.mlp.gate_proj, blk.mlp.up_proj, blk.mlp.down_proj]
        return all(type(m) is torch.nn.Linear and m.weight.is_floating_point() for m in mods)  # not quantized

    def _load(self, model) -> None:
        c = model.config
        base = model.model
        a0 = base.layers[0].self_attn
        self.H = c.num_attention_heads
        self.kv_heads = getattr(c, "num_key_value_heads", None) or self.H
        self.Dh = a0.head_dim
        self.scale = a0.scaling  # head_dim ** -0.5, passed to SDPA as HF does
        self.gqa = {"enable_gqa": True} if self.H > self.kv_heads else {}  # as HF: only when heads are shared
        self.wte = base.embed_tokens.weight
        self.layers = []
        for blk in base.layers[:c.num_hidden_layers]:  # as HF's forward
            a, m = blk.self_attn, blk.mlp
            self.layers.append(dict(
                n1=(blk.input_layernorm.weight, blk.input_layernorm.variance_epsilon),
                n2=(blk.post_attention_layernorm.weight, blk.post_attention_layernorm.variance_epsilon),
                q=_lin(a.q_proj), k=_lin(a.k_proj), v=_lin(a.v_proj), o=_lin(a.o_proj),
                gate=_lin(m.gate_proj), up=_lin(m.up_proj), down=_lin(m.down_proj)))
        self.norm = (base.norm.weight, base.norm.variance_epsilon)
        self.head = model.get_output_embeddings().weight  # [V, d], tied or not
        with torch.no_grad():  # HF's own rotary module: float32 inv_freq and cos / sin, then the model's dtype
            x = torch.empty(0, dtype=self.dtype, device=self.device)
            cos, sin = base.rotary_emb(x, torch.arange(self.max_len, device=self.device)[None])
        self.cos, self.sin = cos[0], sin[0]  # [max_len, Dh]

    @staticmethod
    def _norm(x: torch.Tensor, we) -> torch.Tensor:
        """HF's ``LlamaRMSNorm.forward``, op for op."""
        dt = x.dtype
        x = x.to(torch.float32)
        var = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + we[1])
        return we[0] * x.to(dt)

    def _run(self, ids: torch.Tensor, p0: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] (float32) after ``ids`` [B, T] placed at positions ``p0..p0+T-1``; K/V written there."""
        B, T = ids.shape
        H, KV, Dh = self.H, self.kv_heads, self.Dh
        cos, sin = self.cos[p0:p0 + T][None, None], self.sin[p0:p0 + T][None, None]  # [1, 1, T, Dh]
        h = F.embedding(ids, self.wte)
        for i, L in enumerate(self.layers):
            x = self._norm(h, L["n1"])
            q = F.linear(x, *L["q"]).view(B, T, H, Dh).transpose(1, 2)
            k = F.linear(x, *L["k"]).view(B, T, KV, Dh).transpose(1, 2)
            v = F.linear(x, *L["v"]).view(B, T, KV, Dh).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            self.k[i, :B, :, p0:p0 + T] = k * cos + _rotate_half(k) * sin
            self.v[i, :B, :, p0:p0 + T] = v
            kk, vv = self.k[i, :B, :, :p0 + T], self.v[i, :B, :, :p0 + T]
            att = F.scaled_dot_product_attention(q, kk, vv, is_causal=T > 1, scale=self.scale, **self.gqa)
            h = h + F.linear(att.transpose(1, 2).reshape(B, T, H * Dh), *L["o"])
            x = self._norm(h, L["n2"])
            h = h + F.linear(F.silu(F.linear(x, *L["gate"])) * F.linear(x, *L["up"]), *L["down"])
        # as HF: norm every position, then the head on the last one as a [B, 1, d] slice (strided when T > 1);
        # a plain [B, d] product is another kernel path (CPU float32, frozen weights: 2e-7 apart)
        logits = F.linear(self._norm(h, self.norm)[:, -1:], self.head)[:, -1]
        if out is not None:
            return out.copy_(logits)  # the float32 conversion, into the caller's buffer
        return logits.float()
