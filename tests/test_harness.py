"""lm-evaluation-harness tasks every generation (eval.harness) and the shipped KJV cloze (collapse/tasks)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_RUN, run_cli

pytest.importorskip("lm_eval")

from collapse.metrics.formulas import BUCKETS  # noqa: E402
from collapse.tasks import cloze  # noqa: E402

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLLAPSE_SKIP_REPORT": "1"}
HARNESS = ["eval.harness.tasks=[kjv_cloze]", "eval.harness.limit=4"]


def _items() -> list[dict]:
    return [json.loads(x) for x in cloze.DATA.read_text(encoding="utf-8").splitlines()]


def test_the_shipped_cloze_is_what_its_builder_writes():
    """The data and the YAMLs equal a fresh build from the embedded KJV (the draw is seeded, the split fixed)."""
    assert cloze.to_jsonl(cloze.kjv_items()) == cloze.DATA.read_text(encoding="utf-8")
    for name, text in cloze.task_files().items():
        assert (cloze.DATA.parent / name).read_text(encoding="utf-8") == text, name


def test_cloze_items_hold_their_promises():
    """Four choices, the answer at gold, the distractors of the answer's bucket and case, never the answer; 150 a
    bucket; each passage and its answer as a test chapter holds them."""
    from collapse.config import Config
    from collapse.data import load_splits

    items, s = _items(), load_splits(Config().data)
    counts = {}
    for w in (w for d in s.train for w in cloze.WORD.findall(d)):
        counts[w] = counts.get(w, 0) + 1
    rank = {w: i for i, (w, _) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])), 1)}
    test_text = "\n".join(s.test)
    assert {b: sum(it["bucket"] == b for it in items) for b in BUCKETS} == dict.fromkeys(BUCKETS, cloze.PER_BUCKET)
    for it in items:
        ch, ans = it["choices"], it["answer"]
        assert len(ch) == cloze.CHOICES and ch[it["gold"]] == ans and ch.count(ans) == 1
        assert it["rank"] == rank.get(ans) and cloze.bucket_name(it["rank"]) == it["bucket"]
        for w in ch:
            assert cloze.bucket_name(rank.get(w)) == it["bucket"] and w[0].isupper() == ans[0].isupper()
        assert f"{it['context']} {ans}" in test_text
        assert len(cloze.WORD.findall(it["context"])) >= cloze.MIN_CONTEXT_WORDS


def _scored(model, tok, context: str, word: str) -> tuple[float, bool]:
    """log p(" word" | context) summed over its tokens, and whether greedy decoding writes those tokens, by a plain
    forward (no lm-eval)."""
    import torch

    ctx, whole = tok(context)["input_ids"], tok(f"{context} {word}")["input_ids"]
    assert whole[:len(ctx)] == ctx
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), -1)
    cont = range(len(ctx), len(whole))
    return (float(sum(logp[i - 1, whole[i]] for i in cont)),
            all(int(logp[i - 1].argmax()) == whole[i] for i in cont))


def test_the_stage_scores_cloze_items_as_a_plain_forward_does():
    """The first items of every bucket, through the stage's lm-eval call on the embedded generation 0: each kjv_cloze
    item's accuracy is whether the answer has the highest summed log-likelihood of its four words, and each
    kjv_lambada item's NLL and greedy accuracy are the answer's, all computed here. The global random states and the
    run's tokenizer are as they were (lm-eval seeds the first and pads the second)."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from collapse.loop.harness_stage import run_tasks

    gen0 = REPO / "collapse" / "gen0"
    model, tok = AutoModelForCausalLM.from_pretrained(gen0).eval(), AutoTokenizer.from_pretrained(gen0)
    hc = SimpleNamespace(tasks=["kjv_cloze", "kjv_lambada"], limit=3, batch_size=8, num_fewshot=None)
    import random

    import torch

    before = (random.getstate(), np.random.get_state()[1].tobytes(), torch.get_rng_state(), tok.padding_side,
              tok.pad_token)
    res = run_tasks(model, tok, hc, seed=0)
    after = (random.getstate(), np.random.get_state()[1].tobytes(), torch.get_rng_state(), tok.padding_side, tok.pad_token)
    assert before[:2] == after[:2] and torch.equal(before[2], after[2]) and before[3:] == after[3:]  # nothing leaks
    items, seen, greedy = _items(), [], []
    for b in BUCKETS:
        ex = res["tasks"][f"kjv_cloze_{b}"]["examples"]["acc"]
        mine = [it for it in items if it["bucket"] == b][:3]
        assert ex["doc_id"] == [0, 1, 2]
        lam = res["tasks"][f"kjv_lambada_{b}"]["examples"]
        for i, (it, acc) in enumerate(zip(mine, ex["values"])):
            ll = [_scored(model, tok, it["context"], w)[0] for w in it["choices"]]
            assert acc == float(int(np.argmax(ll)) == it["gold"]), (it["id"], ll)
            seen.append(acc)
            ll_answer, writes = _scored(model, tok, it["context"], it["answer"])
            assert lam["nll"]["values"][i] == pytest.approx(-ll_answer, abs=1e-4)
            assert lam["acc"]["values"][i] == float(writes)
            greedy.append(writes)
        assert res["tasks"][f"kjv_cloze_{b}"]["metrics"]["acc"] == pytest.approx(np.mean(ex["values"]))
    assert 0 < np.mean(seen) < 1 and 0 < np.mean(greedy) < 1  # both outcomes checked
    assert res["tasks"]["kjv_cloze"]["kind"] == "group" and "nll" in res["tasks"]["kjv_lambada"]["metrics"]


