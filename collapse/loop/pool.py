"""The pool a curator chooses generation g+1's N training rows from (generate → **pool** → curate → regime → train).

    pool g = the k × N samples of generation g (curate.oversample = k continuations per prompt)
           + M real training blocks of unknown origin (curate.real_share = M / pool size), shuffled in

The real rows are the situation Drayson et al. study (human and machine text mixed, origin unknown): each is a
real training block cut like a sample (its first ``prompt_tokens`` are the prompt, the next ``new_tokens`` the
continuation), drawn fresh each generation from the blocks whose continuation holds no id the samples cannot hold
(EOS) and that no sample's prompt comes from, so neither a token nor a shared prompt gives it away; the pool's order
is a seeded shuffle, so position tells nothing either (oversampling, where a sample's prompt repeats k times, is
refused with real rows). The detector's own real training rows are the real rows that share no token position with
the pool's real blocks (``human_rows``). Oversampling is the situation of Feng et al. and Yi et al.: more
candidates than rows needed.

Without pool settings the pool is the samples in their order and nothing is drawn: a run is what it was before the
pool existed. Pure numpy; the stage (collapse.loop.curate_stage) reads and writes the files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pool:
    """Pool rows in pool order: ``full`` [P, prompt + new] ids; ``sample_index`` (the row of samples.parquet, -1 for
    a real row) and ``real_block`` (the training block, -1 for a sample); ``human_rows``: the real rows a detector
    may learn from (none of the pool's text)."""

    full: np.ndarray
    sample_index: np.ndarray
    real_block: np.ndarray
    human_rows: np.ndarray

    @property
    def own(self) -> np.ndarray:
        """True where the row is one of the generation's own samples (for the analysis and for a detector's training
        folds: never a curator's score)."""
        return self.sample_index >= 0

    @property
    def mixed(self) -> bool:
        return bool((self.real_block >= 0).any())


def real_count(n_samples: int, real_share: float) -> int:
    """M: real rows that make ``real_share`` of a pool with ``n_samples`` samples."""
    return int(round(real_share / (1.0 - real_share) * n_samples)) if real_share > 0 else 0


def pool_size(n_samples: int, real_share: float) -> int:
    return n_samples + real_count(n_samples, real_share)


def eligible_blocks(blocks: np.ndarray, prompt_tokens: int, suppress: tuple[int, ...],
                    prompts: np.ndarray | None = None) -> np.ndarray:
    """Indices of the real blocks a pool may hold: no suppressed id (EOS) in the continuation, as in every sample,
    and none of ``prompts`` (the blocks the samples' prompts come from: a real row sharing a sample's prompt would
    pair them)."""
    ok = np.ones(len(blocks), bool)
    if suppress:
        ok &= ~np.isin(blocks[:, prompt_tokens:], np.asarray(suppress, np.int64)).any(axis=1)
    if prompts is not None:
        ok[np.asarray(prompts, np.int64)] = False
    return np.flatnonzero(ok)


def disjoint_rows(real_rows: np.ndarray, blocks_used: np.ndarray, block_len: int) -> np.ndarray:
    """The real rows (``real_rows``: the training text cut into rows of their own length, from the same token stream
    as the blocks) that share no token position with the blocks ``blocks_used`` (of ``block_len`` tokens)."""
    r = real_rows.shape[1]
    if len(blocks_used) == 0:
        return real_rows
    starts = np.arange(len(real_rows)) * r
    used = np.sort(np.asarray(blocks_used, np.int64)) * block_len
    # the first used block ending after each row's start: it overlaps the row if it begins before the row ends
    j = np.searchsorted(used + block_len, starts, side="right")
    overlaps = (j < len(used)) & (used[np.minimum(j, len(used) - 1)] < starts + r)
    return real_rows[~overlaps]


def build_pool(samples_full: np.ndarray, blocks: np.ndarray | None, real_rows: np.ndarray, real_share: float,
               prompt_tokens: int, suppress: tuple[int, ...], rng: np.random.Generator | None,
               prompts: np.ndarray | None = None) -> Pool:
    """Generation g's pool (see the module docstring); ``rng`` draws the real blocks and the order (seed, g, "pool");
    ``prompts``: the blocks the samples' prompts come from, never drawn."""
    n = len(samples_full)
    m = real_count(n, real_share)
    own = np.arange(n, dtype=np.int64)
    if m == 0:  # the samples alone, in their order: nothing drawn
        return Pool(samples_full, own, np.full(n, -1, np.int64), real_rows)
    ok = eligible_blocks(blocks, prompt_tokens, suppress, prompts)
    if len(ok) < m:
        raise ValueError(f"{m} real pool rows asked and {len(ok)} real blocks are eligible")
    picked = np.sort(rng.choice(ok, size=m, replace=False))
    full = np.concatenate([samples_full, blocks[picked, : samples_full.shape[1]].astype(samples_full.dtype)])
    sample_index = np.concatenate([own, np.full(m, -1, np.int64)])
    real_block = np.concatenate([np.full(n, -1, np.int64), picked.astype(np.int64)])
    order = rng.permutation(n + m)
    human = disjoint_rows(real_rows, picked, blocks.shape[1])
    return Pool(full[order], sample_index[order], real_block[order], human)


def pool_rows(sample_rows: np.ndarray, sample_index: np.ndarray, real_block: np.ndarray | None,
              blocks: np.ndarray | None, prompt_tokens: int, keep_prompt: bool) -> np.ndarray:
    """The pool's rows as training rows (a sample's row as the regimes read it; a real block cut the same way)."""
    if real_block is None or not (real_block >= 0).any():
        return sample_rows if np.array_equal(sample_index, np.arange(len(sample_rows))) else sample_rows[sample_index]
    real = real_block >= 0
    out = np.empty((len(sample_index), sample_rows.shape[1]), sample_rows.dtype)
    out[~real] = sample_rows[sample_index[~real]]
    cut = blocks[real_block[real]]
    out[real] = cut[:, : sample_rows.shape[1]] if keep_prompt else cut[:, prompt_tokens:prompt_tokens + sample_rows.shape[1]]
    return out
