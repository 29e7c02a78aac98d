"""GPU mode of the benchmark (`scripts/bench.py --device cuda [--selftest]`), on an OPT-125m-shaped model.

No downloads: the model is OPT-125m's architecture with random weights (bf16 where the GPU has it, else
fp16). Random weights decode at the same speed as trained ones, but their logits are flat (std ~0.5 over
50k tokens), so greedy near-ties are common; the self-test therefore also compares in fp32 and measures
every disagreement against the bf16 rounding step.

Self-test (``--selftest``): logits of the fast path (eager slice, eager static, CUDA graph) against HF's
forward in bf16 and fp32; greedy decoding against HF ``generate`` (free-running and teacher-forced);
graph vs eager sampling with the same random numbers. Prints PASS/FAIL per check.

Benchmark: measured ceilings (device-to-device copy bandwidth, bf16 matmul FLOP/s); decode tokens/s at
batch 64/256/512/1024 for HF ``generate`` per prompt (a few prompts), batched HF ``generate``, the fast
path eager and with CUDA graphs, with the fraction of the bandwidth ceiling; beam search as the paper
configs run it; training tokens/s (LoRA, full; bf16 autocast; 128-token blocks; fused AdamW) with the
fraction of the FLOP/s ceiling; evaluation tokens/s; the projected wall time of a paper-scale generation.
A time budget (``--budget-s``) skips what would not fit, and says so in the JSON.

``--dry-run-cpu`` runs all of it on the CPU with a tiny OPT and tiny sizes (for tests: the plumbing only).
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import sys
import time

from collapse.bench import SCHEMA, _loadavg, _target, machine_info

OPT125M = dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
               max_position_embeddings=2048, word_embed_proj_dim=768, do_layer_norm_before=True)
TINY_OPT = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                max_position_embeddings=256, word_embed_proj_dim=32, do_layer_norm_before=True)


def _say(msg: str) -> None:
    print(f"[bench-cuda {time.perf_counter() - _T0[0]:6.1f} s] {msg}", flush=True)


_T0 = [time.perf_counter()]


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def allow(self, what: str, need_s: float) -> bool:
        if self.left() >= need_s:
            return True
        self.skipped.append(f"{what} (needs ~{need_s:.0f} s, {max(self.left(), 0):.0f} s left)")
        _say(f"SKIPPED (budget): {what}")
        return False


class Dev:
    """Timing and synchronisation for CUDA (events) or the CPU dry run (perf_counter)."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def time(self, f, repeats: int, warmup: int = 1) -> list[float]:
        for _ in range(warmup):
            f()
        self.sync()
        out = []
        for _ in range(repeats):
            if self.cuda:
                s = self.torch.cuda.Event(enable_timing=True)
                e = self.torch.cuda.Event(enable_timing=True)
                s.record()
                f()
                e.record()
                e.synchronize()
                out.append(s.elapsed_time(e) / 1e3)
            else:
                t0 = time.perf_counter()
                f()
                out.append(time.perf_counter() - t0)
        return out

    def free(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def _med(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def build_model(shape: dict, dtype, device, seed: int = 0):
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(**shape)
    with torch.device(device):
        model = OPTForCausalLM(cfg)
    return model.to(dtype).eval()


def _matmul_params(model) -> dict:
    """Parameters that take part in matmuls (linear layers + the output head), and the head alone."""
    import torch

    lin = sum(m.weight.numel() for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    head = model.get_output_embeddings().weight.numel()
    return {"linear": lin, "head": head, "matmul": lin + head,
            "all": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------- self-test


def selftest(model, model32, dev: Dev, B: int = 8, P: int = 64, N: int = 16, Bg: int = 64, Ng: int = 64) -> dict:
    import torch

    from collapse.config import GenerationConfig
    from collapse.fastgen import FastDecoder, HFEngine
    from collapse.generate import sample_batch

    d = dev.device
    c = model.config
    V, eos, pad = c.vocab_size, c.eos_token_id, c.pad_token_id
    g = torch.Generator(device=d).manual_seed(0)
    prompts = torch.randint(3, V, (B, P), generator=g, device=d)
    ones = torch.ones_like(prompts)
    checks = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "pass": bool(ok), "detail": detail})
        _say(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")

    with torch.inference_mode():
        ref = model32.generate(input_ids=prompts, attention_mask=ones, do_sample=False, max_new_tokens=N,
                               min_new_tokens=N, pad_token_id=pad)
    toks = ref[:, P:]

    def trace(make, m) -> torch.Tensor:
        with torch.inference_mode():
            e = make(m)
            out = [e.prefill(prompts).float().clone()]
            for t in range(N - 1):
                out.append(e.step(toks[:, t]).float().clone())
        return torch.stack(out)  # [N, B, V]

    L = {
        "hf16": trace(lambda m: HFEngine(m, B, P + N), model),
        "hf32": trace(lambda m: HFEngine(m, B, P + N), model32),
        "fast16": trace(lambda m: FastDecoder(m, B, P + N, graphs=False), model),
        "static16": trace(lambda m: FastDecoder(m, B, P + N, static=True), model),
        "graph16": trace(lambda m: _second_batch(FastDecoder(m, B, P + N, graphs=True), prompts, toks), model),
        "fast32": trace(lambda m: FastDecoder(m, B, P + N, graphs=False), model32),
        "graph32": trace(lambda m: _second_batch(FastDecoder(m, B, P + N, graphs=True), prompts, toks), model32),
    }
    graph_used = None
    if dev.cuda:
        with torch.inference_mode():
            e = FastDecoder(model, B, P + N, graphs=True)
            for _ in range(2):  # graphs are captured from an engine's second batch on
                e.prefill(prompts)
                e.step(toks[:, 0])
            graph_used = e.graph is not None

    def mx(a, b):
        return float((L[a] - L[b]).abs().max())

    def mean(a, b):
        return float((L[a] - L[b]).abs().mean())

    scale = float(L["hf32"].abs().max())
    diffs = {f"{a} vs {b}": {"max": mx(a, b), "mean": mean(a, b)} for a, b in
             [("fast16", "hf16"), ("static16", "hf16"), ("graph16", "hf16"), ("graph16", "static16"),
              ("hf16", "hf32"), ("fast16", "hf32"), ("graph16", "hf32"), ("fast32", "hf32"), ("graph32", "hf32")]}
    low = str(model.dtype).replace("torch.", "")
    check("CUDA graph captured", graph_used is not False,
          "captured" if graph_used else ("CPU dry run: no graphs" if graph_used is None else "capture FAILED: eager"))
    check("fp32 logits: fast (eager) = HF", mx("fast32", "hf32") <= 2e-3 * max(1.0, scale / 10),
          f"max |diff| {mx('fast32', 'hf32'):.2e} (logit scale {scale:.2f})")
    check("fp32 logits: fast (graph) = HF", mx("graph32", "hf32") <= 2e-3 * max(1.0, scale / 10),
          f"max |diff| {mx('graph32', 'hf32'):.2e}")
    noise = mean("hf16", "hf32")
    for k in ("fast16", "graph16"):
        check(f"{low} logits: {k} no further from fp32 than HF {low} is",
              mean(k, "hf32") <= 1.5 * noise + 1e-3,
              f"mean |{k} - hf32| {mean(k, 'hf32'):.2e} vs mean |hf16 - hf32| {noise:.2e}; "
              f"max |{k} - hf16| {mx(k, 'hf16'):.2e}")
    check("graph replay = the same step run eagerly", mx("graph16", "static16") <= diffs["hf16 vs hf32"]["max"] + 1e-6,
          f"max |diff| {mx('graph16', 'static16'):.2e}")

    # greedy: free-running vs HF generate, and teacher-forced agreement with near-tie analysis
    gg = torch.Generator(device=d).manual_seed(1)
    gp = torch.randint(3, V, (Bg, P), generator=gg, device=d)
    greedy = {}
    for label, m in ((low, model), ("float32", model32)):
        with torch.inference_mode():
            hf = m.generate(input_ids=gp, attention_mask=torch.ones_like(gp), do_sample=False, max_new_tokens=Ng,
                            min_new_tokens=Ng, pad_token_id=pad)[:, P:]
        ours = sample_batch(m, gp, Ng, GenerationConfig(temperature=0.0), torch.Generator(device=d),
                            suppress_ids=(eos,)).to(d)
        eq = ours == hf
        first = [int((~row).nonzero()[0]) for row in eq if not bool(row.all())]
        tf = _teacher_forced(m, gp, hf, eos)
        greedy[label] = {"sequences_identical": float(eq.all(1).float().mean()),
                         "tokens_equal_free_running": float(eq.float().mean()),
                         "first_divergence_positions": first[:20], **tf}
        detail = (f"teacher-forced agreement {tf['agreement']:.5f} ({tf['disagreements']} of {tf['positions']}; "
                  f"HF forward vs HF generate {tf['hf_forward_vs_hf_generate_agreement']:.5f}); max |logit diff| "
                  f"{tf['max_abs_logit_diff']:.2e}; disagreement gaps (HF logits) up to {tf['max_gap_in_ulps']:.2f} "
                  f"{label} ulps; sequences identical free-running {greedy[label]['sequences_identical']:.3f}")
        if label == "float32":
            check("greedy fp32: argmax = HF generate (teacher-forced)", tf["agreement"] >= 0.999, detail)
        else:
            # a flip where the two implementations' logits differ by less than HF's own bf16 error is a near-tie
            bound = 2 * diffs["hf16 vs hf32"]["mean"] + 1e-4
            check(f"greedy {low}: logits within HF's own {low} error along HF's greedy path",
                  tf["mean_abs_logit_diff"] <= bound,
                  detail + f"; mean |logit diff| {tf['mean_abs_logit_diff']:.2e} (bound 2 x HF's own mean "
                  f"{low} error = {bound:.2e})")

    # sampling with the same uniforms: graph vs the same fixed-buffer step run eagerly (identical kernels: a
    # bug in the graph's buffers or position would give unrelated tokens), and vs the plain eager engine
    cfg = GenerationConfig(temperature=1.0)
    maxlen = P + Ng

    def sampled(engine_kind: str):
        engines = {}
        if engine_kind != "default":
            key = (id(model), Bg, P, maxlen, cfg.engine)
            engines[key] = FastDecoder(model, Bg, maxlen, static=True) if engine_kind == "static" else \
                FastDecoder(model, Bg, maxlen, graphs=False)
        if engine_kind == "default":  # a first batch, so that the measured one replays graphs
            sample_batch(model, gp, Ng, cfg, torch.Generator(device=d).manual_seed(9), (eos,), engines=engines)
        return sample_batch(model, gp, Ng, cfg, torch.Generator(device=d).manual_seed(3), suppress_ids=(eos,),
                            engines=engines)

    a, b, e = sampled("default"), sampled("static"), sampled("growing")
    same = float((a == b).float().mean())
    rows_same_growing = float((a == e).all(1).float().mean())
    check("sampling: graph = the same step run eagerly (same uniforms)", same >= 0.9,
          f"{same:.4f} of tokens equal; vs the plain eager engine {rows_same_growing:.3f} of rows identical "
          "(a row parts after a near-tie flip)")
    ok = all(c["pass"] for c in checks)
    _say(f"SELFTEST {'PASSED' if ok else 'FAILED'} ({sum(c['pass'] for c in checks)}/{len(checks)} checks)")
    return {"passed": ok, "checks": checks, "logit_diffs": diffs, "logit_scale": scale, "greedy": greedy,
            "sampling_graph_vs_static_token_agreement": same,
            "sampling_graph_vs_growing_rows_identical": rows_same_growing, "dtype": low}


def _second_batch(engine, prompts, toks):
    """An engine that has decoded one batch already (graphs are captured from the second batch on)."""
    engine.prefill(prompts)
    for t in range(toks.shape[1] - 1):
        engine.step(toks[:, t])
    return engine


def _teacher_forced(model, prompts, hf_tokens, eos) -> dict:
    """Argmax of the default fast engine at each position given HF's greedy tokens, against HF's choice;
    each disagreement's gap in HF's own logits, in units of the low-precision rounding step (ulp)."""
    import torch

    from collapse.fastgen import HFEngine, make_engine

    B, P = prompts.shape
    N = hf_tokens.shape[1]
    with torch.inference_mode():
        ours = _second_batch(make_engine(model, B, P + N), prompts, hf_tokens)
        ref = HFEngine(model, B, P + N)
        lo, lr = ours.prefill(prompts), ref.prefill(prompts)
        agree, total, gaps, hf_self, dmax, dsum = 0, 0, [], 0, 0.0, 0.0
        mant = 8 if model.dtype == torch.bfloat16 else (11 if model.dtype == torch.float16 else 24)
        for t in range(N):
            lo, lr = lo.clone(), lr.clone()
            dmax = max(dmax, float((lo - lr).abs().max()))
            dsum += float((lo - lr).abs().mean())
            lo[:, eos] = float("-inf")
            lr[:, eos] = float("-inf")
            want = hf_tokens[:, t]
            mine = lo.argmax(-1)
            hf_self += int((lr.argmax(-1) == want).sum())
            eq = mine == want
            agree += int(eq.sum())
            total += B
            for r in (~eq).nonzero().flatten().tolist():
                a, b = lr[r, want[r]], lr[r, mine[r]]
                ulp = 2.0 ** (math.floor(math.log2(max(abs(float(a)), 1e-30))) - (mant - 1))
                gaps.append(float(a - b) / ulp)
            if t + 1 < N:
                lo, lr = ours.step(want), ref.step(want)
    return {"agreement": agree / total, "positions": total, "disagreements": total - agree,
            "max_gap_in_ulps": max((abs(x) for x in gaps), default=0.0), "gaps_in_ulps": gaps[:20],
            "max_abs_logit_diff": dmax, "mean_abs_logit_diff": dsum / N,
            "hf_forward_vs_hf_generate_agreement": hf_self / total}


# ---------------------------------------------------------------------- ceilings


def ceilings(dev: Dev, dtype, dry: bool) -> dict:
    import torch

    n = (1 << 28) if not dry else (1 << 20)  # 512 MiB of bf16 (x2 buffers)
    x = torch.empty(n, dtype=torch.bfloat16, device=dev.device).fill_(1.0)
    y = torch.empty_like(x)
    t = dev.time(lambda: y.copy_(x), 10, warmup=2)
    bw = 2 * x.numel() * x.element_size() / _med(t)
    x = y = None
    k = 8192 if not dry else 256
    a = torch.randn(k, k, device=dev.device, dtype=dtype)
    b = torch.randn(k, k, device=dev.device, dtype=dtype)
    t2 = dev.time(lambda: a @ b, 10, warmup=3)
    flops = 2 * k**3 / _med(t2)
    a = b = None
    dev.free()
    return {"copy_bandwidth_gb_s": bw / 1e9, "copy_bytes": 2 * n * 2, "matmul_tflop_s": flops / 1e12,
            "matmul_shape": [k, k, k], "matmul_dtype": str(dtype).replace("torch.", "")}


# ---------------------------------------------------------------------- decode


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
    mp = _matmul_params(model)
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
                     "seconds": t, "seconds_median": _med(t), "tokens": per_prompt * N,
                     "tokens_per_s": per_prompt * N / _med(t)})
        per_prompt_rate = rows[-1]["tokens_per_s"]
    for B in sizes:
        if not budget.allow(f"decode batch {B}", 25 if B <= 512 else 40):
            continue
        try:
            rows += _decode_size(model, dev, B, P, N, V, eos, pad, g, cfg, wbytes, kv_elem, ceil, repeats, out)
        except Exception as e:  # noqa: BLE001 - one size failing (e.g. out of memory) must not lose the rest
            out[str(B)] = {"batch": B, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            _say(f"decode batch {B} FAILED: {type(e).__name__}: {str(e)[:200]}")
        dev.free()
    return {"rows": rows, "by_batch": out, "per_prompt_tokens_per_s": per_prompt_rate, "weights_bytes": wbytes,
            "matmul_params": mp,
            "formula": "bytes/step = all weights (incl. the tied head) + K,V read: 2 x layers x batch x cur_len x "
                       "hidden x bytes, cur_len averaged over the decode steps (P + (N-1)/2); per-step time = "
                       "whole call / N (prefill included: a lower bound on the fraction)"}


def _decode_size(model, dev: Dev, B, P, N, V, eos, pad, g, cfg, wbytes, kv_elem, ceil, repeats, out) -> list:
    import torch

    from collapse.generate import sample_batch

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
    per_step = _med(tf) / N  # conservative: the prefill is inside the timed region
    for name, t in ((f"fast path, CUDA graph (batch {B})", tf), (f"fast path, eager (batch {B})", te),
                    (f"HF generate, batched (batch {B})", th)):
        rows.append({"name": name, "batch": B, "seconds": t, "seconds_median": _med(t), "tokens": tok,
                     "tokens_per_s": tok / _med(t)})
    res.update(graph_tokens_per_s=tok / _med(tf), eager_tokens_per_s=tok / _med(te),
               hf_batched_tokens_per_s=tok / _med(th), first_call_s=first, second_call_s=second,
               graph_capture_and_warmup_s=cap_s, graphs_captured=n_graphs, gpu_memory_reserved_gib=mem,
               bytes_per_step_formula=step_bytes,
               bandwidth_fraction=step_bytes / per_step / (ceil["copy_bandwidth_gb_s"] * 1e9))
    out[str(B)] = res
    _say(f"decode batch {B}: graph {res['graph_tokens_per_s'] / 1e3:.1f}k tok/s, eager "
         f"{res['eager_tokens_per_s'] / 1e3:.1f}k, HF batched {res['hf_batched_tokens_per_s'] / 1e3:.1f}k; "
         f"bandwidth fraction {res['bandwidth_fraction']:.2f}")
    return rows


def beam_bench(model, dev: Dev, budget: Budget, P: int, N: int, batch: int) -> dict | None:
    """Beam search as the paper decodes (5 beams, repetition penalty 3): the project's beam loop on the
    fast engine (the row used by the projection) and HF ``generate`` itself, with the rows compared."""
    import torch

    from collapse.config import GenerationConfig
    from collapse.generate import sample_batch

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
                       "seconds": t, "seconds_median": _med(t), "tokens": batch * N, "tokens_per_s": batch * N / _med(t)}
    dev.free()
    row = res["auto"]
    row["hf_generate"] = res["hf-generate"]
    row["speedup_over_hf_generate"] = row["tokens_per_s"] / res["hf-generate"]["tokens_per_s"]
    row["rows_identical_to_hf_generate"] = int((out["auto"] == out["hf-generate"]).all(1).sum())
    _say(f"beam search: fast {row['tokens_per_s'] / 1e3:.1f}k tok/s, HF generate "
         f"{res['hf-generate']['tokens_per_s'] / 1e3:.1f}k; identical rows {row['rows_identical_to_hf_generate']} of {batch}")
    return row


# ---------------------------------------------------------------------- training, evaluation


def train_bench(model, dev: Dev, budget: Budget, ceil: dict, seq: int, batch: int, steps: int, dry: bool) -> dict:
    import numpy as np

    from collapse.config import LoraConfig
    from collapse.runtime import make_accelerator

    acc = make_accelerator("auto")
    V = model.config.vocab_size
    rows = np.random.default_rng(0).integers(3, V, size=(batch * steps, seq)).astype(np.int32)
    val = rows[:2]
    mp = _matmul_params(model)
    variants = {
        "lora_paper": ("LoRA r=16 on every projection + lm_head trained (configs/curse-of-recursion *-lora)",
                       dict(method="lora", lr=2e-4, lora=LoraConfig(r=16, alpha=32, modules_to_save=["lm_head"]))),
        "lora": ("LoRA r=8 on every projection (the default)", dict(method="lora", lr=2e-4, lora=LoraConfig(r=8))),
        "full": ("full fine-tune (lr 2e-5, as the paper config)", dict(method="full", lr=2e-5)),
    }
    rows_out, out = [], {}
    warm = 3 if not dry else 1
    for key, (label, kw) in variants.items():
        if not budget.allow(f"training: {key}", 30):
            continue
        try:
            rows_out.append(_train_variant(model, dev, acc, key, label, kw, rows, val, batch, seq, warm, mp, ceil, out))
            _say(f"train {key}: {out[key]['tokens_per_s'] / 1e3:.1f}k tok/s, compute fraction "
                 f"{out[key]['compute_fraction']:.2f}")
        except Exception as e:  # noqa: BLE001
            out[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            _say(f"train {key} FAILED: {type(e).__name__}: {str(e)[:200]}")
        dev.free()
    return {"rows": rows_out, "by_variant": out, "seq": seq, "batch": batch,
            "formula": "full: 6 x N_mm x tokens; LoRA: (4 x N_mm + 2 x dense trainable) x tokens; N_mm = "
                       f"{mp['matmul']:,} parameters in matmuls (linear layers + output head); attention "
                       "score FLOPs (~4% at 128 tokens) not counted"}


def _train_variant(model, dev, acc, key, label, kw, rows, val, batch, seq, warm, mp, ceil, out) -> dict:

    from collapse.config import TrainConfig
    from collapse.modeling import attach_lora
    from collapse.train import finetune

    tcfg = TrainConfig(epochs=1, batch_size=batch, select="last", warmup_ratio=0.0, **kw)
    m = copy.deepcopy(model)
    if tcfg.method == "lora":
        m = attach_lora(m, tcfg.lora)
    else:
        for p in m.parameters():
            p.requires_grad_(True)
    probe = [(n, p.detach().clone()) for n, p in m.named_parameters() if p.requires_grad and p.dim() == 2][:3]
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    stamps: list[float] = []
    m.train()
    stats = finetune(m, rows, val, tcfg, acc, key=(0, 1, "bench"), show_progress=False,
                     on_step=lambda s: stamps.append(time.perf_counter()))
    n = len(stamps) - 1 - warm
    per_step = (stamps[-1] - stamps[warm]) / max(n, 1)
    tps = batch * seq / per_step
    # FLOPs: full 6 x matmul params x tokens; LoRA 4 x matmul params (forward + activation gradients through
    # the frozen weights) + 2 x the dense trainable params (their weight gradients, e.g. a trained lm_head)
    dense_trainable = sum(p.numel() for nme, p in m.named_parameters() if p.requires_grad and "lora_" not in nme)
    f_tok = 6 * mp["matmul"] if tcfg.method == "full" else 4 * mp["matmul"] + 2 * dense_trainable
    changed = {}
    named = dict(m.named_parameters())
    for nme, before in probe:
        after = named[nme].detach()
        changed[nme] = float((after != before).float().mean())
    out[key] = {"tokens_per_s": tps, "step_seconds": per_step, "steps_timed": n, "trainable_params": trainable,
                "flops_per_token": f_tok, "tflop_s": f_tok * tps / 1e12,
                "compute_fraction": f_tok * tps / (ceil["matmul_tflop_s"] * 1e12),
                "weight_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                "mixed_precision": acc.mixed_precision, "fused_adamw": dev.cuda,
                "share_of_probed_weights_changed": changed, "val_nll": stats.get("val_nll")}
    row = {"name": f"train {key}: {label}", "seconds": [per_step], "seconds_median": per_step,
           "tokens": batch * seq, "tokens_per_s": tps}
    del m, probe, named
    return row


def eval_bench(model, dev: Dev, budget: Budget, seq: int, n_blocks: int) -> dict | None:
    import numpy as np

    from collapse.evaluate import evaluate_blocks

    if not budget.allow("evaluation", 15):
        return None
    V = model.config.vocab_size
    blocks = np.random.default_rng(1).integers(3, V, size=(n_blocks, seq)).astype(np.int32)
    buckets = np.zeros(V, dtype=np.int64)
    t = dev.time(lambda: evaluate_blocks(model, blocks, buckets, batch_size=64), 3, warmup=1)
    # the same NLL with cross_entropy over [tokens, V] rows instead of evaluate.token_nll's [B, V, L-1]
    # transpose (which takes PyTorch's slow "spatial" log-softmax kernel): a suggestion, measured
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(blocks, dtype=torch.long, device=dev.device)

    def rows_ce():
        with torch.inference_mode():
            for i in range(0, len(x), 64):
                b = x[i:i + 64]
                lg = model(input_ids=b).logits[:, :-1].float()
                F.cross_entropy(lg.reshape(-1, lg.shape[-1]), b[:, 1:].reshape(-1), reduction="none")

    t2 = dev.time(rows_ce, 3, warmup=1)
    dev.free()
    return {"name": f"evaluate_blocks ({n_blocks} x {seq} tokens, batch 64)", "seconds": t, "seconds_median": _med(t),
            "tokens": n_blocks * seq, "tokens_per_s": n_blocks * seq / _med(t),
            "alt_rows_cross_entropy_tokens_per_s": n_blocks * seq / _med(t2)}


def projection(decode: dict, beam: dict | None, train: dict, ev: dict | None) -> dict:
    """Wall time of one paper-scale generation from the measured rates."""
    gen_tokens, train_tokens, epochs, test_tokens, val_tokens = 2.4e6, 2.4e6, 5, 0.28e6, 0.25e6
    by = decode.get("by_batch", {})
    dec = by.get("512", {}).get("graph_tokens_per_s") or max((v.get("graph_tokens_per_s", 0) for k, v in by.items()
                                                               if isinstance(v, dict)), default=0)
    ev_rate = ev["tokens_per_s"] if ev else None
    out = {"assumptions": {"generated_tokens": gen_tokens, "train_tokens_per_epoch": train_tokens, "epochs": epochs,
                           "test_tokens": test_tokens, "validation_tokens_per_epoch": val_tokens,
                           "decode_rate": "fast path with CUDA graph at batch 512"}}
    for variant in ("lora", "lora_paper", "full"):
        tr = train.get("by_variant", {}).get(variant, {}).get("tokens_per_s")
        if not (dec and tr and ev_rate):
            continue
        brief = gen_tokens / dec + epochs * train_tokens / tr + test_tokens / ev_rate
        # what `collapse run` also does per generation: validation after each epoch; the measure stage
        # scores every sample (prompt + continuation, 2x the generated tokens) with model 0
        extra = epochs * val_tokens / ev_rate + 2 * gen_tokens / ev_rate
        out[variant] = {"generate_s": gen_tokens / dec, "train_s": epochs * train_tokens / tr,
                        "evaluate_s": test_tokens / ev_rate, "total_s": brief,
                        "total_with_validation_and_measure_s": brief + extra}
        if beam:
            out[variant]["total_if_generating_with_beam_search_s"] = (
                brief - gen_tokens / dec + gen_tokens / beam["tokens_per_s"])
    return out


# ---------------------------------------------------------------------- main


def cuda_main(args) -> dict:
    import torch

    from collapse.runtime import quiet_libraries

    quiet_libraries()
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    _T0[0] = time.perf_counter()
    dry = bool(getattr(args, "dry_run_cpu", False))
    res = {"schema": SCHEMA, "device": "cuda" if not dry else "cpu (dry run of the cuda mode)", "quick": dry,
           "argv": sys.argv[1:], "parts": {}}
    if not dry and not torch.cuda.is_available():
        res["machine"] = machine_info("cpu")
        res["parts"]["selftest"] = {"skipped": "no CUDA device visible to torch"}
        res["exit_code"] = 2
        return res
    device = torch.device("cuda" if not dry else "cpu")
    res["machine"] = machine_info("cuda" if not dry else "cpu")
    dev = Dev(device)
    budget = Budget(args.budget_s)
    if dry:
        dtype = torch.bfloat16
    else:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons stay fp32
    shape = TINY_OPT if dry else OPT125M
    P, N = (16, 8) if dry else (64, 64)
    _say(f"model: OPT-125m-shaped, random weights, {dtype} on {device}")
    model = build_model(shape, dtype, device)
    res["model"] = {"config": shape, "dtype": str(dtype).replace("torch.", ""), **_matmul_params(model)}
    code = 0
    if args.selftest or args.selftest_only:
        _say("self-test (correctness first)")
        model32 = build_model(shape, torch.float32, device)
        st = selftest(model, model32, dev, B=4 if dry else 8, P=P, N=N // 2 if dry else 16, Bg=8 if dry else 64,
                      Ng=N)
        del model32
        dev.free()
        res["parts"]["selftest"] = {"rows": [], "info": {"passed": st["passed"]}, **st}
        code = 0 if st["passed"] else 1
        if args.selftest_only:
            res["exit_code"] = code
            return res
    _say("ceilings")
    ceil = ceilings(dev, dtype, dry)
    res["parts"]["ceilings"] = {"rows": [], "info": ceil}
    _say(f"copy bandwidth {ceil['copy_bandwidth_gb_s']:.0f} GB/s, {ceil['matmul_dtype']} matmul "
         f"{ceil['matmul_tflop_s']:.0f} TFLOP/s")
    sizes = (64, 256, 512, 1024) if not dry else (4, 8)
    _say("decode")
    dec = decode_bench(model, dev, budget, sizes, P, N, per_prompt=4 if not dry else 2, ceil=ceil,
                       repeats=5 if not dry else 1)
    beam = _guarded("beam search", lambda: beam_bench(model, dev, budget, P, N, batch=128 if not dry else 4), res)
    ratios = {}
    by = dec["by_batch"]
    pp = dec.get("per_prompt_tokens_per_s")
    for B, r in by.items():
        if "error" in r:
            continue
        if pp:
            ratios[f"graph / HF per-prompt (batch {B})"] = r["graph_tokens_per_s"] / pp
        ratios[f"graph / HF batched (batch {B})"] = r["graph_tokens_per_s"] / r["hf_batched_tokens_per_s"]
        ratios[f"graph / eager (batch {B})"] = r["graph_tokens_per_s"] / r["eager_tokens_per_s"]
    info = {f"bandwidth fraction, batch {B}": r["bandwidth_fraction"] for B, r in by.items() if "bandwidth_fraction" in r}
    info.update({f"graph capture + warm-up s, batch {B} ({r.get('graphs_captured')} graphs)":
                 r["graph_capture_and_warmup_s"] for B, r in by.items() if "graph_capture_and_warmup_s" in r})
    info.update({f"GPU memory reserved GiB after batch {B}": r["gpu_memory_reserved_gib"] for B, r in by.items()
                 if r.get("gpu_memory_reserved_gib") is not None})
    dec_rows = dec.pop("rows") + ([{k: v for k, v in beam.items() if k != "hf_generate"}, beam["hf_generate"]]
                                  if beam else [])
    targets = []
    if "512" in by:
        targets.append(_target("decode tokens/s at batch 512 (graph)", by["512"]["graph_tokens_per_s"], ">=", 150e3))
    res["parts"]["decode"] = {"rows": dec_rows, "ratios": ratios, "info": info, "targets": targets, **dec}
    _say("training")
    tr = train_bench(model, dev, budget, ceil, seq=128 if not dry else 16, batch=128 if not dry else 4,
                     steps=12 if not dry else 3, dry=dry)
    tinfo = {f"{k} compute fraction": v["compute_fraction"] for k, v in tr["by_variant"].items()}
    tinfo.update({f"{k} share of probed weights changed": _mean(v["share_of_probed_weights_changed"])
                  for k, v in tr["by_variant"].items()})
    ttargets = []
    if "lora" in tr["by_variant"]:
        ttargets.append(_target("LoRA training tokens/s", tr["by_variant"]["lora"]["tokens_per_s"], ">=", 250e3))
    res["parts"]["training"] = {"rows": tr.pop("rows"), "info": tinfo, "targets": ttargets, **tr}
    ev = _guarded("evaluation", lambda: eval_bench(model, dev, budget, seq=128 if not dry else 16,
                                                   n_blocks=512 if not dry else 8), res)
    if ev:
        res["parts"]["evaluation"] = {"rows": [ev, {
            "name": "  same forward, cross_entropy on [tokens, V] rows (suggested for evaluate.token_nll)",
            "seconds": [], "seconds_median": ev["tokens"] / ev["alt_rows_cross_entropy_tokens_per_s"],
            "tokens": ev["tokens"], "tokens_per_s": ev["alt_rows_cross_entropy_tokens_per_s"]}]}
    proj = projection(dec, beam, tr, ev)
    pinfo = {f"{k}: total s (brief formula)": v["total_s"] for k, v in proj.items() if k != "assumptions"}
    pinfo.update({f"{k}: incl. validation + measure s": v["total_with_validation_and_measure_s"]
                  for k, v in proj.items() if k != "assumptions"})
    pinfo.update({f"{k}: generating with beam search s": v["total_if_generating_with_beam_search_s"]
                  for k, v in proj.items() if k != "assumptions" and "total_if_generating_with_beam_search_s" in v})
    ptargets = []
    if "lora" in proj:
        ptargets.append(_target("projected paper-scale generation, LoRA (s)", proj["lora"]["total_s"], "<=", 90.0))
    res["parts"]["projection"] = {"rows": [], "info": pinfo, "targets": ptargets, **proj}
    res["budget"] = {"seconds": args.budget_s, "used_s": time.perf_counter() - budget.t0, "skipped": budget.skipped}
    res["exit_code"] = code
    res["load_avg_after"] = _loadavg()
    return res


def _guarded(what: str, f, res: dict):
    try:
        return f()
    except Exception as e:  # noqa: BLE001 - one failing part must not lose the others
        res.setdefault("errors", []).append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
        _say(f"{what} FAILED: {type(e).__name__}: {str(e)[:200]}")
        return None


def _mean(d: dict) -> float | None:
    v = list(d.values())
    return sum(v) / len(v) if v else None
