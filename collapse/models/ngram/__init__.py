"""The n-gram kind (``model.name_or_path: ngram``): a count model behind the model protocol.

``counts.py`` holds the counts and the module that serves them; ``law.py`` the exact laws of the loop for
its unigram maximum-likelihood case. Here: how a run checks, builds, "trains" (counts), saves, scores and
samples it. Its tokenizer is the synthetic source's, or the scratch model's byte-level BPE.
May import: config, data, evaluate, io, scratch (the tokenizer), synthetic.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from collapse.errors import DataError, first_line
from collapse.models.kind import Loaded, ModelFacts, ModelKind, TrainJob
from collapse.models.ngram.counts import COUNTS_FILE, NGramCounts, NGramLM, _empty_table, fit

__all__ = ["NGramCounts", "NGramKind", "NGramLM", "fit", "generation0", "load", "save", "skeleton", "train"]


class NGramKind(ModelKind):
    name = "ngram"

    def claims(self, name_or_path: str) -> bool:
        return name_or_path == "ngram"

    def facts(self, cfg, splits, device) -> ModelFacts:
        m = cfg.model
        tok = tokenizer_for(m, splits)
        return ModelFacts(skeleton(len(tok), m.ngram.n, m.ngram.add_k, tok.eos_token_id), tok,
                          f"ngram n={m.ngram.n}, add_k={m.ngram.add_k:g}: counts of its regime's training set; "
                          f"tokenizer {len(tok):,} entries")

    def training_line(self, cfg, skeleton) -> str:
        return f"counting each generation's training set ({cfg.model.ngram.n}-grams)"

    def load(self, cfg, splits, device, show_progress: bool = True, accelerator=None) -> Loaded:
        model, tok = generation0(cfg, splits, device)  # counted here from the real training split: seconds
        return Loaded(model, tok, str(tokenizer_folder(cfg, splits, tok)))

    def continues_previous(self, cfg) -> bool:
        return False  # each generation counts its own training set

    def start(self, cfg, g: int, base, prev):
        return base  # its settings (vocabulary, n, add_k, separator): nothing is copied

    def train(self, trainee, job: TrainJob):
        return train(trainee, job.rows, job.val_blocks, job.batch_size, job.accelerator)

    def save(self, cfg, model, gen_folder: Path, is_main: bool):
        if is_main:
            save(model, gen_folder / "model")
        return model

    def load_generation(self, cfg, folder: Path, base, device, g: int):
        try:
            return load(folder, getattr(base.config, "eos_token_id", None), device)
        except Exception as e:  # noqa: BLE001 - numpy raises several types for a damaged file
            raise DataError(f"the counts of generation {g} in {folder} cannot be read ({first_line(e, 120)}): "
                            f"delete {folder} and rerun the same command to recount them.") from None

    def weights_problem(self, folder: Path) -> str | None:
        if not folder.is_dir():
            return f"{folder.name}/ holds no counts"
        try:
            np.load(folder / COUNTS_FILE, allow_pickle=False).close()
            return None
        except Exception as e:  # noqa: BLE001
            return f"{folder.name}/{COUNTS_FILE} cannot be read ({first_line(e, 120)})"

    def bytes_per_generation(self, cfg, model0) -> int:
        c = model0.counts  # int64 history keys, totals, next ids and counts
        return 8 * (len(c.uni) + sum(sum(len(a) for a in t) for t in c.tables)) + 1024

    # ---- score and sample: exact log-probabilities, looked up (no [B, L, V] logits)
    def rows_per_forward(self, model, device, batch_size: int, length: int) -> int:
        return max(1, batch_size)  # a lookup: no activations to keep in cache

    def token_nll(self, model, blocks: torch.Tensor, start: int = 1) -> torch.Tensor:
        return -model.target_log_probs(blocks, start)  # probability 0: +inf

    def log_probs_without(self, model, x: torch.Tensor, start: int, drop: int | None) -> torch.Tensor:
        return model.target_log_probs(x, start, drop=drop)

    def sample(self, model, prompts, new_tokens, gen_cfg, u, suppress_ids):
        if u is not None and gen_cfg.temperature == 1.0 and gen_cfg.top_k == 0 and gen_cfg.top_p == 1.0 \
                and gen_cfg.min_p == 0.0 and gen_cfg.repetition_penalty == 1.0:  # plain draws: from the counts
            return model.sample(prompts, new_tokens, u, suppress_ids)
        return None

    def evaluation_extras(self, model, blocks: np.ndarray, batch_size: int) -> dict:
        return {"test_zero_tokens": zero_prob_tokens(model, blocks, batch_size)}  # why test ppl may be infinite


NGRAM = NGramKind()
NGramLM.collapse_kind = NGRAM  # every n-gram model carries its kind (collapse.models.kind_of)


def train(model0: NGramLM, rows: np.ndarray, val_blocks: np.ndarray, batch_size: int = 64,
          accelerator=None) -> tuple[NGramLM, dict]:
    """One generation's "training": count ``rows`` with generation 0's settings; the stats a fine-tune reports
    (validation NLL on the REAL validation blocks)."""
    from collapse.metrics.evaluate import mean_nll

    t0 = time.perf_counter()
    c = model0.config
    model = fit(rows, c.vocab_size, c.ngram_n, c.add_k, c.eos_token_id)
    val = mean_nll(model, val_blocks, batch_size, accelerator)
    dt = time.perf_counter() - t0
    return model, {"history": [], "epoch_selected": 0, "train_loss": None, "val_nll": val, "steps": 0,
                   "seconds": dt, "tokens_per_s": rows.size / dt if dt > 0 else 0.0}


def skeleton(vocab: int, n: int, add_k: float, eos_token_id: int | None) -> NGramLM:
    """An n-gram model with no counts yet: its shape for the checks (vocabulary, context)."""
    return NGramLM(NGramCounts(vocab, n, add_k, np.zeros(vocab, np.int64), [_empty_table() for _ in range(n - 1)]),
                   eos_token_id)


def save(model: NGramLM, folder: Path) -> None:
    model.counts.save(folder)


def load(folder: Path, eos_token_id: int | None, device=None) -> NGramLM:
    m = NGramLM(NGramCounts.load(folder), eos_token_id).eval()
    return m.to(device) if device is not None else m


def zero_prob_tokens(model: NGramLM, blocks: np.ndarray, batch_size: int = 64) -> int:
    """Tokens of ``blocks`` (positions 1..L-1) to which the model gives probability 0 (infinite loss)."""
    n = 0
    for i in range(0, len(blocks), batch_size):
        n += int(torch.isinf(model.target_log_probs(torch.as_tensor(blocks[i:i + batch_size]))).sum())
    return n


def tokenizer_for(cfg, splits):
    """The n-gram's tokenizer (``cfg``: the ModelConfig): the synthetic source's; else the scratch model's (shipped,
    cached, or a byte-level BPE trained now on the training split, without building the model)."""
    if getattr(splits, "tokenizer", None) is not None:
        return splits.tokenizer
    from collapse.models.scratch import scratch_folder, train_tokenizer

    folder = scratch_folder(cfg.scratch, splits)
    if (folder / "DONE").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    return train_tokenizer(splits.train, cfg.scratch.vocab_size)


def tokenizer_folder(cfg, splits, tok) -> str:
    """Where the n-gram's tokenizer is saved (the run's ``base_model``): the synthetic source's in the cache, or
    the scratch model's folder; `ngram` where it lives in memory only (a BPE trained for this run)."""
    if getattr(splits, "tokenizer", None) is not None:
        return str(_synthetic_tokenizer_folder(len(tok) - 1))  # the symbols, then the separator
    from collapse.models.scratch import scratch_folder

    folder = scratch_folder(cfg.scratch, splits)
    return str(folder) if (folder / "DONE").is_file() else "ngram"


