"""Token ids: documents tokenized (and cached), concatenated into blocks, measured windows, and the blocks a run
trains, evaluates and prompts with (``RealData``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from collapse import metrics as M
from collapse.config import Config
from collapse.data.sources import SPLITS, Splits
from collapse.errors import DataError
from collapse.seeding import numpy_rng

# ---------------------------------------------------------------------- tokens


def tokenize(tokenizer, docs: list[str], batch: int = 1000) -> list[np.ndarray]:
    """Token ids of each document (no special tokens), via the fast tokenizer's batched path."""
    out: list[np.ndarray] = []
    for i in range(0, len(docs), batch):
        enc = tokenizer(docs[i:i + batch], add_special_tokens=False)["input_ids"]
        out += [np.asarray(ids, dtype=np.int32) for ids in enc]
    return out


def split_ids(tokenizer, splits: Splits, cache: Path | None = None) -> dict[str, list[np.ndarray]]:
    """Token ids of every document of every split: read from ``cache`` (a scratch model's ``tokens.npz``, made
    with its tokenizer when it was built) where it holds these splits, else tokenized here."""
    if splits.ids is not None:
        return splits.ids
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["fingerprint"]) == splits.fingerprint():
                    return {s: np.split(z[s], np.cumsum(z[f"{s}_lengths"])[:-1]) for s in SPLITS}
        except (OSError, KeyError, ValueError):  # unreadable or another layout: tokenize (same ids)
            pass
    return {s: tokenize(tokenizer, splits[s]) for s in SPLITS}


