"""`collapse sweep`: a grid of `collapse run`s into one parent folder, resumable, then one report.

    collapse sweep configs/experiments/regimes.yaml regime.kind=replace,mix,accumulate seed=0,1,2

An override whose value has commas (and whose key is not a list) is an axis of the grid; the others
are fixed. Each point runs as its own `python -m collapse run` process (memory is returned between
runs; a killed sweep reruns finished points as no-ops thanks to resume=auto) in
``<parent>/<key>=<value>,<key>=<value>``. The report groups points that differ only in the seed.
A YAML may also hold the grid itself under a top-level ``sweep:`` mapping of key -> list of values, and
explicit points under ``points:``, a list of mappings key -> value (e.g. one remedy each): every point runs at
every grid point (each seed), grid-major, so a sweep cut short has every point at its first seed.

The runs of one sweep carry the tag ``sweep-<parent folder's name>``; each point's seeds share a W&B group (the
default group, the config without its seed; an explicit ``wandb.group`` wins). With
``--wandb-sweep FILE`` nothing runs here: FILE is a W&B sweep configuration of the same grid (method ``grid``,
one parameter per axis, the command ``collapse run`` of FILE's ``.base.yaml`` (the config and fixed overrides,
resolved), the point's ``key=value`` pairs and ``--under <parent>``, which names the run's folder as this sweep
would), so a team can fan the grid out over machines: ``wandb sweep FILE``, then ``wandb agent <id>`` on each,
from this folder.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

import yaml

from collapse.config import Config, ConfigError, all_keys, load_config
from collapse.io import write_text

log = logging.getLogger("collapse")


def _is_list_key(key: str) -> bool:
    import dataclasses

    cls: typing.Any = Config
    parts = key.split(".")
    for p in parts[:-1]:
        hints = typing.get_type_hints(cls)
        if p not in hints or not dataclasses.is_dataclass(hints[p]):
            return False
        cls = hints[p]
    tp = typing.get_type_hints(cls).get(parts[-1])
    return "list" in str(tp)


def parse_grid(items: list[str], yaml_grid: dict | None = None) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(axes, fixed overrides). Axis values stay strings; `collapse run` parses them.

    The command line overrides the YAML ``sweep:`` block key by key: ``key=a,b`` replaces that key's axis,
    ``key=a`` fixes it (the axis is dropped), so a key never varies twice.
    """
    axes: dict[str, list[str]] = {}
    fixed: list[str] = []
    for key, values in (yaml_grid or {}).items():
        axes[key] = [yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip() for v in values]
    for it in items:
        key, sep, val = it.partition("=")
        if not sep:
            raise ConfigError(f"cannot read `{it}`: sweep axes look like key=v1,v2,v3.")
        if key not in all_keys():
            load_config(None, [it])  # raises the usual unknown-key error with a suggestion
        if "," in val and not val.strip().startswith("[") and not _is_list_key(key):
            axes[key] = [v.strip() for v in val.split(",") if v.strip()]
        else:
            axes.pop(key, None)
            fixed.append(it)
    return list(axes.items()), fixed


def _variants(points, config: str) -> list[list[tuple[str, str]]]:
    """The ``points:`` block as lists of (key, value text), checked to be a list of mappings."""
    if points is None:
        return []
    if not isinstance(points, list) or not points or not all(isinstance(p, dict) and p for p in points):
        raise ConfigError(f"{config}: `points:` must be a list of mappings key: value (one per point).")
    return [[(str(k), yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip())
             for k, v in p.items()] for p in points]


def point_name(assign: list[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in assign).replace("/", "_") or "single"


def _run_child(cmd: list[str], grace_s: float = 60.0) -> int:
    """Run one `collapse run` and return its exit code; 130 when interrupted.

    Ctrl-C in a terminal reaches the sweep and its run alike (one process group): the run then stops
    at once on its own and closes its files and W&B run, so the sweep waits for it instead of killing
    it (what ``subprocess.run`` would do after 0.25 s). A SIGINT sent to the sweep alone is passed on.
    """
    import signal

    proc = subprocess.Popen(cmd, env=dict(os.environ))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=2.0)  # the run got the same Ctrl-C: it is already stopping
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 130


def sweep_group(parent_dir: Path) -> str:
    """The name of a sweep: the parent folder's name (a name YAML would read as a number or a boolean gets a
    prefix, so it stays a string)."""
    name = Path(parent_dir).resolve().name or "sweep"
    return name if isinstance(yaml.safe_load(name), str) else f"sweep-{name}"


def _agent_value(v: str):
    """An axis value as W&B's agent will pass it back (``f"{key}={value}"``): native when that gives the same
    text (so W&B sees numbers as numbers), else the text itself."""
    x = yaml.safe_load(v)
    return x if not isinstance(x, bool) and isinstance(x, (int, float, str)) and str(x) == v else v


def wandb_sweep_config(axes: list[tuple[str, list[str]]], base_yaml: str, parent_dir: Path, project: str,
                       entity: str | None, group: str) -> dict:
    """The W&B sweep configuration of a grid: its runs are the `collapse run`s `collapse sweep` would start."""
    if not axes:
        raise ConfigError("--wandb-sweep needs at least one axis (key=v1,v2): a W&B grid of one point is a run.")
    return {
        "name": group,
        "project": project,
        **({"entity": entity} if entity else {}),
        "program": "collapse",  # a label: the command below runs `python -m collapse run`
        "method": "grid",
        "metric": {"name": "change/test_ppl", "goal": "minimize"},  # the last generation's rise in test perplexity
        "parameters": {k: {"values": [_agent_value(v) for v in vals]} for k, vals in axes},
        "command": ["${env}", "${interpreter}", "-m", "collapse", "run", base_yaml, "${args_no_hyphens}",
                    "--under", str(parent_dir)],
    }


