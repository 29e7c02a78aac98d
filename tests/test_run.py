"""`collapse run` end to end on a tiny model (2 generations), plus the loop's building blocks."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_RUN, run_cli
from safetensors.torch import load_file

from collapse import metrics as M
from collapse.config import load_config
from collapse.data import flat_ids, load_splits, tokenize
from collapse.io import read_id_column
from collapse.loop.regimes import regime_training_set

KEYS = {"generation", "test_ppl", "tail_loss", "bucket_shift", "kl_ref_gen", "js", "entropy", "coverage", "tail_mass",
        "gen0_ppl_mean", "distinct_1", "distinct_2", "gen0_ppl_hist"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    wdir = out.parent
    # no W&B setting and no login (no key, no netrc, no WANDB_MODE): wandb.mode=auto logs offline
    args = [a for a in TINY_RUN if not a.startswith("wandb.mode=")]
    r = run_cli("run", *args, f"out_dir={out}", "wandb.group=g1", "wandb.tags=[t1,t2]",
                env={"WANDB_DIR": str(wdir), "WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": str(wdir / "no-netrc"),
                     "WANDB_X_STATS_SAMPLING_INTERVAL": "0.5"})  # system metrics on, sampled often enough to see
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_run_folder_and_metric_keys(tiny_run):
    out, r = tiny_run
    for f in ("config.yaml", "manifest.json", "metrics.jsonl", "reference_counts.npy"):
        assert (out / f).is_file(), f
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True
    for g in range(3):
        d = out / f"gen_{g:03d}"
        assert (d / "samples.parquet").is_file() and (d / "metrics.json").is_file()
        stages = manifest["generations"][str(g)]
        assert all(stages[s] for s in ("evaluate", "generate", "measure"))
        assert stages.get("train", False) == (g > 0)
    assert (out / "gen_001" / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert KEYS <= set(row), KEYS - set(row)
        assert set(row["tail_loss"]) == set(M.BUCKETS) and set(row["bucket_shift"]) == set(M.BUCKETS)
        assert row["test_ppl"] > 1 and row["gen0_ppl_mean"] > 1
    assert "gen" in r.stderr and "test ppl" in r.stderr  # the metrics table is printed


def test_intervals_and_paired_changes_in_every_row(tiny_run):
    """Every generation's row holds intervals over samples and test blocks and (g >= 1) paired changes whose
    delta is the difference of the two rows' values; the test-perplexity interval recomputed from
    eval_blocks.npz with the documented resamples; the console prints the change table."""
    from collapse.metrics import stats as S
    from collapse.seeding import numpy_rng

    out, r = tiny_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = load_config(out / "config.yaml")
    for row in rows:
        g = row["generation"]
        iv = row["intervals"]
        assert iv["resamples"] == 1000 and iv["units"]["samples"] == cfg.generation.num_sequences
        assert iv["units"]["test_blocks"] == 32
        for k in ("test_ppl", "entropy", "coverage", "kl_ref_gen", "gen0_ppl_mean"):
            lo, hi = row[f"{k}_ci"]
            assert lo < hi, k
        assert set(row["bucket_shift_ci"]) == set(M.BUCKETS) and set(row["tail_loss_ci"]) == set(M.BUCKETS)
        assert (out / f"gen_{g:03d}" / "bootstrap.npz").is_file() and (out / f"gen_{g:03d}" / "eval_blocks.npz").is_file()
        with np.load(out / f"gen_{g:03d}" / "eval_blocks.npz") as z:
            sums, counts = z["sums"], z["counts"]
        assert sums.sum() / counts.sum() == pytest.approx(row["test_nll"], rel=1e-12)
        w = numpy_rng(cfg.seed, "bootstrap", "test blocks").multinomial(len(sums), np.full(len(sums), 1 / len(sums)),
                                                                      size=1000)
        want = np.quantile(np.exp((w @ sums.sum(1)) / (w @ counts.sum(1))), [0.025, 0.975])
        assert row["test_ppl_ci"] == pytest.approx(want, rel=1e-12)
        if g == 0:
            assert row["changes"] == {}
            continue
        for since, k in (("from_gen0", 0), ("from_previous", g - 1)):
            ch = row["changes"][since]
            base = S.flat_point(rows[k], M.BUCKETS)
            now = S.flat_point(row, M.BUCKETS)
            for name in ("test_ppl", "entropy", "tail_loss.1-10", "bucket_shift.1-10"):
                assert ch[name]["delta"] == pytest.approx(now[name] - base[name], rel=1e-12, abs=1e-12)
                lo, hi = ch[name]["ci95"]
                assert ch[name]["resolved"] == (lo > 0 or hi < 0)
        # the same test blocks every generation: the change's interval is narrower than the value's
        c = row["changes"]["from_gen0"]["test_ppl"]["ci95"]
        assert c[1] - c[0] < row["test_ppl_ci"][1] - row["test_ppl_ci"][0]
    assert "change from generation 0" in r.stderr and "±" in r.stderr


def test_a_run_from_before_intervals_gets_them_on_resume(tiny_run, tmp_path):
    """A finished run whose rows lack intervals (an older collapse): rerunning the same command evaluates
    and measures again where the weights are at hand, and adds exactly the intervals a new run has."""
    import shutil

    src, _ = tiny_run
    out = tmp_path / "old"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("wandb", "report", ".lock"))
    before = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for g in range(3):
        d = out / f"gen_{g:03d}"
        row = json.loads((d / "metrics.json").read_text())
        row = {k: v for k, v in row.items() if not k.endswith("_ci") and k not in ("changes", "intervals")}
        (d / "metrics.json").write_text(json.dumps(row))
        (d / "bootstrap.npz").unlink()
        (d / "eval_blocks.npz").unlink()
    m = json.loads((out / "manifest.json").read_text())
    m.pop("checksums")  # an older collapse recorded none either
    (out / "manifest.json").write_text(json.dumps(m))
    r = run_cli("run", *TINY_RUN, f"out_dir={out}", env={"COLLAPSE_SKIP_REPORT": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "older collapse" in r.stderr
    assert not re.search(r"gen \d+: train", r.stderr), "nothing is retrained for an interval"
    assert re.search(r"gen 2: evaluate", r.stderr)
    after = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(before, after):
        assert a == b  # the same values and intervals as the run that had them from the start


def test_samples_have_the_configured_shape(tiny_run):
    out, _ = tiny_run
    cfg = load_config(out / "config.yaml")
    for g in range(3):
        t = pq.read_table(out / f"gen_{g:03d}" / "samples.parquet")
        assert {"sample_index", "prompt_ids", "token_ids", "text"} <= set(t.column_names)
        gen = read_id_column(out / f"gen_{g:03d}" / "samples.parquet", "token_ids")
        assert gen.shape == (cfg.generation.num_sequences, cfg.generation.new_tokens)
        assert t.column("sample_index").to_pylist() == list(range(cfg.generation.num_sequences))
    # the same prompts every generation, so samples can be compared prompt by prompt
    p0 = read_id_column(out / "gen_000" / "samples.parquet", "prompt_ids")
    p2 = read_id_column(out / "gen_002" / "samples.parquet", "prompt_ids")
    assert np.array_equal(p0, p2)


def test_bucket_shift_recomputed_from_samples(tiny_run):
    """metrics.jsonl's bucket_shift equals the one recomputed from samples.parquet vs the real training counts."""
    from transformers import AutoTokenizer

    out, _ = tiny_run
    cfg = load_config(out / "config.yaml")
    manifest = json.loads((out / "manifest.json").read_text())
    tok = AutoTokenizer.from_pretrained(manifest["base_model"])
    splits = load_splits(cfg.data)
    ref = M.counts(flat_ids(tokenize(tok, splits.train)), len(tok))
    stored = np.load(out / "reference_counts.npy", allow_pickle=False)
    assert np.array_equal(ref, stored[: len(ref)]) and stored[len(ref):].sum() == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        gen = read_id_column(out / f"gen_{row['generation']:03d}" / "samples.parquet", "token_ids")
        bs = M.bucket_shift(ref, M.counts(gen, len(ref)))
        for b in M.BUCKETS:
            want = bs[b]["shift_pct"]
            got = row["bucket_shift"][b]
            assert (want is None and got is None) or got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_lora_weights_trained_and_differ_between_generations(tiny_run):
    out, _ = tiny_run
    a1 = load_file(out / "gen_001" / "adapter" / "adapter_model.safetensors")
    a2 = load_file(out / "gen_002" / "adapter" / "adapter_model.safetensors")
    b_keys = [k for k in a1 if "lora_B" in k]
    assert b_keys, list(a1)
    # lora_B starts at zero: non-zero means training moved it
    assert all(a1[k].abs().max() > 0 for k in b_keys)
    assert all(a2[k].abs().max() > 0 for k in b_keys)
    assert any(not torch.equal(a1[k], a2[k]) for k in a1)


