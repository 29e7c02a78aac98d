"""Figures against the known truth, whenever ``data.source`` is synthetic (``collapse.data.synthetic``).

* ``kl_truth`` (nats per token): KL(truth ‖ model g) per token, estimated on fresh truth documents (the
  same ``truth_documents`` every generation) as the mean over their tokens of
  ``log q(x_t | x_<t) - log p_g(x_t | x_<t)``; q is the source's exact conditional, p_g the model's
  next-token distribution with the document separator removed (the distribution it samples from at
  temperature 1; generation never produces the separator). Each document is fed as ``[sep, x_1 .. x_T]``,
  as documents follow a separator in training. Unbiased for the per-token KL between the two processes
  over T-token documents. Its interval (``kl_truth_ci``) is the bootstrap percentile interval of the mean
  over documents (the unit is the document, not the token: the tokens of one document are dependent).
  A truth token to which the model gives probability 0 (an n-gram with add_k = 0) makes the KL +inf
  (null in JSON, interval null); ``kl_truth_zero`` is the share of truth tokens for which that happens.
* ``bucket_shift`` / ``bucket_share``: the generated tokens' share of each bucket against the TRUE share
  (buckets by TRUE rank of the stationary distribution); the shifts against the training split's counts
  stay under ``bucket_shift_ref``.
* ``mass_forgotten``: the true stationary probability of the types generation g's samples never contain
  (no interval: a bootstrap resample holds fewer types than the sample, so its support is biased).
* ``gini_simpson``: 1 - sum f^2 of generation g's generated tokens (the quantity of the Wright-Fisher law,
  docs/results.md); ``truth_entropy_rate`` (nats per token) and ``truth_gini_simpson`` of the source.
"""

from __future__ import annotations

import numpy as np
import torch

from collapse import metrics as M
from collapse.metrics.stats import mean_ci
from collapse.models.kind import kind_of
from collapse.seeding import numpy_rng


@torch.inference_mode()
def model_log_prob(model, docs: np.ndarray, sep: int | None, batch_size: int = 64) -> np.ndarray:
    """log p(x_t | sep, x_<t) [n, T] of every token of ``docs`` under ``model``, the separator excluded."""
    was_training = model.training
    model.eval()
    out = np.empty(docs.shape, dtype=np.float64)
    kind = kind_of(model)
    for i in range(0, len(docs), batch_size):
        d = torch.as_tensor(docs[i:i + batch_size], dtype=torch.long)
        x = d if sep is None else torch.cat([torch.full((len(d), 1), sep, dtype=torch.long), d], 1)
        out[i:i + len(d)] = kind.log_probs_without(model, x, x.shape[1] - d.shape[1], sep).double().cpu().numpy()
    model.train(was_training)
    return out


def kl_truth(model, truth, sep: int | None, key: tuple, batch_size: int = 64) -> dict:
    """``kl_truth``, its interval and ``kl_truth_zero`` for model g (``key``: (seed, g) of the interval)."""
    docs = truth.truth_documents()
    lp = model_log_prob(model, docs, sep, batch_size)
    per_doc = (truth.log_prob(docs) - lp).mean(1)
    zero = float(np.isinf(lp).mean())
    finite = bool(np.isfinite(per_doc).all())
    return {"kl_truth": float(per_doc.mean()) if finite else float("inf"),
            "kl_truth_ci": mean_ci(per_doc, numpy_rng(*key, "kl_truth")) if finite else [None, None],
            "kl_truth_zero": zero, "kl_truth_documents": int(len(docs))}


def truth_row(truth, ev: dict, gen_ids: np.ndarray, vocab: int) -> dict:
    """The truth figures of one generation's metrics row (see the module docstring)."""
    c = M.counts(gen_ids, vocab)
    c = np.pad(c, (0, max(0, vocab - len(c))))
    buckets = truth.bucket_of(len(c))
    gen_share = M.bucket_shares(c, buckets)
    true_share = truth.bucket_shares()
    shift = M.shift_map(gen_share, true_share)
    f = c / max(c.sum(), 1)
    never = c[:truth.V] == 0
    return {
        "kl_truth": ev.get("kl_truth"), "kl_truth_ci": ev.get("kl_truth_ci"), "kl_truth_zero": ev.get("kl_truth_zero"),
        "bucket_shift": shift,
        "bucket_share": {b: {"ref_share": float(true_share[i]), "gen_share": float(gen_share[i])}
                         for i, b in enumerate(M.BUCKETS)},
        "shares_against": "truth",
        "mass_forgotten": float(truth.pi[never].sum()),
        "types_forgotten": int(never.sum()),
        "gini_simpson": float(1.0 - (f ** 2).sum()),
        "truth_entropy_rate": truth.entropy_rate,
        "truth_gini_simpson": float(1.0 - (truth.pi ** 2).sum()),
    }


def add_truth(row: dict, truth, ev: dict, gen_ids: np.ndarray, vocab: int) -> None:
    """Into a metrics row: the model kind's evaluation figures (``eval.json``'s ``extras``: the n-gram's
    ``test_zero_tokens``), and with a synthetic source (``truth`` not None) the figures against the truth; the
    shifts against the training split are kept as ``bucket_shift_ref`` / ``bucket_share_ref``."""
    for k in ev.get("extras", ()):
        row[k] = ev[k]
    if truth is not None:
        row.update(bucket_shift_ref=row["bucket_shift"], bucket_share_ref=row["bucket_share"],
                   **truth_row(truth, ev, gen_ids, vocab))
