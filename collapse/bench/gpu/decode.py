"""The CUDA mode's decoding rows: HF ``generate`` per prompt and batched, the fast path eager and with CUDA
graphs per batch size (with the bandwidth fraction), and beam search as the paper decodes."""

from __future__ import annotations

import os
import time

from collapse.bench.gpu.common import Budget, Dev, matmul_params, say_cuda
from collapse.bench.harness import median


def _gen_kwargs(n: int, pad: int) -> dict:
    return dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n, min_new_tokens=n,
                pad_token_id=pad)


def decode_bench(model, dev: Dev, budget: Budget, sizes, P: int, N: int, per_prompt: int, ceil: dict,
                 repeats: int) -> dict:
    import torch

    from collapse.config import GenerationConfig

    d = dev.device
    c = model.config
    V, eos, pad = c.vocab_size, c.eos_token_id, c.pad_token_id
    g = torch.Generator(device=d).manual_seed(0)
    mp = matmul_params(model)
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_elem = 2 * c.num_hidden_layers * c.hidden_size * model.dtype.itemsize  # K and V, per (row, position)
    cfg = GenerationConfig(temperature=1.0)
    rows, out = [], {}
    per_prompt_rate = None
    # (i) the naive baseline: one generate call per prompt
    if budget.allow("decode: HF generate per prompt", 30):
        pp = torch.randint(3, V, (per_prompt, P), generator=g, device=d)

        def per():
            with torch.inference_mode():
                for i in range(per_prompt):
                    x = pp[i:i + 1]
                    model.generate(input_ids=x, attention_mask=torch.ones_like(x), **_gen_kwargs(N, pad))

        t = dev.time(per, 1, warmup=1)
        rows.append({"name": f"HF generate, one call per prompt ({per_prompt} prompts)", "batch": 1,
                     "seconds": t, "seconds_median": median(t), "tokens": per_prompt * N,
                     "tokens_per_s": per_prompt * N / median(t)})
        per_prompt_rate = rows[-1]["tokens_per_s"]
    for B in sizes:
        if not budget.allow(f"decode batch {B}", 25 if B <= 512 else 40):
            continue
        try:
            rows += _decode_size(model, dev, B, P, N, V, eos, pad, g, cfg, wbytes, kv_elem, ceil, repeats, out)
        except Exception as e:  # noqa: BLE001 - one size failing (e.g. out of memory) must not lose the rest
            out[str(B)] = {"batch": B, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            say_cuda(f"decode batch {B} FAILED: {type(e).__name__}: {str(e)[:200]}")
        dev.free()
    return {"rows": rows, "by_batch": out, "per_prompt_tokens_per_s": per_prompt_rate, "weights_bytes": wbytes,
            "matmul_params": mp,
            "formula": "bytes/step = all weights (incl. the tied head) + K,V read: 2 x layers x batch x cur_len x "
                       "hidden x bytes, cur_len averaged over the decode steps (P + (N-1)/2); per-step time = "
                       "whole call / N (prefill included: a lower bound on the fraction)"}


def _decode_size(model, dev: Dev, B, P, N, V, eos, pad, g, cfg, wbytes, kv_elem, ceil, repeats, out) -> list:
    import torch

    from collapse.decoding.generate import sample_batch

    d = dev.device
    rows = []
    x = torch.randint(3, V, (B, P), generator=g, device=d)
    res = {"batch": B}

    def hf():
        with torch.inference_mode():
            model.generate(input_ids=x, attention_mask=torch.ones_like(x), **_gen_kwargs(N, pad))

    engines: dict = {}

    def fast():
        sample_batch(model, x, N, cfg, torch.Generator(device=d).manual_seed(1), (eos,), engines=engines)

    eager_engines: dict = {}

    def eager():
        os.environ["COLLAPSE_CUDA_GRAPHS"] = "0"
        try:
            sample_batch(model, x, N, cfg, torch.Generator(device=d).manual_seed(1), (eos,), engines=eager_engines)
        finally:
            os.environ.pop("COLLAPSE_CUDA_GRAPHS", None)

    t0 = time.perf_counter()
    fast()  # first batch: engine set-up, eager steps
    dev.sync()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast()  # second batch: each step captured (after an eager warm-up run), then replayed
    dev.sync()
    second = time.perf_counter() - t0
    eng = next(iter(engines.values()))
    cap_s, n_graphs = getattr(eng, "capture_seconds", 0.0), len(getattr(eng, "graphs", {}))
    mem = torch.cuda.memory_reserved(d) / 2**30 if dev.cuda else None
    tf = dev.time(fast, repeats, warmup=0)
    te = dev.time(eager, repeats, warmup=1)
    th = dev.time(hf, max(1, repeats // 2), warmup=1)
    tok = B * N
    avg_len = P + (N - 1) / 2  # positions attended per decode step, averaged (the growing-slice read)
    step_bytes = wbytes + B * avg_len * kv_elem
    per_step = median(tf) / N  # conservative: the prefill is inside the timed region
    for name, t in ((f"fast path, CUDA graph (batch {B})", tf), (f"fast path, eager (batch {B})", te),
                    (f"HF generate, batched (batch {B})", th)):
        rows.append({"name": name, "batch": B, "seconds": t, "seconds_median": median(t), "tokens": tok,
                     "tokens_per_s": tok / median(t)})
    res.update(graph_tokens_per_s=tok / median(tf), eager_tokens_per_s=tok / median(te),
               hf_batched_tokens_per_s=tok / median(th), first_call_s=first, second_call_s=second,
               graph_capture_and_warmup_s=cap_s, graphs_captured=n_graphs, gpu_memory_reserved_gib=mem,
               bytes_per_step_formula=step_bytes,
               bandwidth_fraction=step_bytes / per_step / (ceil["copy_bandwidth_gb_s"] * 1e9))
    out[str(B)] = res
    say_cuda(f"decode batch {B}: graph {res['graph_tokens_per_s'] / 1e3:.1f}k tok/s, eager "
             f"{res['eager_tokens_per_s'] / 1e3:.1f}k, HF batched {res['hf_batched_tokens_per_s'] / 1e3:.1f}k; "
             f"bandwidth fraction {res['bandwidth_fraction']:.2f}")
    return rows


def beam_bench(model, dev: Dev, budget: Budget, P: int, N: int, batch: int) -> dict | None:
    """Beam search as the paper decodes (5 beams, repetition penalty 3): the project's beam loop on the
    fast engine (the row used by the projection) and HF ``generate`` itself, with the rows compared."""
    import torch

    from collapse.config import GenerationConfig
    from collapse.decoding.generate import sample_batch

    if not budget.allow(f"beam search (5 beams, repetition_penalty 3, batch {batch})", 60):
        return None
    g = torch.Generator(device=dev.device).manual_seed(2)
    x = torch.randint(3, model.config.vocab_size, (batch, P), generator=g, device=dev.device)
    out, res = {}, {}
    eos = (model.config.eos_token_id,)  # never chosen, as HF's min_new_tokens = max_new_tokens does
    for engine, label in (("auto", "collapse beam search, fast engine"), ("hf-generate", "HF generate")):
        cfg = GenerationConfig(num_beams=5, repetition_penalty=3.0, engine=engine)

        def f(cfg=cfg, engine=engine):
            out[engine] = sample_batch(model, x, N, cfg, torch.Generator(device=dev.device), eos)

        t = dev.time(f, 1, warmup=1)
        res[engine] = {"name": f"{label} (num_beams=5, repetition_penalty=3.0, batch {batch})", "batch": batch,
                       "seconds": t, "seconds_median": median(t), "tokens": batch * N,
                       "tokens_per_s": batch * N / median(t)}
    dev.free()
    row = res["auto"]
    row["hf_generate"] = res["hf-generate"]
    row["speedup_over_hf_generate"] = row["tokens_per_s"] / res["hf-generate"]["tokens_per_s"]
    row["rows_identical_to_hf_generate"] = int((out["auto"] == out["hf-generate"]).all(1).sum())
    say_cuda(f"beam search: fast {row['tokens_per_s'] / 1e3:.1f}k tok/s, HF generate "
             f"{res['hf-generate']['tokens_per_s'] / 1e3:.1f}k; identical rows "
             f"{row['rows_identical_to_hf_generate']} of {batch}")
    return row
