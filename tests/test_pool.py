"""The curate pool (collapse.loop.pool): real rows of unknown origin mixed into the samples, oversampling; and the
checks that the pipeline does what the remedy papers' settings say, each against an independent computation:
the trainer gets exactly the curated multiset, the detector up-weights what it takes for human, `perplexity` scores
with the model its settings name, generation 0's perplexities are what a plain forward pass gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, TINY_RUN, in_process_runs, run_cli

from collapse.config import load_config
from collapse.errors import ConfigError
from collapse.loop.curate import CURATORS, Batch, curator, resolved
from collapse.loop.pool import build_pool, disjoint_rows, eligible_blocks, pool_rows, pool_size, real_count

ENV = {"OMP_NUM_THREADS": "1", "COLLAPSE_SKIP_REPORT": "1"}
EOS = 0


# ---------------------------------------------------------------------- the pool, pure


def test_the_pool_mixes_in_real_rows_at_the_share_asked_and_hides_where_they_are():
    rng = np.random.default_rng(0)
    samples = rng.integers(1, 50, size=(40, 8))  # prompt 4 + continuation 4
    blocks = rng.integers(1, 50, size=(200, 8))
    blocks[::2, 5] = EOS  # every other block has an EOS in its continuation: never in a pool
    real_rows = blocks.reshape(-1, 4)  # the same text cut in rows of 4: rows 2i and 2i+1 are block i
    pool = build_pool(samples, blocks, real_rows, 0.5, 4, (EOS,), np.random.default_rng(1))
    assert len(pool.full) == 80 == pool_size(40, 0.5) and real_count(40, 0.5) == 40
    real = pool.real_block >= 0
    assert real.sum() == 40 and (pool.sample_index[real] == -1).all() and (pool.real_block[~real] == -1).all()
    assert sorted(pool.sample_index[~real]) == list(range(40))  # every sample once
    assert (pool.real_block[real] % 2 == 1).all()  # only EOS-free continuations
    assert (pool.full[real] == blocks[pool.real_block[real]]).all() and (pool.full[~real] == samples[pool.sample_index[~real]]).all()
    assert 0.2 < real[:40].mean() < 0.8  # shuffled: the first half is not the samples
    used = set(pool.real_block[real])  # the detector's real rows share no text with the pool's
    assert len(pool.human_rows) == len(real_rows) - 2 * len(used)
    assert not any((pool.human_rows == blocks[b, :4]).all(axis=1).any() for b in used)


def test_a_pool_of_the_samples_alone_is_the_samples_in_order_and_draws_nothing():
    samples = np.arange(24).reshape(6, 4)
    pool = build_pool(samples, None, samples, 0.0, 2, (EOS,), None)
    assert pool.full is samples and list(pool.sample_index) == list(range(6)) and not pool.mixed
    assert (pool_rows(samples[:, 2:], pool.sample_index, None, None, 2, False) == samples[:, 2:]).all()


def test_a_pool_never_draws_a_block_a_samples_prompt_comes_from():
    rng = np.random.default_rng(0)
    blocks = rng.integers(1, 50, size=(30, 8))
    prompts = np.arange(0, 30, 2)  # the even blocks gave the samples their prompts
    assert list(eligible_blocks(blocks, 4, (EOS,), prompts)) == list(range(1, 30, 2))
    pool = build_pool(rng.integers(1, 50, size=(15, 8)), blocks, blocks.reshape(-1, 4), 0.5, 4, (EOS,),
                      np.random.default_rng(1), prompts)
    assert sorted(pool.real_block[pool.real_block >= 0]) == list(range(1, 30, 2))
    with pytest.raises(ValueError, match="eligible"):
        build_pool(rng.integers(1, 50, size=(20, 8)), blocks, blocks.reshape(-1, 4), 0.5, 4, (EOS,),
                   np.random.default_rng(1), prompts)


def test_disjoint_rows_drops_exactly_the_overlapping_rows():
    rows = np.arange(30).reshape(10, 3)  # rows of 3 tokens; blocks of 4: block 1 = tokens 4..7 = rows 1 and 2
    left = disjoint_rows(rows, np.array([1, 5]), 4)  # block 5 = tokens 20..23: rows 6 and 7
    assert [int(r[0]) for r in left] == [0, 9, 12, 15, 24, 27]  # rows 0, 3, 4, 5, 8, 9
    assert list(eligible_blocks(np.array([[1, 2, 0], [1, 0, 2], [3, 3, 3]]), 2, (0,))) == [1, 2]


def test_pool_rows_cut_real_blocks_as_the_samples_are_cut():
    samples = np.full((3, 2), 7)  # continuations only (keep_prompt false)
    blocks = np.arange(40).reshape(10, 4)  # prompt 2 + continuation 2
    rows = pool_rows(samples, np.array([2, -1, 0]), np.array([-1, 3, -1]), blocks, 2, keep_prompt=False)
    assert rows.tolist() == [[7, 7], [14, 15], [7, 7]]
    full = pool_rows(np.full((3, 4), 7), np.array([-1]), np.array([3]), blocks, 2, keep_prompt=True)
    assert full.tolist() == [[12, 13, 14, 15]]


# ---------------------------------------------------------------------- the curators in their papers' settings


def _batch(samples, real_rows, own, truths=None):
    return Batch(0, samples, [""] * len(samples), np.zeros((len(samples), 2), np.int64),
                 samples if truths is None else truths, real_rows, lambda which: np.zeros(len(samples)), own=own)


def test_the_detector_up_weights_the_rows_it_scores_as_human():
    """A pool where the origin is known to the test: machine rows from a collapsed vocabulary, human rows from the
    real one. The detector, never told which is which, keeps far more than the pool's share of human rows, and keeps
    a row more often the more human it looks."""
    rng = np.random.default_rng(0)
    human_train = rng.integers(0, 500, size=(400, 32))
    machine, human = rng.integers(0, 60, size=(200, 32)), rng.integers(0, 500, size=(200, 32))
    order = rng.permutation(400)
    pool = np.concatenate([machine, human])[order]
    own = np.concatenate([np.ones(200, bool), np.zeros(200, bool)])[order]
    c = resolved(load_config(None, ["curate.kind=detector", "curate.real_share=0.5"]).curate)
    kept, p = CURATORS["detector"](_batch(pool, human_train, own), c, np.random.default_rng(2))
    share_human = kept[~own].sum() / kept.sum()
    assert share_human > 0.9  # the pool is half human
    assert p[~own].mean() < 0.2 < 0.8 < p[own].mean()  # the score is P(machine), cross-fitted
    # the score reads the rows, not their label: rows not the generation's own but drawn like machine text score
    # as machine (a detector that scored by `own` would call them human)
    impostor = own.copy()
    impostor[np.flatnonzero(own)[:50]] = False
    _, p2 = CURATORS["detector"](_batch(pool, human_train, impostor), c, np.random.default_rng(2))
    assert p2[own & ~impostor].mean() > 0.8
    lo, hi = np.argsort(p)[:100], np.argsort(p)[-100:]
    assert kept[lo].sum() > 10 * max(kept[hi].sum(), 1)  # weight (1 - p)^10: the human-looking rows drawn


def test_pool_settings_refused_where_they_cannot_work():
    with pytest.raises(ConfigError, match="curate.kind is none"):
        load_config(None, ["curate.real_share=0.5"])
    with pytest.raises(ConfigError, match="curate.kind is none"):
        load_config(None, ["curate.oversample=4"])
    with pytest.raises(ConfigError, match="oracle"):
        load_config(None, ["curate.kind=reference", "curate.real_share=0.5"])
    with pytest.raises(ConfigError, match="greedy"):
        load_config(None, ["curate.kind=reference", "curate.oversample=4", "generation.temperature=0"])
    with pytest.raises(ConfigError, match="beam"):
        load_config(None, ["curate.kind=reference", "curate.oversample=4", "generation.num_beams=2"])
    with pytest.raises(ConfigError, match="tells the curator"):
        load_config(None, ["curate.kind=random", "curate.oversample=2", "curate.real_share=0.5"])
    for bad in ("curate.real_share=1.0", "curate.real_share=-0.1", "curate.real_share=nan", "curate.oversample=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, ["curate.kind=random", bad])


def test_a_pool_keeps_as_many_rows_as_the_training_set_needs_and_old_configs_keep_their_fingerprint():
    c = resolved(load_config(None, ["curate.kind=random", "curate.oversample=4"]).curate)
    assert c.share == 0.25
    c = resolved(load_config(None, ["curate.kind=perplexity", "curate.real_share=0.5"]).curate)
    assert c.share == 0.5
    assert resolved(load_config(None, ["curate.kind=random"]).curate).share == 0.125  # no pool: its paper's share
    cfg = load_config(None, ["curate.kind=random"])
    assert "oversample" not in cfg.to_dict()["curate"] and "real_share" not in cfg.to_dict()["curate"]
    assert load_config(None, ["curate.kind=random", "curate.oversample=2"]).to_dict()["curate"]["oversample"] == 2
    # a curated run made before the pool keys, or before score_with defaulted to `trainee`, resumes: a setting its
    # curator does not read changes no result; for `perplexity`, which reads it, the default moved the result
    old = ["curate.kind=random", "curate.score_with=current"]
    assert load_config(None, old).fingerprint() == load_config(None, ["curate.kind=random"]).fingerprint()
    old = ["curate.kind=perplexity", "curate.score_with=current"]
    assert load_config(None, old).fingerprint() != load_config(None, ["curate.kind=perplexity"]).fingerprint()
    tiny = load_config(REPO / "configs" / "tiny.yaml", embedded=True)
    assert tiny.fingerprint() == "8fec6b844936a81f", "the embedded default's fingerprint moved: its run folders stop resuming"


@pytest.mark.parametrize("args, needle", [
    (["curate.kind=random", "curate.real_share=0.5"], "curate.kind is none"),
    (["curate.kind=reference", "curate.real_share=0.5"], "oracle"),
])
def test_bad_pool_settings_are_one_line_and_write_nothing(tmp_path, args, needle):
    argv = [a for a in args if not (needle == "curate.kind is none" and a.startswith("curate.kind"))]
    d = tmp_path / "out"
    r = run_cli("run", *argv, f"out_dir={d}", env=ENV)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and not d.exists()


def test_too_many_real_pool_rows_for_the_data_is_refused_before_anything_is_written(tmp_path, pool_runs):
    """(``pool_runs`` has built the tiny model, so --check counts the blocks as the run does.)"""
    d = tmp_path / "out"
    for check in (["--check"], []):
        r = run_cli("run", *check, *TINY_RUN, "curate.kind=random", "curate.real_share=0.99",
                    "generation.num_sequences=1024", f"out_dir={d}", env=ENV)
        assert r.returncode == 2 and "curate.real_share=0.99 needs" in r.stderr, r.stderr[-800:]
        assert len(r.stderr.strip().splitlines()) == 1 and not d.exists()


# ---------------------------------------------------------------------- through `collapse run`, checked independently


def _independent_ppl(model_dir, adapter, prompts: np.ndarray, conts: np.ndarray) -> np.ndarray:
    """exp(mean NLL of each continuation given its prompt), by a plain forward pass of transformers (+ peft)."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, adapter)
    m.eval()
    ids = torch.as_tensor(np.concatenate([prompts, conts], axis=1), dtype=torch.long)
    with torch.no_grad():
        logp = torch.log_softmax(m(input_ids=ids).logits.double(), dim=-1)
    p = prompts.shape[1]
    nll = -logp[:, p - 1:-1].gather(2, ids[:, p:, None])[..., 0]
    return np.exp(nll.mean(dim=1).numpy())


