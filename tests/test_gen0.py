"""Generation 0: the convergence rule of the scratch build, the build through an Accelerator (the device-agnostic
path a GPU takes, here on the CPU), and the shipped generation 0 of the embedded default (its hash, that the
default loads it, that its recorded validation perplexity and curve are what the files give)."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import REPO, TINY

from collapse.config import ScratchConfig, load_config
from collapse.models.scratch import SHIPPED, SHIPPED_INFO, Convergence, file_sha256, scratch_folder, scratch_key


def _plateau_curve(plateau: int) -> list[tuple[int, float]]:
    """A loss that falls fast, sits on a plateau of ``plateau`` steps, falls again to 3.6, then flattens."""
    out = []
    for s in range(0, 12001, 100):
        if s <= 300:
            v = 8.0 - 2.5 * s / 300
        elif s <= 300 + plateau:
            v = 5.5 - 0.0001 * (s - 300) / 100  # flat (noise-sized gains)
        else:
            t = s - 300 - plateau
            v = 3.6 + 1.9 * math.exp(-t / 800)
        out.append((s, v))
    return out


def _stop_step(rule: Convergence, curve) -> int | None:
    for s, v in curve:
        if rule.update(s, v):
            return s
    return None


def test_the_rule_sees_past_a_plateau_shorter_than_its_patience():
    curve = _plateau_curve(plateau=300)  # the length of the early plateau seen at 300 steps
    stop = _stop_step(Convergence(patience=ScratchConfig().patience, min_delta=0.01), curve)
    assert stop is not None and stop > 300 + 300 + 2500, stop  # after the second descent has flattened
    final = dict(curve)[stop]
    assert final < 3.7
    # a window shorter than the plateau stops on it: the reason patience must be longer
    early = _stop_step(Convergence(patience=200, min_delta=0.01), curve)
    assert early is not None and early <= 600


def test_at_the_stop_the_last_tenth_improved_by_under_min_delta():
    curve = _plateau_curve(plateau=600)
    rule = Convergence(patience=1000, min_delta=0.01)
    stop = _stop_step(rule, curve)
    assert rule.window(stop) >= 0.1 * stop and rule.window(20000) == 2000
    at = dict(curve)
    before = min(v for s, v in curve if s <= stop - math.ceil(0.1 * stop))
    assert (before - at[stop]) / before < 0.01


def test_the_schedule_cools_down_at_the_first_plateau_and_stops_at_the_second():
    from collapse.models.scratch import ConvergedSchedule

    sched = ConvergedSchedule(3e-3, 100, Convergence(patience=500, min_delta=0.01))
    assert sched.lr(0) == pytest.approx(3e-5) and sched.lr(99) == 3e-3 and sched.lr(5000) == 3e-3

    def loss(s):  # flat at 4.0 from step 2000 at the peak rate; the cooldown lowers it to 3.6, flat after
        if sched.cooldown is None or s <= sched.cooldown[0]:
            return max(4.0, 6.0 - s / 1000)
        return 4.0 - 0.4 * min(1.0, (s - sched.cooldown[0]) / sched.cooldown[1])

    stop = None
    for s in range(0, 20001, 100):
        if sched.update(s, loss(s)):
            stop = s
            break
    s0, n = sched.cooldown
    assert 2000 < s0 <= 2600 and n == max(500, math.ceil(0.2 * s0))
    assert sched.lr(s0 + n // 2) == pytest.approx(3e-3 * 0.55, rel=0.01) and sched.lr(s0 + n) == pytest.approx(3e-4)
    assert stop is not None and stop >= s0 + n + 500  # a whole window at the annealed rate, flat


def test_a_loss_still_falling_never_stops():
    rule = Convergence(patience=500, min_delta=0.01)
    assert _stop_step(rule, [(s, 6.0 * 0.9999 ** s) for s in range(0, 8001, 100)]) is None


def test_pretrain_until_converged_stops_early_and_keeps_the_best_weights():
    from collapse.metrics.evaluate import mean_nll
    from collapse.models.scratch import build_scratch_model, pretrain

    rng = np.random.default_rng(0)
    blocks = rng.integers(1, 60, size=(64, 16))  # noise: the loss flattens fast
    sc = ScratchConfig(vocab_size=300, n_layer=1, d_model=16, n_head=2, context=32, block_size=16, steps=400,
                       eval_every=5, patience=20, min_delta=0.05, batch_size=8, lr=3e-3)
    torch.manual_seed(0)
    model = build_scratch_model(sc, 64, 0)
    out = pretrain(model, blocks, blocks[:16], sc, show_progress=False)
    assert out["converged"] and out["steps"] < 400
    curve = out["curve"]
    assert [c["step"] for c in curve] == list(range(0, out["steps"] + 1, 5))
    best = min(curve, key=lambda c: c["val_nll"])
    assert out["best_step"] == best["step"] and out["val_nll"] == pytest.approx(best["val_nll"], abs=1e-6)
    assert mean_nll(model, blocks[:16]) == pytest.approx(best["val_nll"], abs=1e-5)  # the best weights are back


def test_the_build_through_an_accelerator_is_the_plain_build(tmp_path):
    """The path a GPU takes (model and batches on the accelerator's device, its backward, clipping and
    autocast), run on the CPU: the same weights as the plain CPU build."""
    from accelerate import Accelerator

    from collapse.data import load_splits
    from collapse.models.scratch import build

    cfg = load_config(None, TINY + ["model.scratch.steps=12", "model.scratch.eval_every=4", "data.max_documents=40"])
    splits = load_splits(cfg.data)
    a = build(cfg.model.scratch, splits, tmp_path / "plain", show_progress=False)
    b = build(cfg.model.scratch, splits, tmp_path / "acc", show_progress=False, accelerator=Accelerator(cpu=True))
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ia, ib = (json.loads((f / "scratch.json").read_text()) for f in (a, b))
    assert ia["curve"] == ib["curve"] and len(ia["curve"]) == 4  # steps 0, 4, 8, 12


# ---------------------------------------------------------------------- the shipped generation 0


@pytest.fixture(scope="module")
def shipped():
    if not (SHIPPED / SHIPPED_INFO).is_file():
        pytest.fail(f"{SHIPPED} is missing: the package ships the default's generation 0 (scripts/build_gen0.py)")
    return json.loads((SHIPPED / SHIPPED_INFO).read_text()), json.loads((SHIPPED / "scratch.json").read_text())


def test_the_shipped_weights_are_the_recorded_ones(shipped):
    info, _ = shipped
    w = SHIPPED / "model.safetensors"
    assert w.stat().st_size > 1_000_000  # not a Git LFS pointer
    assert file_sha256(w) == info["weights_sha256"]


def test_the_default_run_and_measure_load_the_shipped_generation_0(shipped):
    from collapse.data import load_splits

    info, recipe = shipped
    for config in ("configs/tiny.yaml", "configs/measure/tiny.yaml", None):
        cfg = load_config(REPO / config if config else None)
        assert cfg.model.name_or_path == "scratch" and cfg.model.scratch == ScratchConfig()
        splits = load_splits(cfg.data)
        assert scratch_key(cfg.model.scratch, splits.fingerprint()) == info["key"]
        assert scratch_folder(cfg.model.scratch, splits) == SHIPPED
    assert recipe["scratch"] == json.loads(json.dumps(ScratchConfig().__dict__))


def test_the_shipped_validation_perplexity_is_what_its_files_give(shipped):
    """Recomputed from the shipped weights, tokenizer and token ids: the figure gen0.json and the README quote."""
    from collapse.config import ModelConfig
    from collapse.data import concat_blocks, load_splits, split_ids
    from collapse.metrics.evaluate import mean_nll
    from collapse.models.hf import load_pretrained
    from collapse.models.scratch import TOKENS_FILE

    info, recipe = shipped
    model, tok = load_pretrained(str(SHIPPED), ModelConfig(), torch.device("cpu"))
    splits = load_splits(load_config(None).data)
    ids = split_ids(tok, splits, SHIPPED / TOKENS_FILE)
    few = splits.validation[:3]
    assert [list(x) for x in ids["validation"][:3]] == [tok(d, add_special_tokens=False)["input_ids"] for d in few]
    val = concat_blocks(ids["validation"], recipe["scratch"]["block_size"], tok.eos_token_id)
    nll = mean_nll(model, val)
    assert math.exp(nll) == pytest.approx(info["val_ppl"], rel=1e-4)


def test_the_shipped_curve_shows_convergence(shipped):
    info, recipe = shipped
    curve = recipe["curve"]
    assert info["converged"] is True and recipe["converged"] is True
    end = curve[-1]["step"]
    before = min(c["val_nll"] for c in curve if c["step"] <= 0.9 * end)
    best = min(c["val_nll"] for c in curve)
    assert (before - best) / before < 0.01  # the last 10% of training improved validation loss by under 1%
    assert best == pytest.approx(info["val_nll"], abs=1e-6)


def test_a_damaged_or_missing_shipped_model_is_built_instead(shipped, tmp_path, monkeypatch, caplog):
    import collapse.models.scratch as scratch
    from collapse.data import load_splits

    info, _ = shipped
    copy = tmp_path / "gen0"
    shutil.copytree(SHIPPED, copy)
    raw = bytearray((copy / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(raw))
    monkeypatch.setattr(scratch, "SHIPPED", copy)
    caplog.set_level(logging.WARNING, logger="collapse")
    logging.getLogger("collapse").propagate = True
    try:
        assert scratch.shipped_folder(info["key"]) is None
        assert "damaged" in caplog.text
        shutil.rmtree(copy)
        assert scratch.shipped_folder(info["key"]) is None
        caplog.clear()
        where = scratch_folder(ScratchConfig(), load_splits(load_config(None).data))
        assert where.name == info["key"] and where != copy and "not installed" in caplog.text
    finally:
        logging.getLogger("collapse").propagate = False