def _wandb_file(out):
    from wandb_offline import describe, find_run_files, wait_until_finished

    files = find_run_files(out)  # W&B files live in the run folder (out_dir/wandb)
    assert len(files) == 1, files  # exactly one W&B run for one `collapse run`
    assert wait_until_finished(files[0]), describe(files[0])
    return files[0]


def _rows(out):
    return {json.loads(line)["generation"]: json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()}


def test_wandb_offline_run_logged_per_generation(tiny_run):
    from wandb_offline import read_config, read_history, read_metric_axes, read_run_info

    out, r = tiny_run
    f = _wandb_file(out)
    hist = read_history(f)
    assert sorted(h["generation"] for h in hist if "test_ppl" in h) == [0, 1, 2]
    rows = _rows(out)
    for h in hist:
        if "test_ppl" not in h:
            continue
        g = h["generation"]
        assert h["test_ppl"] == pytest.approx(rows[g]["test_ppl"])
        assert h["tail_loss/1-10"] == pytest.approx(rows[g]["tail_loss"]["1-10"])
        assert h["bucket_shift/11-100"] == pytest.approx(rows[g]["bucket_shift"]["11-100"])
        assert h["gen0_ppl_hist"]["_type"] == "histogram"
    steps = [h["_step"] for h in hist]
    assert steps == sorted(set(steps)), steps  # one row per W&B step, in order
    axes = read_metric_axes(f)  # per-generation series against `generation`, training curves against train/step
    assert axes["test_ppl"] == axes["tail_loss/1-10"] == axes["bucket_shift/1-10"] == "generation"
    assert axes["train/loss"] == axes["train/lr"] == axes["train/grad_norm"] == axes["val/nll"] == "train/step"
    assert read_config(f)["seed"] == 0
    info = read_run_info(f)
    assert info["group"] == "g1" and sorted(info["tags"]) == ["t1", "t2"]
    assert info["job_type"] == "recursion"  # a view can filter out the short lineage runs
    # the last line: how to upload it (--id: a resumed run's segments append in order)
    assert f"wandb sync --id {info['run_id']} {f.parent}" in r.stderr.splitlines()[-1]
    pre = next(h for h in hist if h.get("generation") == 0 and "test_ppl" in h)["charts/pretrain_table"]
    assert pre["_type"] == "table-file" and pre["nrows"] >= 2  # generation 0's pre-training curve (scratch.json)


