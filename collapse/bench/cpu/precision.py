"""Part `precision`: the real LM's three costs in float32 and in bf16 on this CPU, side by side.

At the shapes of ``configs/real/smollm2-135m-recursion.yaml`` (SmolLM2-135M, LoRA r=8 on the seven projections):
one LoRA optimizer step on ``batch`` × 64 tokens, one scoring forward on 64 × 128 tokens (evaluate and the gen-0
scorer), and one KV-cached decode step of the generation batch (the engine ``generate`` uses). Each in three
precisions, timed interleaved in one process, with the embedded default's LoRA step (the shipped scratch model,
32 × 64 tokens) in float32 and under autocast beside them:

* ``float32``: what ``model.dtype: float32`` and ``train.mixed_precision: no`` run;
* ``autocast``: float32 weights, matmuls in bf16 under ``torch.autocast("cpu", torch.bfloat16)`` (what
  ``train.mixed_precision: bf16`` and ``generation.autocast: bf16`` run; the weights and AdamW stay float32);
* ``bf16 weights``: the model cast to bfloat16 (``model.dtype: bfloat16``: every stage, evaluation included).

The CPU's bf16 support is named from its flags: AMX (tile matmuls), AVX512-BF16 (dot products), or neither
(bf16 is emulated and slower than float32).
"""

from __future__ import annotations

import contextlib
import copy
import time

from collapse.bench.cpu.real import SMOLLM2, _prompts
from collapse.bench.harness import interleaved, machine_info, median, result_row, say
from collapse.models.scratch import SHIPPED

MODES = ("float32", "autocast", "bf16 weights")


def bf16_support(features) -> str:
    """The CPU's native bf16 path, from its flags (the one oneDNN picks for bf16 matmuls)."""
    if "amx_bf16" in features:
        return "AMX-BF16 (tile matmuls)"
    if "avx512_bf16" in features:
        return "AVX512-BF16 (bf16 dot products, no AMX)"
    return "none (bf16 emulated in float32 units)"


def lora_step(model, rows, ctx=contextlib.nullcontext):
    """One AdamW step of a fresh LoRA adapter (r=8, the default targets) on a copy of ``model``, its forward under
    ``ctx()``: the function to time (each call one step of the same trainee)."""
    import torch

    from collapse.config import LoraConfig
    from collapse.models.hf import attach_lora
    from collapse.models.train import lm_loss

    trainee = attach_lora(copy.deepcopy(model), LoraConfig(r=8))
    trainee.train()
    opt = torch.optim.AdamW([p for p in trainee.parameters() if p.requires_grad], lr=1e-3)

    def step():
        with ctx():
            loss = lm_loss(trainee, rows)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.trainee = trainee
    return step


def bench_precision(repeats: int, batch: int = 16, length: int = 64, score_rows: int = 64, score_len: int = 128,
                    decode_batch: int = 128, source: str = SMOLLM2) -> dict:
    import torch

    from collapse.config import ModelConfig
    from collapse.decoding.fastgen import make_engine
    from collapse.errors import CollapseError
    from collapse.models.hf import load_pretrained

    try:
        base, tok = load_pretrained(source, ModelConfig(name_or_path=source, dtype="float32"), torch.device("cpu"))
    except CollapseError as e:
        return {"skipped": str(e)}
    rows = torch.as_tensor(_prompts(tok, max(batch, score_rows), max(length, score_len)), dtype=torch.long)
    train_rows, score_in = rows[:batch, :length], rows[:score_rows, :score_len]
    dec_in = torch.as_tensor(_prompts(tok, decode_batch, length), dtype=torch.long)  # more windows of this length
    auto = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    none = contextlib.nullcontext
    models = {"float32": (base, none), "autocast": (base, auto),
              "bf16 weights": (copy.deepcopy(base).to(torch.bfloat16), none)}

    fns: dict = {}
    for mode, (model, ctx) in models.items():
        step = lora_step(model, train_rows, ctx)

        @torch.inference_mode()
        def score(model=model, ctx=ctx):
            with ctx():
                model(input_ids=score_in).logits.float().log_softmax(-1)

        engine = make_engine(model.eval(), len(dec_in), 2 * length)

        @torch.inference_mode()
        def decode(engine=engine, ctx=ctx):  # one step at position `length` after a prefill of the prompts
            engine.pos = length
            with ctx():
                engine.step(dec_in[:, -1])

        with torch.inference_mode(), ctx():
            engine.prefill(dec_in)
        fns[f"lora {mode}"], fns[f"score {mode}"], fns[f"decode {mode}"] = step, score, decode

    # the embedded default's model (the shipped scratch GPT-2) at its training shapes: 32 rows of 64 tokens
    small, stok = load_pretrained(str(SHIPPED), ModelConfig(name_or_path=str(SHIPPED)), torch.device("cpu"))
    small_rows = torch.as_tensor(_prompts(stok, 32, 64), dtype=torch.long)
    for mode, ctx in (("float32", none), ("autocast", auto)):
        fns[f"default {mode}"] = lora_step(small, small_rows, ctx)
    feats = machine_info("cpu")["cpu_features"]
    say(f"precision: bf16 support {bf16_support(feats)}; timing {len(fns)} functions interleaved")
    t = interleaved(fns, repeats)
    tokens = {"lora": len(train_rows) * length, "score": score_in.numel(), "decode": len(dec_in)}
    what = {"lora": f"LoRA step (forward, backward, AdamW), {len(train_rows)} × {length} tokens",
            "score": f"scoring forward, {len(score_in)} × {score_len} tokens",
            "decode": f"decode step, batch {len(dec_in)} (KV cache at {length})"}
    out_rows, ratios = [], {}
    tokens["default"], what["default"] = small_rows.numel(), "the embedded default's LoRA step, 32 × 64 tokens"
    for kind in ("lora", "score", "decode", "default"):
        modes = MODES if kind != "default" else MODES[:2]
        for mode in modes:
            out_rows.append(result_row(f"{what[kind]}: {mode}", t[f"{kind} {mode}"], tokens[kind]))
        for mode in modes[1:]:
            ratios[f"{kind}: {mode} speed / float32"] = median(t[f"{kind} float32"]) / median(t[f"{kind} {mode}"])
    return {"model": source, "bf16_support": bf16_support(feats), "cpu_features": feats, "rows": out_rows,
            "ratios": ratios, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
