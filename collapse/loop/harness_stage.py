"""The harness stage (``eval.harness``): model g on lm-evaluation-harness tasks, after ``evaluate``, on the main
process. It writes ``harness.json``: each task's and group's metrics with lm-eval's standard errors, and each
task's per-example values of its mean-aggregated metrics (by doc id). The measure stage (:func:`harness_part`)
puts them in the row as ``harness/<task>/<metric>`` and ``..._stderr`` figures, with intervals and paired
changes from generation 0 drawn from the per-example values under the run's weights (the same examples and
weights every generation), like every other figure's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time

import numpy as np

from collapse import fault
from collapse.errors import CollapseError, first_line
from collapse.io import read_json, write_json
from collapse.loop.text_stage import TextPart
from collapse.metrics.registry import adopt, harness_name

HARNESS_JSON = "harness.json"
log = logging.getLogger("collapse")
BOOTSTRAP_ITERS = 1000  # lm-eval's own bootstrap, for the standard error of a metric that is not a mean


def _metric(key: str) -> str | None:
    """lm-eval's ``acc,none`` as ``acc``; ``exact_match,strict-match`` as ``exact_match_strict-match``."""
    if "," not in key or "_stderr," in key:
        return None
    metric, filt = key.split(",", 1)
    return metric if filt == "none" else f"{metric}_{filt}"


def digest(out: dict) -> dict:
    """What collapse keeps of lm-eval's ``simple_evaluate`` output (with ``log_samples``)."""
    tasks: dict = {}
    for section in ("results", "groups"):
        for name, res in (out.get(section) or {}).items():
            if section == "results" and name in (out.get("groups") or {}):
                continue  # a group's row is in both: keep it once, as a group
            metrics = {}
            for k, v in res.items():
                m = _metric(k)
                if m is None or not isinstance(v, (int, float)):
                    continue
                se = res.get(k.replace(",", "_stderr,", 1))
                metrics[m] = float(v)
                metrics[f"{m}_stderr"] = float(se) if isinstance(se, (int, float)) else None
            tasks[name] = {"kind": "group" if section == "groups" else "task", "metrics": metrics,
                           "higher_is_better": (out.get("higher_is_better") or {}).get(name, {}),
                           "subtasks": (out.get("group_subtasks") or {}).get(name, [])}
    for name, samples in (out.get("samples") or {}).items():
        if name not in tasks:
            continue
        ex: dict[str, dict] = {}
        docs = sorted({(int(s["doc_id"]), str(s.get("doc_hash", ""))) for s in samples})
        tasks[name]["docs_sha256"] = hashlib.sha256(json.dumps(docs).encode()).hexdigest()  # pairing: same examples?
        for s in sorted(samples, key=lambda s: s["doc_id"]):
            for m in s.get("metrics") or ():
                if isinstance(s.get(m), (int, float, np.integer, np.floating)) and not isinstance(s.get(m), bool):
                    key = m if s.get("filter", "none") == "none" else f"{m}_{s['filter']}"
                    e = ex.setdefault(key, {"doc_id": [], "values": []})
                    e["doc_id"].append(int(s["doc_id"]))
                    e["values"].append(float(s[m]))
        # a metric lm-eval averages is the mean of its per-example values: only those resample over examples
        # (a perplexity's per-example value is a log-likelihood, aggregated otherwise)
        t = tasks[name]
        t["n"] = (out.get("n-samples") or {}).get(name, {}).get("effective")
        t["examples"] = {k: e for k, e in ex.items() if k in t["metrics"]
                         and abs(float(np.mean(e["values"])) - t["metrics"][k]) <= 1e-9 * max(1.0, abs(t["metrics"][k]))}
    return {"lm_eval": _version(), "tasks": tasks}


def _version() -> str | None:
    import importlib.metadata as md

    try:
        return md.version("lm-eval")
    except md.PackageNotFoundError:
        return None


def _lines(buf: io.StringIO) -> list[str]:
    """lm-eval's console output without blank lines and progress bars."""
    return [ln for ln in buf.getvalue().splitlines() if ln.strip() and "it/s]" not in ln]


