"""Part `real-lora`: SmolLM2-135M's LoRA step at the real-LM recursion's shapes against its own matmuls.

Measured, not optimised (issue "The Curse of Recursion on a real pretrained LM"): what one optimizer step of
``configs/real/smollm2-135m-recursion.yaml`` costs (r=8 on the seven attention and MLP projections, float32,
batch 16 rows of 64 real KJV tokens, AdamW) beside the limit its size sets: plain ``F.linear`` products of every
weight matrix of the model (7 per block and the output layer) forward, and the same products for the input
gradients backward (``dY @ W``), on the same number of rows. The two are timed interleaved in one process; their
ratio says how much of the step is anything but those products (attention, norms, softmax, peft, the optimizer).
"""

from __future__ import annotations

import time

from collapse.bench.cpu.precision import lora_step
from collapse.bench.cpu.real import SMOLLM2, _prompts
from collapse.bench.harness import interleaved, median, result_row, say


def bench_real_lora(repeats: int, batch: int = 16, length: int = 64, source: str = SMOLLM2) -> dict:
    import torch
    import torch.nn.functional as F

    from collapse.config import ModelConfig
    from collapse.errors import CollapseError
    from collapse.models.hf import load_pretrained

    try:
        model, tok = load_pretrained(source, ModelConfig(name_or_path=source, dtype="float32"), torch.device("cpu"))
    except CollapseError as e:
        return {"skipped": str(e)}
    rows = torch.as_tensor(_prompts(tok, batch, length), dtype=torch.long)
    B, L = rows.shape
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings().weight
    if all(w is not head for w in weights):
        weights.append(head)
    n = B * L
    xs = {w.shape[1]: torch.randn(n, w.shape[1]) for w in weights}
    dys = {w.shape[0]: torch.randn(n, w.shape[0]) for w in weights}
    step = lora_step(model, rows)
    params = [p for p in step.trainee.parameters() if p.requires_grad]
    say(f"real LM LoRA: {sum(p.numel() for p in params) / 1e6:.2f}M trainable of "
        f"{sum(p.numel() for p in step.trainee.parameters()) / 1e6:.1f}M, batch {B} × {L} tokens")

    @torch.no_grad()
    def forward_products():
        for w in weights:
            F.linear(xs[w.shape[1]], w)

    @torch.no_grad()
    def backward_products():  # the input gradients: dX = dY @ W, the same size as the forward product
        for w in weights:
            torch.mm(dys[w.shape[0]], w)

    def products():
        forward_products()
        backward_products()

    say("real LM LoRA: timing (interleaved)")
    t = interleaved({"step": step, "products": products, "forward": forward_products}, repeats)
    step_rate, limit_rate = n / median(t["step"]), n / median(t["products"])
    flops = 2 * 2 * n * sum(w.numel() for w in weights)  # forward and input-gradient products
    return {
        "model": source, "batch": B, "tokens_per_row": L, "lora_r": 8,
        "rows": [
            result_row(f"LoRA step (forward, backward, AdamW), {B} × {L} tokens", t["step"], n),
            result_row("limit: F.linear of every weight forward + dY @ W backward", t["products"], n,
                       note=f"{len(weights)} matrices, {flops / 1e9:.0f} GFLOP"),
            result_row("  of which forward", t["forward"], n),
        ],
        "info": {"LoRA step tokens/s": step_rate, "products tokens/s": limit_rate,
                 "products GFLOP/s": flops / median(t["products"]) / 1e9},
        "ratios": {"LoRA step rate / products rate": step_rate / limit_rate},
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
