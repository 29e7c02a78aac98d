"""The CUDA mode's Llama-family rows: the fast decoder on a SmolLM-135M-shaped Llama (RoPE, grouped-query
attention, RMSNorm, SwiGLU; random weights) checked against HF's forward (float32 logits, bf16 bit for bit,
greedy tokens against HF ``generate``), then timed at one batch size against HF's batched ``generate``."""

from __future__ import annotations

import time

from collapse.bench.gpu.common import Budget, Dev, say_cuda
from collapse.bench.harness import median

SMOL_LLAMA = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                  tie_word_embeddings=True, rms_norm_eps=1e-5)
TINY_LLAMA = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, rms_norm_eps=1e-5)


def build_llama(shape: dict, dtype, device, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


def llama_bench(dev: Dev, budget: Budget, dtype, dry: bool, P: int, N: int, batch: int) -> dict:
    import torch

    from collapse.config import GenerationConfig
    from collapse.decoding.fastgen import HFEngine, make_engine
    from collapse.decoding.generate import sample_batch

    if not budget.allow("Llama-family decode", 40):
        return {"skipped": "budget"}
    shape = TINY_LLAMA if dry else SMOL_LLAMA
    d = dev.device
    out: dict = {"config": shape}
    model32 = build_llama(shape, torch.float32, d)
    V, eos = shape["vocab_size"], model32.config.eos_token_id
    g = torch.Generator(device=d).manual_seed(0)
    B, n_check = 8, 24
    prompts = torch.randint(3, V, (B, P), generator=g, device=d)

    def trace(make, m, toks) -> torch.Tensor:
        with torch.inference_mode():
            e = make(m)
            logits = [e.prefill(prompts).float().clone()]
            for t in range(toks.shape[1] - 1):
                logits.append(e.step(toks[:, t]).float().clone())
        return torch.stack(logits), getattr(e, "name", type(e).__name__)

    with torch.inference_mode():
        ref = model32.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                               max_new_tokens=n_check, min_new_tokens=n_check, pad_token_id=eos)[:, P:]
    fast32, engine = trace(lambda m: make_engine(m, B, P + n_check, graphs=False), model32, ref)
    hf32, _ = trace(lambda m: HFEngine(m, B, P + n_check), model32, ref)
    out["engine"] = engine
    out["fp32_max_abs_logit_diff"] = float((fast32 - hf32).abs().max())
    greedy = sample_batch(model32, prompts, n_check, GenerationConfig(temperature=0.0),
                          torch.Generator(device=d).manual_seed(0), (eos,), engines={})
    out["greedy_rows_identical_to_hf_generate"] = int((torch.as_tensor(greedy, device=d)[:, -n_check:] == ref)
                                                      .all(1).sum())
    out["greedy_rows"] = B
    model = model32.to(dtype)
    del model32
    f16, _ = trace(lambda m: make_engine(m, B, P + n_check, graphs=False), model, ref)
    h16, _ = trace(lambda m: HFEngine(m, B, P + n_check), model, ref)
    out[f"{str(dtype).replace('torch.', '')}_logits_bit_identical"] = bool(torch.equal(f16, h16))
    out[f"{str(dtype).replace('torch.', '')}_max_abs_logit_diff"] = float((f16 - h16).abs().max())
    say_cuda(f"Llama ({engine}): fp32 max |logit diff| {out['fp32_max_abs_logit_diff']:.2e}; bf16 bit-identical "
             f"{torch.equal(f16, h16)}; greedy rows identical {out['greedy_rows_identical_to_hf_generate']}/{B}")
    # speed: the fast engine (CUDA graphs from its second batch) against HF's batched generate
    x = torch.randint(3, V, (batch, P), generator=g, device=d)
    cfg = GenerationConfig(temperature=1.0)
    engines: dict = {}

    def fast():
        sample_batch(model, x, N, cfg, torch.Generator(device=d).manual_seed(1), (eos,), engines=engines)

    def hf():
        with torch.inference_mode():
            model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0, top_k=0,
                           top_p=1.0, max_new_tokens=N, min_new_tokens=N, pad_token_id=eos)

    t0 = time.perf_counter()
    fast()
    fast()
    dev.sync()
    warm = time.perf_counter() - t0
    tf = dev.time(fast, 3 if not dry else 1, warmup=0)
    th = dev.time(hf, 2 if not dry else 1, warmup=1)
    tok = batch * N
    out.update(batch=batch, fast_tokens_per_s=tok / median(tf), hf_batched_tokens_per_s=tok / median(th),
               first_two_batches_s=warm)
    out["fast_over_hf"] = out["fast_tokens_per_s"] / out["hf_batched_tokens_per_s"]
    say_cuda(f"Llama decode batch {batch}: fast {out['fast_tokens_per_s'] / 1e3:.1f}k tok/s, HF batched generate "
             f"{out['hf_batched_tokens_per_s'] / 1e3:.1f}k ({out['fast_over_hf']:.1f}x)")
    out["rows"] = [{"name": f"Llama {engine} (batch {batch})", "batch": batch, "seconds": tf,
                    "seconds_median": median(tf), "tokens": tok, "tokens_per_s": tok / median(tf)},
                   {"name": f"Llama HF generate, batched (batch {batch})", "batch": batch, "seconds": th,
                    "seconds_median": median(th), "tokens": tok, "tokens_per_s": tok / median(th)}]
    dev.free()
    return out
