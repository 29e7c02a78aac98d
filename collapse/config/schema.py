"""The configuration's dataclasses: one per concern (data, model, measure, train, eval, W&B) and ``Config``, which
gathers them with the sections defined beside it; each field's default and help (``setting``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from collapse.config.curate import CurateConfig
from collapse.config.fields import setting
from collapse.config.generation import GenerationConfig
from collapse.config.sections import HarnessConfig, NGramConfig, RegimeConfig, StatsConfig, SyntheticConfig
from collapse.errors import ConfigError

# top-level config sections that change no result (a run resumes with them changed; the fingerprint skips them)
RESULT_NEUTRAL_KEYS = ("resume", "overwrite", "wandb", "out_dir", "keep_checkpoints")


@dataclass
class DataConfig:
    source: str = setting("kjv", "`kjv` (embedded King James text), `synthetic` (a Markov source with known "
                          "distribution: data.synthetic), a hub dataset id, or a local .txt/.jsonl/.parquet file.")
    config: str | None = setting(None, "Hub dataset configuration name, e.g. `wikitext-2-raw-v1`.")
    text_field: str = setting("text", "Column holding the text.")
    split: str | None = setting(None, "Single source split to split ourselves; default: use the source's train/validation/test if it has them.")
    val_fraction: float = setting(0.05, "Share of documents held out for validation when the source has no validation split.")
    test_fraction: float = setting(0.05, "Share of documents held out for test when the source has no test split.")
    split_seed: int = setting(0, "Seed of the document shuffle that makes the splits (fixed across run seeds, so every seed "
                            "is scored on the same test text).")
    min_chars: int = setting(1, "Drop documents shorter than this many characters (wikitext has many empty lines).")
    max_documents: int | None = setting(None, "Keep at most this many documents per split (quick experiments).")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        for k in ("val_fraction", "test_fraction"):
            v = getattr(self, k)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"data.{k}={v} is out of range: use a value in [0, 1).")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("data.val_fraction + data.test_fraction must be below 1: nothing is left to train on.")
        if self.split_seed < 0:
            raise ConfigError(f"data.split_seed={self.split_seed} is out of range: use 0 or more.")
        if self.max_documents is not None and self.max_documents < 1:
            raise ConfigError("data.max_documents must be at least 1 (or null for all).")


@dataclass
class ScratchConfig:
    arch: str = setting("gpt2", "Architecture of the scratch model: `gpt2` or `llama`.", choices=("gpt2", "llama"))
    vocab_size: int = setting(4096, "Byte-level BPE vocabulary size trained on the real training split.")
    n_layer: int = setting(2, "Transformer layers.")
    d_model: int = setting(128, "Hidden size.")
    n_head: int = setting(4, "Attention heads.")
    context: int = setting(512, "Maximum positions (must cover measure.window and prompt + new tokens).")
    block_size: int = setting(128, "Training block length in tokens.")
    seed: int = setting(0, "Seed of the build (weight init, batch order). Not the run's seed: every run seed starts from the "
                      "same generation 0, as in the paper.")
    until: str = setting("converged", "`converged`: the peak rate until the validation loss stops improving (patience, "
                         "min_delta), a linear cooldown to 10%, then on until it stops again (at most `steps`); `steps`: "
                         "exactly `steps` steps, cosine decay over them.", choices=("converged", "steps"))
    steps: int = setting(8000, "Optimizer steps: the number (until=steps) or the cap (until=converged).")
    eval_every: int = setting(100, "until=converged: steps between validation losses (the curve in scratch.json).")
    patience: int = setting(600, "until=converged: the loss has stopped improving when its best improved by less than "
                            "min_delta over the last max(patience, 10% of the steps so far) steps; also the shortest "
                            "cooldown. Twice the early loss plateau (docs/results.md).")
    min_delta: float = setting(0.01, "until=converged: relative improvement of the validation loss that counts (0.01 = 1%).")
    batch_size: int = setting(32, "Pre-training batch size in blocks (over all processes).")
    lr: float = setting(3e-3, "Peak learning rate (AdamW, warmup then cosine to 10%); small models like it high.")

    def __post_init__(self) -> None:
        for k in ("vocab_size", "n_layer", "d_model", "n_head", "context", "block_size", "steps", "batch_size",
                  "eval_every", "patience"):
            if getattr(self, k) < 1:
                raise ConfigError(f"model.scratch.{k} must be at least 1.")
        if self.seed < 0:
            raise ConfigError(f"model.scratch.seed={self.seed} is out of range: use 0 or more.")
        if not 0.0 <= self.min_delta < 1.0 or math.isnan(self.min_delta):
            raise ConfigError(f"model.scratch.min_delta={self.min_delta} is out of range: use a value in [0, 1).")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"model.scratch.lr={self.lr} is out of range: use a positive learning rate.")
        if self.vocab_size < 300:
            raise ConfigError("model.scratch.vocab_size must be at least 300 (256 bytes + merges + specials).")
        if self.d_model % self.n_head:
            raise ConfigError("model.scratch.d_model must be divisible by model.scratch.n_head.")


@dataclass
class ModelConfig:
    name_or_path: str = setting("scratch", "`scratch` (a small model trained here; the embedded default ships it), "
                                "`ngram` (a count-based model: model.ngram), a hub id, a local model folder, a local "
                                "`.gguf` file, or `package:<module>/<file>.gguf` (a GGUF file inside an installed "
                                "Python package).")
    gguf_file: str | None = setting(None, "The `.gguf` file to read inside the hub repo or local folder that "
                                    "model.name_or_path names (needs the gguf extra). Weights are dequantized to "
                                    "model.dtype; the tokenizer comes from the same file.")
    trust_remote_code: bool = setting(False, "Allow a hub model's own Python code to run. Off unless you trust it.")
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) of the model.")
    dtype: str = setting("auto", "`auto` (bf16 on CUDA with bf16 support, else fp32), `float32`, `bfloat16`, `float16`.",
                         choices=("auto", "float32", "bfloat16", "float16"))
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    ngram: NGramConfig = field(default_factory=NGramConfig)


@dataclass
class MeasureConfig:
    samples: int = setting(100, "Held-out examples to continue (each needs at least `window` tokens).")
    window: int = setting(256, "Tokens taken from the start of each example; the model continues the first half.")
    split: str = setting("heldout", "Which examples: `heldout` (the validation chapters, then the test chapters: "
                         "the embedded corpus has about 100 of 256 tokens), `validation` or `test`.",
                         choices=("heldout", "validation", "test"))
    rank_by: str = setting("train", "What ranks the token types into buckets: `train` (the real training split's counts: "
                           "a corpus the examples were not drawn from, so a model that writes like the true text "
                           "shows no shift) or `reference` (the true second halves themselves, as in the motivating "
                           "experiment: ranks selected on the same small sample read as under-representation of "
                           "both ends even for real text; README, \"How the buckets are ranked\").",
                           choices=("train", "reference"))

    decodings: list[dict] | None = setting(None, "Measure several decodings of the same prompts in one command: a list of "
                                          "mappings of generation.* decoding settings (temperature, top_k, top_p, min_p, "
                                          "num_beams, repetition_penalty, engine) with an optional `name`; the rest of "
                                          "generation.* applies to each. Writes decodings.json / .md / .png with a column "
                                          "of real training text as the control (docs/metrics.md). null = one decoding, "
                                          "generation.* itself.")

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"measure.samples={self.samples} is out of range: use at least 1.")
        if self.window < 2 or self.window % 2:
            raise ConfigError(f"measure.window={self.window} must be an even number of tokens, at least 2.")
        if self.decodings is not None:  # their types and names here; as settings with generation.* in Config
            from collapse.config.decodings import check_decodings

            self.decodings = check_decodings(self.decodings)


@dataclass
class LoraConfig:
    r: int = setting(8, "LoRA rank.")
    alpha: float = setting(16.0, "LoRA scaling numerator (scale = alpha / r).")
    dropout: float = setting(0.0, "Dropout on the LoRA branch.")
    target_modules: list[str] | None = setting(None, "Module names to adapt; null = all attention and MLP projections.")
    modules_to_save: list[str] | None = setting(None, "Modules trained in full beside the adapters, e.g. [lm_head].")

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError("train.lora.r must be at least 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("train.lora.dropout must be in [0, 1).")


@dataclass
class TrainConfig:
    method: str = setting("lora", "`lora` (peft adapters) or `full` fine-tune.", choices=("lora", "full"))
    init: str = setting("base", "`base`: each generation starts from generation 0's weights (the paper); `previous`: from model g.",
                        choices=("base", "previous"))
    select: str = setting("best_val", "`best_val`: keep the epoch with the lowest REAL validation loss (the paper); `last`.",
                          choices=("best_val", "last"))
    epochs: int = setting(2, "Epochs over each generation's training set.")
    lr: float = setting(2e-3, "Peak learning rate (linear warmup, cosine decay).")
    batch_size: int = setting(32, "Sequences per optimizer step, over all processes and accumulation steps.")
    grad_accum: int = setting(1, "Gradient accumulation steps (micro-batch = batch_size / processes / grad_accum).")
    warmup_ratio: float = setting(0.05, "Share of steps spent warming up.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    max_grad_norm: float = setting(1.0, "Gradient clipping (0 = off).")
    mixed_precision: str = setting("auto", "`auto` (bf16 where supported on GPU), `no`, `bf16`, `fp16`.",
                                   choices=("auto", "no", "bf16", "fp16"))
    lora: LoraConfig = field(default_factory=LoraConfig)
    gen0_epochs: int = setting(0, "Epochs of fine-tuning the base model on the real training split before generation 0.")
    gen0_blocks: int = setting(0, "Budget of generation 0's fit on real text: this many real training rows (each "
                               "prompt_tokens + new_tokens long with keep_prompt, else new_tokens), a seeded draw "
                               "without repeats, seen once; 0 = off (train.gen0_epochs decides). Set one of the two.")
    gen0_val_every: int = setting(16, "With train.gen0_blocks: optimizer steps between looks at the REAL validation "
                                  "loss during the fit; the best look (the base model's included) is kept.")

    @property
    def fits_gen0(self) -> bool:
        """Whether generation 0 is the base model fitted to the real training split (the paper's), not as loaded."""
        return self.gen0_epochs > 0 or self.gen0_blocks > 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError("train.epochs must be at least 1.")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"train.lr={self.lr} is out of range: use a positive learning rate.")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum must be at least 1.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("train.warmup_ratio must be in [0, 1).")
        if self.gen0_epochs < 0:
            raise ConfigError("train.gen0_epochs must be 0 or more.")
        if self.gen0_blocks < 0:
            raise ConfigError(f"train.gen0_blocks={self.gen0_blocks} is out of range: use 0 (off) or a number of real rows.")
        if self.gen0_blocks and self.gen0_epochs:
            raise ConfigError(f"train.gen0_epochs={self.gen0_epochs} and train.gen0_blocks={self.gen0_blocks} both size "
                              "generation 0's fit: set one of them to 0.")
        if self.gen0_blocks % self.batch_size:
            raise ConfigError(f"train.gen0_blocks={self.gen0_blocks} is not a multiple of train.batch_size="
                              f"{self.batch_size}: a fit that sees each row once takes whole batches.")
        if self.gen0_val_every < 1:
            raise ConfigError(f"train.gen0_val_every={self.gen0_val_every} is out of range: use 1 or more steps.")


