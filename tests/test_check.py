"""What `--check` (and so every run, which makes the same checks first) refuses, tested on the check functions
themselves; the command-line property over every key is in test_fuzz_check.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, run_cli

from collapse.check import Plan, check_out_dir, ineffective_settings
from collapse.config import load_config
from collapse.errors import ConfigError, DataError, ModelError


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY_RUN, f"out_dir={tmp_path / 'run'}", *extra])


def test_a_folder_in_use_is_refused_without_taking_its_lock(tmp_path):
    from collapse.loop.rundir import lock_out_dir

    cfg = _cfg(tmp_path)
    held = lock_out_dir(Path(cfg.out_dir))
    try:
        with pytest.raises(ConfigError, match="another `collapse run`"):
            check_out_dir(cfg, Plan("run"))
    finally:
        held.close()
    check_out_dir(cfg, Plan("run"))  # free again: accepted, and the check took nothing


def test_a_corrupt_manifest_is_refused_before_the_run(tmp_path):
    cfg = _cfg(tmp_path)
    out = Path(cfg.out_dir)
    out.mkdir()
    (out / "config.yaml").write_text(cfg.to_yaml())
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json is corrupt"):
        check_out_dir(cfg, Plan("run"))


def test_permission_denied_is_one_error(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", denied)
    with pytest.raises(ConfigError, match="permission denied"):
        check_out_dir(cfg, Plan("run"))


def test_modules_to_save_typo_is_refused_before_generation_0():
    from transformers import GPT2Config, GPT2LMHeadModel

    from collapse.models import kind_for

    check_fits = kind_for("scratch").check_fits

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, bos_token_id=0,
                                           eos_token_id=0))
    check_fits(load_config(None, [*TINY_RUN, "train.lora.modules_to_save=[lm_head]"]), model)
    with pytest.raises(ModelError, match="modules_to_save"):
        check_fits(load_config(None, [*TINY_RUN, "train.lora.modules_to_save=[lm_haed]"]), model)


def test_settings_that_cannot_act_are_named():
    cfg = load_config(None, ["generation.num_beams=3", "generation.temperature=0.5", "regime.size=10"])
    notes = ineffective_settings(cfg, "run")
    assert any("temperature=0.5" in n and "beam search" in n for n in notes)
    assert any("regime.size" in n for n in notes)
    assert ineffective_settings(load_config(None, []), "run") == []


def test_a_full_fine_tune_reloads_in_the_dtype_it_was_used_in(tmp_path):
    """Resume reloads model g as it was in memory: float32 master weights over a bf16 base stay float32."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from collapse.models.transformer import load_model_dir

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0))
    m.save_pretrained(tmp_path / "f32")
    m.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert next(load_model_dir(tmp_path / "f32", torch.device("cpu")).parameters()).dtype == torch.float32
    assert next(load_model_dir(tmp_path / "bf16", torch.device("cpu")).parameters()).dtype == torch.bfloat16


def test_measure_exits_0_on_every_process(monkeypatch):
    """Processes other than the main one get an empty result from run_measure: still a success."""
    import collapse.measure
    from collapse.cli import main

    monkeypatch.setattr(collapse.measure, "run_measure", lambda cfg, **k: {})
    assert main(["measure", *TINY_RUN[:7]]) == 0


def test_a_scratch_models_cached_token_ids_equal_tokenizing_again():
    """tokens.npz (written when the scratch model is built) holds exactly what the tokenizer gives; an unrelated
    or damaged file is ignored."""
    import numpy as np
    from conftest import TINY
    from transformers import AutoTokenizer

    from collapse.data import SPLITS, load_splits, split_ids, tokenize
    from collapse.models.scratch import TOKENS_FILE, get_scratch_model

    cfg = load_config(None, TINY)
    splits = load_splits(cfg.data)
    folder = get_scratch_model(cfg.model.scratch, splits, show_progress=False)
    tok = AutoTokenizer.from_pretrained(folder)
    cached = split_ids(tok, splits, folder / TOKENS_FILE)
    for s in SPLITS:
        fresh = tokenize(tok, splits[s])
        assert len(cached[s]) == len(fresh) and all(np.array_equal(a, b) for a, b in zip(cached[s], fresh))
    other = load_splits(load_config(None, [*TINY, "data.max_documents=5"]).data)  # another fingerprint
    assert [len(d) for d in split_ids(tok, other, folder / TOKENS_FILE)["test"]] == \
        [len(d) for d in tokenize(tok, other.test)]