def _synthetic_tokenizer_folder(V: int):
    """The synthetic source's word-level tokenizer saved like any Hugging Face tokenizer, once, in the cache: so
    the report and anyone else can decode an n-gram run's samples."""
    from collapse.data.synthetic import word_tokenizer
    from collapse.io import atomic_dir
    from collapse.models.scratch import cache_root

    folder = cache_root() / "synthetic" / f"tokenizer-{V}"
    if not (folder / "tokenizer.json").is_file():
        with atomic_dir(folder, replace=False) as tmp:
            word_tokenizer(V).save_pretrained(tmp)
    return folder


def generation0(cfg, splits, device=None):
    """(model, tokenizer): generation 0 counts the REAL training documents, joined by the separator as the run's
    blocks join them (``cfg``: the ModelConfig)."""
    from collapse.data import tokenize

    tok = tokenizer_for(cfg, splits)
    eos = tok.eos_token_id
    parts = []  # the training split's ids (a synthetic source carries them; else the training split alone)
    for ids in (splits.ids["train"] if splits.ids is not None else tokenize(tok, splits.train)):
        parts += [ids, np.asarray([eos], dtype=np.int32)]
    flat = np.concatenate(parts)[None]
    model = fit(flat, len(tok), cfg.ngram.n, cfg.ngram.add_k, eos)
    return (model.to(device) if device is not None else model), tok
