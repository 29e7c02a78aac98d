"""The CUDA mode's training rows (LoRA as the default and the paper configs, full fine-tune; FLOP/s fraction)
and evaluation rows."""

from __future__ import annotations

import time

from collapse.bench.gpu.common import Budget, Dev, matmul_params, say_cuda
from collapse.bench.harness import median


def train_bench(model, dev: Dev, budget: Budget, ceil: dict, seq: int, batch: int, steps: int, dry: bool) -> dict:
    import numpy as np

    from collapse.config import LoraConfig
    from collapse.runtime import make_accelerator

    acc = make_accelerator("auto")
    V = model.config.vocab_size
    rows = np.random.default_rng(0).integers(3, V, size=(batch * steps, seq)).astype(np.int32)
    val = rows[:2]
    mp = matmul_params(model)
    paper = dict(method="lora", lr=2e-4, lora=LoraConfig(r=16, alpha=32, modules_to_save=["lm_head"]))
    half = rows[:, : seq // 2].copy()  # what `collapse run` trains on: the continuations (keep_prompt false)
    variants = {
        "lora_paper": ("LoRA r=16 on every projection + lm_head trained (configs/curse-of-recursion *-lora)",
                       paper, rows),
        "lora_paper_run_rows": (f"the same on {seq // 2}-token rows, as `collapse run` trains (new_tokens, "
                                "keep_prompt false)", paper, half),
        "lora": ("LoRA r=8 on every projection (the default)", dict(method="lora", lr=2e-4, lora=LoraConfig(r=8)),
                 rows),
        "full": ("full fine-tune (lr 2e-5, as the paper config) on the run's path: float32 master weights, bf16 "
                 "autocast", dict(method="full", lr=2e-5), rows),
    }
    rows_out, out = [], {}
    warm = 3 if not dry else 1
    for key, (label, kw, data) in variants.items():
        if not budget.allow(f"training: {key}", 30):
            continue
        try:
            rows_out.append(_train_variant(model, dev, acc, key, label, kw, data, val[:, :data.shape[1]], batch,
                                           data.shape[1], warm, mp, ceil, out))
            say_cuda(f"train {key}: {out[key]['tokens_per_s'] / 1e3:.1f}k tok/s, compute fraction "
                     f"{out[key]['compute_fraction']:.2f}")
        except Exception as e:  # noqa: BLE001
            out[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            say_cuda(f"train {key} FAILED: {type(e).__name__}: {str(e)[:200]}")
        dev.free()
    return {"rows": rows_out, "by_variant": out, "seq": seq, "batch": batch,
            "formula": "full: 6 x N_mm x tokens; LoRA: (4 x N_mm + 2 x dense trainable) x tokens; N_mm = "
                       f"{mp['matmul']:,} parameters in matmuls (linear layers + output head); attention "
                       "score FLOPs (~4% at 128 tokens) not counted"}


def _train_variant(model, dev, acc, key, label, kw, rows, val, batch, seq, warm, mp, ceil, out) -> dict:


    from collapse.config import Config, TrainConfig
    from collapse.models import kind_for
    from collapse.models.train import finetune

    tcfg = TrainConfig(epochs=1, batch_size=batch, select="last", warmup_ratio=0.0, **kw)
    # the weights exactly as `collapse run` makes them trainable (a full fine-tune: float32 master weights)
    m = kind_for("scratch").start(Config(train=tcfg), 1, model, None)
    named0 = [(n, p) for n, p in m.named_parameters() if p.requires_grad and p.dim() == 2]
    probe = [(n, p.detach().clone()) for n, p in named0[:: max(1, len(named0) // 6)]]
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    stamps: list[float] = []
    m.train()
    stats = finetune(m, rows, val, tcfg, acc, key=(0, 1, "bench"), show_progress=False,
                     on_step=lambda s: (dev.sync() if s == warm + 1 else None, stamps.append(time.perf_counter())))
    # the loop queues steps ahead of the device: the start stamp waits for it; the end stamp follows the
    # loop's own wait at the epoch's end
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
                "weight_dtype": str(next(p for p in m.parameters() if p.requires_grad).dtype).replace("torch.", ""),
                "rows": f"{batch} x {seq} tokens",
                "mixed_precision": acc.mixed_precision, "fused_adamw": dev.cuda,
                "share_of_probed_weights_changed": changed, "val_nll": stats.get("val_nll")}
    row = {"name": f"train {key}: {label}", "seconds": [per_step], "seconds_median": per_step,
           "tokens": batch * seq, "tokens_per_s": tps}
    del m, probe, named
    return row


def eval_bench(model, dev: Dev, budget: Budget, seq: int, n_blocks: int) -> dict | None:
    import numpy as np

    from collapse.metrics.evaluate import evaluate_blocks

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
    return {"name": f"evaluate_blocks ({n_blocks} x {seq} tokens, batch 64)", "seconds": t, "seconds_median": median(t),
            "tokens": n_blocks * seq, "tokens_per_s": n_blocks * seq / median(t),
            "alt_rows_cross_entropy_tokens_per_s": n_blocks * seq / median(t2)}
