"""The model-kind protocol: everything the loop, the checks and the measurements ask of a model.

A kind is a stateless strategy object; the models it builds are ``torch.nn.Module``s that carry it
(``model.collapse_kind``), so code that only holds a model (evaluation, sampling, KL to the truth) asks
:func:`kind_of` and never tests what the model is. Which kind serves ``model.name_or_path`` is decided
by :func:`collapse.models.kind_for`. May import: config, errors, io, seeding; never the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

KIND_ATTR = "collapse_kind"  # the attribute a kind sets on the models it builds
CPU_FORWARD_TOKENS = 2048  # tokens per forward pass on a CPU: activations stay in cache (docs/benchmarks.md)


@dataclass
class ModelFacts:
    """What the checks learn about a model without loading its weights (``--check`` prints them)."""

    skeleton: torch.nn.Module  # the shapes, on the meta device (or a count model with no counts)
    tokenizer: Any  # None: the tokenizer is made together with the model (a scratch model still to build)
    label: str  # one line for the plan
    token_cache: Path | None = None  # where the splits' token ids are cached beside the model, if anywhere
    file: Path | None = None  # a single-file checkpoint (GGUF) the run folder records the sha256 of


@dataclass
class Loaded:
    """A model ready for generation 0: weights, tokenizer, and where it came from (the run's ``base_model``)."""

    model: torch.nn.Module
    tokenizer: Any
    ref: str
    token_cache: Path | None = None
    file: Path | None = None  # a single-file checkpoint (GGUF) the run folder records the sha256 of


@dataclass
class TrainJob:
    """One generation's training: the rows, the REAL validation blocks, and how to report progress."""

    rows: np.ndarray
    val_blocks: np.ndarray
    train_cfg: Any  # collapse.config.TrainConfig (epochs may differ from the config's: generation 0)
    accelerator: Any
    key: tuple  # seeds the data order
    batch_size: int = 64  # evaluation batch (validation loss)
    show_progress: bool = True
    desc: str = "train"
    on_step: Callable[[int], None] | None = None
    curve: Any = None  # collapse.tracking.run.TrainCurve or None
    extra: dict = field(default_factory=dict)


class ModelKind:
    """The protocol. Subclasses override what their models do differently; the defaults are a causal LM's."""

    name = "model"

    def __deepcopy__(self, memo):  # stateless: a copied model keeps the same kind
        return self

    # ---- check, then load
    def claims(self, name_or_path: str) -> bool:
        """Whether this kind serves ``model.name_or_path``."""
        raise NotImplementedError

    def check_early(self, cfg, splits, command: str) -> None:
        """Checks that need no model yet: run before ``facts`` builds or reads one (``cfg``: the whole Config)."""

    def context_hint(self, cfg) -> str:
        """What else would lift the model's context, appended to an error about it ("" where nothing would)."""
        return ""

    def title(self, cfg) -> str:
        """The model, as a figure's title names it."""
        return cfg.model.name_or_path

    def facts(self, cfg, splits, device) -> ModelFacts:
        """The model's skeleton, tokenizer and a label; weights not loaded (``cfg``: the whole Config)."""
        raise NotImplementedError

    def check_fits(self, cfg, model) -> None:
        """Raise ModelError where the run's settings cannot work with this model (context, trainable parts, decoding
        settings a kind's own sampler cannot honour). Called with the skeleton by the checks, and again with
        the loaded model where the tokenizer came with it (a scratch model just built)."""
        from collapse.errors import ModelError

        ctx = context_length(model)
        L = cfg.generation.prompt_tokens + cfg.generation.new_tokens
        if L > ctx:
            raise ModelError(f"generation.prompt_tokens + generation.new_tokens = {L} exceeds the model's context "
                             f"of {ctx} tokens: shorten them.")
        eval_len = cfg.eval.block_size or L
        if eval_len > ctx:
            raise ModelError(f"eval.block_size={eval_len} exceeds the model's context of {ctx} tokens.")

    def training_line(self, cfg, skeleton) -> str:
        """How each generation is trained, one line for the plan."""
        raise NotImplementedError

    def load(self, cfg, splits, device, show_progress: bool = True, accelerator=None) -> Loaded:
        """Generation 0's model and tokenizer (``cfg``: the ModelConfig)."""
        raise NotImplementedError

    # ---- train, save, load, prune
    def weights_subdir(self, cfg) -> str:
        """The folder of gen_g (g >= 1) that model g is reloaded from."""
        return "model"

    def continues_previous(self, cfg) -> bool:
        """Whether generation g+1 starts from model g (else from generation 0)."""
        return cfg.train.init == "previous"

    def start(self, cfg, g: int, base, prev):
        """A trainable copy of what generation g starts from (``prev``: model g-1, or None)."""
        raise NotImplementedError

    def train(self, trainee, job: TrainJob) -> tuple[torch.nn.Module, dict]:
        """Train ``trainee`` on ``job.rows``: (model g, the stats of train.json: at least ``val_nll``)."""
        raise NotImplementedError

    def save(self, cfg, model, gen_folder: Path, is_main: bool):
        """Write model g into ``gen_folder / weights_subdir(cfg)`` (atomically); return the model the later stages use.
        Every folder of a generation holds weights only: checksums and ``keep_checkpoints`` treat them so."""
        raise NotImplementedError

    def save_merged(self, model, folder: Path, is_main: bool, tokenizer=None):
        """Generation 0 fine-tuned on real text (``train.gen0_epochs`` / ``gen0_blocks``) into ``folder``, with the
        tokenizer where the kind has one; returns it ready to use."""
        raise NotImplementedError(f"the {self.name} kind has no fine-tuned generation 0")

    def load_merged(self, folder: Path, device):
        """What ``save_merged`` wrote."""
        raise NotImplementedError(f"the {self.name} kind has no fine-tuned generation 0")

    def merged_bytes(self, cfg, model0) -> int:
        """Bytes of what ``save_merged`` writes."""
        return 0

    def load_generation(self, cfg, folder: Path, base, device, g: int):
        """Model g from ``folder`` (``weights_subdir``); raise DataError naming what to do if it cannot be read."""
        raise NotImplementedError

    def weights_problem(self, folder: Path) -> str | None:
        """Why the weights in ``folder`` cannot be trusted (checked on resume), or None."""
        raise NotImplementedError

    def bytes_per_generation(self, cfg, model0) -> int:
        """Bytes of the weights one generation keeps on disk."""
        raise NotImplementedError

    # ---- score and sample
    def rows_per_forward(self, model, device: torch.device, batch_size: int, length: int) -> int:
        """``batch_size`` on a GPU; on a CPU at most ``CPU_FORWARD_TOKENS`` tokens (cache-sized). The figures are
        bit-identical for every chunking: sums run in row order, and each row's result is independent of its
        neighbours (tests/test_evaluate.py)."""
        if device.type != "cpu":
            return max(1, batch_size)
        return max(1, min(batch_size, CPU_FORWARD_TOKENS // max(length, 1)))

    def token_nll(self, model, blocks: torch.Tensor, start: int = 1) -> torch.Tensor:
        """With ``start > 1`` only the logits that predict those tokens are computed (``logits_to_keep``): the
        output layer and the softmax cost more than the trunk of a small model."""
        L = blocks.shape[1]
        logits = _logits(model, blocks, L - start + 1)[:, -(L - start + 1):-1]
        B, T, V = logits.shape
        # (B*T, V) rows: the transposed (B, V, T) layout takes a slow path
        return F.cross_entropy(logits.float().reshape(B * T, V), blocks[:, start:].reshape(-1),
                               reduction="none").view(B, T)

    def log_probs_without(self, model, x: torch.Tensor, start: int, drop: int | None) -> torch.Tensor:
        """Log-probabilities [B, L-start] of tokens ``start..L-1`` of ``x`` with token ``drop`` (the separator)
        removed from the distribution first (None: nothing removed): a synthetic source's KL to the truth."""
        dev = next(model.parameters()).device
        T = x.shape[1] - start
        logits = model(input_ids=x.to(dev)).logits[:, -T - 1:-1].float()
        if drop is not None:
            logits[..., drop] = float("-inf")
        return torch.log_softmax(logits, -1).gather(-1, x[:, start:].to(dev)[..., None])[..., 0]

    def for_sampling(self, model):
        """The model to decode from: a LoRA-wrapped (peft) model as a merged copy, no adapter cost per step."""
        if hasattr(model, "merge_and_unload"):
            import copy

            return copy.deepcopy(model).merge_and_unload()
        return model

    def sample(self, model, prompts: torch.Tensor, new_tokens: int, gen_cfg, u: torch.Tensor,
               suppress_ids: tuple[int, ...]) -> torch.Tensor | None:
        """A kind's own sampler ([B, new_tokens] token ids), or None for the shared decode loop (the fast engines).

        Asked for sampling and greedy decoding only (beam search always runs the shared loop). ``u`` is
        [new_tokens, B] float64 uniforms for the whole batch, None for greedy; a kind that samples must honour
        every ``generation.*`` filter itself, or refuse it in ``check_fits``, or return None."""
        return None

    def evaluation_extras(self, model, blocks: np.ndarray, batch_size: int) -> dict:
        """Figures of this kind beside test perplexity in eval.json and the metrics row."""
        return {}


def _logits(model, blocks: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of (at least) the last ``keep`` positions; the full sequence for models without ``logits_to_keep``."""
    if keep < blocks.shape[1] and getattr(model, "_collapse_keep_ok", True):
        try:
            return model(input_ids=blocks, logits_to_keep=keep).logits
        except TypeError:  # a model whose forward has no logits_to_keep: remember, compute all
            model._collapse_keep_ok = False
    return model(input_ids=blocks).logits


CAUSAL_LM = ModelKind()  # what a model that carries no kind is scored and sampled as


def kind_of(model) -> ModelKind:
    """The kind that built ``model``; a transformers model (wrapped by peft or not) is scored as a causal LM."""
    return getattr(model, KIND_ATTR, None) or CAUSAL_LM


def context_length(model) -> int:
    c = model.config
    for k in ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length"):
        v = getattr(c, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return 1 << 30


def mark(model, kind: ModelKind):
    """``model`` tagged with the kind that built it (returned)."""
    setattr(model, KIND_ATTR, kind)
    return model