def test_wandb_series_a_researcher_groups_and_plots(tiny_run):
    """The tail loss as ordinary series named in rank order against `generation`; the samples table, one table over
    the generations with each sample's gen-0 perplexity; system metrics recorded."""
    from wandb_offline import iter_records, read_history, read_metric_axes

    out, _ = tiny_run
    f = _wandb_file(out)
    rows, hist = _rows(out), [h for h in read_history(f) if "test_ppl" in h]
    axes = read_metric_axes(f)
    for h in hist:
        g = h["generation"]
        ranked = sorted(k for k in h if k.startswith("tail_loss_rank/"))
        present = [b for b, v in rows[g]["tail_loss"].items() if v is not None]
        assert [k.split("_", 3)[-1] for k in ranked] == present  # sorted as text = sorted by rank
        assert all(h[k] == pytest.approx(rows[g]["tail_loss"][k.split("_", 3)[-1]]) for k in ranked)
        assert all(axes[k] == "generation" for k in ranked)
    files = f.parent / "files"
    seen = []
    for h in hist:
        t = h["samples"]
        assert "incremental" in t["_type"]
        table = json.loads((files / t["path"]).read_text())
        assert table["columns"] == ["generation", "sample_index", "gen0_ppl", "text"]
        for gen, idx, ppl, _ in table["data"]:
            assert ppl == pytest.approx(float(np.load(out / f"gen_{gen:03d}" / "gen0_ppl.npy")[idx]), rel=1e-6)
            seen.append(gen)
    assert sorted(set(seen)) == [0, 1, 2] and len(seen) == 3 * 8  # each generation's rows sent once
    assert any(rec.WhichOneof("record_type") == "stats" for rec in iter_records(f))