TEXT_KEYS = ("mauve", "mauve_features", "mauve_resamples", "self_bleu", "self_bleu_samples")  # eval.*: the text figures


@dataclass
class EvalConfig:
    block_size: int | None = setting(None, "Test perplexity block length; null = prompt_tokens + new_tokens.")
    batch_size: int = setting(64, "Blocks per forward pass in evaluation.")
    max_blocks: int | None = setting(None, "Evaluate at most this many test (and validation) blocks (null = all).")
    mauve: bool = setting(False, "MAUVE of each generation's samples against the true continuations of their prompts "
                          "(figure `mauve`; pip install 'model-collapse[text]'; docs/metrics.md).")
    mauve_features: str = setting("gen0", "What MAUVE's features come from: `gen0` (generation 0's final hidden state at "
                                  "each continuation's last token: nothing downloaded) or a model's hub id or local "
                                  "folder (Drayson et al. used `gpt2-large`), the texts cut to 256 of its tokens.")
    mauve_resamples: int = setting(20, "Delete-half samples MAUVE is recomputed on (a k-means each) for its interval "
                                   "and paired changes; 0 = none (at most stats.resamples).")
    self_bleu: bool = setting(False, "Self-BLEU-4 of a seeded subsample of each generation's samples, on words (figure "
                              "`self_bleu`; nltk, as Texygen and Drayson et al.; pip install 'model-collapse[text]').")
    self_bleu_samples: int = setting(100, "Samples in self-BLEU's subsample (each scored against the others: quadratic).")
    harness: HarnessConfig = field(default_factory=HarnessConfig)

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 2:
            raise ConfigError(f"eval.block_size={self.block_size} is out of range: use at least 2 tokens (or null).")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size={self.batch_size} is out of range: use at least 1.")
        if self.max_blocks is not None and self.max_blocks < 1:
            raise ConfigError(f"eval.max_blocks={self.max_blocks} is out of range: use at least 1 (or null for all).")
        if self.mauve_resamples < 0:
            raise ConfigError(f"eval.mauve_resamples={self.mauve_resamples} is out of range: use 0 (no interval) or more.")
        if self.self_bleu_samples < 2:
            raise ConfigError(f"eval.self_bleu_samples={self.self_bleu_samples} is out of range: use at least 2 samples.")
        if not self.mauve_features.strip():
            raise ConfigError("eval.mauve_features is empty: use `gen0` or a model's hub id or local folder.")


