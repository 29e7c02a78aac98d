"""Reading a configuration: YAML files and dotted ``key=value`` overrides into ``Config`` (CLI over YAML over
defaults), every key and its help for ``collapse keys``, and the difference of two configs."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from collapse.config.fields import _coerce

# top-level config sections that change no result (a run resumes with them changed; the fingerprint skips them)
from collapse.config.schema import Config
from collapse.config.sections import check_explicit_keys
from collapse.errors import ConfigError

# ---------------------------------------------------------------------- parsing


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if k not in fields:
            close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
            hint = f" Did you mean `{close[0]}`?" if close else " See `collapse keys` for the list."
            raise ConfigError(f"unknown config key `{key}`.{hint}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if v is None:
                v = {}
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a mapping of sub-keys, got {v!r}.")
            kwargs[k] = _build(tp, v, prefix=f"{key}.")
        else:
            kwargs[k] = _coerce(v, tp, key)
            choices = fields[k].metadata.get("choices")
            if choices and kwargs[k] not in choices:
                raise ConfigError(f"{key}={kwargs[k]!r} is not one of: {', '.join(choices)}.")
    return cls(**kwargs)


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += all_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every leaf key, for `collapse keys`."""
    out = []
    hints = _hints(cls)
    inst = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += describe_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", getattr(inst, f.name), f.metadata.get("help", "")))
    return out


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _dotted_to_nested(key: str, value: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    _set_dotted(d, key, value)
    return d


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"cannot read `{item}`: overrides look like key=value, e.g. generations=3.")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"cannot read `{item}`: the key before '=' is empty.")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _leaf_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _leaf_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                embedded: bool = False) -> Config:
    """Defaults, then the YAML file, then ``key=value`` overrides; validated.

    ``embedded``: ``path`` is the embedded default (configs/tiny.yaml), whose keys count as defaults, not as
    settings the user made (which :func:`check_explicit_keys` refuses where they mean nothing)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist: pass a YAML file (see configs/) or none for the default.")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}: fix the syntax.") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys, not {type(loaded).__name__}.")
        raw = loaded
    sweep = raw.pop("sweep", None) if isinstance(raw, dict) else None
    if sweep is not None:  # a grid for `collapse sweep`: check its keys here, its values per point
        if not isinstance(sweep, dict):
            raise ConfigError("`sweep:` must map config keys to lists of values.")
        for k, vals in sweep.items():
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"sweep.{k} must be a non-empty list of values.")
            _build(Config, _dotted_to_nested(k, vals[0]))
    points = raw.pop("points", None) if isinstance(raw, dict) else None
    if points is not None:  # explicit points for `collapse sweep`: each a mapping of config keys
        if not isinstance(points, list) or not points or not all(isinstance(pt, dict) and pt for pt in points):
            raise ConfigError("`points:` must be a list of mappings key: value (one per point).")
        import copy

        for pt in points:  # each point whole, on the file's settings: its keys may only make sense together
            whole = copy.deepcopy(raw)
            for k, v in pt.items():
                _set_dotted(whole, str(k), v)
            _build(Config, whole)
    explicit = [] if embedded else _leaf_keys(raw)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
        explicit.append(key)
    cfg = _build(Config, raw)
    check_explicit_keys(cfg, explicit)
    return cfg


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
