"""A helper process that has done the heavy imports (torch, transformers, peft, ...) and forks one child per
`collapse` command: each child is a fresh process running ``collapse.cli.main`` (what ``python -m collapse``
runs), with its own environment and its stdout/stderr sent to files, at ~5 s less import time per command.

``COLLAPSE_TEST_PREFORK=0`` makes the callers run plain ``python -m collapse`` subprocesses instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO

_SERVER = r"""
import json, os, sys, traceback
sys.path.insert(0, os.getcwd())
import collapse.cli, collapse.loop.run, collapse.check, collapse.data, collapse.metrics.evaluate, collapse.models.train
import collapse.decoding.generate, collapse.decoding.fastgen, collapse.tracking, collapse.tracking.run, collapse.metrics, collapse.models.hf, collapse.runtime
import accelerate, datasets, peft, pyarrow.parquet, safetensors.torch, transformers, wandb
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.pytorch_utils import Conv1D
from peft import PeftModel, get_peft_model
collapse.data.load_kjv()  # read once here; every child inherits it
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "warm" in req:  # run a command here, once, so that every child inherits its lazy imports done
        with open(os.devnull, "w") as null:
            sys.stdout, sys.stderr = null, null
            try:
                collapse.cli.main(req["warm"])
            finally:
                sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        print(json.dumps({"warm": True}), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            os.environ.clear()
            os.environ.update(req["env"])
            if "OMP_NUM_THREADS" in os.environ:  # OpenMP read it when the helper imported torch: tell torch again
                import torch
                torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
            os.chdir(req.get("cwd") or os.getcwd())
            for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = ["collapse", *req["args"]]
            rc = collapse.cli.main(req["args"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(rc)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Prefork:
    """The forking helper: ``start`` a command, ``wait`` for its exit code."""

    def __init__(self, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})}, cwd=REPO)
        assert "ready" in self._read(300), "the prefork helper did not start"

    def _read(self, timeout: float) -> dict:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the prefork helper died")
        return json.loads(line)

    def warm(self, args: list[str]) -> None:
        """Run ``collapse <args>`` in the helper itself (output discarded): later children skip its lazy imports."""
        self.proc.stdin.write(json.dumps({"warm": args}) + "\n")
        self.proc.stdin.flush()
        self._read(300)

    def start(self, args: list[str], env: dict, stdout: Path, stderr: Path, cwd: Path | None = None) -> int:
        self.proc.stdin.write(json.dumps({"args": args, "env": env, "stdout": str(stdout), "stderr": str(stderr),
                                          "cwd": str(cwd) if cwd else None}) + "\n")
        self.proc.stdin.flush()
        return self._read(60)["pid"]

    def wait(self, pid: int, timeout: float) -> int:
        """The child's exit code; a deadline only ends the wait (the child is killed, TimeoutError raised)."""
        try:
            return self._read(timeout)["rc"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._read(60)
            raise

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
