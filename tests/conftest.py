"""Shared test set-up: offline, quiet, a per-session model cache, and a tiny scratch model config.

The TINY overrides build a 1-layer, d=32 GPT-2 with a 512-entry BPE on the embedded KJV text in a
few seconds; it is cached for the whole session (COLLAPSE_CACHE points into a temp folder).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# wandb.mode=auto (the default) follows WANDB_MODE: tests that do not test W&B skip it (a W&B run costs seconds);
# those that do set wandb.mode=offline, which wins over it
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent

# pytest-xdist (`-n`, scripts/test.sh): each worker and the processes it starts get their share of the cores, or
# two workers' OpenMP pools would fight over them (two busy processes on 2 cores slow each other many times over)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // WORKERS))

TINY = [
    "model.scratch.vocab_size=512", "model.scratch.n_layer=1", "model.scratch.d_model=32", "model.scratch.n_head=2",
    "model.scratch.steps=30", "model.scratch.batch_size=16", "model.scratch.context=256",
]
TINY_RUN = TINY + [
    "generations=2", "generation.num_sequences=64", "generation.batch_size=32", "generation.prompt_tokens=16",
    "generation.new_tokens=16", "train.epochs=2", "train.batch_size=16", "eval.max_blocks=32", "wandb.mode=disabled",
]


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service():
    """A W&B run made in this process starts wandb's service and writes WANDB_SERVICE into os.environ, which every
    later child would inherit: its runs would share that service, and a child killed mid-run would leave its run
    id "in use" there for the run that resumes it. Each test's children start their own."""
    os.environ.pop("WANDB_SERVICE", None)
    yield


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    root = os.environ.get("COLLAPSE_TEST_CACHE")
    if not root and WORKERS > 1:  # one cache for the workers (their temp folders are siblings): each model built once
        root = str(tmp_path_factory.getbasetemp().parent / "collapse-cache")  # (a build is atomic: see atomic_dir)
    root = root or str(tmp_path_factory.mktemp("collapse-cache"))
    os.environ["COLLAPSE_CACHE"] = root
    yield root


_PREFORK = None  # the session's forking helper (tests/prefork.py), started by the first run_cli


def _prefork():
    global _PREFORK
    if _PREFORK is None:
        from prefork import Prefork

        _PREFORK = Prefork()
    return _PREFORK


@pytest.fixture(scope="session", autouse=True)
def _close_prefork():
    yield
    if _PREFORK is not None:
        _PREFORK.close()


@contextlib.contextmanager
def in_process_runs():
    """For `collapse run`s made in the test's own process: fsync off (these folders need no durability), no report,
    the console quiet; yields the MonkeyPatch, undone on the way out."""
    import collapse.io as cio

    mp = pytest.MonkeyPatch()
    mp.setattr(cio.os, "fsync", lambda fd: None)
    mp.setenv("COLLAPSE_SKIP_REPORT", "1")
    logging.getLogger("collapse").setLevel(logging.WARNING)
    try:
        yield mp
    finally:
        mp.undo()
        logging.getLogger("collapse").setLevel(logging.INFO)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """Run `collapse ...` in a fresh process; returns CompletedProcess with text output. ``env`` adds to the
    environment; a None value removes that variable.

    The process is forked from a helper that has done the heavy imports (tests/prefork.py: ~4 s less per
    command); ``COLLAPSE_TEST_PREFORK=0`` runs `python -m collapse` instead."""
    e = dict(os.environ)
    e.update(env or {})
    e = {k: v for k, v in e.items() if v is not None}
    if os.environ.get("COLLAPSE_TEST_PREFORK", "1") == "0":
        return subprocess.run([sys.executable, "-m", "collapse", *args], capture_output=True, text=True,
                              timeout=timeout, env=e, cwd=cwd or REPO)
    import tempfile

    runner = _prefork()
    with tempfile.TemporaryDirectory() as logs:
        out, err = Path(logs) / "stdout", Path(logs) / "stderr"
        pid = runner.start(list(args), e, out, err, cwd=cwd or REPO)
        try:
            rc = runner.wait(pid, timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(["collapse", *args], timeout, out.read_text(), err.read_text()) from None
        return subprocess.CompletedProcess(["collapse", *args], rc, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))