def save_split_ids(path: Path, splits: Splits, ids: dict[str, list[np.ndarray]]) -> None:
    """``split_ids``' cache: each split's ids end to end with the document lengths, and the splits' fingerprint."""
    from collapse.io import atomic_path

    arrays = {"fingerprint": np.array(splits.fingerprint())}
    for s in SPLITS:
        arrays[s] = np.concatenate(ids[s]).astype(np.int32) if ids[s] else np.zeros(0, np.int32)
        arrays[f"{s}_lengths"] = np.array([len(d) for d in ids[s]], dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def concat_blocks(doc_ids: list[np.ndarray], block: int, eos_id: int | None) -> np.ndarray:
    """Documents joined end to end (EOS between them), cut into full ``block``-token rows; the ragged end is dropped."""
    parts = []
    for ids in doc_ids:
        parts.append(ids)
        if eos_id is not None:
            parts.append(np.asarray([eos_id], dtype=np.int32))
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    n = len(flat) // block
    return flat[: n * block].reshape(n, block).astype(np.int32)


def flat_ids(doc_ids: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(doc_ids).astype(np.int64) if doc_ids else np.zeros(0, dtype=np.int64)


def measure_docs(by_split: dict, split: str) -> list:
    """The documents `collapse measure` draws from: one split, or ``heldout`` = validation then test (neither is
    trained on; `collapse run` keeps using them as they are)."""
    return list(by_split["validation"]) + list(by_split["test"]) if split == "heldout" else list(by_split[split])


def split_label(split: str) -> str:
    return "held-out (validation + test)" if split == "heldout" else split


def measure_windows(doc_ids: list[np.ndarray], window: int, samples: int, split: str) -> np.ndarray:
    """The first ``window`` tokens of the first ``samples`` documents that have that many (rows in document order)."""
    long_enough = [ids[:window] for ids in doc_ids if len(ids) >= window]
    if not long_enough:
        longest = max((len(i) for i in doc_ids), default=0)
        raise DataError(f"every {split_label(split)} example is shorter than measure.window={window} tokens (longest: {longest}): "
                        "lower measure.window or use longer documents.")
    return np.stack(long_enough[:samples]).astype(np.int32)


# ---------------------------------------------------------------------- what `collapse run` uses


@dataclass
class RealData:
    """The real text as the run uses it: prompts, training rows, validation / test blocks, reference counts."""

    prompts: np.ndarray  # [n_seq, prompt_tokens]: the same prompts every generation
    real_rows: np.ndarray  # real training rows, shaped like the sample rows the regimes mix them with
    val_blocks: np.ndarray
    test_blocks: np.ndarray
    ref_counts: np.ndarray  # token counts of the real training split
    bucket_of: np.ndarray  # frequency bucket of every token id (by its rank in ref_counts; synthetic: TRUE rank)
    suppress: tuple[int, ...]  # ids never sampled (EOS: every sample has the full length)
    n_batches: int
    truth: object = None  # collapse.data.synthetic.SyntheticSource when data.source=synthetic: the known distribution
    truths: np.ndarray | None = None  # [n_seq, new_tokens]: each prompt's true continuation (what a curator may verify)
    blocks: np.ndarray | None = None  # the real training blocks (prompt + new tokens) a curate pool draws real rows from
    prompt_blocks: np.ndarray | None = None  # the indices of those blocks the prompts come from (never a pool's real row)
    oversample: int = 1  # continuations per prompt (curate.oversample): prompts, truths and samples hold k rows each

    @property
    def n_seq(self) -> int:
        """Samples per generation (k × N with oversampling)."""
        return len(self.prompts)

    @property
    def n_train(self) -> int:
        """N: the rows a curated training set holds (one per distinct prompt)."""
        return len(self.prompts) // self.oversample


def _check_fits_memory(n_seq: int, length: int) -> None:
    """One generation's samples (prompt + continuation ids, int64 while they are made) must fit in memory."""
    import psutil

    need, free = 8 * n_seq * length, psutil.virtual_memory().available
    if need > free:
        raise DataError(f"generation.num_sequences={n_seq:,} samples of {length} tokens need {need / 2**30:,.1f} GiB "
                        f"of memory, and {free / 2**30:,.1f} GiB are free: lower generation.num_sequences.")


def real_data(cfg: Config, ids: dict[str, list[np.ndarray]], eos: int | None, vocab: int,
              suppress: tuple[int, ...] | None = None) -> RealData:
    """The splits' token ids (``split_ids``) cut into what `collapse run` uses; the prompts are the same every
    generation. ``suppress``: the ids never sampled (default: EOS)."""
    gc = cfg.generation
    L = gc.prompt_tokens + gc.new_tokens
    eval_len = cfg.eval.block_size or L
    train_ids = ids["train"]
    prompt_blocks = concat_blocks(train_ids, L, eos)
    real_rows = concat_blocks(train_ids, L if gc.keep_prompt else gc.new_tokens, eos)
    val_blocks = concat_blocks(ids["validation"], eval_len, eos)
    test_blocks = concat_blocks(ids["test"], eval_len, eos)
    if cfg.eval.max_blocks:
        test_blocks, val_blocks = test_blocks[: cfg.eval.max_blocks], val_blocks[: cfg.eval.max_blocks]
    if len(prompt_blocks) == 0 or len(test_blocks) == 0 or len(val_blocks) == 0:
        raise DataError(f"the corpus is too small for {L}-token blocks (train {len(prompt_blocks)}, validation "
                        f"{len(val_blocks)}, test {len(test_blocks)} blocks): use more data or shorter blocks.")
    ref_counts = M.counts(flat_ids(train_ids), vocab)
    n_seq = gc.num_sequences or len(prompt_blocks)
    k = cfg.curate.oversample  # k continuations of each prompt, side by side (sample i continues prompt i // k)
    _check_fits_memory(k * n_seq, gc.prompt_tokens + gc.new_tokens)
    order = numpy_rng(cfg.seed, "prompts").permutation(len(prompt_blocks))
    if n_seq > len(order):
        order = np.resize(order, n_seq)  # more samples than blocks: prompts repeat, in the same order
    truth = None
    buckets = M.bucket_of(ref_counts, vocab)
    if cfg.data.source == "synthetic":  # tail loss by TRUE rank: no reference noise in which type is rare
        from collapse.data.synthetic import source

        truth = source(cfg.data.synthetic)
        buckets = truth.bucket_of(max(vocab, len(ref_counts)))
    chosen = prompt_blocks[order[:n_seq]]
    return RealData(prompts=np.repeat(chosen[:, : gc.prompt_tokens], k, axis=0), real_rows=real_rows,
                    truths=np.repeat(chosen[:, gc.prompt_tokens:], k, axis=0) if cfg.curate.active or cfg.eval.mauve else None,
                    val_blocks=val_blocks, test_blocks=test_blocks, ref_counts=ref_counts,
                    bucket_of=buckets, suppress=suppress if suppress is not None else (eos,) if eos is not None else (),
                    n_batches=math.ceil(k * n_seq / gc.batch_size), truth=truth,
                    blocks=prompt_blocks if cfg.curate.real_share > 0 else None, oversample=k,
                    prompt_blocks=np.unique(order[:n_seq]) if cfg.curate.real_share > 0 else None)
