"""The count-based n-gram model (``model.name_or_path: ngram``): trained by counting, sampled from its counts.

    p(x | h) = (c(h, x) + k) / (c(h) + k V)        h = the n-1 tokens before x, k = ``model.ngram.add_k``

Counts are taken within each training row (a row's first n-1 tokens have no full history there and add
to the shorter histories only). A history never seen in training (c(h) = 0) backs off to the longest
shorter history that was seen, down to the unigram, which is always defined; so is the first position of
a block, which has no history. A history seen only before the document separator backs off too: generation
never draws the separator, and such a history would leave nothing to draw. With k = 0 (pure maximum likelihood) an event unseen after a seen history
has probability 0: a test or truth token the model cannot produce has an infinite loss. That is reported
as it is (test_ppl and kl_truth are +inf, written as null in JSON) together with how many tokens caused
it (``test_zero_tokens``, ``kl_truth_zero``); no floor is added, since a floor would hide exactly the
forgetting that collapse is about. Use add_k > 0 for finite figures.

The model is a ``torch.nn.Module`` whose "logits" are the log-probabilities, so generation with any
decoding setting runs the shared decode loop (HF's forward through its cache: the cache is the last n-1
tokens) with the same seeds and shards; its kind (``collapse.models.ngram``) scores targets exactly and
samples plain temperature-1 draws straight from the counts. Sampling draws from ``softmax(log p)`` = p
(float32), the EOS id suppressed as for every model. It is saved as one ``counts.npz`` (atomic) per
generation. Imports numpy, torch and collapse.io only.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from collapse.io import atomic_dir

COUNTS_FILE = "counts.npz"
CHUNK = 1 << 22  # positions x vocabulary entries computed at once (float64: 32 MiB)
TABLE_MAX = 1 << 25  # entries of the log-probability table kept for fast lookups (float32: 128 MiB)


class NGramCounts:
    """Counts of every history length 0..n-1: unigram counts, and per history length a sorted table of history
    codes with the counts of their next tokens (CSR)."""

    def __init__(self, V: int, n: int, add_k: float, uni: np.ndarray, tables: list[tuple[np.ndarray, ...]]):
        self.V, self.n, self.add_k = V, n, float(add_k)
        self.uni = uni  # [V] int64
        self.tables = tables  # per history length h = 1..n-1: (keys [H], totals [H], indptr [H+1], nxt, cnt)

    @classmethod
    def fit(cls, rows: np.ndarray, V: int, n: int, add_k: float, sep: int | None = None) -> NGramCounts:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim == 1:
            rows = rows[None]
        uni = np.bincount(rows.ravel(), minlength=V).astype(np.int64)
        tables = []
        L = rows.shape[1]
        for h in range(1, n):
            if L <= h:
                tables.append(_empty_table())
                continue
            code = np.zeros((rows.shape[0], L - h), dtype=np.int64)
            for j in range(h):
                code = code * V + rows[:, j:L - h + j]
            pair, cnt = np.unique((code * V + rows[:, h:]).ravel(), return_counts=True)
            hist, nxt = pair // V, pair % V
            if sep is not None:  # a history seen only before the separator backs off (see the module docstring)
                live = np.unique(hist[nxt != sep])
                keep = np.isin(hist, live)
                pair, cnt, hist, nxt = pair[keep], cnt[keep], hist[keep], nxt[keep]
            keys, start = np.unique(hist, return_index=True)
            indptr = np.append(start, len(pair)).astype(np.int64)
            totals = np.add.reduceat(cnt, start).astype(np.int64) if len(cnt) else np.zeros(0, np.int64)
            tables.append((keys, totals, indptr, nxt.astype(np.int64), cnt.astype(np.int64)))
        return cls(V, n, add_k, uni, tables)

    # ---- probabilities

    def probs(self, ctx: np.ndarray) -> np.ndarray:
        """p(. | context) [P, V] (float64) for contexts ``ctx`` [P, n-1] (oldest first; -1 = no token there)."""
        P, V, k = len(ctx), self.V, self.add_k
        out = np.empty((P, V), dtype=np.float64)
        out[:] = (self.uni + k) / (self.uni.sum() + k * V)
        for h in range(1, self.n):  # longer histories override shorter ones where they were seen
            keys, totals, indptr, nxt, cnt = self.tables[h - 1]
            if not len(keys):
                continue
            hc = ctx[:, ctx.shape[1] - h:]
            ok = (hc >= 0).all(1)
            code = np.zeros(P, dtype=np.int64)
            for j in range(h):
                code = code * V + np.maximum(hc[:, j], 0)
            i = np.minimum(np.searchsorted(keys, code), len(keys) - 1)
            found = ok & (keys[i] == code)
            pos, i = np.nonzero(found)[0], i[found]
            if not len(pos):
                continue
            den = totals[i] + k * V
            out[pos] = (k / den)[:, None]
            lens = indptr[i + 1] - indptr[i]
            rep = np.repeat(np.arange(len(pos)), lens)
            e = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(indptr[i], lens)
            out[pos[rep], nxt[e]] = (cnt[e] + k) / den[rep]
        return out

    # ---- files

    def save(self, folder: Path) -> None:
        arrays = {"meta": np.array([self.V, self.n], dtype=np.int64), "add_k": np.array(self.add_k),
                  "uni": self.uni}
        for h, t in enumerate(self.tables, 1):
            for name, a in zip(("keys", "totals", "indptr", "nxt", "cnt"), t):
                arrays[f"h{h}_{name}"] = a
        with atomic_dir(folder) as tmp, open(tmp / COUNTS_FILE, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, folder: Path) -> NGramCounts:
        with np.load(Path(folder) / COUNTS_FILE, allow_pickle=False) as z:
            V, n = (int(v) for v in z["meta"])
            tables = [tuple(z[f"h{h}_{name}"] for name in ("keys", "totals", "indptr", "nxt", "cnt"))
                      for h in range(1, n)]
            return cls(V, n, float(z["add_k"]), z["uni"], tables)


def _icdf(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draws i with ``cum[i-1] <= u cum[-1] < cum[i]`` for every uniform in ``u``."""
    return np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), len(cum) - 1)


