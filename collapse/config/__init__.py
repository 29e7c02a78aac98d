"""Typed configuration: one dataclass per concern, YAML files, dotted ``key=value`` overrides.

Precedence is CLI over YAML over defaults. Every field carries a docstring-like ``help`` in its
metadata; ``collapse keys`` prints them. Unknown keys, wrong types and out-of-range
values raise :class:`ConfigError` with one line that names the key and what to do. ``schema`` holds the
dataclasses and ``loading`` reads YAML and overrides into them; ``sections`` holds the
sections of the data source, the n-gram and the statistics; ``generation`` the decoding section; ``decodings`` the
check of ``measure.decodings``; ``fields`` the helper every field uses and the type check of a value.
Imports errors and (to validate ``regime.kind`` and ``curate.kind``) loop.regimes and loop.curate only.
"""

from __future__ import annotations

from collapse.config.curate import CurateConfig
from collapse.config.generation import GenerationConfig
from collapse.config.loading import all_keys, config_diff, describe_keys, load_config, parse_override
from collapse.config.schema import (
                                    RESULT_NEUTRAL_KEYS,
                                    Config,
                                    DataConfig,
                                    EvalConfig,
                                    LoraConfig,
                                    MeasureConfig,
                                    ModelConfig,
                                    ScratchConfig,
                                    TrainConfig,
                                    WandbConfig,
)
from collapse.config.sections import NGramConfig, RegimeConfig, StatsConfig, SyntheticConfig
from collapse.errors import ConfigError

__all__ = ["RESULT_NEUTRAL_KEYS", "Config", "ConfigError", "CurateConfig", "DataConfig", "EvalConfig",
           "GenerationConfig", "LoraConfig", "MeasureConfig", "ModelConfig", "NGramConfig", "RegimeConfig",
           "ScratchConfig", "StatsConfig", "SyntheticConfig", "TrainConfig", "WandbConfig", "all_keys", "config_diff",
           "describe_keys", "load_config", "parse_override"]
