"""Results as data: `collapse.load_runs` and `collapse export` on a finished sweep (2 regimes × 2 seeds of the
n-gram, with a plugin's figure), checked against metrics.jsonl; docs/analysis.md's example run on it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, run_cli

RUN = ["data.source=synthetic", "data.synthetic.vocab=50", "data.synthetic.documents=80",
       "data.synthetic.doc_tokens=48", "data.synthetic.truth_documents=16", "model.name_or_path=ngram",
       "model.ngram.n=2", "model.ngram.add_k=0.1", "generations=2", "generation.num_sequences=32",
       "generation.batch_size=8", "generation.prompt_tokens=8", "generation.new_tokens=16", "eval.max_blocks=8",
       "wandb.mode=disabled"]
PLUGIN = '''
import numpy as np
from collapse.metrics import Figure, register

register(Figure("top_share", "top-1 share", "share", +1, ".4f", resample="jackknife",
                point=lambda s: float(s.gen.max() / s.gen.sum())), replace=True)
'''


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    plugin = root / "fig.py"
    plugin.write_text(PLUGIN)
    out = root / "sweep"
    r = run_cli("sweep", *RUN, "regime.kind=replace,mix", "seed=0,1", "--out", str(out),
                env={"COLLAPSE_PLUGINS": str(plugin), "COLLAPSE_SKIP_REPORT": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    import importlib.util

    spec = importlib.util.spec_from_file_location("fig_plugin", plugin)  # the figure, registered here too
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    yield out
    from collapse.metrics.registry import unregister

    unregister("top_share")  # the other tests of this process see the built-in registry


def _rows(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_tidy_table_holds_what_metrics_jsonl_holds(sweep):
    import collapse

    df = collapse.load_runs([sweep])
    runs = sorted(p for p in sweep.iterdir() if (p / "metrics.jsonl").is_file())
    assert len(runs) == 4 and df.run.nunique() == 4 and set(df.generation) == {0, 1, 2}
    assert {"regime.kind", "seed", "generation.temperature", "curate.kind"} <= set(df.columns)
    for run in runs:
        mine = df[df.path == str(run)]
        cfg_kind = mine["regime.kind"].iloc[0]
        assert f"regime.kind={cfg_kind}" in run.name
        for row in _rows(run):
            at = mine[mine.generation == row["generation"]]
            ppl = at[at.figure == "test_ppl"].iloc[0]
            assert ppl.value == row["test_ppl"] and [ppl.lo, ppl.hi] == row["test_ppl_ci"]
            tail = at[(at.figure == "tail_loss") & (at.bucket == "1-10")].iloc[0]
            assert tail.value == row["tail_loss"]["1-10"] and [tail.lo, tail.hi] == row["tail_loss_ci"]["1-10"]
            top = at[at.figure == "top_share"].iloc[0]  # the plugin's figure, with no edit
            assert top.value == row["top_share"] and [top.lo, top.hi] == row["top_share_ci"]
            if row["generation"] > 0:
                ch = row["changes"]["from_gen0"]["test_ppl"]
                assert ppl.change == ch["delta"] and [ppl.change_lo, ppl.change_hi] == ch["ci95"]
                assert bool(ppl.resolved) == ch["resolved"]
                shift = at[(at.figure == "bucket_shift") & (at.bucket == "11-100")].iloc[0]
                assert shift.change == row["changes"]["from_gen0"]["bucket_shift.11-100"]["delta"]
            else:
                assert pd.isna(ppl.change)
    wide = collapse.load_runs(sweep, wide=True)
    assert len(wide) == 12 and "tail_loss.11-100" in wide.columns and "top_share" in wide.columns
    first = wide[(wide.path == str(runs[0])) & (wide.generation == 1)].iloc[0]
    assert first.test_ppl == _rows(runs[0])[1]["test_ppl"]


def test_export_writes_parquet_and_csv(sweep, tmp_path):
    for name in ("r.parquet", "r.csv"):
        r = run_cli("export", str(sweep), "--to", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        back = pd.read_parquet(tmp_path / name) if name.endswith("parquet") else pd.read_csv(tmp_path / name)
        assert len(back) > 0 and {"run", "generation", "figure", "bucket", "value", "regime.kind"} <= set(back.columns)
        assert back[back.figure == "test_ppl"].value.notna().all()
    r = run_cli("export", str(tmp_path / "nothing-here"), "--to", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "holds no run" in r.stderr
    assert not (tmp_path / "x.csv").exists()


def test_import_collapse_does_not_import_pandas():
    code = ("import sys, collapse; assert 'pandas' not in sys.modules; f = collapse.load_runs; "
            "assert 'pandas' not in sys.modules and callable(f)")  # pandas comes with the first call
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_analysis_guide_runs(sweep, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "analysis.md").read_text(), flags=re.S)
    assert len(blocks) == 1
    code = blocks[0].replace('"runs/experiments/regimes"', repr(str(sweep)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # run where the figure is written, with this checkout's collapse
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "replace" in r.stdout and "mix" in r.stdout and (tmp_path / "regimes-test-ppl.png").stat().st_size > 0


def test_the_wandb_view_groups_by_what_differs_and_is_built_offline(sweep, tmp_path):
    from collapse.tracking.view import build_workspace, view_spec

    spec = view_spec([sweep])
    assert spec["groupby"] == ["regime.kind"]  # the seed differs too, and aggregates
    assert spec["filters"] == {"job_type": "recursion", "tags": ["sweep-sweep"], "ids": []}  # W&B was off: no ids
    tail = [p["y"][0] for p in spec["sections"][0]["panels"]]
    assert tail == sorted(tail) and tail[0] == "tail_loss_rank/r1_1-10"  # rank order, the names run.py logs
    assert all(p["x"] == "generation" for s in spec["sections"] for p in s["panels"])
    ws = build_workspace(spec, entity="someone")  # W&B's own objects, no request made
    assert ws.project == "collapse" and len(ws.sections) == 3 and ws.sections[1].panels[0].y == ["test_ppl"]
    r = run_cli("wandb-view", str(sweep), "--spec", str(tmp_path / "view.json"),
                env={"WANDB_API_KEY": None, "NETRC": str(tmp_path / "none")})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "needs a W&B login" in r.stderr
    assert json.loads((tmp_path / "view.json").read_text()) == spec
