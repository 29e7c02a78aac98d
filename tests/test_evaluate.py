"""collapse.evaluate against a direct computation from the full logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_generate import _gpt2, _opt

from collapse.evaluate import sequence_ppl, token_nll


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
