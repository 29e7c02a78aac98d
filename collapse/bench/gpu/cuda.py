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

import sys
import time

from collapse.bench.gpu.common import OPT125M, TINY_OPT, Budget, Dev, build_model, matmul_params, say_cuda
from collapse.bench.gpu.decode import beam_bench, decode_bench
from collapse.bench.gpu.llama import llama_bench
from collapse.bench.gpu.selftest import selftest
from collapse.bench.gpu.train import eval_bench, train_bench
from collapse.bench.harness import SCHEMA, load_average, machine_info, median, restart_clock, target

# ---------------------------------------------------------------------- ceilings


def ceilings(dev: Dev, dtype, dry: bool) -> dict:
    import torch

    n = (1 << 28) if not dry else (1 << 20)  # 512 MiB of bf16 (x2 buffers)
    x = torch.empty(n, dtype=torch.bfloat16, device=dev.device).fill_(1.0)
    y = torch.empty_like(x)
    t = dev.time(lambda: y.copy_(x), 10, warmup=2)
    bw = 2 * x.numel() * x.element_size() / median(t)
    x = y = None
    k = 8192 if not dry else 256
    a = torch.randn(k, k, device=dev.device, dtype=dtype)
    b = torch.randn(k, k, device=dev.device, dtype=dtype)
    t2 = dev.time(lambda: a @ b, 10, warmup=3)
    flops = 2 * k**3 / median(t2)
    a = b = None
    dev.free()
    return {"copy_bandwidth_gb_s": bw / 1e9, "copy_bytes": 2 * n * 2, "matmul_tflop_s": flops / 1e12,
            "matmul_shape": [k, k, k], "matmul_dtype": str(dtype).replace("torch.", "")}


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
    for variant in ("lora", "lora_paper", "lora_paper_run_rows", "full"):
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
    restart_clock()
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
    say_cuda(f"model: OPT-125m-shaped, random weights, {dtype} on {device}")
    model = build_model(shape, dtype, device)
    res["model"] = {"config": shape, "dtype": str(dtype).replace("torch.", ""), **matmul_params(model)}
    code = 0
    if args.selftest or args.selftest_only:
        say_cuda("self-test (correctness first)")
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
    say_cuda("ceilings")
    ceil = ceilings(dev, dtype, dry)
    res["parts"]["ceilings"] = {"rows": [], "info": ceil}
    say_cuda(f"copy bandwidth {ceil['copy_bandwidth_gb_s']:.0f} GB/s, {ceil['matmul_dtype']} matmul "
             f"{ceil['matmul_tflop_s']:.0f} TFLOP/s")
    sizes = (64, 256, 512, 1024) if not dry else (4, 8)
    say_cuda("decode")
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
        targets.append(target("decode tokens/s at batch 512 (graph)", by["512"]["graph_tokens_per_s"], ">=", 150e3))
    res["parts"]["decode"] = {"rows": dec_rows, "ratios": ratios, "info": info, "targets": targets, **dec}
    say_cuda("Llama-family decode")
    lm = _guarded("Llama-family decode", lambda: llama_bench(dev, budget, dtype, dry, P, N, 512 if not dry else 4), res)
    if lm and "rows" in lm:
        res["parts"]["llama_decode"] = {"rows": lm.pop("rows"), "info": {
            "engine": lm["engine"], "fp32 max |logit diff| vs HF": lm["fp32_max_abs_logit_diff"],
            "greedy rows identical to HF generate": f"{lm['greedy_rows_identical_to_hf_generate']}/{lm['greedy_rows']}",
            "fast / HF batched generate": lm["fast_over_hf"]}, **lm}
    say_cuda("training")
    tr = train_bench(model, dev, budget, ceil, seq=128 if not dry else 16, batch=128 if not dry else 4,
                     steps=12 if not dry else 3, dry=dry)
    tinfo = {f"{k} compute fraction": v["compute_fraction"] for k, v in tr["by_variant"].items()}
    tinfo.update({f"{k} share of probed weights changed": _mean(v["share_of_probed_weights_changed"])
                  for k, v in tr["by_variant"].items()})
    ttargets = []
    if "lora" in tr["by_variant"]:
        ttargets.append(target("LoRA training tokens/s", tr["by_variant"]["lora"]["tokens_per_s"], ">=", 250e3))
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
        ptargets.append(target("projected paper-scale generation, LoRA (s)", proj["lora"]["total_s"], "<=", 90.0))
    res["parts"]["projection"] = {"rows": [], "info": pinfo, "targets": ptargets, **proj}
    res["budget"] = {"seconds": args.budget_s, "used_s": time.perf_counter() - budget.t0, "skipped": budget.skipped}
    res["exit_code"] = code
    res["load_avg_after"] = load_average()
    return res


def _guarded(what: str, f, res: dict):
    try:
        return f()
    except Exception as e:  # noqa: BLE001 - one failing part must not lose the others
        res.setdefault("errors", []).append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
        say_cuda(f"{what} FAILED: {type(e).__name__}: {str(e)[:200]}")
        return None


def _mean(d: dict) -> float | None:
    v = list(d.values())
    return sum(v) / len(v) if v else None