def test_wandb_training_curves_continue_across_generations(tiny_run):
    from wandb_offline import read_history

    out, _ = tiny_run
    hist = read_history(_wandb_file(out))
    train = {g: json.loads((out / f"gen_{g:03d}" / "train.json").read_text()) for g in (1, 2)}
    points = [h for h in hist if "train/loss" in h]
    assert [h["train/step"] for h in points] == list(range(1, train[1]["steps"] + train[2]["steps"] + 1))
    for g in (1, 2):
        mine = [h for h in points if h["train/generation"] == g]
        assert len(mine) == train[g]["steps"] == len(train[g]["curve"]) > 4  # every step (wandb.log_every=1)
        assert [h["train/loss"] for h in mine] == [c["loss"] for c in train[g]["curve"]]  # the same numbers
        assert [h["train/lr"] for h in mine] == [c["lr"] for c in train[g]["curve"]]
        assert all(h["train/grad_norm"] > 0 and h["train/tokens_per_s"] > 0 for h in mine)
        val = [h for h in hist if "val/nll" in h and h["train/generation"] == g]
        assert [h["val/nll"] for h in val] == [e["val_nll"] for e in train[g]["history"]]  # one per epoch
    loss = [c["loss"] for c in train[1]["curve"]]
    assert min(loss) < loss[0]  # a curve, not a constant


def test_wandb_artifacts_carry_the_lineage(tiny_run):
    from wandb_offline import read_artifacts, read_run_info

    out, _ = tiny_run
    f = _wandb_file(out)
    rid = read_run_info(f)["run_id"]
    ours = [a for a in read_artifacts(f) if a["type"] not in ("run_table", "wandb-run-incremental-table")]  # not W&B's tables
    arts = {a["name"]: a for a in ours}
    want = {f"{rid}-{w}-g{g}" for w in ("model", "corpus") for g in range(3)} | {f"{rid}-report"}
    assert set(arts) == want and len(ours) == len(want)
    for g in range(3):
        c = arts[f"{rid}-corpus-g{g}"]
        assert c["type"] == "dataset" and c["metadata"]["made_from"]["model"] == f"{rid}-model-g{g}"
        assert c["files"]["samples.parquet"] == (out / f"gen_{g:03d}" / "samples.parquet").stat().st_size
        m = arts[f"{rid}-model-g{g}"]
        assert m["type"] == "model" and m["metadata"]["generation"] == g
        if g == 0:  # the shipped base model: named, not uploaded
            assert m["metadata"]["made_from"]["base_model"] and set(m["files"]) == {"made_from.json"}
        else:
            assert m["metadata"]["made_from"]["corpora"] == [f"{rid}-corpus-g{g - 1}"]
            assert m["metadata"]["made_from"]["starting_weights"] == f"{rid}-model-g0"
            adapter = out / f"gen_{g:03d}" / "adapter" / "adapter_model.safetensors"
            if adapter.is_file():  # keep_checkpoints may prune it after the run; the artifact keeps it
                assert m["files"]["adapter_model.safetensors"] == adapter.stat().st_size
            assert "adapter_model.safetensors" in m["files"]
    report = arts[f"{rid}-report"]
    assert report["files"]["report.html"] == (out / "report" / "report.html").stat().st_size


def test_wandb_charts_one_per_question(tiny_run):
    from wandb_offline import read_history

    out, _ = tiny_run
    f = _wandb_file(out)
    files = f.parent / "files"
    rows = _rows(out)
    for h in (h for h in read_history(f) if "test_ppl" in h):
        g = h["generation"]
        for key in ("charts/bucket_shift_heatmap", "charts/test_ppl"):  # images per generation
            assert h[key]["_type"] == "image-file" and (files / h[key]["path"]).stat().st_size > 1000
        table = json.loads((files / h["charts/tail_loss_table"]["path"]).read_text())  # all buckets, one chart
        lines = {}
        for row in table["data"]:
            rec = dict(zip(table["columns"], row))
            lines.setdefault(rec["lineKey"], []).append((rec["step"], rec["lineVal"]))
        buckets = [b for b, v in rows[g]["tail_loss"].items() if v is not None]
        assert sorted(lines) == sorted(buckets) and len(buckets) >= 3
        for b in buckets:
            assert lines[b] == [(k, pytest.approx(rows[k]["tail_loss"][b])) for k in range(g + 1)]


