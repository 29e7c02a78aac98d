"""The logger protocol the stages log through, the logger that logs nothing, and W&B's flat series names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Logger(Protocol):
    active: bool

    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def log_train(self, metrics: dict[str, Any], generation: int, step: int) -> None: ...
    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int,
                  incremental: bool = False) -> None: ...
    def log_histogram(self, key: str, values: np.ndarray, step: int, bins: np.ndarray | None = None) -> None: ...
    def log_image(self, key: str, path: str | Path, step: int) -> None: ...
    def log_lines(self, key: str, xs: list, ys: list[list], keys: list[str], title: str, step: int,
                  xname: str = "generation") -> None: ...
    def log_artifact(self, name: str, type: str, paths: list[Path], metadata: dict, uses: tuple[str, ...] = (),
                     job: str | None = None) -> None: ...
    def log_config(self, config: dict[str, Any]) -> None: ...
    def close(self, exit_code: int = 0) -> None: ...


class NullLogger:
    active = False
    log_weights = False

    def log(self, metrics, step):
        pass

    def log_train(self, metrics, generation, step):
        pass

    def log_table(self, key, columns, rows, step, incremental=False):
        pass

    def log_histogram(self, key, values, step, bins=None):
        pass

    def log_image(self, key, path, step):
        pass

    def log_lines(self, key, xs, ys, keys, title, step, xname="generation"):
        pass

    def log_artifact(self, name, type, paths, metadata, uses=(), job=None):
        pass

    def log_config(self, config):
        pass

    def has_generation(self, g: int) -> bool:
        return True  # nothing to log

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
