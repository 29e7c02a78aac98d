"""The CUDA mode's self-test: the fast decoding path against HF (logits, greedy, sampling), before any timing."""

from __future__ import annotations

import math

from collapse.bench.gpu.common import Dev, say_cuda


def selftest(model, model32, dev: Dev, B: int = 8, P: int = 64, N: int = 16, Bg: int = 64, Ng: int = 64) -> dict:
    import torch

    from collapse.config import GenerationConfig
    from collapse.decoding.fastgen import FastDecoder, HFEngine
    from collapse.decoding.generate import sample_batch

    d = dev.device
    c = model.config
    V, eos, pad = c.vocab_size, c.eos_token_id, c.pad_token_id
    g = torch.Generator(device=d).manual_seed(0)
    prompts = torch.randint(3, V, (B, P), generator=g, device=d)
    ones = torch.ones_like(prompts)
    checks = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "pass": bool(ok), "detail": detail})
        say_cuda(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")

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
    say_cuda(f"SELFTEST {'PASSED' if ok else 'FAILED'} ({sum(c['pass'] for c in checks)}/{len(checks)} checks)")
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

    from collapse.decoding.fastgen import HFEngine, make_engine

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
