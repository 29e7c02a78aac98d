"""``generation.*``: how each sample is decoded (its own module: ``measure.decodings`` checks entries against it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from collapse.config.fields import setting
from collapse.errors import ConfigError


@dataclass
class GenerationConfig:
    prompt_tokens: int = setting(64, "Prompt length: real training blocks are cut to this many tokens.")
    new_tokens: int = setting(64, "Tokens generated per sample (min = max: every sample has exactly this length).")
    num_sequences: int | None = setting(None, "Samples per generation; null = as many as the real training split has blocks.")
    batch_size: int = setting(256, "Sequences decoded together. Also fixes which sequences share a random stream.")
    temperature: float = setting(1.0, "Softmax temperature; 0 = greedy.")
    top_k: int = setting(0, "Keep only the k most likely tokens (0 = off).")
    top_p: float = setting(1.0, "Nucleus sampling mass (1.0 = off).")
    min_p: float = setting(0.0, "Min-p sampling: drop tokens below min_p times the top token's probability (0 = off).")
    num_beams: int = setting(1, "Beam search width (1 = sampling / greedy); exactly HF `generate`'s beam search, fixed length.")
    repetition_penalty: float = setting(1.0, "CTRL-style penalty on tokens already in the sequence (1.0 = off).")
    engine: str = setting("auto", "`auto`: the fast GPT-2/OPT/Llama-family decoder where supported, else HF's forward; "
                          "`hf`: always HF's forward; `hf-generate` (beam search only): HF `generate` itself, the slow "
                          "reference.",
                          choices=("auto", "hf", "hf-generate"))
    keep_prompt: bool = setting(False, "Train the next generation on prompt + continuation instead of the continuation only.")

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.new_tokens < 1:
            raise ConfigError("generation.prompt_tokens and generation.new_tokens must be at least 1.")
        if self.num_sequences is not None and self.num_sequences < 1:
            raise ConfigError("generation.num_sequences must be at least 1 (or null for one per training block).")
        if self.batch_size < 1:
            raise ConfigError("generation.batch_size must be at least 1.")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ConfigError(f"generation.temperature={self.temperature} is out of range: use 0 (greedy) or more.")
        if self.top_k < 0:
            raise ConfigError("generation.top_k must be 0 (off) or positive.")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"generation.top_p={self.top_p} is out of range: use a value in (0, 1].")
        if not 0.0 <= self.min_p < 1.0:
            raise ConfigError(f"generation.min_p={self.min_p} is out of range: use a value in [0, 1) (0 = off).")
        if self.num_beams < 1:
            raise ConfigError("generation.num_beams must be at least 1.")
        if not self.repetition_penalty > 0 or not math.isfinite(self.repetition_penalty):
            raise ConfigError("generation.repetition_penalty must be positive (1.0 = off).")
        if self.engine == "hf-generate" and self.num_beams == 1:
            raise ConfigError("generation.engine=hf-generate is for beam search only: set generation.num_beams > 1, "
                              "or use engine=hf to sample through HF's forward.")