@pytest.mark.parametrize("bad, what", [
    (["eval.harness.tasks=[kjv_clozee]"], "no lm-eval task, group or tag is named kjv_clozee"),
    (["eval.harness.tasks=[/no/such/folder]"], "/no/such/folder is not a folder"),
    (["eval.harness.tasks=[kjv_cloze]", "model.name_or_path=ngram"], "the n-gram model is none"),
    (["eval.harness.tasks=[kjv_cloze]", "eval.harness.limit=0"], "eval.harness.limit=0 is out of range"),
    (["eval.harness.tasks=[kjv_cloze,kjv_cloze]"], "names a task twice"),
    (["eval.harness.tasks=[hellaswag]"], "hellaswag read their data from the Hugging Face Hub, and HF_DATASETS_OFFLINE"),
])
def test_bad_harness_settings_are_one_line_exit_2_nothing_written(tmp_path, bad, what):
    out = tmp_path / "run"
    r = run_cli("run", "--check", *TINY_RUN, *bad, f"out_dir={out}", env=ENV)
    assert r.returncode == 2 and what in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_a_folder_without_tasks_and_a_missing_lm_eval_are_one_line(tmp_path, monkeypatch):
    import importlib.util

    from collapse.errors import ConfigError
    from collapse.tasks import check

    (tmp_path / "notes.yaml").write_text("just: notes\n")
    with pytest.raises(ConfigError, match="holds no lm-eval task YAML"):
        check([str(tmp_path)])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "lm_eval" else real(n, *a))
    with pytest.raises(ConfigError, match=r"pip install 'model-collapse\[harness\]'"):
        check(["kjv_cloze"])


def test_a_local_task_folder_runs_its_group(tmp_path):
    """A copy of the shipped task under another name, as a user's folder (its tasks tagged): found, resolved to its
    top group; an entry that repeats one of its tasks is refused (lm-eval would, after generation 0)."""
    from collapse.errors import ConfigError
    from collapse.tasks import resolve

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "utils.py").write_text((cloze.DATA.parent / "utils.py").read_text().replace(
        'Path(__file__).resolve().parent / "kjv_cloze.jsonl"', repr(str(cloze.DATA))))
    for name, text in cloze.task_files().items():
        if "lambada" in name:
            continue
        (folder / name.replace("kjv_cloze", "my_cloze")).write_text(text.replace("kjv_cloze", "my_cloze")
                                                                    .replace("include:", "tag: my_tag\ninclude:"))
    r = resolve([str(folder)])
    assert r.names == ["my_cloze"] and str(folder) in r.include and not r.defaults  # tags are no task of its own
    (folder / "suite.yaml").write_text("group: suite\ntask:\n  - my_cloze\nmetadata:\n  version: 1\n")
    assert resolve([str(folder)]).names == ["suite"]  # the top group, not the groups it holds
    with pytest.raises(ConfigError, match="suite and my_cloze_unseen share tasks"):
        resolve([str(folder), "my_cloze_unseen"])