RUNS = {  # name: extra settings (2 generations: the curate stage runs at generations 0 and 1)
    "detector": ["curate.kind=detector", "curate.real_share=0.5"],
    "current": ["curate.kind=perplexity", "curate.score_with=current", "curate.real_share=0.5"],
    "trainee": ["curate.kind=perplexity"],  # train.init=base: the trainee is generation 0
    "spy": ["curate.kind=pool-spy", "curate.real_share=0.5"],  # what a curator of one's own is shown
}
SEEN_BY_SPY: list = []


def _spy(batch, cfg, rng):
    """Keeps every row once; records what it was shown."""
    SEEN_BY_SPY.append({"prompts": batch.prompts.copy(), "truths": batch.truths, "texts": list(batch.texts)})
    return np.ones(len(batch.samples), np.int64), np.zeros(len(batch.samples))


@pytest.fixture(scope="module")
def pool_runs(tmp_path_factory):
    """In-process runs with the trainer's rows captured (collapse.loop.run.TrainJob) and the run's data kept."""
    import collapse.loop.run as R

    root, out = tmp_path_factory.mktemp("pool"), {}
    curator("pool-spy")(_spy)
    real_job, real_prepare = R.TrainJob, R.Run.prepare
    try:
        with in_process_runs() as mp:
            for name, extra in RUNS.items():
                seen, runs = [], []

                def job(rows, *a, _seen=seen, _job=real_job, **k):
                    _seen.append(np.array(rows))
                    return _job(rows, *a, **k)

                def prepare(cfg, show, check_only=False, _runs=runs, _prepare=real_prepare):
                    r = _prepare(cfg, show, check_only)
                    _runs.append(r)
                    return r

                mp.setattr(R, "TrainJob", job)
                mp.setattr(R.Run, "prepare", staticmethod(prepare))
                cfg = load_config(REPO / "configs" / "tiny.yaml", [*TINY_RUN, *extra, f"out_dir={root / name}"],
                                  embedded=True)
                R.run_loop(cfg, show_progress=False)
                cfg.out_dir = Path(cfg.out_dir)
                out[name] = (cfg, runs[0], seen)
    finally:
        CURATORS.pop("pool-spy", None)
    return out


