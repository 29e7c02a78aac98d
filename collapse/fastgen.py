"""Decode engines: a hand-written GPT-2 / OPT forward with a preallocated KV cache, and the HF fallback.

Why: at the sizes this tool runs (tiny models on CPU, 125M-class models at batch 512 on a GPU) the
time of a decode step goes to per-step overhead, not arithmetic. HF's forward builds masks, cache
objects and output dataclasses every step; this engine does the same maths in a few fused calls on
tensors it owns: LayerNorm, one QKV matmul, SDPA over a slice of a preallocated cache, MLP.

Every engine exposes ``prefill(prompts [B, P]) -> logits [B, V]`` and ``step(tokens [B]) -> logits``;
``make_engine`` picks the fast one when the architecture is supported and the HF one otherwise.
The fast engine's logits match HF's to float tolerance (tests/test_fastgen.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def _act(name: str):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise NotImplementedError(name)


class FastDecoder:
    """GPT-2 and (pre-LayerNorm) OPT: weights pulled out once, KV cache preallocated for ``max_len``."""

    name = "fast"

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

    def __init__(self, model, batch: int, max_len: int):
        c = model.config
        self.mt = c.model_type
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
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
        shape = (len(self.layers), batch, self.H, max_len, self.Dh)
        self.k = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.v = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.pos = 0
        self.batch = batch

    def _ln(self, x, wb):
        return F.layer_norm(x, (self.d,), wb[0], wb[1], self.eps)

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        p0 = self.pos
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
        self.pos = p0 + T
        last = self._ln(h[:, -1], self.lnf)
        return (last @ self.head.t()).float()

    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        self.pos = 0
        return self._forward(prompts)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._forward(tokens[:, None])


def make_engine(model, batch: int, max_len: int, prefer: str = "auto"):
    """The fast engine where supported (``prefer='auto'``/``'fast'``), else HF's own forward."""
    if prefer != "hf" and FastDecoder.supports(model):
        return FastDecoder(model, batch, max_len)
    if prefer == "fast":
        raise NotImplementedError(f"no fast decode path for {model.config.model_type}")
    return HFEngine(model, batch, max_len)
