"""The sections of the synthetic source (``data.synthetic``), the n-gram model (``model.ngram``), the
intervals (``stats``) and the regime (``regime``), and the check that refuses keys which mean nothing for the n-gram; the package's
``schema`` gathers them into :class:`collapse.config.Config`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from collapse.config.fields import setting
from collapse.errors import ConfigError


@dataclass
class SyntheticConfig:
    vocab: int = setting(1000, "Symbols of the synthetic source (one token id each; the tokenizer adds the separator).")
    order: int = setting(1, "Markov order: 0 = independent tokens, 1 = each token depends on the one before, 2 = on two "
                       "(order 2 holds a vocab^3 table: vocab at most 200).")
    zipf: float = setting(1.1, "Zipf exponent s of the base unigram distribution (p_i proportional to i^-s).")
    concentration: float = setting(100.0, "Total Dirichlet concentration of each transition row (row ~ Dirichlet(c * "
                                     "base unigram)): small = peaked, predictable rows; large = rows near the base.")
    documents: int = setting(2000, "Documents sampled for the train / validation / test splits (data.val_fraction, "
                              "data.test_fraction).")
    doc_tokens: int = setting(128, "Tokens per document (each document starts in the stationary distribution).")
    truth_documents: int = setting(256, "Fresh documents drawn from the source to estimate kl_truth (the same every "
                                   "generation).")
    seed: int = setting(0, "Seed of the transition tables and of the documents (fixed across run seeds).")

    def __post_init__(self) -> None:
        if self.vocab < 2:
            raise ConfigError(f"data.synthetic.vocab={self.vocab} is out of range: a source needs at least 2 symbols.")
        if self.order not in (0, 1, 2):
            raise ConfigError(f"data.synthetic.order={self.order} is out of range: use 0, 1 or 2.")
        if self.order == 2 and self.vocab > 200:
            raise ConfigError(f"data.synthetic.order=2 holds a vocab^3 transition table: use data.synthetic.vocab<=200 "
                              f"(not {self.vocab}) or order 1.")
        if not self.zipf > 0 or not math.isfinite(self.zipf):
            raise ConfigError(f"data.synthetic.zipf={self.zipf} is out of range: use a positive Zipf exponent "
                              "(1.0-1.2 is like text).")
        if not self.concentration > 0 or not math.isfinite(self.concentration):
            raise ConfigError(f"data.synthetic.concentration={self.concentration} is out of range: use a positive "
                              "number.")
        for k in ("documents", "doc_tokens", "truth_documents"):
            if getattr(self, k) < 1:
                raise ConfigError(f"data.synthetic.{k}={getattr(self, k)} is out of range: use at least 1.")
        if self.documents < 3:
            raise ConfigError("data.synthetic.documents must be at least 3 (train, validation and test each need one).")
        if self.seed < 0:
            raise ConfigError(f"data.synthetic.seed={self.seed} is out of range: use 0 or more.")


@dataclass
class NGramConfig:
    n: int = setting(2, "Order of the count-based model: 1 = unigram, 2 = bigram, 3 = trigram.")
    add_k: float = setting(0.0, "Add-k smoothing of every count (0 = pure maximum likelihood: an unseen event has "
                           "probability 0 and an infinite loss).")

    def __post_init__(self) -> None:
        if self.n not in (1, 2, 3):
            raise ConfigError(f"model.ngram.n={self.n} is out of range: use 1 (unigram), 2 (bigram) or 3 (trigram).")
        if not self.add_k >= 0 or not math.isfinite(self.add_k):
            raise ConfigError(f"model.ngram.add_k={self.add_k} is out of range: use 0 (maximum likelihood) or more.")


# keys that mean nothing for the count-based n-gram model (it counts; nothing is fine-tuned or decoded by beams)
NGRAM_MEANINGLESS = ("train.method", "train.init", "train.select", "train.epochs", "train.lr", "train.batch_size",
                     "train.grad_accum", "train.warmup_ratio", "train.weight_decay", "train.max_grad_norm",
                     "train.mixed_precision", "train.lora", "train.gen0_epochs", "train.gen0_blocks",
                     "train.gen0_val_every", "model.scratch", "model.dtype",
                     "model.revision", "model.trust_remote_code", "generation.num_beams", "generation.engine")


def check_explicit_keys(cfg: Any, explicit: list[str]) -> None:
    """Keys set by the user (YAML or command line) that cannot act with the chosen model: one error line."""
    if cfg.model.name_or_path != "ngram":
        return
    bad = [k for k in explicit if any(k == m or k.startswith(m + ".") for m in NGRAM_MEANINGLESS)]
    if bad:
        raise ConfigError(f"{', '.join(bad)} mean{'s' if len(bad) == 1 else ''} nothing for model.name_or_path=ngram "
                          "(it is trained by counting its regime's training set): remove "
                          f"{'it' if len(bad) == 1 else 'them'}; only model.ngram.n and model.ngram.add_k set it.")


@dataclass
class StatsConfig:
    resamples: int = setting(1000, "Bootstrap resamples behind every 95% interval and paired change (0 = no intervals).")
    level: float = setting(0.95, "Coverage of the intervals (the `ci95` keys keep their name at any level).")

    def __post_init__(self) -> None:
        if self.resamples < 0 or 0 < self.resamples < 100:
            raise ConfigError(f"stats.resamples={self.resamples} is out of range: use 0 (no intervals) or at least 100.")
        if not 0.5 <= self.level < 1.0:
            raise ConfigError(f"stats.level={self.level} is out of range: use a coverage in [0.5, 1), e.g. 0.95.")


@dataclass
class RegimeConfig:
    kind: str = setting("replace", "`replace` | `mix` | `accumulate` | `accumulate_subsample`, or a regime registered "
                        "with collapse.loop.regimes.regime.")
    real_fraction: float = setting(0.1, "For `mix`: share of each training set drawn fresh from real blocks.")
    size: int | None = setting(None, "For `accumulate_subsample`: training-set size (null = one generation's sample count).")

    def __post_init__(self) -> None:
        from collapse.loop.regimes import REGIMES

        if self.kind not in REGIMES:
            raise ConfigError(f"regime.kind={self.kind!r} is not one of: {', '.join(REGIMES)} (a regime of your own: "
                              "name its module in COLLAPSE_PLUGINS).")
        if not 0.0 <= self.real_fraction <= 1.0 or math.isnan(self.real_fraction):
            raise ConfigError(f"regime.real_fraction={self.real_fraction} is out of range: use a value in [0, 1].")
        if self.size is not None and self.size < 1:
            raise ConfigError("regime.size must be at least 1 (or null).")


@dataclass
class HarnessConfig:
    """lm-evaluation-harness tasks every generation (``eval.harness``; collapse/loop/harness_stage.py)."""

    tasks: list[str] = setting([], "lm-eval tasks or groups evaluated on every generation after `evaluate`: a name "
                               "(`kjv_cloze`, shipped, offline; `hellaswag` and the other lm-eval tasks, whose data "
                               "comes from the hub) or a local task folder (its groups, else its tasks). [] = off. "
                               "pip install 'model-collapse[harness]'.")
    limit: int | None = setting(None, "Examples per task (lm-eval's --limit: the first ones, the same every generation); "
                                "null = all.")
    batch_size: int = setting(32, "Requests per forward pass (lm-eval's --batch_size).")
    num_fewshot: int | None = setting(None, "Few-shot examples per prompt (lm-eval's --num_fewshot); null = the task's "
                                      "own setting.")

    def __post_init__(self) -> None:
        names = [t.strip() for t in self.tasks]
        if any(not t for t in names):
            raise ConfigError("eval.harness.tasks holds an empty name: list lm-eval task names or task folders.")
        if len(set(names)) < len(names):
            raise ConfigError(f"eval.harness.tasks names a task twice ({', '.join(names)}): list each once.")
        self.tasks = names
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.harness.limit={self.limit} is out of range: use at least 1 (or null for all).")
        if self.batch_size < 1:
            raise ConfigError(f"eval.harness.batch_size={self.batch_size} is out of range: use at least 1.")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"eval.harness.num_fewshot={self.num_fewshot} is out of range: use 0 or more (or null).")