def test_harness_keys_stay_out_of_a_config_that_does_not_use_them():
    from collapse.config import load_config

    assert "harness" not in load_config(None).to_dict()["eval"]
    on = load_config(None, ["eval.harness.tasks=[kjv_cloze]"])
    assert on.to_dict()["eval"]["harness"]["tasks"] == ["kjv_cloze"]
    assert on.fingerprint() != load_config(None).fingerprint()


def _rows(folder) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_run_reports_the_cloze_by_bucket_with_intervals_and_paired_changes(tmp_path):
    """Values, lm-eval's standard errors, intervals over the examples and changes from generation 0 in
    metrics.jsonl (each equal to the mean of harness.json's per-example values); the console table; W&B's run
    file; the report's table and chart; load_runs in a fresh process, with no registration by hand."""
    out = tmp_path / "run"
    r = run_cli("run", *TINY_RUN, "generations=1", *HARNESS, "wandb.mode=offline", f"out_dir={out}", env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(out)
    for g, row in enumerate(rows):
        res = json.loads((out / f"gen_{g:03d}" / "harness.json").read_text())
        for b in BUCKETS:
            k = f"harness/kjv_cloze_{b}/acc"
            vals = res["tasks"][f"kjv_cloze_{b}"]["examples"]["acc"]["values"]
            assert row[k] == pytest.approx(np.mean(vals)) and len(vals) == 4
            assert row[f"{k}_stderr"] == pytest.approx(np.std(vals, ddof=1) / 2)  # lm-eval's: sample SD / sqrt(n)
            lo, hi = row[f"{k}_ci"]
            assert 0 <= lo <= row[k] <= hi <= 1
        assert row["harness/kjv_cloze/acc"] == pytest.approx(np.mean(
            [v for b in BUCKETS for v in res["tasks"][f"kjv_cloze_{b}"]["examples"]["acc"]["values"]]))
        assert row["harness/kjv_cloze/acc_ci"][0] <= row["harness/kjv_cloze/acc"]
    ch = rows[1]["changes"]["from_gen0"]["harness/kjv_cloze_unseen/acc"]
    assert ch["delta"] == pytest.approx(rows[1]["harness/kjv_cloze_unseen/acc"] - rows[0]["harness/kjv_cloze_unseen/acc"])
    log = r.stdout + r.stderr
    assert "lm-eval tasks (eval.harness)" in log and "kjv_cloze_unseen acc" in log
    run_file = next((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert b"harness/kjv_cloze_unseen/acc_stderr" in run_file.read_bytes()
    rep = tmp_path / "report"
    assert run_cli("report", str(out), "--out", str(rep), env=ENV).returncode == 0
    assert (rep / "harness.png").is_file() and "kjv_cloze_unseen acc" in (rep / "report.html").read_text()
    code = ("import collapse, sys; t = collapse.load_runs([sys.argv[1]]); "
            "t = t[t.figure == 'harness/kjv_cloze_10001+/acc']; print(len(t), t.change.notna().sum(), t.lo.notna().sum())")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["2", "1", "2"], r.stdout + r.stderr[-2000:]


@pytest.mark.slow
def test_a_killed_harness_stage_resumes_to_the_same_rows_and_lm_eval_agrees(tmp_path):
    """A kill before harness.json is written and one after it is written (not recorded) both rerun to the same
    metrics.jsonl bytes; `collapse verify` passes; with the stage off every other value of every row is the same;
    `lm_eval` run directly on generation 0 with the shipped task gives the stage's accuracy."""
    args = ["run", *TINY_RUN, "generations=1", *HARNESS]
    whole = tmp_path / "whole"
    assert run_cli(*args, f"out_dir={whole}", env=ENV).returncode == 0
    for spec in ("harness:1:0", "harness:1:1"):
        killed = tmp_path / spec.replace(":", "-")
        r = run_cli(*args, f"out_dir={killed}", env={**ENV, "COLLAPSE_FAULT": spec})
        assert r.returncode != 0 and not (killed / "gen_001" / "metrics.json").exists()
        r = run_cli(*args, f"out_dir={killed}", env=ENV)
        assert r.returncode == 0, r.stderr[-2000:]
        assert (killed / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
        assert run_cli("verify", str(killed), env=ENV).returncode == 0
    plain = tmp_path / "plain"
    assert run_cli(*[a for a in args if a not in HARNESS], f"out_dir={plain}", env=ENV).returncode == 0
    for on, off in zip(_rows(whole), _rows(plain)):
        on = {k: v for k, v in on.items() if not k.startswith("harness/")}
        for c in on["changes"].values():
            for k in [k for k in c if k.startswith("harness/")]:
                c.pop(k)
        assert on == off
    base = json.loads((whole / "manifest.json").read_text())["base_model"]
    res_dir = tmp_path / "lm_eval"
    r = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={base}",
                        "--tasks", "kjv_cloze", "--include_path", str(REPO / "collapse" / "tasks"), "--limit", "4",
                        "--batch_size", "32", "--device", "cpu", "--output_path", str(res_dir)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**ENV, **_env()})
    assert r.returncode == 0, r.stderr[-3000:]
    direct = json.loads(next(res_dir.rglob("results_*.json")).read_text())["results"]
    row0 = _rows(whole)[0]
    for b in BUCKETS:
        assert direct[f"kjv_cloze_{b}"]["acc,none"] == pytest.approx(row0[f"harness/kjv_cloze_{b}/acc"], abs=1e-12)


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ENV}


def test_digest_keeps_per_example_values_only_for_what_lm_eval_averages():
    """lm-eval's output as collapse keeps it: `acc,none` as `acc`, a filter appended, "N/A" standard errors as
    None, a group once; per-example values (by doc id) for the averaged metrics, none for a perplexity."""
    from collapse.loop.harness_stage import digest

    out = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.5, "perplexity,none": 2.7,
                             "perplexity_stderr,none": "N/A", "exact_match,strict": 1.0,
                             "exact_match_stderr,strict": 0.0},
                       "g": {"acc,none": 0.5, "acc_stderr,none": 0.5}},
           "groups": {"g": {"acc,none": 0.5, "acc_stderr,none": 0.5}}, "group_subtasks": {"g": ["t"]},
           "n-samples": {"t": {"original": 5, "effective": 2}}, "higher_is_better": {"t": {"acc": True}},
           "samples": {"t": [{"doc_id": 1, "filter": "none", "metrics": ["acc", "perplexity"], "acc": 0.0,
                              "perplexity": -1.0},
                             {"doc_id": 0, "filter": "none", "metrics": ["acc", "perplexity"], "acc": 1.0,
                              "perplexity": -0.9},
                             {"doc_id": 0, "filter": "strict", "metrics": ["exact_match"], "exact_match": 1.0},
                             {"doc_id": 1, "filter": "strict", "metrics": ["exact_match"], "exact_match": 1.0}]}}
    d = digest(out)["tasks"]
    assert d["t"]["metrics"] == {"acc": 0.5, "acc_stderr": 0.5, "perplexity": 2.7, "perplexity_stderr": None,
                                 "exact_match_strict": 1.0, "exact_match_strict_stderr": 0.0}
    assert d["t"]["examples"] == {"acc": {"doc_id": [0, 1], "values": [1.0, 0.0]},
                                  "exact_match_strict": {"doc_id": [0, 1], "values": [1.0, 1.0]}}
    assert d["t"]["n"] == 2 and d["g"]["kind"] == "group" and d["g"]["subtasks"] == ["t"] and "examples" not in d["g"]


@pytest.mark.slow
def test_two_processes_run_the_stage_on_the_main_one(tmp_path):
    """Under `accelerate launch` with 2 gloo processes, the main one runs lm-eval while the other waits: generation
    0's figures (the same model) equal a 1-process run's, and the run finishes."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*TINY_RUN, "generations=1", *HARNESS]
    one = run_cli("run", *args, f"out_dir={tmp_path / 'one'}", env=ENV)
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "collapse",
           "run", *args, f"out_dir={tmp_path / 'two'}"]
    two = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={**os.environ, **ENV, "ACCELERATE_USE_CPU": "true"})
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _rows(tmp_path / "one")[0], _rows(tmp_path / "two")[0]
    keys = [k for k in a if k.startswith("harness/")]
    assert keys and {k: a[k] for k in keys} == {k: b[k] for k in keys}
