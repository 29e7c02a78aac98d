"""A synthetic source whose distribution is known: a seeded Markov chain of order 0, 1 or 2 over ``vocab`` symbols.

Real text has no known distribution: every "real share" is estimated from a finite reference and test
perplexity has an unknown floor. Here the truth is a table, so the same loop can be measured against it.

The tables (``data.synthetic``):

* the base unigram distribution is Zipf: ``b_i ∝ (i + 1)^-s`` (symbol i has base rank i + 1);
* order 0: tokens are independent draws from ``b``;
* order 1 (2): the next-token row of every history ``a`` (pair ``a, b``) is ``(1 - λ) D + λ b`` with
  ``D ~ Dirichlet(c · b)`` (c = ``concentration``; small c: peaked, predictable rows) and λ = ``FLOOR``
  (1e-3), which makes every transition possible: the chain is irreducible and aperiodic, its
  stationary distribution unique, and no truth event has probability 0.

Computed exactly from the tables (up to the float64 convergence of a power iteration, 1e-14 in L1):
the stationary unigram distribution ``pi`` (order 2: the stationary distribution of pairs and its
marginal), its ranks and bucket shares, and the entropy rate ``H = sum_h pi(h) H(P[h, :])`` in nats
per token. Each document starts in the stationary distribution, so every position of every document
has the unigram law ``pi``.

Symbols are the words ``w0 .. w{V-1}``; a word-level tokenizer (saved like any Hugging Face tokenizer)
gives symbol i the token id i and the document separator ``<|endoftext|>`` the id V, so every model kind
and command reads the documents as text, unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from collapse import metrics as M
from collapse.config import SyntheticConfig
from collapse.seeding import numpy_rng

FLOOR = 1e-3  # share of the base distribution mixed into every transition row
EOT = "<|endoftext|>"
_TOL = 1e-14


class SyntheticSource:
    """The tables of one ``data.synthetic`` setting, their exact stationary law, and seeded sampling."""

    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        V, k = cfg.vocab, cfg.order
        self.V, self.order, self.T = V, k, cfg.doc_tokens
        base = np.arange(1, V + 1, dtype=np.float64) ** -cfg.zipf
        self.base = base / base.sum()
        rng = numpy_rng(cfg.seed, "synthetic", "tables")
        self.table = None  # order 1: [V, V] (row a: law of the next token after a); order 2: [V, V, V]
        self.pair = None  # order 2: stationary law of (x_t, x_t+1)
        if k == 0:
            self.pi = self.base.copy()
            self.entropy_rate = _entropy(self.base)
            return
        g = rng.standard_gamma(cfg.concentration * self.base, size=(V**k, V))
        s = g.sum(1, keepdims=True)
        # a row whose every gamma draw underflowed (tiny concentration) is the base row
        rows = np.where(s > 0, g / np.where(s > 0, s, 1.0), self.base)
        rows = (1.0 - FLOOR) * rows + FLOOR * self.base
        rows /= rows.sum(1, keepdims=True)
        if k == 1:
            self.table = rows
            self.pi = _stationary(lambda p: p @ rows, self.base)
            self.entropy_rate = float(self.pi @ _row_entropy(rows))
        else:
            self.table = rows.reshape(V, V, V)
            self.pair = _stationary(lambda q: np.einsum("ab,abx->bx", q, self.table), np.outer(self.base, self.base))
            self.pi = self.pair.sum(0)
            self.entropy_rate = float(self.pair.reshape(-1) @ _row_entropy(rows))

    # ---- exact figures

    @property
    def unigram_entropy(self) -> float:
        """Entropy of the stationary unigram distribution, nats."""
        return _entropy(self.pi)

    def ranks(self) -> np.ndarray:
        """1-based rank of every symbol by its TRUE stationary probability (ties: smaller id first)."""
        return M.ranks(self.pi)

    def bucket_of(self, vocab: int) -> np.ndarray:
        """Bucket index of every token id ``0..vocab-1`` by TRUE rank; ids beyond the symbols (the separator)
        are ``unseen``."""
        return M.bucket_of(np.pad(self.pi, (0, max(0, vocab - self.V))), vocab)

    def bucket_shares(self) -> np.ndarray:
        """TRUE share of the tokens in each bucket (``metrics.BUCKETS`` order)."""
        return M.bucket_shares(self.pi, self.bucket_of(self.V))

    def summary(self) -> dict:
        shares = self.bucket_shares()
        return {"vocab": self.V, "order": self.order, "entropy_rate": self.entropy_rate,
                "unigram_entropy": self.unigram_entropy, "gini_simpson": float(1.0 - (self.pi ** 2).sum()),
                "bucket_share": {b: float(shares[i]) for i, b in enumerate(M.BUCKETS)}}

    # ---- sampling and exact log-probabilities

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` documents of ``doc_tokens`` symbols [n, T] (int32), each started in the stationary law."""
        T = self.T
        out = np.empty((n, T), dtype=np.int64)
        u = rng.random((n, T))
        if self.order == 0:
            return _draw(np.cumsum(self.pi), u).reshape(n, T).astype(np.int32)
        if self.order == 1:
            cum = np.cumsum(self.table, axis=1)
            out[:, 0] = _draw(np.cumsum(self.pi), u[:, 0])
            for t in range(1, T):
                out[:, t] = _draw_rows(cum[out[:, t - 1]], u[:, t])
            return out.astype(np.int32)
        V = self.V
        first = _draw(np.cumsum(self.pair.reshape(-1)), u[:, 0])
        out[:, 0] = first // V
        if T > 1:
            out[:, 1] = first % V
        cum = np.cumsum(self.table, axis=2)
        for t in range(2, T):
            out[:, t] = _draw_rows(cum[out[:, t - 2], out[:, t - 1]], u[:, t])
        return out.astype(np.int32)

    def log_prob(self, docs: np.ndarray) -> np.ndarray:
        """log q(x_t | x_<t) of every token of ``docs`` [n, T] under the source (nats), [n, T]."""
        x = np.asarray(docs, dtype=np.int64)
        lp = np.empty(x.shape, dtype=np.float64)
        lp[:, 0] = np.log(self.pi[x[:, 0]])
        if self.order == 0:
            lp[:, 1:] = np.log(self.pi[x[:, 1:]])
        elif self.order == 1:
            lp[:, 1:] = np.log(self.table[x[:, :-1], x[:, 1:]])
        else:
            if x.shape[1] > 1:
                lp[:, 1] = np.log(self.pair[x[:, 0], x[:, 1]]) - lp[:, 0]
            lp[:, 2:] = np.log(self.table[x[:, :-2], x[:, 1:-1], x[:, 2:]])
        return lp

    # ---- documents and tokenizer

    @functools.cached_property
    def _documents(self) -> np.ndarray:
        return self.sample(self.cfg.documents, numpy_rng(self.cfg.seed, "synthetic", "documents"))

    def document_ids(self) -> list[np.ndarray]:
        """The symbol ids of :meth:`documents` (= their token ids), int32 each."""
        return list(self._documents)

    def documents(self) -> list[str]:
        """The ``documents`` documents of the splits, as text (split by the usual seeded shuffle)."""
        return [to_text(d) for d in self._documents]

    @functools.cached_property
    def _truth_documents(self) -> np.ndarray:
        return self.sample(self.cfg.truth_documents, numpy_rng(self.cfg.seed, "synthetic", "truth"))

    def truth_documents(self) -> np.ndarray:
        """Fresh documents for ``kl_truth`` [truth_documents, T]: the same for every generation and run seed."""
        return self._truth_documents

    def tokenizer(self):
        return word_tokenizer(self.V)