def _record(d, g):
    return pq.read_table(d / f"gen_{g:03d}" / "curated.parquet").to_pandas()


def test_the_trainer_receives_exactly_the_curated_multiset(pool_runs):
    """Rebuilt row by row from the record, the samples file and the real blocks (not by collapse.loop.pool), the
    multiset each generation trained on is the one the trainer got."""
    cfg, run, seen = pool_runs["detector"]
    p, new = cfg.generation.prompt_tokens, cfg.generation.new_tokens
    assert len(seen) == cfg.generations
    for g in range(cfg.generations):
        rec = _record(cfg.out_dir, g)
        conts = np.stack(pq.read_table(cfg.out_dir / f"gen_{g:03d}" / "samples.parquet").column("token_ids").to_pylist())
        expect = []
        for s, b, k in zip(rec.sample_index, rec.real_block, rec.repeats):
            row = conts[s] if s >= 0 else run.data.blocks[b, p:p + new]
            expect += [row] * int(k)
        got = seen[g]
        assert got.shape == (run.data.n_train, new)
        key = lambda a: sorted(map(tuple, a.tolist()))  # noqa: E731 - the multiset, order aside
        assert key(got) == key(np.stack(expect))
        summary = json.loads((cfg.out_dir / f"gen_{g:03d}" / "curate.json").read_text())
        real_rows = sum(int(k) for b, k in zip(rec.real_block, rec.repeats) if b >= 0)
        assert summary["kept_real_share"] == pytest.approx(real_rows / run.data.n_train) and real_rows > 0
        assert summary["pool"]["real_rows"] == int((rec.real_block >= 0).sum()) == len(rec) // 2
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kept_real_share"] == json.loads((cfg.out_dir / "gen_000" / "curate.json").read_text())["kept_real_share"]


