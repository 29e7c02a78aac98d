"""Model-based evaluation: perplexity, per-bucket NLL (tail loss), per-sequence perplexity.

Every function takes fixed-length token blocks (no padding is ever computed) and, when given an
``accelerator``, splits the blocks across processes by index and sums the results, so each block is
counted exactly once whatever the number of processes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from collapse.metrics import BUCKETS
from collapse.models.kind import kind_of


def _shard(n: int, accelerator) -> np.ndarray:
    if accelerator is None or accelerator.num_processes == 1:
        return np.arange(n)
    return np.arange(accelerator.process_index, n, accelerator.num_processes)


def _allreduce(t: torch.Tensor, accelerator) -> torch.Tensor:
    if accelerator is None or accelerator.num_processes == 1:
        return t
    return accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def forward_rows(model, device: torch.device, batch_size: int, length: int) -> int:
    """Rows per forward pass of the measurements below (the model's kind decides: cache-sized on a CPU)."""
    return kind_of(model).rows_per_forward(model, device, batch_size, length)


def token_nll(model, blocks: torch.Tensor, start: int = 1) -> torch.Tensor:
    """NLL (nats) of tokens ``start..L-1`` of each block given the tokens before it: [B, L-start], float32."""
    return kind_of(model).token_nll(model, blocks, start)


@torch.inference_mode()
def evaluate_blocks(model, blocks: np.ndarray, bucket_of: np.ndarray, batch_size: int = 64, accelerator=None,
                    progress=None, per_block: bool = False) -> dict:
    """Perplexity and tail loss over ``blocks`` [N, L] (real test text).

    ``test_ppl = exp(mean NLL)`` over every predicted token (positions 1..L-1 of each block);
    ``tail_loss[b]`` = mean NLL of the predicted tokens whose *target* type falls in frequency bucket b
    (``bucket_of[token] -> bucket index``, ranks from the real training split). Empty buckets are None.
    With ``per_block`` the result also holds ``block_sums`` and ``block_counts`` (numpy, [N, buckets]): each
    block's summed NLL and predicted tokens per bucket, the units of the intervals (``collapse.metrics.stats``).
    """
    was_training = model.training
    model.eval()
    dev = _device(model)
    idx = _shard(len(blocks), accelerator)
    nb = len(BUCKETS)
    sums = torch.zeros(nb, dtype=torch.float64)
    counts = torch.zeros(nb, dtype=torch.float64)
    bucket_t = torch.as_tensor(bucket_of, dtype=torch.long)
    bsums = torch.zeros(len(blocks) * nb if per_block else 0, dtype=torch.float64)
    bcounts = torch.zeros_like(bsums)
    step = forward_rows(model, dev, batch_size, blocks.shape[1])
    for i in range(0, len(idx), step):
        rows = idx[i:i + step]
        b = torch.as_tensor(blocks[rows], dtype=torch.long)
        nll = token_nll(model, b.to(dev)).double().cpu()
        tb = bucket_t[b[:, 1:]]
        sums.index_add_(0, tb.reshape(-1), nll.reshape(-1))
        counts.index_add_(0, tb.reshape(-1), torch.ones_like(nll).reshape(-1))
        if per_block:  # the same tokens, summed per (block, bucket): each block is counted by one process
            cell = (torch.as_tensor(rows, dtype=torch.long)[:, None] * nb + tb).reshape(-1)
            bsums.index_add_(0, cell, nll.reshape(-1))
            bcounts.index_add_(0, cell, torch.ones_like(nll).reshape(-1))
        if progress is not None:
            progress.update(len(b))
    sums, counts = _allreduce(sums, accelerator), _allreduce(counts, accelerator)
    if per_block:
        bsums, bcounts = _allreduce(bsums, accelerator), _allreduce(bcounts, accelerator)
    model.train(was_training)
    total_n = counts.sum().item()
    mean = sums.sum().item() / max(total_n, 1)
    return {
        "test_nll": mean,
        "test_ppl": math.exp(mean),
        "test_tokens": int(total_n),
        "tail_loss": {name: (sums[k].item() / counts[k].item() if counts[k] > 0 else None)
                      for k, name in enumerate(BUCKETS)},
        "tail_tokens": {name: int(counts[k].item()) for k, name in enumerate(BUCKETS)},
        **({"block_sums": bsums.view(-1, nb).numpy(), "block_counts": bcounts.view(-1, nb).numpy()}
           if per_block else {}),
    }


@torch.inference_mode()
def mean_nll(model, blocks: np.ndarray, batch_size: int = 64, accelerator=None) -> float:
    """Mean NLL per predicted token over ``blocks`` (validation loss)."""
    was_training = model.training
    model.eval()
    dev = _device(model)
    idx = _shard(len(blocks), accelerator)
    tot = torch.zeros(2, dtype=torch.float64)
    step = forward_rows(model, dev, batch_size, blocks.shape[1])
    for i in range(0, len(idx), batch_size):
        rows = idx[i:i + batch_size]  # summed per batch as before (the same float64 sums), computed in steps
        nll = torch.cat([token_nll(model, torch.as_tensor(blocks[rows[j:j + step]], dtype=torch.long, device=dev))
                         for j in range(0, len(rows), step)]).double()
        tot += torch.stack([nll.sum(), torch.tensor(float(nll.numel()), dtype=torch.float64, device=nll.device)]).cpu()
    tot = _allreduce(tot, accelerator)
    model.train(was_training)
    return tot[0].item() / max(tot[1].item(), 1.0)


@torch.inference_mode()
def sequence_ppl(model, seqs: np.ndarray, start: int, batch_size: int = 64, accelerator=None) -> np.ndarray:
    """Perplexity of tokens ``start..`` of each row of ``seqs`` given the tokens before them.

    Used for ``gen0_ppl``: each generated continuation scored by the generation-0 model, conditioned on
    its real prompt (the paper's perplexity histograms).
    """
    was_training = model.training
    model.eval()
    dev = _device(model)
    idx = _shard(len(seqs), accelerator)
    out = torch.zeros(len(seqs), dtype=torch.float64)
    step = forward_rows(model, dev, batch_size, seqs.shape[1])
    for i in range(0, len(idx), step):
        rows = idx[i:i + step]
        b = torch.as_tensor(seqs[rows], dtype=torch.long, device=dev)
        nll = token_nll(model, b, start).double().mean(dim=1).cpu()
        out[torch.as_tensor(rows)] = nll
    out = _allreduce(out, accelerator)
    model.train(was_training)
    return np.exp(out.numpy())
