"""The paper's generation 0 under a budget (``train.gen0_blocks``), on a tiny GGUF written here (no download).

A 2-layer random Llama (tests/gguf_tiny.py) is fitted to a budget of real KJV rows with looks at the validation
loss every step, then goes through two generations: the budget is honoured, train.json records it, the fitted
folder is a model source with its tokenizer (`collapse measure` reads it), and a run killed inside the fit resumes
to the same numbers as one never killed.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli
from gguf_tiny import tiny_llama, write_gguf

from collapse.data import load_kjv

ENV = {"OMP_NUM_THREADS": "1", "COLLAPSE_SKIP_REPORT": "1"}
# rows of 16 tokens; 48 rows at batch 16 = 3 steps, a look at steps 0, 1, 2, 3
RUN = ["generations=2", "generation.num_sequences=16", "generation.batch_size=16", "generation.prompt_tokens=16",
       "generation.new_tokens=16", "train.epochs=1", "train.batch_size=16", "eval.max_blocks=8",
       "train.gen0_blocks=48", "train.gen0_val_every=1", "train.lr=3e-3", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    model, tok = tiny_llama(load_kjv()[:20])
    write_gguf(path, model, tok, "F32")
    return path


@pytest.fixture(scope="module")
def fitted(gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "run"
    r = run_cli("run", *RUN, f"model.name_or_path={gguf}", f"out_dir={out}", env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_the_budget_is_honoured_and_recorded(fitted):
    t = json.loads((fitted / "gen_000" / "train.json").read_text())
    assert t["budget"] == {"gen0_blocks": 48, "tokens": 48 * 16, "val_every": 1}
    assert t["tokens_used"] == 48 * 16 and t["steps"] == 3  # one pass over the drawn rows, nothing more
    assert [lk["step"] for lk in t["looks"]] == [0, 1, 2, 3]
    best = min(t["looks"], key=lambda lk: lk["val_nll"])
    assert t["step_selected"] == best["step"] and t["val_nll"] == best["val_nll"]
    assert t["val_ppl_before"] == pytest.approx(math.exp(t["looks"][0]["val_nll"]))
    assert t["val_ppl_after"] == pytest.approx(math.exp(best["val_nll"]))
    assert t["val_ppl_after"] < t["val_ppl_before"]  # a random model fitted at lr 3e-3 does learn KJV
    assert t["wall_seconds"] > 0 and t["validation_blocks"] == 8
    manifest = json.loads((fitted / "manifest.json").read_text())
    assert manifest["complete"] and manifest["generations"]["0"]["train"]
    rows = [json.loads(x) for x in (fitted / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2]


def test_the_fitted_generation_0_is_a_model_source_with_its_tokenizer(fitted, gguf, tmp_path):
    import torch

    from collapse.config import ModelConfig
    from collapse.metrics.evaluate import mean_nll
    from collapse.models.hf import load_pretrained

    folder = fitted / "gen_000" / "model"
    assert any(folder.glob("*.safetensors")) and (folder / "tokenizer.json").is_file()
    model, tok = load_pretrained(str(folder), ModelConfig(name_or_path=str(folder)), torch.device("cpu"))
    base, tok0 = load_pretrained(str(gguf), ModelConfig(name_or_path=str(gguf), dtype="float32"), torch.device("cpu"))
    text = load_kjv()[3][:400]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == tok0(text, add_special_tokens=False)["input_ids"] and tok.eos_token_id == tok0.eos_token_id
    # the LoRA fit is merged in: the projections moved, the embeddings did not, and the fit lowered the loss
    sd, sd0 = model.state_dict(), base.state_dict()
    assert not torch.equal(sd["model.layers.0.self_attn.q_proj.weight"], sd0["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(sd["model.embed_tokens.weight"], sd0["model.embed_tokens.weight"])
    x = torch.tensor([ids[:64]]).numpy()
    assert mean_nll(model, x) < mean_nll(base, x)
    out = tmp_path / "m"
    r = run_cli("measure", f"model.name_or_path={folder}", "measure.samples=8", "measure.window=64",
                "generation.batch_size=8", "wandb.mode=disabled", f"out_dir={out}", env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "measure.json").read_text())["samples"] == 8


def test_a_kill_inside_the_fit_resumes_to_the_same_run(fitted, gguf, tmp_path):
    out = tmp_path / "run"
    args = ("run", *RUN, f"model.name_or_path={gguf}", f"out_dir={out}")
    r = run_cli(*args, env={**ENV, "COLLAPSE_FAULT": "train:0:2"}, timeout=600)  # killed after step 2 of the fit
    assert r.returncode != 0 and not (out / "gen_000" / "train.json").exists()
    r = run_cli(*args, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "metrics.jsonl").read_text() == (fitted / "metrics.jsonl").read_text()
    a, b = (json.loads((d / "gen_000" / "train.json").read_text()) for d in (out, fitted))
    assert a["looks"] == b["looks"] and a["step_selected"] == b["step_selected"]


@pytest.mark.parametrize("bad, needle", [
    (["train.gen0_blocks=100000000"], "exceeds the"),
    (["train.gen0_epochs=1"], "set one of them to 0"),
    (["train.gen0_val_every=0"], "train.gen0_val_every=0 is out of range"),
    (["train.gen0_blocks=40"], "not a multiple of train.batch_size=16"),
])
def test_a_bad_budget_is_one_line_before_anything_is_written(gguf, tmp_path, bad, needle):
    out = tmp_path / "r"
    r = run_cli("run", *RUN, f"model.name_or_path={gguf}", f"out_dir={out}", *bad, env=ENV, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
    assert not out.exists()