def test_wandb_images_thin_out_over_long_runs():
    from collapse.tracking.run import image_generations

    for G in range(0, 6):  # up to 5 generations (the default run): every one
        assert image_generations(G) == list(range(G + 1))
    for G in (6, 11, 19, 20, 37, 100, 1000):
        gens = image_generations(G)
        steps = np.diff(gens)
        assert gens[0] == 0 and gens[-1] == G and len(gens) <= 6  # the last image holds the whole run
        assert len(set(steps[:-1])) <= 1 and 0 < steps[-1] <= steps[0]  # evenly spaced, then the last


# ---------------------------------------------------------------------- regimes


def _samples(n: int, g: int, length: int = 4) -> np.ndarray:
    return np.full((n, length), 100 + g, dtype=np.int32)


@pytest.mark.parametrize("kind", ["replace", "mix", "accumulate", "accumulate_subsample"])
def test_regime_sizes_and_sources(kind):
    real = np.arange(40, dtype=np.int32).reshape(10, 4)
    samples = [_samples(20, 0), _samples(20, 1), _samples(20, 2)]
    rows, src = regime_training_set(kind, real_blocks=real, samples=samples, real_fraction=0.1, size=25,
                                    rng=np.random.default_rng(0))
    assert len(rows) == len(src)
    if kind == "replace":
        assert len(rows) == 20 and set(src) == {2} and (rows == 102).all()
    elif kind == "mix":
        assert len(rows) == 20 and (src == -1).sum() == 2 and (src == 2).sum() == 18
        assert all(r.tolist() in real.tolist() for r in rows[src == -1])  # real rows are real blocks
        assert (rows[src == 2] == 102).all()
    elif kind == "accumulate":
        assert len(rows) == 10 + 60 and (src == -1).sum() == 10
        assert [(src == g).sum() for g in range(3)] == [20, 20, 20]
    else:
        assert len(rows) == 25 and set(np.unique(src)) <= {-1, 0, 1, 2}
    # the source label matches the row content
    for r, s in zip(rows, src):
        if s >= 0:
            assert (r == 100 + s).all()


def test_mix_draws_fresh_real_rows_each_generation():
    real = np.arange(400, dtype=np.int32).reshape(100, 4)
    a, sa = regime_training_set("mix", real_blocks=real, samples=[_samples(50, 0)], real_fraction=0.2, size=None,
                                rng=np.random.default_rng(1))
    b, sb = regime_training_set("mix", real_blocks=real, samples=[_samples(50, 0), _samples(50, 1)],
                                real_fraction=0.2, size=None, rng=np.random.default_rng(2))
    assert (sa == -1).sum() == 10 and (sb == -1).sum() == 10
    assert not np.array_equal(a[sa == -1], b[sb == -1])


# ---------------------------------------------------------------------- init and selection


def _tiny_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


def test_init_base_vs_previous_start_weights():
    from collapse.config import LoraConfig
    from collapse.models.hf import attach_lora
    from collapse.models.transformer import starting_model

    base = _tiny_model()
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    prev = attach_lora(starting_model("base", base, None), LoraConfig(r=4))
    with torch.no_grad():
        for n, p in prev.named_parameters():
            if "lora_B" in n:
                p.normal_()
    merged_ref = {k: v.clone() for k, v in
                  starting_model("previous", base, prev).state_dict().items()}

    start_base = starting_model("base", base, prev)
    assert all(torch.equal(start_base.state_dict()[k], v) for k, v in base_sd.items())
    start_prev = starting_model("previous", base, prev)
    sd = start_prev.state_dict()
    assert set(sd) == set(base_sd)  # a plain model again: the adapter was merged
    assert any(not torch.equal(sd[k], base_sd[k]) for k in base_sd if "attn" in k)
    assert all(torch.equal(sd[k], merged_ref[k]) for k in sd)
    # neither call changed the base or the previous model
    assert all(torch.equal(base.state_dict()[k], v) for k, v in base_sd.items())
    assert any("lora_B" in n for n, _ in prev.named_parameters())


