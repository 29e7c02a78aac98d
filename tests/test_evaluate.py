"""collapse.metrics.evaluate against a direct computation from the full logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_generate import _gpt2, _llama, _opt

from collapse.metrics.evaluate import sequence_ppl, token_nll


def _direct_ppl(m, seqs: np.ndarray, start: int) -> np.ndarray:
    """exp(mean NLL of tokens start..L-1), from every position's logits (no logits_to_keep)."""
    with torch.no_grad():
        ids = torch.as_tensor(seqs, dtype=torch.long)
        logp = F.log_softmax(m(input_ids=ids).logits.double(), dim=-1)
        nll = -logp[:, start - 1:-1].gather(-1, ids[:, start:, None])[..., 0]
    return np.exp(nll.mean(dim=1).numpy())


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward knows no ``logits_to_keep`` (older or custom architectures)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        return self.m(input_ids=input_ids)


@pytest.mark.parametrize("build", [_gpt2, _opt])
@pytest.mark.parametrize("start", [1, 5, 11])
def test_sequence_ppl_scores_only_the_continuation(build, start):
    m = build().eval()
    seqs = np.random.default_rng(start).integers(3, 300, size=(7, 12))
    want = _direct_ppl(m, seqs, start)
    np.testing.assert_allclose(sequence_ppl(m, seqs, start, batch_size=3), want, rtol=1e-5)
    np.testing.assert_allclose(sequence_ppl(_NoLogitsToKeep(m), seqs, start, batch_size=4), want, rtol=1e-5)


def test_token_nll_shape_and_positions():
    m = _gpt2().eval()
    ids = torch.as_tensor(np.random.default_rng(0).integers(3, 300, size=(2, 9)))
    with torch.no_grad():
        full, tail = token_nll(m, ids), token_nll(m, ids, start=6)
    assert full.shape == (2, 8) and tail.shape == (2, 3)
    torch.testing.assert_close(tail, full[:, 5:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [_gpt2, _llama])
def test_evaluate_blocks_equals_a_direct_computation(build):
    """test_ppl = exp(mean NLL of tokens 1..L-1 of every block: the first token of a block is never scored), and
    tail_loss[b] = mean NLL of the scored tokens whose TARGET type is in bucket b; empty buckets are None."""
    from collapse import metrics as M
    from collapse.metrics.evaluate import evaluate_blocks
    from collapse.runtime import make_accelerator

    m = build()
    V = m.config.vocab_size
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, V + 1)  # Zipf-like, so the frequent and the rare buckets both get tokens
    p /= p.sum()
    ref_counts = np.bincount(rng.choice(V, size=20_000, p=p), minlength=V)
    bucket_of = M.bucket_of(ref_counts, V)
    blocks = rng.choice(V, size=(11, 17), p=p)
    m.train()  # evaluate_blocks switches to eval mode and back
    got = evaluate_blocks(m, blocks, bucket_of, batch_size=4, accelerator=make_accelerator("no"))
    assert m.training

    m.eval()
    with torch.no_grad():
        ids = torch.as_tensor(blocks, dtype=torch.long)
        logits = m(input_ids=ids).logits.double()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none").numpy()
    target_bucket = bucket_of[blocks[:, 1:]].reshape(-1)
    assert got["test_tokens"] == blocks.shape[0] * (blocks.shape[1] - 1) == len(nll)
    assert got["test_nll"] == pytest.approx(nll.mean(), rel=1e-5)
    assert got["test_ppl"] == pytest.approx(np.exp(nll.mean()), rel=1e-5)
    assert list(got["tail_loss"]) == list(M.BUCKETS)
    filled = 0
    for k, name in enumerate(M.BUCKETS):
        sel = target_bucket == k
        assert got["tail_tokens"][name] == int(sel.sum()), name
        if sel.any():
            filled += 1
            assert got["tail_loss"][name] == pytest.approx(nll[sel].mean(), abs=1e-5), name
        else:
            assert got["tail_loss"][name] is None, name
    assert filled >= 3 and got["tail_loss"]["10001+"] is None  # a 300-type vocabulary has no rank 10001


def test_cpu_forward_chunks_do_not_change_the_figures(monkeypatch):
    """On a CPU the measurements and the validation loss run a few rows per forward (cache-sized); any
    chunking gives the same figures, bit for bit: each row's NLL comes out the same, the sums run in float64
    in row order, and the validation loss still sums whole batches."""
    import collapse.metrics.evaluate as E
    import collapse.models.kind as T

    m = _gpt2().eval()
    seqs = np.random.default_rng(0).integers(3, 300, size=(37, 16))
    bucket_of = np.random.default_rng(1).integers(0, 5, size=512)
    got = []
    for tokens in (10_000, 16, 48):  # all rows in one pass; one row per pass; three rows per pass
        monkeypatch.setattr(T, "CPU_FORWARD_TOKENS", tokens)
        assert E.forward_rows(m, torch.device("cpu"), 64, 16) == min(64, max(1, tokens // 16))
        got.append((E.sequence_ppl(m, seqs, 5, batch_size=64),
                    E.evaluate_blocks(m, seqs, bucket_of, batch_size=64, per_block=True),
                    E.mean_nll(m, seqs, batch_size=8)))
    for ppl, ev, val in got[1:]:
        assert np.array_equal(ppl, got[0][0]) and val == got[0][2]
        assert np.array_equal(ev["block_sums"], got[0][1]["block_sums"]) and ev["test_nll"] == got[0][1]["test_nll"]
    assert E.forward_rows(m, torch.device("cuda"), 64, 16) == 64  # a GPU takes the whole batch
