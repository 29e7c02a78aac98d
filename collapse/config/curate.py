"""The ``curate`` section: the remedy between generate and train (``collapse.loop.curate``). Its default,
``kind: none``, is no stage at all: a run's config.yaml, fingerprint and files are those of a run made before
the section existed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from collapse.config.fields import setting
from collapse.errors import ConfigError

NONE = "none"


@dataclass
class CurateConfig:
    kind: str = setting(NONE, "`none` | `perplexity` | `reference` | `random` | `detector` | `dedupe`, or a curator "
                              "registered with collapse.loop.curate.curator: what of each generation's samples the "
                              "next one trains on.")
    share: float | None = setting(None, "Share of the pool kept (in (0, 1]); null = the curator's paper default "
                                        "(reference, random: 0.125; perplexity: 0.5), or, where the pool is larger than "
                                        "the training set (oversample, real_share), the share that keeps N rows: "
                                        "(1 - real_share) / oversample.")
    keep: str = setting("highest", "For `perplexity`: keep the `highest` (most surprising), the `lowest`, or the "
                                   "`middle` band of scores.", choices=("highest", "lowest", "middle"))
    score_with: str = setting("trainee", "For `perplexity`: the model that scores. `trainee` (Gambetta et al.: the model "
                                         "the next generation starts from: generation 0 under train.init=base, the "
                                         "generation that wrote the samples under previous), `current` (the generation "
                                         "that wrote them) or `gen0`.", choices=("trainee", "current", "gen0"))
    power: float = setting(10.0, "For `detector`: weight (1 - P(machine))^power (Drayson et al.: 10).")
    repeats: int = setting(3, "For `detector`: each sample's index repeated this often before the draw (Drayson: 3).")
    draw: float = setting(1.5, "For `detector`: round(draw × pool rows) indices drawn without replacement ∝ weight "
                               "(Drayson: 1.5 × the mixture's size), then N of them trained on.")
    threshold: float = setting(0.8, "For `dedupe`: estimated Jaccard similarity of token n-grams above which a sample "
                                    "is a near duplicate of an earlier one.")
    ngram: int = setting(5, "For `dedupe`: the token n-gram length of the MinHash shingles.")
    oversample: int = setting(1, "The pool: continuations written per prompt (k). Generation writes k × N samples and "
                                 "the curator keeps N (Feng et al., Yi et al.: a verifier chooses among more candidates "
                                 "than the training set needs).")
    real_share: float = setting(0.0, "The pool: share of it that is real training text of unknown origin (Drayson et "
                                     "al.: human and machine text mixed, as on the web): real blocks cut like samples "
                                     "(prompt + continuation; never a sample's prompt) and shuffled in; the curator is "
                                     "not told which rows they are, the record keeps it.")

    def __post_init__(self) -> None:
        from collapse.loop.curate import CURATORS

        if self.kind != NONE and self.kind not in CURATORS:
            raise ConfigError(f"curate.kind={self.kind!r} is not one of: {', '.join([NONE, *CURATORS])} (a curator of "
                              "your own: name its module in COLLAPSE_PLUGINS).")
        if self.share is not None and (math.isnan(self.share) or not 0.0 < self.share <= 1.0):
            raise ConfigError(f"curate.share={self.share} is out of range: use a share in (0, 1], e.g. 0.125.")
        if not self.power > 0 or math.isinf(self.power):
            raise ConfigError(f"curate.power={self.power} is out of range: use a positive number (Drayson: 10).")
        if self.repeats < 1:
            raise ConfigError(f"curate.repeats={self.repeats} is out of range: use 1 or more (Drayson: 3).")
        if not self.draw > 0 or math.isinf(self.draw):
            raise ConfigError(f"curate.draw={self.draw} is out of range: use a positive multiple of N (Drayson: 1.5).")
        if math.isnan(self.threshold) or not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"curate.threshold={self.threshold} is out of range: use a similarity in (0, 1].")
        if self.ngram < 1:
            raise ConfigError(f"curate.ngram={self.ngram} is out of range: use 1 or more tokens.")
        if self.oversample < 1:
            raise ConfigError(f"curate.oversample={self.oversample} is out of range: use 1 or more continuations per "
                              "prompt (Yi et al.'s 12.5% is oversample: 8).")
        if math.isnan(self.real_share) or not 0.0 <= self.real_share < 1.0:
            raise ConfigError(f"curate.real_share={self.real_share} is out of range: use a share in [0, 1), e.g. 0.5 "
                              "(0 = a pool of samples only).")
        if self.pooled and self.kind == NONE:
            raise ConfigError(f"curate.oversample={self.oversample} / curate.real_share={self.real_share} build a pool "
                              "for a curator to choose from, and curate.kind is none: set curate.kind (`random` is "
                              "the control).")
        if self.oversample > 1 and self.real_share > 0:
            raise ConfigError(f"curate.oversample={self.oversample} with curate.real_share={self.real_share}: each sample's "
                              "prompt would appear k times and a real row's once, which tells the curator which rows "
                              "are real; use one of the two.")
        if self.kind == "reference" and self.real_share > 0:
            raise ConfigError("curate.kind=reference reads each row's true continuation, which on a real pool row is the "
                              "row itself (an oracle): use it on samples only (curate.real_share=0, curate.oversample>1).")

    @property
    def active(self) -> bool:
        return self.kind != NONE

    @property
    def pooled(self) -> bool:
        """A pool larger than the training set (oversampled, or with real rows mixed in)."""
        return self.oversample > 1 or self.real_share > 0


POOL_KEYS = ("oversample", "real_share")  # read by the stage for every curator; left out of a config at their defaults