def _pool_ids(cfg, run, g):
    rec = _record(cfg.out_dir, g)
    t = pq.read_table(cfg.out_dir / f"gen_{g:03d}" / "samples.parquet")
    prompts, conts = (np.stack(t.column(c).to_pylist()) for c in ("prompt_ids", "token_ids"))
    full = np.concatenate([prompts, conts], axis=1)
    if "real_block" not in rec:
        return full[rec.sample_index], rec
    rows = np.stack([full[s] if s >= 0 else run.data.blocks[b] for s, b in zip(rec.sample_index, rec.real_block)])
    return rows, rec


@pytest.mark.parametrize("name, scorer", [("current", "model g"), ("trainee", "generation 0")])
def test_perplexity_at_generation_1_scores_with_the_model_its_settings_name(pool_runs, name, scorer):
    cfg, run, _ = pool_runs[name]
    base = json.loads((cfg.out_dir / "manifest.json").read_text())["base_model"]
    full, rec = _pool_ids(cfg, run, 1)
    p = cfg.generation.prompt_tokens
    adapter = cfg.out_dir / "gen_001" / "adapter"
    by_model_1 = _independent_ppl(base, adapter, full[:, :p], full[:, p:])
    by_gen0 = _independent_ppl(base, None, full[:, :p], full[:, p:])
    assert not np.allclose(by_model_1, by_gen0, rtol=1e-3)  # the two scorers differ: the test can tell them apart
    want = by_model_1 if scorer == "model g" else by_gen0
    assert np.allclose(rec.score, want, rtol=1e-4)