def _checked_grid(config, cfg_path, base_items, axes, variants, parent, wandb_sweep):
    """(base config, fixed overrides with the sweep's tag, points), every point validated, so a typo fails in a
    second, not after hours, and before the sweep writes anything."""
    if wandb_sweep is not None and variants != [[]]:
        raise ConfigError(f"{config} lists `points:`, and a W&B grid sweep is a product of axes: run it with "
                          "`collapse sweep`, or write each point's sweep separately.")
    base = load_config(cfg_path, base_items)
    parent_dir = Path(parent or base.out_dir)
    tag = f"sweep-{Path(parent_dir).resolve().name or 'sweep'}"
    if tag not in base.wandb.tags:
        base_items = [*base_items, "wandb.tags=" + json.dumps([*base.wandb.tags, tag])]
    grid_points = list(itertools.product(*[[(k, v) for v in vals] for k, vals in axes])) or [()]
    points = [(*v, *a) for a in grid_points for v in variants]
    for assign in points:
        load_config(cfg_path, base_items + [f"{k}={v}" for k, v in assign])
    return base, base_items, points


def run_sweep(config: str | None, items: list[str], parent: str | None = None, launcher: str | None = None,
              dry_run: bool = False, wandb_sweep: str | None = None) -> int:
    from collapse.report import make_report

    if dry_run and wandb_sweep is not None:
        raise ConfigError("--dry-run and --wandb-sweep: --wandb-sweep runs nothing already (it writes the W&B sweep "
                          "file); drop --dry-run.")
    grid, variants = None, [[]]
    if config is not None and Path(config).is_file():
        raw = yaml.safe_load(Path(config).read_text()) or {}
        grid = raw.get("sweep") if isinstance(raw, dict) else None
        variants = _variants(raw.get("points") if isinstance(raw, dict) else None, config) or variants
    axes, fixed = parse_grid(items, grid)
    base_items = fixed[:]
    cfg_path, base_text = config, None
    with tempfile.TemporaryDirectory(prefix="collapse-sweep-") as scratch:
        if grid is not None or variants != [[]]:  # strip the sweep blocks: `collapse run` does not know them
            raw = yaml.safe_load(Path(config).read_text())
            raw.pop("sweep", None)
            raw.pop("points", None)
            base_text = yaml.safe_dump(raw, sort_keys=False)
            cfg_path = str(Path(scratch) / "sweep-base.yaml")  # checked from here: nothing is written before
            write_text(cfg_path, base_text)
        base, base_items, points = _checked_grid(config, cfg_path, base_items, axes, variants, parent, wandb_sweep)
    parent_dir = Path(parent or base.out_dir)
    if base_text is not None:  # every point is valid: now the sweep's folder and the base its runs read
        cfg_path = str(parent_dir / "sweep-base.yaml")
        if not dry_run:  # a dry run names the file and writes nothing
            parent_dir.mkdir(parents=True, exist_ok=True)
            write_text(cfg_path, base_text)
    group = sweep_group(parent_dir)  # the sweep's name (W&B sweep file); a tag on each of its runs
    if wandb_sweep is not None:
        # the fixed part in one file, so the command line holds the point alone (--under names the folder by it)
        base_yaml = str(Path(wandb_sweep).with_suffix(".base.yaml"))
        write_text(base_yaml, "# the config every run of the W&B sweep " + str(wandb_sweep) + " starts from\n"
                   + load_config(cfg_path, base_items).to_yaml())
        doc = wandb_sweep_config(axes, base_yaml, parent_dir, base.wandb.project, base.wandb.entity, group)
        head = (f"# W&B sweep of {len(points)} `collapse run`s into {parent_dir} (W&B group {group}), written by\n"
                f"#   collapse sweep {' '.join([*([config] if config else []), *items])}\n"
                "# Start it with `wandb sweep <this file>`, then `wandb agent <entity/project/sweep id>` on each machine,\n"
                "# from the folder this was written in (the paths below are relative to it).\n")
        write_text(wandb_sweep, head + yaml.safe_dump(doc, sort_keys=False))
        log.info(f"W&B sweep of {len(points)} runs written to {wandb_sweep}: `wandb sweep {wandb_sweep}`, then "
                 "`wandb agent <sweep id>` on each machine")
        return 0
    log.info(f"sweep: {len(points)} runs into {parent_dir} ({', '.join(f'{k} × {len(v)}' for k, v in axes) or 'one point'})")
    run_dirs = []
    t0 = time.perf_counter()
    for i, assign in enumerate(points):
        out = parent_dir / point_name(list(assign))
        run_dirs.append(out)
        args = [*([cfg_path] if cfg_path else []), *base_items, *[f"{k}={v}" for k, v in assign], f"out_dir={out}"]
        cmd = (launcher.split() if launcher else [sys.executable, "-m", "collapse"]) + ["run", *args]
        log.info(f"[{i + 1}/{len(points)}] {' '.join(cmd[-len(args) - 1:])}")
        if dry_run:
            continue
        rc = _run_child(cmd)
        if rc == 130:
            log.error(f"sweep interrupted during {out}: finished runs and stages are kept; rerun the same command "
                      "to continue.")
            return 130
        if rc != 0:
            log.error(f"error: run {out} failed (exit {rc}); fix it and rerun the sweep to continue "
                      "(finished runs are kept and skipped).")
            return rc
    if dry_run:
        return 0
    make_report(run_dirs, parent_dir / "report")
    log.info(f"sweep done in {time.perf_counter() - t0:.0f} s: {parent_dir / 'report' / 'report.html'}")
    return 0
