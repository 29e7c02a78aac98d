"""`collapse wandb-view`: a W&B workspace with the panels that tell the recursion's story, for a set of runs.

The view's specification (:func:`view_spec`) is plain data built from the run folders alone, offline: which runs
(job type ``recursion``; a sweep's tag), grouped by the config keys that differ between them other than the seed
(so seeds aggregate into a mean with a band); the runs are those the folders' manifests name (their W&B ids),
else the sweep's tag, and three sections of line plots against ``generation``: the tail
loss of each frequency bucket (``tail_loss_rank/r<i>_<bucket>``, in rank order), test perplexity and its change
from generation 0, and the bucket shift of the samples. :func:`build_workspace` turns it into W&B's own workspace
objects (the ``wandb-workspaces`` package, extra ``[wandb-view]``); saving needs a W&B login.
"""

from __future__ import annotations

import json
from pathlib import Path

from collapse.errors import ConfigError
from collapse.tracking.mode import NOT_A_CONDITION, logged_in

EXTRA = "wandb-view"
BAND = "stderr"  # the band of a group's line: the standard error over its runs (the seeds)


def view_spec(paths, entity: str | None = None, project: str | None = None, name: str | None = None) -> dict:
    """The workspace for the runs in ``paths`` (run or sweep folders) as plain data (see the module docstring)."""
    import yaml

    from collapse.report.runs import flatten_config
    from collapse.results import run_folders

    folders = run_folders(paths)
    configs = [yaml.safe_load((p / "config.yaml").read_text()) or {} for p in folders]
    flat = [flatten_config(c) for c in configs]
    keys = sorted({k for f in flat for k in f if k.split(".")[0] not in NOT_A_CONDITION})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    groupby = varying or ["regime.kind"]
    tags = sorted({t for c in configs for t in ((c.get("wandb") or {}).get("tags") or []) if str(t).startswith("sweep-")})
    ids = []  # the W&B run ids the run folders recorded: the view shows these runs, not the whole project
    for p in folders:
        try:
            ids.append(json.loads((p / "manifest.json").read_text()).get("wandb_run_id"))
        except (OSError, ValueError):
            ids.append(None)
    wandb_cfg = configs[0].get("wandb") or {}
    first = next((p / "metrics.jsonl" for p in folders if (p / "metrics.jsonl").is_file()), None)
    tail = json.loads(first.read_text().splitlines()[0]).get("tail_loss", {}) if first else {}
    ranked = {b: i for i, b in enumerate(tail, 1)}  # the series' names: r<rank of the bucket>_<bucket>
    buckets = [b for b, v in tail.items() if v is not None]

    def line(title: str, y: str) -> dict:
        return {"title": title, "x": "generation", "y": [y]}

    sections = [
        {"name": "Tail loss by frequency bucket (nats per real test token)",
         "panels": [line(f"NLL of ranks {b}", f"tail_loss_rank/r{ranked[b]}_{b}") for b in buckets]},
        {"name": "Test perplexity on real text",
         "panels": [line("test perplexity", "test_ppl"), line("change from generation 0", "change/test_ppl")]},
        {"name": "Bucket shift of the samples (% against real text)",
         "panels": [line(f"shift of ranks {b}", f"bucket_shift/{b}") for b in buckets]},
    ]
    return {"name": name or f"collapse: by {', '.join(groupby)}", "entity": entity or wandb_cfg.get("entity"),
            "project": project or wandb_cfg.get("project") or "collapse", "runs": [str(p) for p in folders],
            "filters": {"job_type": "recursion", "tags": tags, "ids": [i for i in ids if i] if all(ids) else []},
            "groupby": groupby, "band": BAND, "sections": sections}


def build_workspace(spec: dict, entity: str | None = None):
    """W&B's workspace object of a :func:`view_spec` (needs the wandb-workspaces package; makes no request)."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
        from wandb_workspaces import expr
    except ImportError:
        raise ConfigError(f"collapse wandb-view needs the wandb-workspaces package: pip install "
                          f"'model-collapse[{EXTRA}]' (or pip install wandb-workspaces).") from None
    filters = [expr.Metric("JobType") == spec["filters"]["job_type"]]
    if spec["filters"]["ids"]:  # every folder named its W&B run: exactly those
        filters.append(expr.Metric("ID").isin(spec["filters"]["ids"]))
    elif spec["filters"]["tags"]:
        filters.append(expr.Tags("Tags").isin(spec["filters"]["tags"]))
    sections = [ws.Section(name=s["name"], is_open=True, panels=[
        wr.LinePlot(title=p["title"], x=p["x"], y=p["y"], groupby_aggfunc="mean", groupby_rangefunc=spec["band"])
        for p in s["panels"]]) for s in spec["sections"]]
    return ws.Workspace(entity=entity or spec["entity"] or "", project=spec["project"], name=spec["name"],
                        sections=sections, runset_settings=ws.RunsetSettings(
                            filters=filters, groupby=[expr.Config(k) for k in spec["groupby"]]))


def save_view(paths, entity: str | None, project: str | None, name: str | None, spec_out: str | None) -> str:
    """Write the specification (``spec_out``), then save the workspace to W&B; returns its URL. Offline or without
    the package: one line (ConfigError), after the specification is written."""
    spec = view_spec(paths, entity, project, name)
    if spec_out:
        from collapse.io import write_text

        write_text(spec_out, json.dumps(spec, indent=1) + "\n")
    keep = f"the view's specification is in {spec_out}" if spec_out else "add --spec FILE to keep its specification"
    if not logged_in():
        raise ConfigError(f"saving a W&B workspace needs a W&B login (WANDB_API_KEY or `wandb login`): {keep}.")
    if not spec["entity"] and not entity:
        import wandb

        entity = wandb.Api().default_entity
    workspace = build_workspace(spec, entity)
    workspace.save()
    return str(getattr(workspace, "url", "") or Path(spec["project"]))