def test_a_second_command_in_one_process_may_ask_another_precision():
    """The Python API runs commands in one process: accelerate's process-wide state must not refuse fp16 after no."""
    from collapse.runtime import make_accelerator

    assert make_accelerator("no").mixed_precision == "no"
    assert make_accelerator("fp16").mixed_precision == "fp16"
    assert make_accelerator("no").mixed_precision == "no"


def _shape(model) -> tuple:
    """What the checks read of a skeleton: modules (name, class), parameters (name, shape, dtype, device; tied ones
    once), the LoRA targets and byte counts, the context and vocabulary."""
    from collapse.models.hf import default_targets
    from collapse.models.kind import context_length
    from collapse.models.transformer import adapter_bytes, master_bytes, weights_bytes

    cfg = load_config(None, [])
    return ([(n, type(m).__name__) for n, m in model.named_modules()],
            [(n, tuple(p.shape), p.dtype, p.device.type) for n, p in model.named_parameters()],
            default_targets(model), adapter_bytes(model, cfg), weights_bytes(model), master_bytes(model),
            context_length(model), model.config.vocab_size)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_recorded_skeleton_is_the_built_one(tmp_path, arch):
    """`--check` reads a model folder's skeleton.json instead of importing the model's code: what it rebuilds
    gives every figure the built skeleton gives; a record for another config, or a damaged one, is not used."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from collapse.config import ScratchConfig
    from collapse.models import skeleton
    from collapse.models.scratch import SHIPPED, build_scratch_model

    folder = tmp_path / arch
    if arch == "gpt2":  # the embedded default's config, recorded by the libraries installed here
        folder.mkdir()
        shutil.copy(SHIPPED / "config.json", folder)
    else:
        build_scratch_model(ScratchConfig(arch="llama", n_layer=2, d_model=64, n_head=2), 300, 0).save_pretrained(folder)
    skeleton.record(folder)
    config = AutoConfig.from_pretrained(folder)
    if arch == "gpt2" and skeleton.read(SHIPPED, config, torch.float32) is not None:  # the shipped record, when current
        assert (SHIPPED / skeleton.FILE).read_text() == (folder / skeleton.FILE).read_text()
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    rebuilt = skeleton.read(folder, config, torch.float32)
    assert rebuilt is not None and _shape(rebuilt) == _shape(built)
    assert skeleton.read(folder, config, torch.bfloat16) is None  # another dtype: built as before
    if arch == "llama":
        other = AutoConfig.from_pretrained(folder)
        other.num_hidden_layers = 1
        assert skeleton.read(folder, other, torch.float32) is None
        (folder / skeleton.FILE).write_text('{"key": "' + skeleton._key(config, torch.float32, None) + '", "modules": [[1')
        assert skeleton.read(folder, config, torch.float32) is None


def test_a_tampered_skeleton_record_is_not_trusted(tmp_path):
    """A record whose module tree was edited and whose key was kept (as a patch release renaming a module would
    leave it under a key of major.minor versions): `--check` builds the skeleton instead, so it refuses what the
    run would refuse rather than promising it."""
    from collapse.models.scratch import SHIPPED

    folder = tmp_path / "gen0"
    shutil.copytree(SHIPPED, folder)
    rec = json.loads((folder / "skeleton.json").read_text())
    for m in rec["modules"]:
        m[0] = m[0].replace("attn.c_attn", "attn.c_attnX")
    (folder / "skeleton.json").write_text(json.dumps(rec))
    args = ["run", "--check", f"model.name_or_path={folder}", f"out_dir={tmp_path / 'out'}"]
    r = run_cli(*args, "train.lora.target_modules=[c_attnX]")
    assert r.returncode == 2 and "c_attnX" in r.stderr and "do not exist" in r.stderr, r.stdout + r.stderr
    assert run_cli(*args, "train.lora.target_modules=[c_attn]").returncode == 0  # the real tree, built
