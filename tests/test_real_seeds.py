"""scripts/real_seeds.py: the real-LM seed tables, from the committed small files, equal docs/results.md's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

SCRIPT = REPO / "scripts" / "real_seeds.py"


def _script(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args", [
    ("docs/results/smollm2-seeds",),
    ("docs/results/text-figures", "--only", "mauve,self_bleu", "--marker", "text-figures"),
    ("docs/results/cloze", "--only", "test_ppl,tail_loss.101-1000,tail_loss.1001-10000,tail_loss.unseen,harness",
     "--marker", "cloze"),
    ("docs/results/smollm2-cloze", "--only",
     "test_ppl,tail_loss.101-1000,tail_loss.1001-10000,tail_loss.unseen,harness", "--marker", "cloze-smollm2"),
])
def test_the_docs_seed_tables_are_what_the_committed_runs_give(args):
    r = _script("tables", *args, "--check", "docs/results.md")
    assert r.returncode == 0, r.stdout + r.stderr


def _fake_run(root, name, kind, seed, ppl, training="bf16"):
    d = root / name
    (d / "gen_000").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "regime": {"kind": kind, "real_fraction": 0.1}}))
    rows = []
    for g, p in enumerate(ppl):
        ch = {"test_ppl": {"delta": p - ppl[0], "ci95": [p - ppl[0] - 0.1, p - ppl[0] + 0.1],
                           "resolved": abs(p - ppl[0]) > 0.1}}
        rows.append({"generation": g, "test_ppl": p, "changes": {"from_gen0": ch} if g else {}})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "machine.json").write_text(json.dumps({"cpu": "a CPU", "cores": 2, "torch": "x", "weights": "float32",
                                                "training": training, "wall_seconds_from_file_times": 61}))
    (d / "gen_000" / "train.json").write_text(json.dumps({"val_ppl_before": 30.0, "val_ppl_after": 20.0}))


def test_tables_give_the_t_interval_over_seeds_and_the_paired_difference(tmp_path):
    """Three replace seeds ending at +1, +2, +3: mean 2, sd 1, t(2) = 4.303: 2.00 [-0.48, 4.48]; mix ends one lower in
    every seed: a paired difference of exactly -1 with no spread."""
    for s, end in enumerate((11.0, 12.0, 13.0)):
        _fake_run(tmp_path, f"r{s}", "replace", s, [10.0, end])
        _fake_run(tmp_path, f"m{s}", "mix", s, [10.0, end - 1])
    _fake_run(tmp_path, "fp32", "replace", 0, [10.0, 11.5], training="float32")
    r = _script("tables", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "| Δ test ppl | +2.00 [-0.48, +4.48]; resolved 3↑ 0↓ of 3 | +1.00 [-1.48, +3.48]; resolved 2↑ 0↓ of 3 |" in out
    assert "| Δ test ppl | -1.00 | -1.00 | -1.00 | -1.00 [-1.00, -1.00] |" in out
    assert "| Δ test ppl, generation 1 | +1.50 [+1.40, +1.60] | +1.00 [+0.90, +1.10] | -0.50 |" in out
    assert "standard deviation of Δ test ppl under replace: 1.00" in out
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- real-seeds:begin -->\nold\n<!-- real-seeds:end -->\nafter\n")
    assert _script("tables", str(tmp_path), "--check", str(doc)).returncode == 1
    assert _script("tables", str(tmp_path), "--write", str(doc)).returncode == 0
    assert _script("tables", str(tmp_path), "--check", str(doc)).returncode == 0
    assert doc.read_text().startswith("before\n") and doc.read_text().endswith("after\n")
