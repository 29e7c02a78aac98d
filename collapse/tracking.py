"""A small logger protocol (``log``, ``log_table``, ``log_histogram``, ``log_image``, ``log_config``, ``close``).

W&B is one backend: imported lazily, used on the main process only, offline when no API key is
available (never an interactive prompt). Secrets never reach the run folder: the config we upload is
the resolved config, which holds no key.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from collapse.stats import interval_series

log = logging.getLogger("collapse")


class Logger(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...
    def log_histogram(self, key: str, values: np.ndarray, step: int, bins: np.ndarray | None = None) -> None: ...
    def log_image(self, key: str, path: str | Path, step: int) -> None: ...
    def log_config(self, config: dict[str, Any]) -> None: ...
    def close(self, exit_code: int = 0) -> None: ...


class NullLogger:
    def log(self, metrics, step):
        pass

    def log_table(self, key, columns, rows, step):
        pass

    def log_histogram(self, key, values, step, bins=None):
        pass

    def log_image(self, key, path, step):
        pass

    def log_config(self, config):
        pass

    def close(self, exit_code: int = 0):
        pass


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"tail_loss": {"1-10": 3.2}}`` -> ``{"tail_loss/1-10": 3.2}`` (W&B draws each as a line series)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) or v is None:
            if v is not None:
                out[key] = float(v) if isinstance(v, (float, np.floating)) else int(v)
    return out


def have_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    try:
        return netrc.is_file() and "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbLogger:
    """One W&B run. ``mode='online'`` without an API key falls back to offline, with a note."""

    def __init__(self, *, mode: str, project: str, entity: str | None, group: str | None, tags: list[str],
                 name: str | None, run_dir: Path, config: dict[str, Any], run_id: str | None = None,
                 resume: bool = False):
        import wandb

        if mode == "online" and not have_api_key() and os.environ.get("WANDB_MODE") != "online":
            log.warning("wandb.mode=online but no W&B API key is set: logging offline (wandb sync later).")
            mode = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_DISABLE_GIT", "true")
        settings = wandb.Settings(console="off", save_code=False, disable_git=True, x_disable_stats=True)
        self.run = wandb.init(project=project, entity=entity, group=group, tags=list(tags) or None, name=name,
                              dir=str(run_dir), config=config, mode=mode, id=run_id,
                              resume="allow" if resume else None, settings=settings, reinit="create_new")
        self.id = self.run.id
        self._wandb = wandb
        # the step axis is the generation: every series is drawn against it
        self.run.define_metric("generation")
        self.run.define_metric("*", step_metric="generation")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log({**flatten(metrics), "generation": step}, step=step)

    def log_table(self, key, columns, rows, step):
        self.run.log({key: self._wandb.Table(columns=columns, data=rows), "generation": step}, step=step)

    def log_histogram(self, key, values, step, bins=None):
        values = np.asarray(values, dtype=np.float64)
        if bins is not None:
            h = np.histogram(values, bins=bins)
            hist = self._wandb.Histogram(np_histogram=h)
        else:
            hist = self._wandb.Histogram(values)
        self.run.log({key: hist, "generation": step}, step=step)

    def log_image(self, key, path, step):
        self.run.log({key: self._wandb.Image(str(path)), "generation": step}, step=step)

    def log_config(self, config):
        self.run.config.update(config, allow_val_change=True)

    def close(self, exit_code: int = 0):
        self.run.finish(exit_code=exit_code)


def make_logger(wcfg, run_dir: Path, config: dict[str, Any], is_main: bool, run_id: str | None = None,
                resume: bool = False):
    if not is_main or wcfg.mode == "disabled":
        return NullLogger()
    return WandbLogger(mode=wcfg.mode, project=wcfg.project, entity=wcfg.entity, group=wcfg.group, tags=wcfg.tags,
                       name=wcfg.name or Path(run_dir).name, run_dir=Path(run_dir), config=config, run_id=run_id,
                       resume=resume)


def new_run_id() -> str:
    """A W&B run id, chosen before ``wandb.init`` so a run killed at any moment resumes the same W&B run."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def close_quietly(logger, exit_code: int) -> None:
    """Close ``logger`` on the way out of a failed run; never hide the error that stopped it."""
    if logger is None:
        return
    try:
        logger.close(exit_code=exit_code)
    except Exception:  # noqa: BLE001
        pass


def log_generation(logger, row: dict, ppl: np.ndarray, samples_path: Path, g: int, bins: np.ndarray) -> None:
    """One generation's row: scalars and bucket series, the gen0-perplexity histogram, a few sample texts."""
    scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    logger.log({**scalars, "tail_loss": row["tail_loss"], "bucket_shift": row["bucket_shift"],
                "gen0_ppl": {"q50": row["gen0_ppl_quantiles"]["q50"], "q95": row["gen0_ppl_quantiles"]["q95"]},
                **interval_series(row)}, step=g)
    logger.log_histogram("gen0_ppl_hist", ppl, step=g, bins=bins)
    try:
        import pyarrow.parquet as pq

        t = pq.read_table(samples_path, columns=["sample_index", "text"]).slice(0, 8).to_pylist()
        logger.log_table("samples", ["generation", "sample_index", "text"],
                         [[g, r["sample_index"], r["text"]] for r in t], step=g)
    except Exception:  # noqa: BLE001 - a missing table must not stop the run
        pass