def test_generation_0s_perplexities_are_a_plain_forward_pass(pool_runs):
    """gen0_ppl.npy against transformers' own forward pass, not against the curate stage's cached scores (which
    the measure stage reuses where it scored with generation 0: the `trainee` run)."""
    for name in ("trainee", "current"):
        cfg, _, _ = pool_runs[name]
        base = json.loads((cfg.out_dir / "manifest.json").read_text())["base_model"]
        for g in (0, 1):
            t = pq.read_table(cfg.out_dir / f"gen_{g:03d}" / "samples.parquet")
            prompts, conts = (np.stack(t.column(c).to_pylist()) for c in ("prompt_ids", "token_ids"))
            got = np.load(cfg.out_dir / f"gen_{g:03d}" / "gen0_ppl.npy")
            assert np.allclose(got, _independent_ppl(base, None, prompts, conts), rtol=1e-4)


@pytest.mark.parametrize("extra", [
    ["curate.kind=detector", "curate.real_share=0.5"],
    pytest.param(["curate.kind=reference", "curate.oversample=3"], marks=pytest.mark.slow),
], ids=["detector-mixed", "reference-oversampled"])
def test_a_kill_inside_a_pooled_curate_stage_resumes_to_the_same_metrics(tmp_path, extra):
    """Killed after scoring, before the record is written: the rerun gives what an uninterrupted run gave, pool and
    all (its real blocks and order are drawn from the seed, not from what the killed process left)."""
    args = ["run", *TINY_RUN, "generations=1", *extra]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = run_cli(*args, f"out_dir={whole}", env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(*args, f"out_dir={killed}", env={**ENV, "COLLAPSE_FAULT": "curate:0:1"})
    assert r.returncode != 0 and not (killed / "gen_000" / "curated.parquet").exists()
    r = run_cli(*args, f"out_dir={killed}", env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (killed / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
    name = "gen_000/curated.parquet"
    assert pq.read_table(killed / name).equals(pq.read_table(whole / name))
    assert run_cli("verify", str(killed), env=ENV).returncode == 0
    summary = json.loads((whole / "gen_000" / "curate.json").read_text())
    assert summary["pool"]["oversample"] == (3 if "curate.oversample=3" in extra else 1)
    if "curate.oversample=3" in extra:  # 3 continuations of each of the 64 prompts, 64 kept
        assert summary["pool"]["rows"] == 192 and summary["kept_rows"] == 64 and "kept_real_share" not in summary
        assert len(pq.read_table(whole / "gen_000" / "samples.parquet")) == 192


def test_a_curator_is_not_shown_which_pool_rows_are_real(pool_runs):
    """On a pool with real rows: no true continuations (a real row's is itself), no prompt shared by a real row and
    a sample (real blocks never come from a sample's prompt), real rows spread through the order, their texts
    decoded as a sample's are."""
    cfg, run, _ = pool_runs["spy"]
    assert len(SEEN_BY_SPY) == cfg.generations
    for g, shown in enumerate(SEEN_BY_SPY):
        rec = _record(cfg.out_dir, g)
        real = (rec.real_block >= 0).to_numpy()
        assert shown["truths"] is None
        sample_prompts = {tuple(p) for p in shown["prompts"][~real]}
        assert not any(tuple(p) in sample_prompts for p in shown["prompts"][real])
        assert 0.2 < real[: len(real) // 2].mean() < 0.8  # not the samples first
        assert not set(rec.real_block[real]) & set(run.data.prompt_blocks.tolist())
        assert all(isinstance(t, str) and t for t in shown["texts"])


def test_oversampled_samples_resample_by_prompt():
    """k continuations of one prompt are not k independent samples: the bootstrap weights them together."""
    from collapse.metrics.stats import draw_weights

    w = draw_weights(12, np.random.default_rng(0), 50, cluster=3)
    assert w.boot.shape == (50, 12) and (w.boot.sum(axis=1) == 12).all()
    groups = w.boot.reshape(50, 4, 3)
    assert (groups == groups[..., :1]).all() and (w.half.reshape(50, 4, 3) == w.half.reshape(50, 4, 3)[..., :1]).all()
    one = draw_weights(12, np.random.default_rng(0), 50)  # cluster 1: the draw of before
    assert (one.boot == draw_weights(12, np.random.default_rng(0), 50, cluster=1).boot).all()