def to_text(ids) -> str:
    return " ".join(f"w{int(i)}" for i in ids)


@functools.lru_cache(maxsize=4)
def _source(key: tuple) -> SyntheticSource:
    return SyntheticSource(SyntheticConfig(*key))


def source(cfg: SyntheticConfig) -> SyntheticSource:
    """The source of these settings (built once per process)."""
    return _source(dataclasses.astuple(cfg))


def word_tokenizer(V: int):
    """A word-level fast tokenizer: ``w{i}`` -> id i, the separator (also bos / pad / unknown) -> id V."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(V)}
    vocab[EOT] = V
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOT))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=EOT)


# ---------------------------------------------------------------------- helpers


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _row_entropy(rows: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(rows > 0, rows * np.log(rows), 0.0).sum(1)


def _stationary(step, start: np.ndarray, max_iter: int = 100_000) -> np.ndarray:
    """Fixed point of the linear map ``step`` on distributions, by power iteration from ``start``."""
    p = start / start.sum()
    for _ in range(max_iter):
        q = step(p)
        q /= q.sum()
        if np.abs(q - p).sum() < _TOL:
            return q
        p = q
    return p  # pragma: no cover - the floor makes the chain contract by at least FLOOR per step


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws: index i with cdf[i-1] <= u * cdf[-1] < cdf[i]."""
    return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1)


def _draw_rows(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One inverse-CDF draw per row of cumulative rows ``cum`` [n, V]."""
    return np.minimum((cum < (u * cum[:, -1])[:, None]).sum(1), cum.shape[1] - 1)
