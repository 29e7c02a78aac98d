"""``measure.decodings``: the decodings one `collapse measure` compares on the same prompts.

Each entry is a mapping of ``generation.*`` decoding settings and an optional ``name``; what an entry leaves out
comes from ``generation.*``. Checked here, entry by entry, with the same rules as ``generation.*`` itself, so a
bad entry is one line naming it before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from collapse.config.fields import _coerce
from collapse.config.generation import GenerationConfig
from collapse.errors import ConfigError

KNOBS = ("temperature", "top_k", "top_p", "min_p", "num_beams", "repetition_penalty", "engine")
CONTROL = "real text"  # the control column's name: real training windows in place of continuations


def default_name(d: dict[str, Any]) -> str:
    """A short name from the settings an entry changes: greedy, T=0.7, beam5, beam5 penalty 3, top-p 0.9..."""
    parts = []
    beams = d.get("num_beams", 1)
    if beams > 1:
        parts.append(f"beam{beams}")
    elif d.get("temperature") == 0:
        parts.append("greedy")
    elif "temperature" in d:
        parts.append(f"T={d['temperature']:g}")
    for k, label in (("top_k", "top-k"), ("top_p", "top-p"), ("min_p", "min-p")):
        if k in d:
            parts.append(f"{label} {d[k]:g}")
    if d.get("repetition_penalty", 1.0) != 1.0:
        parts.append(f"penalty {d['repetition_penalty']:g}")
    if "engine" in d:
        parts.append(d["engine"])
    return " ".join(parts) or "generation.*"


def slug(name: str) -> str:
    """The file name of a column's continuations (``continuations/<slug>.parquet``)."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", name).strip("-") or "decoding"


def check_decodings(entries: list[dict], base=None, model: str = "") -> list[dict]:
    """The entries with their values typed and a name each; ConfigError (one line, naming the entry) otherwise.

    With ``base`` (the run's ``generation.*``) each entry is checked as the settings it decodes with: the entry on
    top of ``base``, by GenerationConfig's own rules; ``model``: the n-gram has no beam search or engines."""
    if not entries:
        raise ConfigError("measure.decodings is an empty list: give at least one decoding, or null for generation.* alone.")
    hints = typing.get_type_hints(GenerationConfig)
    fields = {f.name: f for f in dataclasses.fields(GenerationConfig)}
    out, names, slugs = [], set(), {slug(CONTROL)}
    for i, raw in enumerate(entries):
        where = f"measure.decodings[{i}]"
        extra = sorted(set(raw) - set(KNOBS) - {"name"})
        if extra:
            raise ConfigError(f"{where}: {', '.join(extra)} {'is not a decoding setting' if len(extra) == 1 else 'are not decoding settings'}"
                              f"; an entry takes name and {', '.join(KNOBS)}.")
        d: dict[str, Any] = {}
        for k in KNOBS:
            if k in raw:
                d[k] = _coerce(raw[k], hints[k], f"{where}.{k}")
                choices = fields[k].metadata.get("choices")
                if choices and d[k] not in choices:
                    raise ConfigError(f"{where}.{k}={d[k]!r} is not one of: {', '.join(choices)}.")
        if model == "ngram" and ({"num_beams", "engine"} & set(d)):
            raise ConfigError(f"{where}: num_beams and engine mean nothing for model.name_or_path=ngram (it samples "
                              "from its counts): remove them.")
        try:  # the ranges and combinations generation.* itself accepts, on top of the run's generation.*
            if base is not None:
                dataclasses.replace(base, **d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        name = str(raw["name"]).strip() if raw.get("name") is not None else default_name(d)
        if not name or name == CONTROL or "|" in name:
            raise ConfigError(f"{where}: the name {name!r} is empty, holds a '|' or is the control column's: choose "
                              "another.")
        if name in names or slug(name) in slugs:
            raise ConfigError(f"{where}: the name {name!r} is used twice (or names the same file as another, "
                              f"continuations/{slug(name)}.parquet): names tell the columns apart.")
        names.add(name)
        slugs.add(slug(name))
        out.append({"name": name, **d})
    return out


def decoding_config(base, entry: dict):
    """``generation.*`` with one entry's settings on top."""
    return dataclasses.replace(base, **{k: v for k, v in entry.items() if k != "name"})
