"""Evaluation tasks in lm-evaluation-harness's format, and how ``eval.harness.tasks`` entries find theirs.

collapse ships tasks here (a YAML per task, its data beside it: ``kjv_cloze``, built by ``cloze``); they are on
lm-eval's include path in every harness stage and work with ``lm_eval --include_path collapse/tasks`` directly.
An entry of ``eval.harness.tasks`` is a task or group name (shipped, or one of lm-eval's own: those need its
index of some 14,000 YAMLs, read only then) or a local task folder (its groups, else its tasks). May import
config, data, errors, io, metrics; never the loop.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from collapse.errors import ConfigError

TASKS_DIR = Path(__file__).resolve().parent  # lm-eval's include path for the shipped tasks
INSTALL = "pip install 'model-collapse[harness]'"


def is_folder(entry: str) -> bool:
    return entry.startswith((".", "~", "/")) or os.sep in entry or Path(entry).expanduser().is_dir()


@dataclass
class Resolved:
    """What lm-eval is asked: the names to evaluate, and where their YAMLs are."""

    names: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)  # the shipped tasks and the local folders
    defaults: bool = False  # some name is lm-eval's own: its whole index is read
    hub: list[str] = field(default_factory=list)  # the entries no shipped or local YAML defines (lm-eval's own)


def _members(entry) -> list[str]:
    """The names a group's YAML lists (an entry may be a name or an inline task's dict)."""
    out = []
    for t in (entry.cfg or {}).get("task") or ():
        name = t if isinstance(t, str) else (t.get("task") or t.get("group")) if isinstance(t, dict) else None
        if isinstance(name, str):
            out.append(name)
    return out


def _leaves(index: dict, name: str, depth: int = 0) -> set[str]:
    """The tasks a name runs: itself, or a group's tasks through its subgroups."""
    e = index.get(name)
    if e is None or e.kind.name != "GROUP" or depth > 20:
        return {name}
    return set().union(*(_leaves(index, m, depth + 1) for m in _members(e))) if _members(e) else set()


def _folder_names(index: dict, folder: Path) -> list[str]:
    """The top groups a folder's YAMLs define (those no other group of it lists), else its tasks (tags are neither)."""
    mine = {n: e for n, e in index.items()
            if e.yaml_path is not None and Path(e.yaml_path).resolve().is_relative_to(folder)}
    groups = {n for n, e in mine.items() if e.kind.name == "GROUP"}
    listed = {m for n in groups for m in _members(mine[n])}
    top = sorted(groups - listed)
    return top or sorted(n for n, e in mine.items() if e.kind.name == "TASK")


def resolve(entries: list[str]) -> Resolved:
    """The entries as lm-eval names (ConfigError: a folder with no task, a name no YAML defines, two entries that
    share a task)."""
    try:
        return _resolve(entries)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - lm-eval's index raises what a malformed YAML gives it
        from collapse.errors import first_line

        raise ConfigError(f"eval.harness.tasks: lm-eval cannot read the task YAMLs ({first_line(e, 160)}): check the "
                          "task folder.") from None


def _resolve(entries: list[str]) -> Resolved:
    from lm_eval.tasks import TaskManager

    folders = [Path(e).expanduser().resolve() for e in entries if is_folder(e)]
    for f in folders:
        if not f.is_dir():
            raise ConfigError(f"eval.harness.tasks: {f} is not a folder: name a task folder of lm-eval YAMLs, or a task.")
    # a folder inside one already included would be indexed twice (lm-eval warns of each task)
    out = Resolved(include=[str(TASKS_DIR), *(str(f) for f in folders if not f.is_relative_to(TASKS_DIR))])
    index = TaskManager(include_defaults=False, include_path=out.include).task_index
    for e in entries:
        if is_folder(e):
            found = _folder_names(index, Path(e).expanduser().resolve())
            if not found:
                raise ConfigError(f"eval.harness.tasks: {e} holds no lm-eval task YAML (a file with a `task:` or "
                                  "`group:` key): check the folder.")
            out.names += found
        else:
            out.names.append(e)
            if e not in index:
                out.hub.append(e)
    leaves = {n: _leaves(index, n) for n in out.names}
    out.defaults = any(x not in index for v in leaves.values() for x in v)  # lm-eval's own, or named by a group
    for i, a in enumerate(out.names):  # lm-eval refuses a task reached twice
        for b in out.names[i + 1:]:
            if leaves[a] & leaves[b]:
                raise ConfigError(f"eval.harness.tasks: {a} and {b} share tasks ({', '.join(sorted(leaves[a] & leaves[b])[:3])}"
                                  "): list each task once (a group runs its tasks).")
    return out


def task_manager(r: Resolved):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=r.defaults, include_path=r.include)


def lm_eval_defines(name: str) -> bool:
    """Whether one of lm-eval's own YAMLs defines ``name`` as a task, group or tag, read as text: a YAML named after
    it, else a line ``task: name``, ``group: name`` or a tag list item (--check reads no index)."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    files = [Path(d) / f for d, _, fs in os.walk(root) for f in fs if f.endswith(".yaml")]
    if any(f.stem == name for f in files):
        return True
    pat = re.compile(rf"^\s*(?:-\s*)?(?:(?:task|group|tag)\s*:\s*)?['\"]?{re.escape(name)}['\"]?\s*$", re.M)
    return any(name in (t := f.read_text(errors="replace")) and pat.search(t) for f in files)


def check(entries: list[str]) -> list[str]:
    """--check: the extra is installed, every local folder loads and defines a task, every name is defined.
    Returns the names that are lm-eval's own (their data come from the hub)."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"eval.harness.tasks needs lm-eval, which is not installed: {INSTALL} (or set "
                          "eval.harness.tasks=[]).")
    r = resolve(entries)
    hub = r.hub
    unknown = [e for e in hub if not lm_eval_defines(e)]
    if unknown:
        raise ConfigError(f"eval.harness.tasks: no lm-eval task, group or tag is named {', '.join(unknown)}: check the "
                          "spelling (`lm_eval ls tasks` lists them), or name a local task folder.")
    offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true", "yes")]
    if r.defaults and offline:  # what --check accepts must run: these would fail after generation 0, for want of a download
        what = ", ".join(hub) or "a local group's lm-eval tasks"
        raise ConfigError(f"eval.harness.tasks: {what} read their data from the Hugging Face Hub, and "
                          f"{'/'.join(offline)} is set: unset it for a first run (lm-eval caches the data), or use "
                          "kjv_cloze or a local task folder.")
    return hub
