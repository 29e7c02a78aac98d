"""What the CUDA benchmark's modules share: the model shapes and builder, the time budget, device timing
(CUDA events, or perf_counter in the CPU dry run) and the CUDA mode's progress lines."""

from __future__ import annotations

import sys
import time

from collapse.bench.harness import say

OPT125M = dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
               max_position_embeddings=2048, word_embed_proj_dim=768, do_layer_norm_before=True)
TINY_OPT = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                max_position_embeddings=256, word_embed_proj_dim=32, do_layer_norm_before=True)


def say_cuda(msg: str) -> None:
    """A progress line of the CUDA mode: ``[bench-cuda seconds] msg``, on stdout."""
    say(msg, tag="bench-cuda", file=sys.stdout)


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
        say_cuda(f"SKIPPED (budget): {what}")
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


def build_model(shape: dict, dtype, device, seed: int = 0):
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(**shape)
    with torch.device(device):
        model = OPTForCausalLM(cfg)
    return model.to(dtype).eval()


def matmul_params(model) -> dict:
    """Parameters that take part in matmuls (linear layers + the output head), and the head alone."""
    import torch

    lin = sum(m.weight.numel() for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    head = model.get_output_embeddings().weight.numel()
    return {"linear": lin, "head": head, "matmul": lin + head,
            "all": sum(p.numel() for p in model.parameters())}