@pytest.mark.parametrize("select,expected_epoch", [("best_val", 2), ("last", 3)])
def test_best_val_keeps_lowest_validation_epoch(monkeypatch, select, expected_epoch):
    import collapse.models.train as T
    from collapse.config import TrainConfig
    from collapse.runtime import make_accelerator

    model = _tiny_model()
    snapshots = []
    scripted = iter([3.0, 1.0, 2.0])

    def fake_val(m, blocks, batch_size=64, accelerator=None):
        snapshots.append({n: p.detach().clone() for n, p in m.named_parameters()})
        return next(scripted)

    monkeypatch.setattr(T, "mean_nll", fake_val)
    rows = np.random.default_rng(0).integers(1, 64, size=(32, 8)).astype(np.int32)
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=8, select=select)
    stats = T.finetune(model, rows, rows[:4], cfg, make_accelerator("no"), key=(0, 1, "train"), show_progress=False)
    assert stats["epoch_selected"] == expected_epoch
    assert len(snapshots) == 3 and not torch.equal(snapshots[0]["transformer.h.0.mlp.c_fc.weight"],
                                                  snapshots[2]["transformer.h.0.mlp.c_fc.weight"])
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshots[expected_epoch - 1][n]), n


def test_a_model_trained_under_bf16_autocast_is_evaluated_in_its_own_float32():
    """train.mixed_precision=bf16 on a CPU: the returned model computes in float32 (as generation 0 does), not under
    the autocast hook accelerate's prepare put on its forward."""
    import copy

    import collapse.models.train as T
    from collapse.config import TrainConfig
    from collapse.runtime import make_accelerator

    model = _tiny_model()
    rows = np.random.default_rng(0).integers(1, 64, size=(16, 8)).astype(np.int32)
    try:
        T.finetune(model, rows, rows[:4], TrainConfig(epochs=1, lr=1e-2, batch_size=8), make_accelerator("bf16"),
                   key=(0, 1, "train"), show_progress=False)
    finally:
        make_accelerator("no")  # the process's accelerator state back to float32 for the tests after this one
    plain = copy.deepcopy(model)
    plain.forward = type(plain).forward.__get__(plain)  # the class's forward: no hook whatever the copy carried
    x = torch.as_tensor(rows[:4], dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, plain(input_ids=x).logits)


# ---------------------------------------------------------------------- failures


def test_nan_loss_is_one_clear_error_and_keeps_finished_generations(tmp_path):
    out = tmp_path / "out"
    r = run_cli("run", *TINY_RUN, f"out_dir={out}", env={"COLLAPSE_FAULT": "nan:2:0"})
    assert r.returncode == 2, r.stderr[-2000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "nan" in err[0].lower() and "train.lr" in err[0]
    assert "Traceback" not in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False
    assert all(manifest["generations"]["1"][s] for s in ("train", "evaluate", "generate", "measure"))
    assert not manifest["generations"].get("2", {}).get("train")
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["generation"] for x in rows] == [0, 1]
    assert (out / "gen_001" / "samples.parquet").is_file()


def test_init_previous_runs_and_saves_merged_models(tmp_path):
    out = tmp_path / "out"
    r = run_cli("run", *TINY_RUN, f"out_dir={out}", "train.init=previous", "train.epochs=1")
    assert r.returncode == 0, r.stderr[-2000:]
    for g in (1, 2):
        assert (out / f"gen_{g:03d}" / "model" / "model.safetensors").is_file()
    m1 = load_file(out / "gen_001" / "model" / "model.safetensors")
    m2 = load_file(out / "gen_002" / "model" / "model.safetensors")
    assert any(not torch.equal(m1[k], m2[k]) for k in m1)


def test_env_secrets_are_not_in_logs_or_run_folder_smoke(tiny_run):
    # the full secret test lives with the crash-proofing tests; here: the config holds no secret keys
    out, _ = tiny_run
    text = (out / "config.yaml").read_text().lower()
    assert "api_key" not in text and "token:" not in text
    assert os.environ.get("WANDB_API_KEY", "") == "" or os.environ["WANDB_API_KEY"] not in text
