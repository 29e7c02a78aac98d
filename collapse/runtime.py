"""Process set-up shared by the commands: quiet libraries, threads, the Accelerator, console output."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from datetime import timedelta


def quiet_libraries() -> None:
    """Keep the terminal for our own progress lines: silence routine library chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(peft|transformers|accelerate|torch)\b.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "peft", "accelerate", "datasets", "wandb", "urllib3", "httpx", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # read by transformers and huggingface_hub when they are first imported: importing them here would cost every
    # command (a one-line error, `collapse keys`) a second of start-up
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (the Python API in a notebook): tell it directly
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged (not when the handler was made), so a caller
    that redirects stderr (a notebook, a test, a forking helper) gets the lines."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(is_main: bool = True) -> logging.Logger:
    log = logging.getLogger("collapse")
    if not log.handlers:
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    return log


class LaunchWorld:
    """What the checks ask of an Accelerator (process count and rank, device type, whether the precision can run,
    the barrier), read from the launcher's environment as accelerate reads it: ``--check`` answers without building
    one (accelerate and its process group cost seconds, and ``--check`` writes nothing ranks must agree on)."""

    def __init__(self, mixed_precision: str = "auto"):
        import torch
        from accelerate.utils import get_int_from_env, is_bf16_available, str_to_bool

        from collapse.errors import ConfigError

        self.num_processes = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                                               "MV2_COMM_WORLD_SIZE"], 1)
        self.process_index = get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], 0)
        self.is_main_process = self.process_index == 0
        use_cpu = bool(str_to_bool(os.environ.get("ACCELERATE_USE_CPU", "false")))
        gpu = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else None
        self.device = torch.device(gpu if gpu and not use_cpu else "cpu")
        # what Accelerator(mixed_precision=...) refuses (accelerate 1.x, its __init__), refused here too
        if mixed_precision == "fp16" and not torch.amp.is_autocast_available(self.device.type):
            raise ConfigError(f"train.mixed_precision=fp16 is not supported on {self.device.type}: use `auto` or `no`.")
        if mixed_precision == "bf16" and self.device.type != "cpu" and not is_bf16_available(True):
            raise ConfigError(f"train.mixed_precision=bf16 is not supported on this {self.device.type} device: use "
                              "`auto`, `no` or `fp16`.")

    def wait_for_everyone(self) -> None:
        pass

    def end_training(self) -> None:
        pass


def make_accelerator(mixed_precision: str = "auto", main_only_minutes: int | None = None):
    """One Accelerator per process; bf16 autocast on GPUs that have it, fp32 elsewhere. ``main_only_minutes``: how
    long the other processes may wait at a barrier while the main one works alone (lm-eval's tasks: a large task on
    a large model outlasts NCCL's default of 10 minutes)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if AcceleratorState._shared_state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state()  # a second command in one process (the Python API) with another precision
    handlers = [] if main_only_minutes is None else [InitProcessGroupKwargs(timeout=timedelta(minutes=main_only_minutes))]
    return Accelerator(mixed_precision=mixed_precision, kwargs_handlers=handlers)


class StageClock:
    """One line per stage with elapsed time and an ETA for the whole run."""

    def __init__(self, total_stages: int, log: logging.Logger):
        self.total = max(1, total_stages)
        self.done = 0
        self.t0 = time.perf_counter()
        self.log = log
        self.durations: dict[str, float] = {}

    def start(self) -> float:
        return time.perf_counter()

    def finish(self, label: str, t_start: float, detail: str = "", count: bool = True) -> float:
        dt = time.perf_counter() - t_start
        if count:
            self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(self.done, 1) * (self.total - self.done)
        self.log.info(f"[{self.done:>2}/{self.total}] {label:<28} {dt:6.1f} s  {detail:<44} "
                      f"elapsed {fmt_s(elapsed)}  eta {fmt_s(eta)}")
        self.durations[label] = dt
        return dt


def fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def fmt_pct(v: float | None) -> str:
    """A signed percentage for the console (``+6.5%``); a dash where there is none."""
    return "—" if v is None else f"{v:+.1f}%"


def fmt_num(v: float | None, digits: int = 3) -> str:
    """A fixed-point number for the console; a dash where there is none."""
    return "—" if v is None else f"{v:.{digits}f}"