@dataclass
class WandbConfig:
    mode: str = setting("auto", "`auto`: online when logged in to W&B (WANDB_API_KEY or a netrc entry for the W&B host), "
                        "else offline, with the `wandb sync` command printed at the end; the WANDB_MODE environment "
                        "variable, when set, decides instead. `disabled` | `offline` | `online` (online falls back to "
                        "offline without an API key). Never a prompt.", choices=("auto", "disabled", "offline", "online"))
    project: str = setting("collapse", "W&B project.")
    entity: str | None = setting(None, "W&B entity (team or user).")
    group: str | None = setting(None, "W&B group; null: one per config without its seed (`<model>-<regime>-<8 hex>`), so "
                                      "the seeds of one setting group and aggregate in W&B.")
    tags: list[str] = setting([], "W&B tags.")
    name: str | None = setting(None, "W&B run name (default: the run folder's name).")
    log_weights: bool = setting(True, "Upload each generation's weights (LoRA adapter or model) in its W&B artifact. "
                                "false: weight artifacts hold only what they were made from (a small JSON), so the lineage "
                                "stays and nothing large is uploaded.")
    log_every: int = setting(1, "Optimizer steps between points of the training curves (train/loss, train/lr, ...).")
    system_metrics: bool = setting(True, "W&B's system metrics (CPU, memory, GPU) and the git commit of the working "
                                   "folder; false turns both off.")

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ConfigError(f"wandb.log_every={self.log_every} is out of range: use 1 or more.")


