"""The W&B backend of the logger protocol: one W&B run, and online a short run per stage for the lineage graph."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from collapse.tracking.mode import AGENT_VARIABLES, default_group, resolve_mode, wants_wandb
from collapse.tracking.offline import offline_segments, offline_state
from collapse.tracking.protocol import NullLogger, flatten
from collapse.tracking.steps import StepAxis

log = logging.getLogger("collapse")


@contextlib.contextmanager
def outside_agent():
    """The environment without `wandb agent`'s run variables while a lineage run starts (restored after)."""
    saved = {k: os.environ.pop(k) for k in AGENT_VARIABLES if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class WandbLogger:
    """One W&B run (and, online, a short run per training and per generation for the lineage graph)."""

    active = True

    def __init__(self, *, mode: str, project: str, entity: str | None, group: str | None, tags: list[str],
                 name: str | None, run_dir: Path, config: dict[str, Any], run_id: str | None = None,
                 resume: bool = False, log_weights: bool = True, log_every: int = 1, axis: StepAxis | None = None,
                 wandb_module=None, job_type: str = "recursion", system_metrics: bool = True):
        if wandb_module is None:
            import wandb as wandb_module
        wandb = self._wandb = wandb_module
        asked = mode
        self.mode, why = resolve_mode(mode)
        if self.mode == "offline" and asked == "online":
            log.warning(f"wandb.mode=online but {why}: logging offline (`wandb sync` later).")
        self.run_dir, self.project, self.entity, self.group = Path(run_dir), project, entity, group
        self.name = name or Path(run_dir).name
        self.log_weights, self.log_every = log_weights, log_every
        self.axis = axis or StepAxis()
        self.first_step, self.artifacts_logged = 0, set()
        if resume and run_id and self.mode == "offline":
            self.first_step, self.artifacts_logged = offline_state(self.run_dir, run_id)
        os.environ.setdefault("WANDB_SILENT", "true")
        quiet = {} if system_metrics else {"disable_git": True, "x_disable_stats": True}
        if system_metrics and os.environ.get("WANDB_X_STATS_SAMPLING_INTERVAL"):  # a test's short interval
            quiet["x_stats_sampling_interval"] = float(os.environ["WANDB_X_STATS_SAMPLING_INTERVAL"])
        self._settings = wandb.Settings(console="off", save_code=False, **quiet)
        init = dict(project=project, entity=entity, group=group, tags=list(tags) or None, name=self.name,
                    dir=str(run_dir), config=config, id=run_id, resume="allow" if resume else None,
                    settings=self._settings, reinit="create_new", job_type=job_type)
        try:
            self.run = wandb.init(mode=self.mode, **init)
        except Exception as e:  # noqa: BLE001 - online but no server: the run goes on, offline
            if self.mode != "online":
                raise
            log.warning(f"W&B could not start online ({type(e).__name__}: {str(e)[:200]}): logging offline.")
            self.mode = "offline"
            if resume and run_id:
                self.first_step, self.artifacts_logged = offline_state(self.run_dir, run_id)
            self.run = wandb.init(mode="offline", **init)
        self.id = self.run.id
        if self.mode == "online":
            start = getattr(self.run, "starting_step", 0)
            self.first_step = max(self.first_step, start if isinstance(start, int) else 0)
        self._last = -1  # W&B's step of the latest row logged (W&B drops a row logged below it)
        self._defined: set[str] = set()
        self._tables: dict[str, Any] = {}  # incremental tables, by key
        self._made: dict[str, Any] = {}  # artifacts logged by this process, by name (online: the lineage runs use them)

    # ---- rows

    def _emit(self, data: dict[str, Any], wstep: int, x: str) -> None:
        if wstep < self.first_step or wstep < self._last:  # the W&B run has it already
            return
        for k in data:  # each series gets its x-axis once: `generation`, or `train/step` for training curves
            if k not in self._defined:
                self._defined.add(k)
                self.run.define_metric(k, **({} if k == x else {"step_metric": x}))
        self.run.log(data, step=wstep)
        self._last = wstep

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """One generation's series (``step`` is the generation)."""
        self._emit({**flatten(metrics), "generation": step}, self.axis.row(step), "generation")

    def log_train(self, metrics: dict[str, Any], generation: int, step: int) -> None:
        """One point of generation ``generation``'s training curves; ``step`` counts from 1 in its fine-tune."""
        self._emit({**flatten(metrics), "train/step": self.axis.train_step(generation, step),
                    "train/generation": generation}, self.axis.train(generation, step), "train/step")

    def _media(self, key: str, obj, step: int) -> None:
        self._emit({key: obj, "generation": step}, self.axis.row(step), "generation")

    def log_table(self, key, columns, rows, step, incremental=False):
        """A table; ``incremental``: one table growing across generations, each log sending only its new rows."""
        if not incremental:
            self._media(key, self._wandb.Table(columns=columns, data=rows), step)
            return
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self._wandb.Table(columns=columns, log_mode="INCREMENTAL")
        for r in rows:
            table.add_data(*r)
        self._media(key, table, step)

    def log_histogram(self, key, values, step, bins=None):
        values = np.asarray(values, dtype=np.float64)
        if bins is not None:
            hist = self._wandb.Histogram(np_histogram=np.histogram(values, bins=bins))
        else:
            hist = self._wandb.Histogram(values)
        self._media(key, hist, step)

    def log_image(self, key, path, step):
        self._media(key, self._wandb.Image(str(path)), step)

    def log_lines(self, key, xs, ys, keys, title, step, xname="generation"):
        """Several series on one chart (W&B's ``line_series``), e.g. the tail loss of every bucket."""
        if self.has_generation(step):
            return
        chart = self._wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=title, xname=xname)
        self._media(key, chart, step)

    # ---- artifacts

    def log_artifact(self, name: str, type: str, paths: list[Path], metadata: dict, uses: tuple[str, ...] = (),
                     job: str | None = None) -> None:
        """Log ``paths`` as artifact ``name`` once. ``uses``: the artifacts it was made from; online, a short run
        (``job``) of this run's group uses them and logs it, so the lineage graph draws the edge."""
        if name in self.artifacts_logged:
            return
        try:
            self._log_artifact(name, type, paths, metadata, uses, job)
        except Exception as e:  # noqa: BLE001 - W&B must not stop the recursion; a resumed run tries again
            log.warning(f"W&B: artifact {name} not logged ({e.__class__.__name__}: {str(e)[:200]}).")

    def _log_artifact(self, name, type, paths, metadata, uses, job) -> None:
        import tempfile

        art = self._wandb.Artifact(name, type=type, metadata=metadata)
        with tempfile.TemporaryDirectory(prefix="collapse-wandb-") as tmp:  # added files are copied at once
            (Path(tmp) / "made_from.json").write_text(json.dumps(metadata, indent=1, default=str) + "\n")
            art.add_file(str(Path(tmp) / "made_from.json"))
        for p in paths:
            p = Path(p)
            if p.is_dir():
                art.add_dir(str(p))
            else:
                art.add_file(str(p))
        if self.mode == "online" and job is not None:
            with outside_agent():  # under `wandb agent` wandb would give this run the agent's id (wandb#5119)
                stage = self._wandb.init(project=self.project, entity=self.entity, group=self.group or self.name,
                                         job_type=job.split("-")[0], name=f"{self.name}-{job}", mode="online",
                                         id=f"{self.id}-{job}", resume="allow", dir=str(self.run_dir),
                                         settings=self._settings, reinit="create_new", config={"made_by": self.id})
            try:
                for u in uses:
                    made = self._made.get(u)
                    if made is not None:
                        made.wait()  # logged by an earlier lineage run of this process: committed first
                        stage.use_artifact(made)
                    else:  # logged before a resume: this run's name is unique (it carries the run id)
                        stage.use_artifact(f"{u}:latest")
                stage.log_artifact(art)
            finally:
                stage.finish()
        else:
            self.run.log_artifact(art)
        self._made[name] = art
        self.artifacts_logged.add(name)

    def log_config(self, config):
        self.run.config.update(config, allow_val_change=True)

    def has_generation(self, g: int) -> bool:
        """Whether the W&B run already holds generation g's row (a resumed run)."""
        return self.axis.row(g) < max(self.first_step, self._last)

    def sync_command(self) -> str | None:
        """The exact command that uploads this offline run (every segment of a resumed one, oldest first)."""
        if self.mode != "offline":
            return None
        dirs = offline_segments(self.run_dir, self.id)
        if not dirs:
            return None
        # --id: the segments of a resumed run upload in order of start time, each appended (wandb >= 0.31)
        return f"wandb sync --id {shlex.quote(self.id)} " + " ".join(shlex.quote(str(d)) for d in dirs)

    def close(self, exit_code: int = 0):
        self.run.finish(exit_code=exit_code)
        cmd = self.sync_command()
        if cmd and exit_code == 0:
            log.info(f"W&B: logged offline; to upload: {cmd}")


def make_logger(wcfg, run_dir: Path, config: dict[str, Any], is_main: bool, run_id: str | None = None,
                resume: bool = False, axis: StepAxis | None = None, job_type: str = "recursion"):
    """The run's logger: W&B on the main process where wanted (its group: ``wandb.group``, else
    :func:`collapse.tracking.mode.default_group`), else one that logs nothing."""
    if not is_main or not wants_wandb(wcfg):
        return NullLogger()
    return WandbLogger(mode=wcfg.mode, project=wcfg.project, entity=wcfg.entity, group=wcfg.group or default_group(config),
                       tags=wcfg.tags, name=wcfg.name or Path(run_dir).name, run_dir=Path(run_dir), config=config,
                       run_id=run_id, resume=resume, log_weights=getattr(wcfg, "log_weights", True),
                       log_every=getattr(wcfg, "log_every", 1), axis=axis, job_type=job_type,
                       system_metrics=getattr(wcfg, "system_metrics", True))


def close_quietly(logger, exit_code: int) -> None:
    """Close ``logger`` on the way out of a failed run; never hide the error that stopped it."""
    if logger is None:
        return
    try:
        logger.close(exit_code=exit_code)
    except Exception:  # noqa: BLE001
        pass
