"""One code path from 1 to N processes: a 2-process (gloo, CPU) run equals a 1-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import accelerate  # noqa: F401 - a required dependency: its absence fails here, never skips
import numpy as np
import pytest
from conftest import REPO, TINY_RUN

from collapse.io import read_id_column

# Float summation order differs between 1 and 2 processes (DDP all-reduce): allow a relative 1e-5.
RTOL = 1e-5

def free_port() -> int:
    """A port nothing listens on now: two test runs on one machine must not meet at a fixed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch() -> list[str]:
    return ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def _run(args, out, extra_env=None):
    env = dict(os.environ, **(extra_env or {}))
    cmd = [sys.executable, *args, "-m", "collapse", "run", *TINY_RUN, f"out_dir={out}", "wandb.mode=offline"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    one = _run([], base / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(launch(), base / "two", {"ACCELERATE_USE_CPU": "true"})
    assert two.returncode == 0, two.stderr[-3000:]
    return base / "one", base / "two", two


def test_launched_job_really_had_two_processes(runs):
    _, two, proc = runs
    assert json.loads((two / "manifest.json").read_text())["world_size"] == 2
    assert "2 process(es)" in proc.stderr


def test_samples_identical_and_metrics_within_tolerance(runs):
    one, two, _ = runs
    for g in range(3):
        a = read_id_column(one / f"gen_{g:03d}" / "samples.parquet", "token_ids")
        b = read_id_column(two / f"gen_{g:03d}" / "samples.parquet", "token_ids")
        assert np.array_equal(a, b), f"generation {g}"
    ra = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(ra) == len(rb) == 3
    for x, y in zip(ra, rb):
        assert y["test_ppl"] == pytest.approx(x["test_ppl"], rel=RTOL)
        for b, v in x["tail_loss"].items():
            assert (v is None and y["tail_loss"][b] is None) or y["tail_loss"][b] == pytest.approx(v, rel=RTOL)
        assert y["bucket_shift"] == x["bucket_shift"]  # same samples, same counts


def test_one_set_of_files_and_one_wandb_run(runs):
    from wandb_offline import find_run_files

    _, two, _ = runs
    assert len(find_run_files(two)) == 1
    names = sorted(p.name for p in two.iterdir())
    assert names.count("metrics.jsonl") == 1 and not any(n.startswith(".") and n.endswith(".tmp") for n in names)
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 3


def test_the_training_loss_is_the_mean_over_processes(runs):
    """Each process's loss is over its half of the batch; the logged loss is their mean, which is the 1-process
    run's loss over the whole batch (the same rows), not rank 0's half."""
    from wandb_offline import find_run_files, read_history

    one, two, _ = runs
    a = [p["loss"] for p in json.loads((one / "gen_001" / "train.json").read_text())["curve"]]
    b = [p["loss"] for p in json.loads((two / "gen_001" / "train.json").read_text())["curve"]]
    assert len(a) == len(b) > 0 and b == pytest.approx(a, rel=1e-4)
    (w,) = find_run_files(two)
    logged = [h["train/loss"] for h in read_history(w) if "train/loss" in h and h.get("train/generation") == 1]
    assert logged == pytest.approx(b, rel=1e-6)
