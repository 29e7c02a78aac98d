"""The package's shape, as the contributor guide promises it: no module over 500 lines, no import cycle
(module-level or inside a function), and the run folder's module free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PKG = REPO / "collapse"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the collapse modules it imports anywhere in its body (``from x import y`` counts y when a module)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                if n in files and n != mod and not mod.startswith(n + "."):  # a package's own __init__ is no edge
                    graph[mod].add(n)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_module_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_can_fail():
    """Imports inside functions are edges of the graph, and a cycle is found."""
    assert "collapse.models.scratch" in import_graph()["collapse.models.transformer"]  # imported inside load
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_rundir_and_report_need_no_torch():
    """`collapse report` and the run folder's bookkeeping read a run without importing torch."""
    code = "import sys, collapse.loop.rundir, collapse.report, collapse.loop.sweep; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stderr


HEAVY = ("torch", "transformers", "accelerate", "peft", "datasets", "wandb", "pandas", "pyarrow",
         "transformers.modeling_utils", "torch._dynamo")  # a model's code; torch's compiler stack
_IMPORTED = r"""
import json, sys
from collapse.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
state = sys.modules.get("accelerate.state")
print(json.dumps({"rc": rc, "heavy": sorted(m for m in %r if m in sys.modules),
                  "accelerator": bool(state and state.PartialState._shared_state)}))
"""


def _heavy_after(*args: str, cwd: Path) -> tuple[int, list[str], bool]:
    """The heavy libraries in ``sys.modules`` after ``collapse <args>`` ran in a fresh interpreter: what its start-up
    paid for (importing is most of a short command's time: torch ~1 s, transformers' model code ~1.5 s), and whether
    an Accelerator was built."""
    import json
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", _IMPORTED % (HEAVY,), *args], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=300)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    return last["rc"], last["heavy"], last["accelerator"]


@pytest.mark.parametrize("args", [("keys",), ("run", "generation.top_p=1.5"), ("run", "no/such/config.yaml"),
                                  ("measure", "measure.samples=0"), ("report", "no/such/run")])
def test_a_one_line_answer_imports_no_heavy_library(args, tmp_path):
    rc, heavy, _ = _heavy_after(*args, cwd=tmp_path)
    assert rc in (0, 2) and heavy == [], f"collapse {' '.join(args)} imported {heavy}"


def test_check_imports_only_what_the_model_skeleton_needs(tmp_path):
    """`--check` of a model folder with a current skeleton record (a copy of the embedded default's, recorded by the
    libraries installed here) reads the model's shapes from it: torch and transformers' config and tokenizer (which
    import accelerate) and nothing else heavy: not the model's code (about 2 s), no peft, datasets or W&B, and no
    Accelerator (the process count comes from the launcher's environment). The embedded default itself too, when
    its shipped record is for these library versions (collapse/gen0/skeleton.json)."""
    import shutil

    import torch
    from transformers import AutoConfig

    from collapse.models import skeleton
    from collapse.models.scratch import SHIPPED

    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    skeleton.record(folder)
    runs = [("run", "--check", f"model.name_or_path={folder}", f"out_dir={tmp_path / 'r'}")]
    if skeleton.read(SHIPPED, AutoConfig.from_pretrained(SHIPPED), torch.float32) is not None:
        runs.append(("run", "--check", f"out_dir={tmp_path / 'r'}"))
    for args in runs:
        rc, heavy, accelerator = _heavy_after(*args, cwd=tmp_path)
        assert rc == 0 and set(heavy) <= {"torch", "transformers", "accelerate"}, (args, heavy)
        assert not accelerator
    assert not (tmp_path / "r").exists()