def run_tasks(model, tokenizer, hc, seed: int) -> dict:
    """lm-eval's ``simple_evaluate`` of ``model`` on ``hc.tasks`` (an HFConfig's settings), digested; lm-eval's
    console output is kept back (replayed if it fails), the global random states are left as they were."""
    import copy
    import random
    from unittest import mock

    import lm_eval
    import lm_eval.evaluator as E
    import torch
    from lm_eval.models.huggingface import HFLM

    from collapse.tasks import resolve, task_manager

    r = resolve(hc.tasks)
    buf, py_state, np_state = io.StringIO(), random.getstate(), np.random.get_state()
    try:
        # lm-eval's environment report (pip list, nvidia-smi, lscpu as subprocesses) and `git describe` would run
        # every generation, and git's complaint outside a checkout reach the console: not needed here
        with torch.random.fork_rng(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), \
                mock.patch.object(E, "add_env_info", lambda *a, **k: None), \
                mock.patch.object(E, "get_git_commit_hash", lambda *a, **k: None):
            # a copy: lm-eval sets the tokenizer's padding, which the sampler's must keep
            lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=hc.batch_size)
            out = lm_eval.simple_evaluate(
                model=lm, tasks=r.names, task_manager=task_manager(r), limit=hc.limit, num_fewshot=hc.num_fewshot,
                log_samples=True, bootstrap_iters=BOOTSTRAP_ITERS, random_seed=seed, numpy_random_seed=seed,
                torch_random_seed=seed, fewshot_random_seed=seed)
    except CollapseError:
        raise
    except Exception as e:  # noqa: BLE001 - lm-eval raises many types (a dataset it cannot download, a bad YAML)
        tail = _lines(buf)[-5:]
        why = first_line(e, 160)
        hint = (" A hub task's data are downloaded once: unset HF_DATASETS_OFFLINE for that run."
                if any(w in why.lower() for w in ("offline", "connection", "resolve", "couldn't reach", "not found"))
                else "")
        raise CollapseError(f"eval.harness: lm-eval failed on {', '.join(hc.tasks)} ({why})"
                            + (f"; its last lines: {' | '.join(tail)}" if tail else "") + "." + hint) from None
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    res = digest(out)
    res["log"] = _lines(buf)[-200:]
    return res


def harness_stage(run, g: int, model) -> str:
    """Model g on ``eval.harness.tasks`` (main process; the others wait at the stage's barrier)."""
    if not run.is_main:
        return ""
    from collapse.models.kind import kind_of

    m = model()
    t0 = time.perf_counter()
    fault.point("harness", g, 0)
    res = run_tasks(kind_of(m).for_sampling(m), run.tok, run.cfg.eval.harness, run.cfg.seed)
    res["seconds"] = round(time.perf_counter() - t0, 3)  # the cost, for the benchmark
    write_json(run.dir(g) / HARNESS_JSON, res)
    fault.point("harness", g, 1)  # written, not recorded: a rerun redoes the stage
    first = next(iter(res["tasks"].items()), None)
    if first is None:
        return "no task"
    name, t = first
    m0 = next((k for k in t["metrics"] if not k.endswith("_stderr")), None)
    return f"{len(res['tasks'])} tasks/groups, {name} {m0} {t['metrics'].get(m0, float('nan')):.3f}"


def _pooled(res: dict, name: str, metric: str) -> np.ndarray | None:
    """A group's per-example values: its tasks' concatenated, where their mean is the group's value (a group
    weighted by size); else None (no interval for it)."""
    t = res["tasks"][name]
    parts = [res["tasks"].get(s, {}).get("examples", {}).get(metric) for s in t["subtasks"]]
    if not parts or any(p is None for p in parts):
        return None
    x = np.concatenate([np.asarray(p["values"], np.float64) for p in parts])
    v = t["metrics"].get(metric)
    return x if x.size and v is not None and abs(x.mean() - v) < 1e-9 else None


def harness_part(run, g: int) -> TextPart:
    """The row's harness figures of generation g, and their resamples under the run's weights."""
    path = run.dir(g) / HARNESS_JSON
    if not run.cfg.eval.harness.tasks or not run.is_main or not path.is_file():
        return TextPart()
    res, out = read_json(path), TextPart()
    first = run.dir(0) / HARNESS_JSON
    gen0 = read_json(first)["tasks"] if g > 0 and first.is_file() else {}
    # a change from generation 0 pairs the same examples: a task whose examples differ (an edited folder, another
    # dataset revision) keeps its value and standard error, not a paired change; nor does a group holding it
    differ = {n for n, t in res["tasks"].items() if n in gen0 and gen0[n].get("docs_sha256") != t.get("docs_sha256")}
    for name in sorted(differ):
        log.warning(f"gen {g}: {name}'s examples differ from generation 0's: no paired change for it")
    for name, t in res["tasks"].items():
        unpaired = name in differ or bool(differ & set(t.get("subtasks") or ()))
        for metric, v in t["metrics"].items():
            out.point[harness_name(name, metric)] = v
            if metric.endswith("_stderr") or not run.cfg.stats.resamples or unpaired:
                continue
            ex = t.get("examples", {}).get(metric)
            x = np.asarray(ex["values"], np.float64) if ex else _pooled(res, name, metric)
            if x is None or not x.size:
                continue
            W = run.boot_weights(f"harness {name}", len(x)).boot  # the same examples, the same weights: paired
            with np.errstate(invalid="ignore", divide="ignore"):
                out.boot[harness_name(name, metric)] = (W @ x) / W.sum(1)
    adopt(out.point)
    return out
