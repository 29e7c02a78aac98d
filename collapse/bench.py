"""`scripts/bench.py`: the project's speed claims, measured against the baseline a researcher writes first.

CPU mode (default) measures, in one process on one machine, with the same inputs for every method:

1. generation tokens/s: ``generate_corpus`` (default engine) vs one HF ``generate`` call per prompt, vs
   one batched HF ``generate`` call, plus before/after rows for the sampler changes of this module's
   commit (Gumbel-max over the whole batch -> float64 inverse CDF, decoded in chunks of 64 rows);
2. token counting: ``metrics.counts`` + ``bucket_shift`` vs ``collections.Counter`` over 10^7 ids;
3. training tokens/s: ``train.finetune`` (LoRA, fixed-length rows) vs a padded-batch HF loop;
4. end-to-end wall time and peak RSS of the embedded default ``collapse run`` (subprocess);
5. peak RSS against corpus size (1x, 4x, 16x samples; subprocess each).

CUDA mode (``--device cuda``, see :func:`cuda_main`) measures a randomly initialised OPT-125m-shaped
model: decode tokens/s (per-prompt, batched HF, the fast path eager and with CUDA graphs), training
tokens/s (LoRA, full), the measured bandwidth / FLOP/s ceilings, and a projected paper-scale generation.

Every figure is a median over repeats, methods interleaved round by round (a noisy neighbour slows all
methods alike). Nothing here is a stored result: every number in the JSON was measured by this run.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCHEMA = "collapse-bench/1"
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- machine, timing, output


def machine_info(device: str = "cpu") -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        txt = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", txt, re.M)
        cpu = m.group(1).strip() if m else cpu
        f = re.search(r"^flags\s*:\s*(.+)$", txt, re.M)
        flags = set(f.group(1).split()) if f else set()
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = os.cpu_count()
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cores_usable": affinity,
        "cpu_features": sorted(x for x in flags if x in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"}),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": _loadavg(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    gpu_capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported())
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _interleaved(methods: dict, repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each ``methods[name]()`` over ``repeats`` rounds (methods interleaved per round).

    A method may return a number of seconds itself (when it times only part of its work).
    """
    CPU_TIMES.clear()
    if warmup:
        for f in methods.values():
            f()
    out: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for name, f in methods.items():
            c0 = time.process_time()
            t0 = time.perf_counter()
            r = f()
            dt = time.perf_counter() - t0
            CPU_TIMES.setdefault(name, []).append(time.process_time() - c0)
            out[name].append(float(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else dt)
    return out


CPU_TIMES: dict[str, list[float]] = {}  # process CPU seconds of the last _interleaved calls (diagnostics)


def _row(name: str, times: list[float], units: float | None = None, unit: str = "tokens", **extra) -> dict:
    med = _median(times)
    row = {"name": name, "seconds_median": med, "seconds": times, **extra}
    if units is not None:
        row[unit] = units
        row[f"{unit}_per_s"] = units / med if med > 0 else None
    return row


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return "—"
        if abs(v) >= 1e6:
            return f"{v / 1e6:.2f}M"
        if abs(v) >= 1e4:
            return f"{v / 1e3:.1f}k"
        if 0 < abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def print_table(res: dict, file=sys.stdout) -> None:
    m = res["machine"]
    print(f"\n== collapse bench ({res['device']}{', quick' if res.get('quick') else ''}) — {m.get('gpu') or m['cpu']}; "
          f"{m['cores_usable']} cores usable, torch {m['torch']}, {m['torch_threads']} threads; "
          f"load avg before {m.get('load_avg')} after {res.get('load_avg_after')}", file=file)
    for pname, part in res["parts"].items():
        print(f"\n-- {pname}", file=file)
        if "skipped" in part:
            print(f"   skipped: {part['skipped']}", file=file)
            continue
        for c in part.get("checks", []):
            print(f"   {'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['detail']}", file=file)
        for r in part.get("rows", []):
            rate = next((k for k in r if k.endswith("_per_s")), None)
            extra = f"  {rate.replace('_', ' ')}: {_fmt(r[rate])}" if rate else ""
            notes = f"  ({r['note']})" if r.get("note") else ""
            print(f"   {r['name']:<58} median {_fmt(r['seconds_median'], 3):>8} s{extra}{notes}", file=file)
        for k, v in part.get("ratios", {}).items():
            print(f"   ratio {k:<52} {_fmt(v, 2)}×", file=file)
        for k, v in part.get("info", {}).items():
            print(f"   {k:<58} {_fmt(v, 3) if not isinstance(v, (dict, list)) else json.dumps(v)}", file=file)
        for t in part.get("targets", []):
            print(f"   target {t['what']}: {_fmt(t['value'], 2)} vs {t['op']} {t['threshold']} -> "
                  f"{'met' if t['met'] else 'NOT met'}", file=file)


def _target(what: str, value, op: str, threshold: float) -> dict:
    ok = value is not None and math.isfinite(value) and (value >= threshold if op == ">=" else value <= threshold)
    return {"what": what, "value": value, "op": op, "threshold": threshold, "met": bool(ok)}


# ---------------------------------------------------------------------- CPU inputs


class Inputs:
    """The model, tokenizer and real token blocks shared by parts 1-3."""

    def __init__(self, quick: bool, seed: int = 0):
        import torch

        from collapse.config import load_config
        from collapse.data import concat_blocks, load_splits, tokenize

        self.quick = quick
        cfg = load_config(REPO / "configs" / "tiny.yaml")
        self.cfg = cfg
        splits = load_splits(cfg.data)
        self.scratch = {}
        if quick:
            from collapse.config import ScratchConfig
            from collapse.scratch import build_scratch_model, train_tokenizer

            tok = train_tokenizer(splits.train[:60], 512)
            torch.manual_seed(seed)
            sc = ScratchConfig(vocab_size=512, n_layer=1, d_model=32, n_head=2, context=256)
            model = build_scratch_model(sc, len(tok), tok.eos_token_id).eval()
            docs = splits.train[:60]
            self.scratch = {"model": "random tiny GPT-2 (quick)", "cached": None, "build_seconds": 0.0}
        else:
            from collapse.modeling import load_pretrained
            from collapse.scratch import cache_root, get_scratch_model, scratch_key

            key = scratch_key(cfg.model.scratch, splits.fingerprint(), cfg.seed)
            cached = (cache_root() / "scratch" / key / "DONE").is_file()
            t0 = time.perf_counter()
            folder = get_scratch_model(cfg.model.scratch, splits, cfg.seed, show_progress=False)
            built = time.perf_counter() - t0
            model, tok = load_pretrained(str(folder), cfg.model, torch.device("cpu"))
            info = json.loads((Path(folder) / "scratch.json").read_text())
            self.scratch = {"model": f"scratch {key}", "cached": cached,
                            "build_seconds_now": None if cached else built,
                            "build_seconds_recorded": info.get("seconds"), "val_ppl": info.get("val_ppl")}
            docs = splits.train
        self.model, self.tok = model.eval(), tok
        self.eos = tok.eos_token_id
        ids = tokenize(tok, docs)
        gc = cfg.generation
        self.prompt_tokens, self.new_tokens = (gc.prompt_tokens, gc.new_tokens) if not quick else (16, 8)
        L = self.prompt_tokens + self.new_tokens
        blocks = concat_blocks(ids, L, self.eos)
        order = np.random.default_rng(seed).permutation(len(blocks))
        self.prompts = blocks[order, : self.prompt_tokens]  # real text blocks, shuffled
        self.rows = concat_blocks(ids, self.new_tokens if not quick else 32, self.eos)  # fixed-length training rows
        self.val_blocks = blocks[:8] if quick else blocks[:32]


# ---------------------------------------------------------------------- part 1: generation


def _sample_batch_v0(model, prompts, new_tokens: int, generator, suppress_ids=()):
    """The sampler BEFORE this change (commit 0ba04e1), kept verbatim for the before/after rows:
    Gumbel-max noise for every (row, vocab) entry each step, the whole batch decoded at once."""
    import torch

    from collapse.fastgen import make_engine
    from collapse.generate import _gumbel

    with torch.inference_mode():
        dev = next(model.parameters()).device
        prompts = prompts.to(dev)
        B = prompts.shape[0]
        engine = make_engine(model, B, prompts.shape[1] + new_tokens, graphs=False)
        logits = engine.prefill(prompts)
        V = logits.shape[-1]
        suppress = torch.as_tensor(list(suppress_ids), dtype=torch.long, device=dev) if suppress_ids else None
        result = torch.empty(B, new_tokens, dtype=torch.long, device=dev)
        for t in range(new_tokens):
            if suppress is not None:
                logits[:, suppress] = float("-inf")
            nxt = (logits + _gumbel((B, V), generator, dev)).argmax(-1)
            result[:, t] = nxt
            if t + 1 < new_tokens:
                logits = engine.step(nxt)
        return result.cpu()


def bench_generation(inp: Inputs, repeats: int, batch: int, n_prompts: int, n_per_prompt: int) -> dict:
    import torch

    from collapse.config import GenerationConfig
    from collapse.generate import generate_corpus, sample_batch
    from collapse.seeding import seeded_generator

    model, eos, P, N = inp.model, inp.eos, inp.prompt_tokens, inp.new_tokens
    prompts = inp.prompts[:n_prompts]
    n_prompts = len(prompts)
    gcfg = GenerationConfig(prompt_tokens=P, new_tokens=N, batch_size=batch, temperature=1.0)
    sink = lambda b, p, g: None  # noqa: E731
    key = (0, "bench")

    def project():
        generate_corpus(model, prompts, N, gcfg, key=key, sink=sink, suppress_ids=(eos,), progress=False)

    def project_hf_engine():
        c = copy.copy(gcfg)
        c.engine = "hf"
        generate_corpus(model, prompts, N, c, key=key, sink=sink, suppress_ids=(eos,), progress=False)

    def chunked(c: int):
        def f():
            for b in range(0, n_prompts, batch):
                sample_batch(model, torch.as_tensor(prompts[b:b + batch], dtype=torch.long), N, gcfg,
                             seeded_generator(*key, b // batch), (eos,), chunk=c)
        return f

    from collapse.generate import decode_chunk

    default_chunk = decode_chunk(torch.device("cpu"), batch)
    unchunked = chunked(batch)  # after, but the whole batch at once (isolates the chunking effect)
    other_chunk = 64 if default_chunk != 64 else 128

    def before():
        for b in range(0, n_prompts, batch):
            _sample_batch_v0(model, torch.as_tensor(prompts[b:b + batch], dtype=torch.long), N,
                             seeded_generator(*key, b // batch), (eos,))

    gen_kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=N, min_new_tokens=N,
                  pad_token_id=eos)
    pp = torch.as_tensor(prompts[:n_per_prompt], dtype=torch.long)

    def hf_per_prompt():
        torch.manual_seed(0)
        with torch.inference_mode():
            for i in range(len(pp)):
                x = pp[i:i + 1]
                model.generate(input_ids=x, attention_mask=torch.ones_like(x), **gen_kw)

    hb = torch.as_tensor(prompts[:batch], dtype=torch.long)

    def hf_batched():
        torch.manual_seed(0)
        with torch.inference_mode():
            model.generate(input_ids=hb, attention_mask=torch.ones_like(hb), **gen_kw)

    methods = {"project": project, "unchunked": unchunked, "other_chunk": chunked(min(other_chunk, batch)),
               "before": before, "project_hf_engine": project_hf_engine, "hf_batched": hf_batched,
               "hf_per_prompt": hf_per_prompt}
    t = _interleaved(methods, repeats)
    tok_all, tok_pp, tok_hb = n_prompts * N, len(pp) * N, len(hb) * N
    rows = [
        _row(f"collapse generate_corpus (default engine, batch {batch}, chunks of {default_chunk})", t["project"],
             tok_all, note=f"{n_prompts} prompts"),
        _row(f"  same sampler, whole batch at once (chunk={batch})", t["unchunked"], tok_all),
        _row(f"  same sampler, chunks of {min(other_chunk, batch)}", t["other_chunk"], tok_all),
        _row("  BEFORE: Gumbel-max sampler, whole batch (commit 0ba04e1)", t["before"], tok_all),
        _row("collapse generate_corpus, engine=hf (HF forward + cache)", t["project_hf_engine"], tok_all),
        _row(f"HF generate, one batched call of {len(hb)}", t["hf_batched"], tok_hb),
        _row("HF generate, one call per prompt (the baseline)", t["hf_per_prompt"], tok_pp,
             note=f"{len(pp)} prompts"),
    ]
    rate = {k: r["tokens_per_s"] for k, r in zip(methods, rows)}
    ratios = {
        "project / HF per-prompt": rate["project"] / rate["hf_per_prompt"],
        "HF batched / HF per-prompt": rate["hf_batched"] / rate["hf_per_prompt"],
        "project / HF batched": rate["project"] / rate["hf_batched"],
        "after / before (this change, total)": rate["project"] / rate["before"],
        "  of which: sampler (unchunked after / before)": rate["unchunked"] / rate["before"],
        f"  of which: chunks of {default_chunk} (after / unchunked)": rate["project"] / rate["unchunked"],
        f"chunks of {min(other_chunk, batch)} / chunks of {default_chunk}": rate["other_chunk"] / rate["project"],
        "fast engine / HF engine (same loop)": rate["project"] / rate["project_hf_engine"],
    }
    info = {"prompt_tokens": P, "new_tokens": N, "temperature": 1.0, "default_chunk": default_chunk,
            "cpu_seconds_median": {k: _median(CPU_TIMES.get(k, [])) for k in methods},
            "hf_generate_kwargs": {k: v for k, v in gen_kw.items() if k != "pad_token_id"}}
    info.update(_sampler_probe(inp, batch))
    return {"rows": rows, "ratios": ratios, "info": info,
            "targets": [_target("batched project generator / HF per-prompt", ratios["project / HF per-prompt"],
                                ">=", 15.0)]}


def bench_beam(inp: Inputs, repeats: int, n_prompts: int, beams: int = 5, penalty: float = 3.0) -> dict:
    """Part 1b: beam search (the paper's decoding): our beam loop on the fast engine vs HF ``generate``
    on the same batch of prompts, plus how many rows agree token for token (they must all, bar float
    near-ties between the two forwards)."""
    import torch

    from collapse.config import GenerationConfig
    from collapse.generate import sample_batch

    model, eos, P, N = inp.model, inp.eos, inp.prompt_tokens, inp.new_tokens
    x = torch.as_tensor(inp.prompts[:n_prompts], dtype=torch.long)
    cfg = {e: GenerationConfig(prompt_tokens=P, new_tokens=N, num_beams=beams, repetition_penalty=penalty, engine=e)
           for e in ("auto", "hf", "hf-generate")}
    out = {}

    def run(e):
        def f():
            out[e] = sample_batch(model, x, N, cfg[e], torch.Generator(), (eos,))
        return f

    t = _interleaved({"project": run("auto"), "project_hf_engine": run("hf"), "hf_generate": run("hf-generate")},
                     repeats)
    tok = len(x) * N
    rows = [
        _row(f"collapse beam search, fast engine ({beams} beams, penalty {penalty})", t["project"], tok,
             note=f"{len(x)} prompts"),
        _row("collapse beam search, engine=hf (HF forward + cache)", t["project_hf_engine"], tok),
        _row(f"HF generate(num_beams={beams}, repetition_penalty={penalty}), one batched call", t["hf_generate"], tok),
    ]
    same = lambda a, b: int((out[a] == out[b]).all(1).sum())  # noqa: E731
    rate = {k: r["tokens_per_s"] for k, r in zip(("project", "project_hf_engine", "hf_generate"), rows)}
    return {"rows": rows,
            "ratios": {"project / HF generate": rate["project"] / rate["hf_generate"],
                       "engine=hf / HF generate": rate["project_hf_engine"] / rate["hf_generate"]},
            "info": {"rows_identical_fast_vs_hf_generate": f"{same('auto', 'hf-generate')} of {len(x)}",
                     "rows_identical_hf_engine_vs_hf_generate": f"{same('hf', 'hf-generate')} of {len(x)}",
                     "prompt_tokens": P, "new_tokens": N, "num_beams": beams, "repetition_penalty": penalty,
                     "cpu_seconds_median": {k: _median(CPU_TIMES.get(k, [])) for k in t}},
            "targets": []}


def _sampler_probe(inp: Inputs, batch: int) -> dict:
    """Per-step costs of the two samplers at [batch, V] and the bf16-weights question (not adopted)."""
    import torch

    from collapse.fastgen import FastDecoder
    from collapse.generate import _gumbel, sample_icdf

    model = inp.model
    x = torch.as_tensor(inp.prompts[:batch], dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        eng = FastDecoder(model, len(x), x.shape[1] + 1)
        logits = eng.prefill(x)
        B, V = logits.shape
        u = torch.rand(B, dtype=torch.float64, generator=g)
        t = _interleaved({
            "gumbel": lambda: (logits + _gumbel((B, V), g, logits.device)).argmax(-1),
            "icdf": lambda: sample_icdf(logits, u),
            "step": lambda: (setattr(eng, "pos", x.shape[1] - 1), eng.step(logits.argmax(-1))),
        }, 15)
        out = {"per_step_ms_at_batch": B,
               "per_step_ms_gumbel_noise_and_argmax": 1e3 * _median(t["gumbel"]),
               "per_step_ms_icdf_sampler": 1e3 * _median(t["icdf"]),
               "per_step_ms_forward_at_prompt_end": 1e3 * _median(t["step"])}
        # bf16 weights, logits in fp32 (measured, NOT adopted: the logits move by more than sampling can ignore)
        if True:
            mb = copy.deepcopy(model).to(torch.bfloat16)
            eb = FastDecoder(mb, len(x), x.shape[1] + 1)
            lb = eb.prefill(x).float()
            p32 = torch.log_softmax(logits.double(), -1)
            p16 = torch.log_softmax(lb.double(), -1)
            kl = (p32.exp() * (p32 - p16)).sum(-1)
            tb = _interleaved({"fp32": lambda: (setattr(eng, "pos", x.shape[1] - 1), eng.step(logits.argmax(-1))),
                               "bf16": lambda: (setattr(eb, "pos", x.shape[1] - 1), eb.step(logits.argmax(-1)))}, 15)
            out.update({"bf16_weights_max_abs_dlogit": float((lb - logits).abs().max()),
                        "bf16_weights_mean_kl_nats": float(kl.mean()),
                        "bf16_weights_step_speedup": _median(tb["fp32"]) / _median(tb["bf16"]),
                        "bf16_weights_adopted": False})
    return out


# ---------------------------------------------------------------------- part 2: counting


def zipf_ids(n: int, vocab: int = 4096, seed: int = 0, a: float = 1.1) -> np.ndarray:
    """``n`` int32 token ids with Zipf-Mandelbrot frequencies over ``vocab`` types (ids shuffled)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(vocab) + 2.7) ** a
    p /= p.sum()
    ids = rng.permutation(vocab)[np.searchsorted(np.cumsum(p), rng.random(n), side="right").clip(0, vocab - 1)]
    return ids.astype(np.int32)


def _bucket_shift_counter(ref: collections.Counter, gen: collections.Counter) -> dict:
    """The researcher's pure-Python bucket shift: rank reference types, sum shares per bucket."""
    from collapse.metrics import BUCKETS, RANK_EDGES

    ranked = sorted(ref.items(), key=lambda kv: (-kv[1], kv[0]))
    bucket = {}
    for r, (t, _) in enumerate(ranked, start=1):
        bucket[t] = next((i for i, e in enumerate(RANK_EDGES) if r <= e), len(RANK_EDGES))
    rs = [0.0] * len(BUCKETS)
    gs = [0.0] * len(BUCKETS)
    for t, c in ref.items():
        rs[bucket[t]] += c
    for t, c in gen.items():
        gs[bucket.get(t, len(BUCKETS) - 1)] += c
    rt, gt = sum(rs), sum(gs)
    return {name: (None if rs[k] == 0 else 100.0 * ((gs[k] / gt) / (rs[k] / rt) - 1.0)) for k, name in enumerate(BUCKETS)}


def bench_counting(n: int, repeats: int, vocab: int = 4096) -> dict:
    from collapse import metrics as M

    gen = zipf_ids(n, vocab, seed=1)
    ref_ids = zipf_ids(max(n // 10, 1000), vocab, seed=2)
    ref_np = M.counts(ref_ids, vocab)
    ref_c = collections.Counter(ref_ids.tolist())
    box: dict = {}

    def ours():
        c = M.counts(gen, vocab)
        box["ours"] = (c, M.bucket_shift(ref_np, c))

    def counter_tolist():
        c = collections.Counter(gen.tolist())
        box["counter"] = (c, _bucket_shift_counter(ref_c, c))

    def tolist_only():
        gen.tolist()

    def ours_one_thread():  # Counter uses one core: the same kernel held to one thread, for a like-for-like figure
        import torch

        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            M.counts(gen[:1000], vocab)  # wake the (resized) thread pool outside the timed region
            t0 = time.perf_counter()
            M.bucket_shift(ref_np, M.counts(gen, vocab))
            return time.perf_counter() - t0
        finally:
            torch.set_num_threads(n_threads)

    t = _interleaved({"ours": ours, "ours_1t": ours_one_thread, "counter": counter_tolist, "tolist": tolist_only},
                     repeats)
    c_np, bs_np = box["ours"]
    c_py, bs_py = box["counter"]
    same_counts = all(c_np[k] == v for k, v in c_py.items()) and int(c_np.sum()) == sum(c_py.values())
    same_shift = all((bs_np[k]["shift_pct"] is None and bs_py[k] is None)
                     or (bs_py[k] is not None and abs(bs_np[k]["shift_pct"] - bs_py[k]) < 1e-9) for k in bs_py)
    rows = [_row("metrics.counts (torch.bincount, zero-copy) + bucket_shift", t["ours"], n, unit="ids"),
            _row("collections.Counter(arr.tolist()) + pure-Python bucket shift", t["counter"], n, unit="ids",
                 note="tolist INSIDE the timed region"),
            _row("  of which arr.tolist() alone", t["tolist"], n, unit="ids"),
            _row("metrics.counts + bucket_shift, torch held to 1 thread", t["ours_1t"], n, unit="ids")]
    ratio = _median(t["counter"]) / _median(t["ours"])
    return {"rows": rows, "ratios": {"Counter / counts": ratio,
                                     "Counter / counts (1 thread)": _median(t["counter"]) / _median(t["ours_1t"])},
            "info": {"ids": n, "vocab": vocab, "dtype": "int32", "distribution": "Zipf-Mandelbrot a=1.1, b=2.7",
                     "same_counts": same_counts, "same_bucket_shift": same_shift},
            "targets": [_target("counts speed-up over Counter", ratio, ">=", 40.0)]}


# ---------------------------------------------------------------------- part 3: training


def bench_training(inp: Inputs, repeats: int, n_rows: int, batch: int) -> dict:
    import torch

    from collapse.modeling import attach_lora, seed_int
    from collapse.runtime import make_accelerator
    from collapse.train import finetune

    rows = inp.rows[:n_rows]
    n_rows, L = rows.shape
    tcfg = copy.deepcopy(inp.cfg.train)
    tcfg.epochs, tcfg.batch_size, tcfg.select = 1, batch, "last"
    warm = 2  # steps excluded from the rate (allocator, first backward)
    acc = make_accelerator("no")

    def lora_copy():
        torch.manual_seed(seed_int(0, 1, "init"))
        return attach_lora(copy.deepcopy(inp.model), tcfg.lora)

    box: dict = {}

    def steady(stamps: list[float]) -> float:
        """Seconds for all steps at the steady rate (the first ``warm`` steps excluded)."""
        n = len(stamps) - 1 - warm
        return (stamps[-1] - stamps[warm]) / n * len(stamps)

    def project():
        stamps = []
        m = lora_copy()
        finetune(m, rows, inp.val_blocks[:2], tcfg, acc, key=(0, 1, "train"), show_progress=False,
                 on_step=lambda s: stamps.append(time.perf_counter()))
        box["project_steps"] = len(stamps)
        return steady(stamps)

    texts = inp.tok.batch_decode(rows.tolist())
    tok = inp.tok
    tok.padding_side = "right"
    pad_share: list[float] = []

    def naive():
        m = lora_copy()
        m.train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=tcfg.lr)
        real = 0
        stamps = []
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, return_tensors="pt")
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            # (not **enc: this tokenizer also returns token_type_ids, which GPT-2 would embed)
            out = m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            real += int(enc["attention_mask"].sum())
            stamps.append(time.perf_counter())
            if i == 0:
                pad_share.append(1.0 - float(enc["attention_mask"].float().mean()))
        box["naive_real"] = real
        return steady(stamps)

    t = _interleaved({"project": project, "naive": naive}, repeats, warmup=False)
    proj_tokens = box["project_steps"] * batch * L  # finetune wraps the last step to a full batch, as DDP does
    rows_out = [_row(f"collapse finetune (LoRA r={tcfg.lora.r}, {L}-token rows, batch {batch})", t["project"],
                     proj_tokens),
                _row("padded-batch HF loop (tokenizer padding, labels -100, model(**batch, labels))", t["naive"],
                     box["naive_real"], note="real (non-pad) tokens counted")]
    ratio = rows_out[0]["tokens_per_s"] / rows_out[1]["tokens_per_s"]
    return {"rows": rows_out, "ratios": {"finetune / padded loop (real tokens/s)": ratio},
            "info": {"rows": n_rows, "row_tokens": L, "pad_share_first_batch": pad_share[0] if pad_share else None,
                     "warmup_steps_excluded": warm, "threads": torch.get_num_threads()}}


# ---------------------------------------------------------------------- parts 4-5: subprocess runs


def run_subprocess(args: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``python -m collapse ARGS``; wall seconds, exit code, stderr and the child's peak RSS (wait4)."""
    e = dict(os.environ)
    e.setdefault("HF_HUB_OFFLINE", "1")
    e.setdefault("HF_DATASETS_OFFLINE", "1")
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    e.update(env or {})
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "collapse", *args], stdout=subprocess.DEVNULL, stderr=err,
                             env=e, cwd=REPO, text=True)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    return {"returncode": p.returncode, "wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024.0, "stderr": stderr,
            "user_s": ru.ru_utime, "sys_s": ru.ru_stime}


STAGE_RE = re.compile(r"\[\s*\d+/\d+\]\s+(gen \d+: .+?)\s+(\d+\.\d+) s\b")


def parse_stages(stderr: str) -> dict:
    stages = {label.strip(): float(sec) for label, sec in STAGE_RE.findall(stderr)}
    totals: dict[str, float] = collections.defaultdict(float)
    for label, sec in stages.items():
        totals[label.split(": ", 1)[1]] += sec
    return {"stages": stages, "totals": dict(totals)}


def bench_e2e(quick: bool, timeout: float) -> dict:
    """The embedded default ``collapse run`` from an EMPTY model cache (a fresh ``COLLAPSE_CACHE``): the
    wall time includes generation 0's training (tokenizer + pre-training of the scratch model), as a
    new user meets it. Split by stage from the run's own stage lines and the scratch model's record."""
    overrides = QUICK_OVERRIDES if quick else []
    with tempfile.TemporaryDirectory(prefix="collapse-bench-") as d:
        r = run_subprocess(["run", *overrides, f"out_dir={d}/run", "wandb.mode=disabled"],
                           env={"COLLAPSE_CACHE": f"{d}/cache"}, timeout=timeout)
        records = [json.loads(p.read_text()) for p in Path(d, "cache").glob("scratch/*/scratch.json")]
    if r["returncode"] != 0:
        return {"skipped": f"collapse run failed (exit {r['returncode']}): {r['stderr'][-600:]}"}
    st = parse_stages(r["stderr"])
    build = records[0].get("seconds") if len(records) == 1 else None
    after = r["wall_s"] - (build or 0.0)
    rows = [{"name": "collapse run (embedded default) from an empty model cache", "seconds_median": r["wall_s"],
             "seconds": [r["wall_s"]], "peak_rss_mib": r["peak_rss_mib"]},
            {"name": "  of which gen-0 training (scratch model: tokenizer + pre-training)",
             "seconds_median": build, "seconds": [build]},
            {"name": "  of which the generations, evaluation and the report", "seconds_median": after, "seconds": [after]}]
    info = {"empty_cache": True, "scratch_build_s": build, "after_build_s": after,
            "peak_rss_mib": r["peak_rss_mib"], "cpu_user_s": r["user_s"], "cpu_sys_s": r["sys_s"],
            "stage_totals_s": st["totals"], "stages_s": st["stages"], "overrides": overrides}
    return {"rows": rows, "info": info,
            "targets": [_target("end to end from an empty cache, incl. gen-0 training (s)", r["wall_s"], "<=", 240.0)]}


QUICK_OVERRIDES = ["model.scratch.vocab_size=512", "model.scratch.n_layer=1", "model.scratch.d_model=32",
                   "model.scratch.n_head=2", "model.scratch.steps=30", "model.scratch.batch_size=16",
                   "model.scratch.context=256", "generations=1", "generation.num_sequences=64",
                   "generation.batch_size=32", "generation.prompt_tokens=16", "generation.new_tokens=16",
                   "train.epochs=1", "train.batch_size=16", "eval.max_blocks=16"]


def _ensure_scratch(overrides: list[str]) -> None:
    """Build (or find) the default scratch model in the user's cache, so no measured run includes its build."""
    from collapse.config import load_config
    from collapse.data import load_splits
    from collapse.scratch import get_scratch_model

    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides)
    get_scratch_model(cfg.model.scratch, load_splits(cfg.data), cfg.seed, show_progress=False)


def bench_memory(quick: bool, timeout: float, base: int = 512, mults=(1, 4, 16)) -> dict:
    _ensure_scratch(QUICK_OVERRIDES if quick else [])
    rows = []
    for k in mults:
        n = base * k
        ov = (QUICK_OVERRIDES if quick else []) + ["generations=1", f"generation.num_sequences={n}", "train.epochs=1",
                                                   "eval.max_blocks=64"]
        with tempfile.TemporaryDirectory(prefix="collapse-bench-mem-") as d:
            r = run_subprocess(["run", *ov, f"out_dir={d}/run", "wandb.mode=disabled"], timeout=timeout)
            size = sum(f.stat().st_size for f in Path(d).rglob("samples.parquet"))
        if r["returncode"] != 0:
            rows.append({"name": f"{k}x: {n} samples", "error": r["stderr"][-600:], "seconds_median": None,
                         "seconds": []})
            continue
        rows.append({"name": f"{k:>2}x: {n} samples / generation, generations=1", "seconds_median": r["wall_s"],
                     "seconds": [r["wall_s"]], "peak_rss_mib": r["peak_rss_mib"], "samples": n,
                     "samples_parquet_mib": size / 2**20,
                     "note": f"peak RSS {r['peak_rss_mib']:.0f} MiB"})
    rss = [r["peak_rss_mib"] for r in rows if r.get("peak_rss_mib")]
    spread = (max(rss) / min(rss) - 1.0) if len(rss) == len(mults) else None
    growth = (rss[-1] / rss[0] - 1.0) if len(rss) == len(mults) else None
    return {"rows": rows, "info": {"peak_rss_spread_max_over_min_minus_1": spread,
                                   f"peak_rss_growth_{mults[-1]}x_vs_{mults[0]}x": growth,
                                   "sample_rows_bytes_largest": base * mults[-1] * 128 * 4},
            "targets": [_target(f"peak RSS spread over {mults[0]}x..{mults[-1]}x (fraction)", spread, "<=", 0.10)]}


# ---------------------------------------------------------------------- CPU main


def cpu_main(args) -> dict:
    import torch

    from collapse.modeling import set_threads
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
    if {"generation", "beam", "training"} & set(parts):
        _say("inputs (model, tokenizer, real blocks)")
        inp = Inputs(q)
        res["scratch_model"] = inp.scratch
    if "generation" in parts:
        _say("part 1: generation")
        res["parts"]["generation"] = bench_generation(
            inp, reps, batch=32 if q else args.batch, n_prompts=64 if q else 2 * args.batch,
            n_per_prompt=4 if q else args.per_prompt)
    if "beam" in parts:
        _say("part 1b: beam search")
        res["parts"]["beam"] = bench_beam(inp, reps if q else max(3, reps - 2), n_prompts=8 if q else 64)
    if "counting" in parts:
        _say("part 2: counting")
        res["parts"]["counting"] = bench_counting(10**5 if q else 10**7, reps if q else max(3, reps - 2))
    if "training" in parts:
        _say("part 3: training")
        res["parts"]["training"] = bench_training(inp, reps if q else max(3, reps - 2), n_rows=64 if q else 768,
                                                  batch=16 if q else 32)
    if "e2e" in parts:
        _say("part 4: end to end (subprocess)")
        res["parts"]["e2e"] = bench_e2e(q, timeout=args.timeout)
    if "memory" in parts:
        _say("part 5: memory vs corpus size (subprocesses)")
        res["parts"]["memory"] = bench_memory(q, timeout=args.timeout, base=32 if q else 512)
    _say("done")
    return res


_T0 = [time.perf_counter()]


def _say(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0[0]:6.1f} s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests): checks the plumbing, not speed")
    p.add_argument("--parts", default=None,
                   help="cpu: comma list of generation,beam,counting,training,e2e,memory (default: all; --quick: "
                        "all but e2e and memory)")
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
        args.parts = ("generation,beam,counting,training" if args.quick
                      else "generation,beam,counting,training,e2e,memory")
    t0 = time.perf_counter()
    if args.device == "cuda" or args.dry_run_cpu:
        from collapse.bench_cuda import cuda_main

        res = cuda_main(args)
    else:
        res = cpu_main(args)
    res["load_avg_after"] = _loadavg()
    res["wall_s"] = time.perf_counter() - t0
    from collapse.io import _jsonable

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(res), indent=2) + "\n")
    print_table(res)
    print(f"\nJSON: {out}  ({res['wall_s']:.0f} s)")
    return int(res.get("exit_code", 0))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