@dataclass
class Config:
    out_dir: str = setting("runs/default", "Run folder.")
    seed: int = setting(0, "Master seed: every stage draws from (seed, generation, stage, shard).")
    generations: int = setting(5, "Generations after generation 0 (model 0 is the base).")
    resume: str = setting("auto", "`auto`: continue a run of the same config in out_dir; `never`: start over.",
                          choices=("auto", "never"))
    overwrite: bool = setting(False, "With resume=never, allow deleting a non-empty out_dir.")
    keep_checkpoints: int | None = setting(None, "Generations that keep model weights (newest first); null = all.")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.generations < 1:
            raise ConfigError(f"generations={self.generations} is out of range: use at least 1.")
        if self.measure.decodings is not None:
            from collapse.config.decodings import check_decodings

            self.measure.decodings = check_decodings(self.measure.decodings, self.generation, self.model.name_or_path)
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints must be at least 1 (or null to keep all).")
        if self.eval.mauve and self.eval.mauve_features == "gen0" and self.model.name_or_path == "ngram":
            raise ConfigError("eval.mauve_features=gen0 reads generation 0's hidden states, and the n-gram model has none: "
                              "name a featurizing model (eval.mauve_features=gpt2-large, or a local folder).")
        if self.eval.harness.tasks and self.model.name_or_path == "ngram":
            raise ConfigError("eval.harness.tasks: lm-eval wraps a transformers model, and the n-gram model is none: set "
                              "eval.harness.tasks=[] or use a transformer.")
        gc = self.generation
        if self.curate.oversample > 1 and (gc.temperature == 0 or gc.num_beams > 1):
            how = "greedy decoding (generation.temperature=0)" if gc.temperature == 0 else "beam search"
            raise ConfigError(f"curate.oversample={self.curate.oversample} asks for several continuations per prompt, "
                              f"and {how} writes one: sample (generation.temperature > 0, num_beams=1) or set "
                              "curate.oversample=1.")

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not (self.eval.mauve or self.eval.self_bleu):  # no text figure: the config of a run made before them
            for k in TEXT_KEYS:
                d["eval"].pop(k)
        if not self.eval.harness.tasks:  # no harness task: the config of a run made before the harness stage
            d["eval"].pop("harness")
        if not self.curate.active:  # no remedy: the config (and its fingerprint) of a run made before `curate`
            d.pop("curate")
        elif not self.curate.pooled:  # a pool of the samples alone: the config of a run made before the pool keys
            from collapse.config.curate import POOL_KEYS

            for k in POOL_KEYS:
                d["curate"].pop(k)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, exclude: tuple[str, ...] = RESULT_NEUTRAL_KEYS) -> str:
        """Hash of everything that changes results (not bookkeeping such as resume or W&B)."""
        d = {k: v for k, v in self.to_dict().items() if k not in exclude}
        if "curate" in d:  # a setting the curator does not read changes no result (score_with's default moved)
            from collapse.config.curate import POOL_KEYS
            from collapse.loop.curate import USES

            reads = {"kind", *POOL_KEYS, *USES.get(self.curate.kind, ())}
            d["curate"] = {k: v for k, v in d["curate"].items() if k in reads}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
