"""CPU parts 1, 1b, 3 and 3b of the benchmark: generation (with the sampler before/after rows and the sampler
probe), beam search, training and the measurements, on the model, tokenizer and real token blocks of
:class:`Inputs`."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from collapse.bench.harness import CPU_TIMES, REPO, interleaved, median, result_row, target

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
            from collapse.models.scratch import build_scratch_model, train_tokenizer

            tok = train_tokenizer(splits.train[:60], 512)
            torch.manual_seed(seed)
            sc = ScratchConfig(vocab_size=512, n_layer=1, d_model=32, n_head=2, context=256)
            model = build_scratch_model(sc, len(tok), tok.eos_token_id).eval()
            docs = splits.train[:60]
            self.scratch = {"model": "random tiny GPT-2 (quick)", "cached": None, "build_seconds": 0.0}
        else:
            from collapse.models.hf import load_pretrained
            from collapse.models.scratch import get_scratch_model, scratch_folder

            where = scratch_folder(cfg.model.scratch, splits)
            key, cached = where.name, (where / "DONE").is_file()
            t0 = time.perf_counter()
            folder = get_scratch_model(cfg.model.scratch, splits, show_progress=False)
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
        self.blocks = blocks[order]  # real text blocks of prompt + continuation length, shuffled
        self.prompts = self.blocks[:, : self.prompt_tokens]
        self.rows = concat_blocks(ids, self.new_tokens if not quick else 32, self.eos)  # fixed-length training rows
        self.val_blocks = blocks[:8] if quick else blocks[:32]


# ---------------------------------------------------------------------- part 1: generation


def gumbel_noise(shape: tuple[int, int], generator, device):
    """Gumbel noise: the sampler before inverse-CDF draws, kept for the before/after rows of this benchmark."""
    import torch

    u = torch.rand(shape, generator=generator, dtype=torch.float32, device=generator.device)
    return (-torch.log(-torch.log(u))).to(device)


def _sample_batch_v0(model, prompts, new_tokens: int, generator, suppress_ids=()):
    """The sampler BEFORE this change (commit 0ba04e1), kept verbatim for the before/after rows:
    Gumbel-max noise for every (row, vocab) entry each step, the whole batch decoded at once."""
    import torch

    from collapse.decoding.fastgen import make_engine

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
            nxt = (logits + gumbel_noise((B, V), generator, dev)).argmax(-1)
            result[:, t] = nxt
            if t + 1 < new_tokens:
                logits = engine.step(nxt)
        return result.cpu()


def bench_generation(inp: Inputs, repeats: int, batch: int, n_prompts: int, n_per_prompt: int) -> dict:
    import torch

    from collapse.config import GenerationConfig
    from collapse.decoding.generate import generate_corpus, sample_batch
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

    from collapse.decoding.generate import decode_chunk

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
    t = interleaved(methods, repeats)
    tok_all, tok_pp, tok_hb = n_prompts * N, len(pp) * N, len(hb) * N
    rows = [
        result_row(f"collapse generate_corpus (default engine, batch {batch}, chunks of {default_chunk})", t["project"],
                   tok_all, note=f"{n_prompts} prompts"),
        result_row(f"  same sampler, whole batch at once (chunk={batch})", t["unchunked"], tok_all),
        result_row(f"  same sampler, chunks of {min(other_chunk, batch)}", t["other_chunk"], tok_all),
        result_row("  BEFORE: Gumbel-max sampler, whole batch (commit 0ba04e1)", t["before"], tok_all),
        result_row("collapse generate_corpus, engine=hf (HF forward + cache)", t["project_hf_engine"], tok_all),
        result_row(f"HF generate, one batched call of {len(hb)}", t["hf_batched"], tok_hb),
        result_row("HF generate, one call per prompt (the baseline)", t["hf_per_prompt"], tok_pp,
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
            "cpu_seconds_median": {k: median(CPU_TIMES.get(k, [])) for k in methods},
            "hf_generate_kwargs": {k: v for k, v in gen_kw.items() if k != "pad_token_id"}}
    info.update(_sampler_probe(inp, batch))
    return {"rows": rows, "ratios": ratios, "info": info,
            "targets": [target("batched project generator / HF per-prompt", ratios["project / HF per-prompt"],
                               ">=", 15.0)]}


def bench_beam(inp: Inputs, repeats: int, n_prompts: int, beams: int = 5, penalty: float = 3.0) -> dict:
    """Part 1b: beam search (the paper's decoding): our beam loop on the fast engine vs HF ``generate``
    on the same batch of prompts, plus how many rows agree token for token (they must all, bar float
    near-ties between the two forwards)."""
    import torch

    from collapse.config import GenerationConfig
    from collapse.decoding.generate import sample_batch

    model, eos, P, N = inp.model, inp.eos, inp.prompt_tokens, inp.new_tokens
    x = torch.as_tensor(inp.prompts[:n_prompts], dtype=torch.long)
    cfg = {e: GenerationConfig(prompt_tokens=P, new_tokens=N, num_beams=beams, repetition_penalty=penalty, engine=e)
           for e in ("auto", "hf", "hf-generate")}
    out = {}

    def run(e):
        def f():
            out[e] = sample_batch(model, x, N, cfg[e], torch.Generator(), (eos,))
        return f

    t = interleaved({"project": run("auto"), "project_hf_engine": run("hf"), "hf_generate": run("hf-generate")},
                    repeats)
    tok = len(x) * N
    rows = [
        result_row(f"collapse beam search, fast engine ({beams} beams, penalty {penalty})", t["project"], tok,
                   note=f"{len(x)} prompts"),
        result_row("collapse beam search, engine=hf (HF forward + cache)", t["project_hf_engine"], tok),
        result_row(f"HF generate(num_beams={beams}, repetition_penalty={penalty}), one batched call", t["hf_generate"],
                   tok),
    ]
    same = lambda a, b: int((out[a] == out[b]).all(1).sum())  # noqa: E731
    rate = {k: r["tokens_per_s"] for k, r in zip(("project", "project_hf_engine", "hf_generate"), rows)}
    return {"rows": rows,
            "ratios": {"project / HF generate": rate["project"] / rate["hf_generate"],
                       "engine=hf / HF generate": rate["project_hf_engine"] / rate["hf_generate"]},
            "info": {"rows_identical_fast_vs_hf_generate": f"{same('auto', 'hf-generate')} of {len(x)}",
                     "rows_identical_hf_engine_vs_hf_generate": f"{same('hf', 'hf-generate')} of {len(x)}",
                     "prompt_tokens": P, "new_tokens": N, "num_beams": beams, "repetition_penalty": penalty,
                     "cpu_seconds_median": {k: median(CPU_TIMES.get(k, [])) for k in t}},
            "targets": []}


def _sampler_probe(inp: Inputs, batch: int) -> dict:
    """Per-step costs of the two samplers at [batch, V] and the bf16-weights question (not adopted)."""
    import torch

    from collapse.decoding.fastgen import FastDecoder
    from collapse.decoding.generate import sample_icdf

    model = inp.model
    x = torch.as_tensor(inp.prompts[:batch], dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        eng = FastDecoder(model, len(x), x.shape[1] + 1)
        logits = eng.prefill(x)
        B, V = logits.shape
        u = torch.rand(B, dtype=torch.float64, generator=g)
        t = interleaved({
            "gumbel": lambda: (logits + gumbel_noise((B, V), g, logits.device)).argmax(-1),
            "icdf": lambda: sample_icdf(logits, u),
            "step": lambda: (setattr(eng, "pos", x.shape[1] - 1), eng.step(logits.argmax(-1))),
        }, 15)
        out = {"per_step_ms_at_batch": B,
               "per_step_ms_gumbel_noise_and_argmax": 1e3 * median(t["gumbel"]),
               "per_step_ms_icdf_sampler": 1e3 * median(t["icdf"]),
               "per_step_ms_forward_at_prompt_end": 1e3 * median(t["step"])}
        # bf16 weights, logits in fp32 (measured, NOT adopted: the logits move by more than sampling can ignore)
        mb = copy.deepcopy(model).to(torch.bfloat16)
        eb = FastDecoder(mb, len(x), x.shape[1] + 1)
        lb = eb.prefill(x).float()
        p32 = torch.log_softmax(logits.double(), -1)
        p16 = torch.log_softmax(lb.double(), -1)
        kl = (p32.exp() * (p32 - p16)).sum(-1)
        tb = interleaved({"fp32": lambda: (setattr(eng, "pos", x.shape[1] - 1), eng.step(logits.argmax(-1))),
                          "bf16": lambda: (setattr(eb, "pos", x.shape[1] - 1), eb.step(logits.argmax(-1)))}, 15)
        out.update({"bf16_weights_max_abs_dlogit": float((lb - logits).abs().max()),
                    "bf16_weights_mean_kl_nats": float(kl.mean()),
                    "bf16_weights_step_speedup": median(tb["fp32"]) / median(tb["bf16"]),
                    "bf16_weights_adopted": False})
    return out


# ---------------------------------------------------------------------- part 3: training


def bench_training(inp: Inputs, repeats: int, n_rows: int, batch: int) -> dict:
    import torch

    from collapse.models.hf import attach_lora
    from collapse.models.train import finetune
    from collapse.runtime import make_accelerator
    from collapse.seeding import seed_int

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

    t = interleaved({"project": project, "naive": naive}, repeats, warmup=False)
    proj_tokens = box["project_steps"] * batch * L  # finetune wraps the last step to a full batch, as DDP does
    rows_out = [result_row(f"collapse finetune (LoRA r={tcfg.lora.r}, {L}-token rows, batch {batch})", t["project"],
                            proj_tokens),
                result_row("padded-batch HF loop (tokenizer padding, labels -100, model(**batch, labels))", t["naive"],
                            box["naive_real"], note="real (non-pad) tokens counted")]
    ratio = rows_out[0]["tokens_per_s"] / rows_out[1]["tokens_per_s"]
    return {"rows": rows_out, "ratios": {"finetune / padded loop (real tokens/s)": ratio},
            "info": {"rows": n_rows, "row_tokens": L, "pad_share_first_batch": pad_share[0] if pad_share else None,
                     "warmup_steps_excluded": warm, "threads": torch.get_num_threads()}}


# ---------------------------------------------------------------------- part 3b: the measurements


def bench_measurement(inp: Inputs, repeats: int, n_rows: int, resamples: int = 1000) -> dict:
    """What each generation's measure stage spends most on, before and after, on the same inputs:
    (a) gen-0 perplexity of n_rows prompt + continuation blocks, at the rows per forward pass a CPU runs now
    (16 of 128 tokens) against 64 (the evaluation batch, as before); (b) distinct-2 over the delete-half
    resamples: the packed keep-bits of :func:`collapse.metrics.stats.types_present` against the sparse product it
    replaced."""
    import torch

    import collapse.metrics.evaluate as E
    import collapse.models.kind as T
    from collapse.metrics import stats as S

    seqs = inp.blocks[:n_rows]
    L = seqs.shape[1]
    start = inp.prompt_tokens
    out: dict = {}

    def rows(k):
        def f():
            saved = T.CPU_FORWARD_TOKENS
            T.CPU_FORWARD_TOKENS = k * L
            try:
                out[k] = E.sequence_ppl(inp.model, seqs, start, batch_size=64)
            finally:
                T.CPU_FORWARD_TOKENS = saved
        return f

    now = E.forward_rows(inp.model, torch.device("cpu"), 64, L)  # what a CPU runs (16 rows at L = 128)
    t = interleaved({"now": rows(now), "64": rows(64)}, repeats)
    gen = seqs[:, start:]
    G = S.gram_units(gen, 2).T.tocsr()  # (bigram types, units), as metrics.units.Corpus builds it
    W = S.draw_weights(len(gen), np.random.default_rng(0), resamples)
    keep = np.vstack([np.ones((1, len(gen)), bool), W.half > 0])
    got: dict = {}

    def packed():
        got["packed"] = S.types_present(G, keep)

    def sparse():  # the former code: a float product per chunk of 125 resamples
        got["sparse"] = np.concatenate([(np.asarray(G @ keep[i:i + 125].T.astype(np.float64)) > 0).sum(0)
                                        for i in range(0, len(keep), 125)])

    tp = interleaved({"packed": packed, "sparse": sparse}, repeats)
    tokens = n_rows * (L - start)
    rows_out = [result_row(f"gen-0 perplexity, {now} rows of {L} tokens per forward (CPU now)", t["now"], tokens),
                result_row(f"gen-0 perplexity, 64 rows of {L} tokens per forward (before)", t["64"], tokens),
                result_row(f"distinct-2 over {resamples} half-samples: packed keep-bits (now)", tp["packed"],
                           len(keep), unit="resamples"),
                result_row(f"distinct-2 over {resamples} half-samples: sparse product (before)", tp["sparse"],
                           len(keep), unit="resamples")]
    return {"rows": rows_out,
            "ratios": {f"{now} / 64 rows per forward (speed)": median(t["64"]) / median(t["now"]),
                       "packed / sparse (speed)": median(tp["sparse"]) / median(tp["packed"])},
            "info": {"rows": n_rows, "row_tokens": L, "scored_from": start, "bigram_types": int(G.shape[0]),
                     "same_perplexities": bool(np.array_equal(out[now], out[64])),
                     "same_distinct_2": bool(np.array_equal(got["packed"], got["sparse"]))}}
