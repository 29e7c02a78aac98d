"""Run folders as the report reads them, and runs grouped by config (seeds of one experiment together).

:func:`load_run` reads ``config.yaml``, ``manifest.json`` and ``metrics.jsonl`` of one run folder into a
:class:`Run`; :func:`group_runs` puts runs whose configs agree except for ``IGNORED_KEYS`` into one :class:`Group`.
No torch, no matplotlib.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collapse.errors import DataError
from collapse.io import read_json

# Config keys that do not make two runs different experiments (a seed is a repeat, not a condition).
IGNORED_KEYS = ("seed", "out_dir", "wandb", "resume", "overwrite")

# ---------------------------------------------------------------------- reading run folders


@dataclass
class Run:
    """One run folder as the report sees it: its config, manifest and finished metrics rows."""

    path: Path
    name: str
    config: dict
    config_text: str
    manifest: dict
    rows: list[dict]  # one per finished generation, sorted by generation
    buckets: tuple[str, ...]  # bucket names in the order of the metrics rows

    @property
    def gens(self) -> list[int]:
        return [r["generation"] for r in self.rows]

    @property
    def planned(self) -> int | None:
        """Last generation the config asks for (``generations``), None when the config does not say."""
        g = self.config.get("generations")
        return g if isinstance(g, int) and not isinstance(g, bool) else None

    @property
    def partial(self) -> bool:
        if self.manifest.get("complete") is False:
            return True
        return self.planned is not None and not set(range(self.planned + 1)) <= set(self.gens)

    @property
    def finished_text(self) -> str:
        """The finished generations as text: ``0..k`` when none is missing, else listed (``0, 1, 3``)."""
        gens = self.gens
        return f"0..{gens[-1]}" if gens == list(range(gens[-1] + 1)) else ", ".join(map(str, gens))

    def partial_note(self) -> str:
        total = "?" if self.planned is None else str(self.planned)
        planned = "" if self.planned is None else f"; the config asks for generations 0..{self.planned}"
        return f"partial: generations {self.finished_text} of {total} finished (run {self.name}{planned})"

    def row(self, g: int) -> dict | None:
        return next((r for r in self.rows if r["generation"] == g), None)


def load_run(path: str | Path) -> Run:
    """Read a run folder; :class:`DataError` (one line) when it is not a run or has no finished generation."""
    import yaml

    path = Path(path)
    cfg_p, met_p, man_p = path / "config.yaml", path / "metrics.jsonl", path / "manifest.json"
    if not path.is_dir():
        raise DataError(f"{path} is not a folder: pass the out_dir of a `collapse run`.")
    if not cfg_p.is_file():
        inner = sorted(d.name for d in path.iterdir() if (d / "config.yaml").is_file()
                       and ((d / "metrics.jsonl").is_file() or (d / "manifest.json").is_file()))
        hint = (f"; it holds {len(inner)} run folder(s) ({', '.join(inner[:3])}{', …' if len(inner) > 3 else ''}): "
                f"pass them, e.g. `collapse report {path}/*`" if inner else ": pass the out_dir of a `collapse run`")
        raise DataError(f"{path} is not a run folder (no config.yaml){hint}.")
    text = cfg_p.read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{cfg_p} is not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(config, dict):
        raise DataError(f"{cfg_p} is not a mapping of config keys.")
    manifest: dict = {}
    if man_p.is_file():
        try:
            manifest = read_json(man_p)
        except (ValueError, OSError):
            manifest = {}  # the report does not need it; partial runs are still detected from the config
        manifest = manifest if isinstance(manifest, dict) else {}
    if not met_p.is_file():
        if man_p.is_file():
            raise DataError(f"{path} has no finished generation yet (no metrics.jsonl): wait for generation 0 "
                            "to be measured.")
        raise DataError(f"{path} is not a run folder (no metrics.jsonl): pass the out_dir of a `collapse run`.")
    by_gen: dict[int, dict] = {}
    for i, line in enumerate(met_p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{met_p}:{i} is not valid JSON ({e.msg}).") from None
        g = row.get("generation") if isinstance(row, dict) else None
        if not isinstance(g, int) or isinstance(g, bool) or g < 0:
            raise DataError(f"{met_p}:{i} has no integer 'generation'.")
        by_gen[g] = row  # a rewritten generation: the last row wins
    if not by_gen:
        raise DataError(f"{path} has no finished generation yet (metrics.jsonl is empty).")
    rows = [by_gen[g] for g in sorted(by_gen)]
    schemes = {_bucket_keys(r) for r in rows}
    if len(schemes) > 1:
        raise DataError(f"{met_p} mixes frequency-bucket schemes between generations: "
                        + " vs ".join(", ".join(s) for s in schemes) + ".")
    buckets = _bucket_keys(rows[0])
    from collapse.metrics.registry import adopt

    adopt(k for r in rows for k in r)  # lm-eval's figures (eval.harness): the report's table and charts show them
    name = path.resolve().name or str(path)
    return Run(path=path, name=name, config=config, config_text=text, manifest=manifest, rows=rows, buckets=buckets)


def _bucket_keys(row: dict) -> tuple[str, ...]:
    keys: list[str] = []
    for field_ in ("bucket_shift", "tail_loss"):
        for k in (row.get(field_) or {}):
            if k not in keys:
                keys.append(k)
    return tuple(keys)


def check_buckets(runs: list[Run]) -> tuple[str, ...]:
    first = runs[0]
    for r in runs[1:]:
        if set(r.buckets) != set(first.buckets):
            raise DataError(f"runs use different frequency buckets: {first.path} has {', '.join(first.buckets)}; "
                            f"{r.path} has {', '.join(r.buckets)}. Report them separately.")
    return first.buckets


def unique_names(runs: list[Run]) -> None:
    """Two runs named alike (a/seed0, b/seed0) are told apart by their parent folder."""
    counts = defaultdict(int)
    for r in runs:
        counts[r.name] += 1
    for r in runs:
        if counts[r.name] > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"


# ---------------------------------------------------------------------- grouping by config


def _strip(config: dict) -> dict:
    c = copy.deepcopy(config)
    for k in IGNORED_KEYS:
        c.pop(k, None)
    return c

@dataclass
class Group:
    """Runs that differ only by seed; ``label`` names what sets the group apart from the others."""

    runs: list[Run]
    label: str = ""
    diff: dict[str, Any] = field(default_factory=dict)  # the differing keys with this group's values

    @property
    def seeds(self) -> list:
        return [r.config.get("seed") for r in self.runs]

    @property
    def legend(self) -> str:
        s = self.label
        if len(self.runs) > 1:
            s += f" (n={len(self.runs)} seeds)"
        if any(r.partial for r in self.runs):
            s += " [partial]"
        return s


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"regime": {"kind": "mix"}}`` -> ``{"regime.kind": "mix"}`` (an empty section stays one key)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def group_runs(runs: list[Run]) -> list[Group]:
    """Group runs whose configs agree once seed, out_dir, wandb.*, resume and overwrite are removed.

    Only keys every run's config has are compared: a run written before a key existed cannot have set it, so
    a key missing from some configs (an older version of the package) does not split a group by itself.
    """
    flat = [flatten_config(_strip(r.config)) for r in runs]
    common = set(flat[0]).intersection(*flat[1:])
    keyed: dict[str, Group] = {}
    values: dict[str, dict] = {}
    for r, f in zip(runs, flat):
        v = {k: f[k] for k in sorted(common)}
        key = json.dumps(v, sort_keys=True, default=str)
        if key not in keyed:
            keyed[key] = Group(runs=[])
            values[key] = v
        keyed[key].runs.append(r)
    groups = list(keyed.values())
    vals = list(values.values())
    diff_keys = [k for k in sorted(common) if len({json.dumps(v[k], default=str) for v in vals}) > 1]
    for grp, v in zip(groups, vals):
        grp.diff = {k: v[k] for k in diff_keys}
        if len(groups) == 1:
            grp.label = grp.runs[0].name if len(grp.runs) == 1 else ", ".join(r.name for r in grp.runs)
        else:
            parts = [f"{k}={short_value(x)}" for k, x in grp.diff.items()]
            grp.label = ", ".join(parts[:3]) + (f" (+{len(parts) - 3} more)" if len(parts) > 3 else "")
    return groups


def schema_drift(runs: list[Run]) -> list[str]:
    """Config keys some runs have and others lack (runs made by different versions of the package)."""
    flat = [set(flatten_config(_strip(r.config))) for r in runs]
    return sorted(set().union(*flat) - set(flat[0]).intersection(*flat[1:]))


def short_value(v: Any) -> str:
    """A config value for a label: ``null`` for None, a long one cut to its last 40 characters."""
    s = "null" if v is None else str(v)
    return s if len(s) <= 40 else "…" + s[-39:]

# ---------------------------------------------------------------------- metrics rows


def metric_getter(key: str) -> Callable[[dict], Any]:
    """A getter for a metrics key, dotted for a nested one: ``tail_loss.1-10`` (split at the first dot)."""
    if "." in key:
        top, sub = key.split(".", 1)

        def get(r: dict) -> Any:
            return (r.get(top) or {}).get(sub)
    else:
        def get(r: dict) -> Any:
            return r.get(key)
    get.key = key  # the within-run interval of a single run's line is looked up by this name
    return get


def present_buckets(groups: list[Group], fld: str, buckets: tuple[str, ...]) -> list[str]:
    """Buckets with at least one value in ``fld`` (``10001+`` with a 4k vocabulary, ``unseen`` shift: dropped)."""
    return [b for b in buckets
            if any(isinstance((r.get(fld) or {}).get(b), (int, float)) for g in groups for run in g.runs
                   for r in run.rows)]