def _empty_table() -> tuple[np.ndarray, ...]:
    z = np.zeros(0, dtype=np.int64)
    return z, z, np.zeros(1, dtype=np.int64), z, z


class NGramLM(torch.nn.Module):
    """An :class:`NGramCounts` behind a causal-LM forward: ``logits`` are log p (``-inf`` where p = 0)."""

    def __init__(self, counts: NGramCounts, eos_token_id: int | None = None):
        super().__init__()
        self.counts = counts
        # one number, so that `next(model.parameters())` finds the device; the model is its counts
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.config = SimpleNamespace(model_type="ngram", vocab_size=counts.V, n_positions=1 << 30,
                                      eos_token_id=eos_token_id, ngram_n=counts.n, add_k=counts.add_k)

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0, past_key_values: torch.Tensor | None = None,
                use_cache: bool = False, **_) -> SimpleNamespace:
        ids = input_ids.detach().cpu().long()
        h = self.counts.n - 1
        past = past_key_values if past_key_values is not None else torch.full((len(ids), h), -1, dtype=torch.long)
        full = torch.cat([past.cpu().long(), ids], 1).numpy()  # h tokens of history (or -1), then the input
        B, T = ids.shape
        first = T - logits_to_keep if 0 < logits_to_keep < T else 0
        # the logits of input position t are the law of the NEXT token: its context is the h tokens up to and
        # including input t, full[:, t + 1 : t + 1 + h]
        if h:
            ctx = np.stack([full[:, t + 1:t + 1 + h] for t in range(first, T)], 1).reshape(-1, h)
        else:
            ctx = np.zeros((B * (T - first), 0), np.int64)
        table = self.table()
        if table is None:
            lp = torch.from_numpy(self._log_probs(ctx))
        else:  # rows of the table where the whole history is there; the few others (a block's start) computed
            ok = (ctx >= 0).all(1)
            code = np.zeros(len(ctx), dtype=np.int64)
            for j in range(h):
                code = code * self.counts.V + np.maximum(ctx[:, j], 0)
            lp = table[torch.from_numpy(code)]
            if not ok.all():
                lp[torch.from_numpy(~ok)] = torch.from_numpy(self._log_probs(ctx[~ok]))
        logits = lp.view(B, T - first, -1).to(self.anchor.device)
        cache = torch.from_numpy(full[:, full.shape[1] - h:].copy()) if use_cache else None
        return SimpleNamespace(logits=logits, past_key_values=cache)


    @torch.inference_mode()
    def target_log_probs(self, ids: torch.Tensor, start: int = 1, drop: int | None = None) -> torch.Tensor:
        """log p(ids[:, t] | ids[:, :t]) for t = start..L-1 [B, L-start] (float32), without the [B, L, V] logits
        a forward pass builds (evaluation's hot path); ``drop``: renormalize without that id (the separator)."""
        x = ids.detach().cpu().long().numpy()
        B, L = x.shape
        V, h = self.counts.V, self.counts.n - 1
        pad = np.concatenate([np.full((B, h), -1, np.int64), x], 1)
        ctx = (np.stack([pad[:, t:t + h] for t in range(start, L)], 1).reshape(-1, h) if h
               else np.zeros((B * (L - start), 0), np.int64))
        tgt = x[:, start:].reshape(-1)
        table = self.table()
        with np.errstate(divide="ignore"):
            if table is not None and (ctx >= 0).all():
                code = np.zeros(len(ctx), dtype=np.int64)
                for j in range(h):
                    code = code * V + ctx[:, j]
                rows_lp = table.numpy()
                lp = rows_lp[code, tgt].astype(np.float64)
                if drop is not None:
                    lp -= np.log1p(-np.exp(rows_lp[code, drop].astype(np.float64)))
            else:
                lp = np.empty(len(ctx))
                per = max(1, CHUNK // V)
                for i in range(0, len(ctx), per):
                    p = self.counts.probs(ctx[i:i + per])
                    sel = p[np.arange(len(p)), tgt[i:i + per]]
                    if drop is not None:
                        sel = sel / (1.0 - p[:, drop])
                    lp[i:i + per] = np.log(sel)
        return torch.from_numpy(lp.astype(np.float32).reshape(B, L - start)).to(self.anchor.device)

    @torch.inference_mode()
    def sample(self, prompts: torch.Tensor, new_tokens: int, u: torch.Tensor, suppress_ids=()) -> torch.Tensor:
        """``new_tokens`` tokens after each prompt [B, P] from the model's counts, given the uniforms ``u``
        [new_tokens, B] that :func:`collapse.decoding.generate.sample_batch` draws from the batch's seeded generator.

        Token i is drawn iff ``C[i-1] <= u C[V-1] < C[i]``, C the float64 cumulative probabilities of the
        history's row with the suppressed ids (the separator) at 0: the rule of ``generate.sample_icdf``,
        without a forward pass per step (plain sampling at temperature 1 only; see ``sample_batch``)."""
        V, h = self.counts.V, self.counts.n - 1
        hist = prompts.cpu().long().numpy()[:, prompts.shape[1] - h:] if h else np.zeros((len(prompts), 0), np.int64)
        if hist.shape[1] < h:
            hist = np.concatenate([np.full((len(hist), h - hist.shape[1]), -1, np.int64), hist], 1)
        uu = u.cpu().double().numpy()
        out = np.empty((len(prompts), new_tokens), dtype=np.int64)
        keep = np.ones(V)
        keep[list(suppress_ids)] = 0.0
        cum = self._cumulative(tuple(suppress_ids), keep)
        for t in range(new_tokens):
            if cum is not None and h == 0:  # independent draws: all at once
                out[:] = _icdf(cum[0], uu.T)
                break
            ok = (hist >= 0).all(1)
            if cum is not None and ok.all():
                code = np.zeros(len(hist), dtype=np.int64)
                for j in range(h):
                    code = code * V + hist[:, j]
                rows = cum[code]
            else:
                rows = np.cumsum(self.counts.probs(hist) * keep, axis=1)
            out[:, t] = np.minimum((rows <= (uu[t] * rows[:, -1])[:, None]).sum(1), V - 1)
            if h:
                hist = np.concatenate([hist[:, 1:], out[:, t:t + 1]], 1)
        return torch.from_numpy(out).to(prompts.device)

    def _cumulative(self, key: tuple, keep: np.ndarray) -> np.ndarray | None:
        """Cumulative rows of the probability table with the suppressed ids at 0 (cached per suppressed set)."""
        table = self.table()
        if table is None:
            return None
        cache = self.__dict__.setdefault("_cum", {})
        if key not in cache:
            cache[key] = np.cumsum(np.exp(table.double().numpy()) * keep, axis=1)
        return cache[key]

    def _log_probs(self, ctx: np.ndarray) -> np.ndarray:
        per = max(1, CHUNK // self.counts.V)
        with np.errstate(divide="ignore"):
            return np.concatenate([np.log(self.counts.probs(ctx[i:i + per])).astype(np.float32)
                                   for i in range(0, len(ctx), per)] or [np.zeros((0, self.counts.V), np.float32)])

    def table(self) -> torch.Tensor | None:
        """log p(. | h) of every full history h [V^(n-1), V] (float32), built once where it has at most
        ``TABLE_MAX`` entries (unigram, bigram; a trigram over a small vocabulary); else None."""
        V, h = self.counts.V, self.counts.n - 1
        if V ** h * V > TABLE_MAX:
            return None
        if getattr(self, "_table", None) is None:
            codes = np.arange(V ** h, dtype=np.int64)
            ctx = np.stack([(codes // V ** (h - 1 - j)) % V for j in range(h)], 1) if h else np.zeros((1, 0), np.int64)
            self._table = torch.from_numpy(self._log_probs(ctx))
        return self._table


def fit(rows: np.ndarray, vocab: int, n: int, add_k: float, eos_token_id: int | None) -> NGramLM:
    return NGramLM(NGramCounts.fit(rows, vocab, n, add_k, eos_token_id), eos_token_id).eval()
