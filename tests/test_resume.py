"""Crash-proof runs: a `collapse run` killed at any moment and rerun equals an uninterrupted one, bit for bit.

One uninterrupted reference run (module fixture); every other run shares its exact config (TINY_RUN,
2 generations x 64 samples in 2 batches) and is compared with it: metrics.jsonl rows (they hold no
timing field: checked), every column of every gen_*/samples.parquet, eval.json, gen0_ppl.npy, the
saved weights, and train.json without its two timing fields (``seconds``, ``tokens_per_s``).

Speed: every run uses one thread (OMP_NUM_THREADS=1: identical numbers here, and several times faster
than two on 2 busy cores) and skips the report (COLLAPSE_SKIP_REPORT=1). Runs are forked from a
helper process that has already imported torch/transformers/peft (each run is still a fresh process
executing ``collapse.cli.main``, exactly what ``python -m collapse`` runs), saving ~5 s of imports per
run; COLLAPSE_TEST_PREFORK=0 runs plain ``python -m collapse`` subprocesses instead. The SIGINT test
always uses a plain subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, TINY_RUN
from prefork import Prefork

RUN_ENV = {"OMP_NUM_THREADS": "1", "COLLAPSE_SKIP_REPORT": "1"}
TIMING_KEYS = {"seconds", "tokens_per_s"}
SECRETS = {"WANDB_API_KEY": "fake-wandb-secret-123", "HF_TOKEN": "hf_fake_secret_456"}

# ---------------------------------------------------------------------- running `collapse run`

class Started:
    """A `collapse` command running in the background (forked or a plain subprocess)."""

    def __init__(self, runner, args, env, logdir: Path, plain: bool):
        n = len(list(logdir.glob("*.stdout")))
        self.stdout_path, self.stderr_path = logdir / f"{n}.stdout", logdir / f"{n}.stderr"
        self.runner, self.plain = runner, plain
        if plain:
            # Ctrl-C reaches a run started from a terminal; a shell's background job ignores SIGINT (and so would
            # the run, inheriting that): start it with the default disposition, as a terminal would
            self.popen = subprocess.Popen([sys.executable, "-m", "collapse", *args], env=env, cwd=REPO,
                                          stdout=open(self.stdout_path, "w"), stderr=open(self.stderr_path, "w"),
                                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            self.pid = self.popen.pid
        else:
            self.pid = runner.start(args, env, self.stdout_path, self.stderr_path)

    def wait(self, timeout: float = 300) -> SimpleNamespace:
        if self.plain:
            try:
                rc = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                raise
        else:
            rc = self.runner.wait(self.pid, timeout)
        return SimpleNamespace(returncode=rc, stdout=self.stdout_path.read_text(), stderr=self.stderr_path.read_text())


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """cli(out, *overrides, env=..., background=False, plain=False): `collapse run TINY_RUN out_dir=out ...`."""
    logdir = tmp_path_factory.mktemp("logs")
    runner = Prefork(env=RUN_ENV) if os.environ.get("COLLAPSE_TEST_PREFORK", "1") != "0" else None

    def run(out: Path, *extra: str, env: dict | None = None, background: bool = False, plain: bool = False):
        e = {k: v for k, v in os.environ.items() if k not in ("COLLAPSE_FAULT", *SECRETS)}
        e.update(RUN_ENV)
        e.update(env or {})
        args = ["run", *TINY_RUN, f"out_dir={out}", *extra]
        started = Started(runner, args, e, logdir, plain=plain or runner is None)
        return started if background else started.wait()

    yield run
    if runner is not None:
        runner.close()


# ---------------------------------------------------------------------- comparing runs


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _tensors_sha(folder: Path) -> str:
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        for k, v in sorted(load_file(f).items()):
            h.update(k.encode() + v.tobytes())
    return h.hexdigest()


def _no_timing(obj, path=""):
    """Fail if a metrics row holds a wall-time field: then exact equality would not be meaningful."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert not any(t in k for t in ("second", "time", "per_s", "elapsed")), f"timing field {path}{k}"
            _no_timing(v, f"{path}{k}.")


def snapshot(out: Path) -> dict:
    """Everything a run computes, as content hashes (timing fields of train.json dropped, explicitly)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        _no_timing(r)
    snap = {"metrics.jsonl": rows}
    for d in sorted(out.glob("gen_*")):
        t = pq.read_table(d / "samples.parquet")
        for c in t.column_names:
            snap[f"{d.name}/samples.parquet:{c}"] = _sha(t.column(c).to_pylist())
        snap[f"{d.name}/eval.json"] = json.loads((d / "eval.json").read_text())
        snap[f"{d.name}/metrics.json"] = json.loads((d / "metrics.json").read_text())
        snap[f"{d.name}/gen0_ppl.npy"] = hashlib.sha256(np.load(d / "gen0_ppl.npy").tobytes()).hexdigest()
        if (d / "train.json").is_file():
            snap[f"{d.name}/train.json"] = {k: v for k, v in json.loads((d / "train.json").read_text()).items()
                                           if k not in TIMING_KEYS}
        for sub in ("adapter", "model"):
            if (d / sub).is_dir():
                snap[f"{d.name}/{sub}"] = _tensors_sha(d / sub)
    return snap


def assert_same(out: Path, ref: dict) -> None:
    got = snapshot(out)
    assert sorted(got) == sorted(ref)
    differ = [k for k in ref if got[k] != ref[k]]
    assert not differ, f"differ from the uninterrupted run: {differ}"


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def temp_leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


def error_lines(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    r = cli(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert manifest(out)["complete"] is True
    return out, snapshot(out)


def copy_of(reference, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    return out


# ---------------------------------------------------------------------- kill at any moment, rerun


def _check_killed_state(point: str, out: Path) -> None:
    """What the kill left behind is what the point promises (so the test kills where it says)."""
    m = manifest(out)
    gens = m["generations"]
    assert m["complete"] is False
    if point == "generate:1:0":  # batch 0 of 2 on disk, the generation not recorded
        assert (out / "gen_001" / "shards" / "b000000.parquet").is_file()
        assert not (out / "gen_001" / "samples.parquet").exists()
        assert gens["1"].get("evaluate") and not gens["1"].get("generate")
    elif point == "train:1:3":
        assert not gens.get("1", {}).get("train") and gens["0"].get("measure")
    elif point == "evaluate:1:0":
        assert gens["1"].get("train") and not gens["1"].get("evaluate")
    elif point == "between:1:generate":
        assert gens["1"].get("generate") and not gens["1"].get("measure")
        assert (out / "gen_001" / "samples.parquet").is_file() and not (out / "gen_001" / "shards").exists()
    elif point == "manifest:1:train":  # the new manifest was being written: old one intact, temp file left
        assert not gens.get("1", {}).get("train")
        assert list(out.glob(".manifest.json.*.tmp")), list(out.iterdir())
        assert (out / "gen_001" / "adapter").is_dir()  # the weights were complete, the record not
    elif point == "measure:2:0":
        assert gens["2"].get("generate") and not gens["2"].get("measure")


@pytest.mark.parametrize("point", ["generate:1:0", "train:1:3", "evaluate:1:0", "between:1:generate",
                                   "manifest:1:train", "measure:2:0"])
def test_sigkill_then_rerun_equals_uninterrupted(cli, reference, tmp_path, point):
    out = tmp_path / "out"
    r = cli(out, env={"COLLAPSE_FAULT": point})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    _check_killed_state(point, out)
    r = cli(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stderr and "redoing" not in r.stderr  # no finished file is distrusted
    assert manifest(out)["complete"] is True
    assert not temp_leftovers(out)
    assert_same(out, reference[1])


def _seen(p: Started, out: Path) -> str:
    """What a background run has shown so far: its exit code, the end of its stderr, the files in its folder."""
    files = sorted(str(f.relative_to(out)) for f in out.rglob("*")) if out.exists() else []
    return (f"exit code {p.popen.poll()}; files {files}\n"
            f"stderr:\n{p.stderr_path.read_text()[-2000:] if p.stderr_path.exists() else ''}")


def _wait_for_file(p: Started, path: Path, out: Path, limit: float = 300) -> None:
    """Wait until ``path`` exists; fail at once if the run exits first. ``limit`` only ends a wait that saw neither."""
    deadline = time.monotonic() + limit
    while not path.exists():
        if p.popen.poll() is not None:
            pytest.fail(f"the run ended before {path.name} was written: {_seen(p, out)}")
        if time.monotonic() > deadline:
            p.popen.kill()
            p.popen.wait()
            pytest.fail(f"gave up waiting for {path.relative_to(out)} after {limit:.0f} s: {_seen(p, out)}")
        time.sleep(0.1)


def test_sigint_stops_at_once_says_how_to_resume_and_rerun_equals(cli, reference, tmp_path):
    """Ctrl-C in the middle of generation 1's samples (a real `python -m collapse` subprocess)."""
    out = tmp_path / "out"
    # the run sleeps (for an hour) right after batch 0 of generation 1 is on disk, so the signal lands
    # mid-stage every time, and only the signal can end that sleep
    p = cli(out, env={"COLLAPSE_FAULT": "generate:1:0:pause"}, background=True, plain=True)
    _wait_for_file(p, out / "gen_001" / "shards" / "b000000.parquet", out)
    os.kill(p.pid, signal.SIGINT)
    try:
        r = p.wait(timeout=120)  # ends the wait only: a run that ignored the signal would sleep on
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not stop after SIGINT: {_seen(p, out)}")
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert "rerun the same command to resume" in r.stderr
    assert "Traceback" not in r.stderr
    # it stopped in the stage it was in: batch 1 never started, generation 1's samples were not recorded
    gen1 = manifest(out)["generations"]["1"]
    assert gen1.get("evaluate") and not gen1.get("generate"), gen1
    assert not (out / "gen_001" / "shards" / "b000001.parquet").exists()
    assert not (out / "gen_001" / "samples.parquet").exists()
    assert not temp_leftovers(out)
    r = cli(out)  # the lock was released and the files closed: the rerun resumes and finishes
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same(out, reference[1])


# ---------------------------------------------------------------------- refusals and damage


def _listing(out: Path) -> dict:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def test_changed_config_is_one_error_naming_the_keys_and_touches_nothing(cli, reference, tmp_path):
    out = copy_of(reference, tmp_path)
    before = _listing(out)
    r = cli(out, "seed=1", "train.lr=0.01", "keep_checkpoints=3")  # keep_checkpoints is bookkeeping: allowed
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = error_lines(r)
    assert "different config" in line and "seed" in line and "train.lr" in line and "keep_checkpoints" not in line
    assert "Traceback" not in r.stderr
    r = cli(out, "resume=never")
    assert r.returncode == 2
    (line,) = error_lines(r)
    assert "not empty" in line and "overwrite=true" in line
    assert _listing(out) == before


def test_corrupt_manifest_is_a_clear_error_and_deleting_it_redoes_everything_identically(cli, reference, tmp_path):
    out = copy_of(reference, tmp_path)
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])
    r = cli(out)
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = error_lines(r)
    assert "manifest.json is corrupt" in line and "delete it" in line
    (out / "manifest.json").unlink()  # what the message suggests: every stage is redone over the old files
    r = cli(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same(out, reference[1])


def test_damaged_files_of_recorded_stages_are_found_and_redone(cli, reference, tmp_path):
    """A truncated samples.parquet, a missing eval.json, a truncated metrics.jsonl, a half adapter: all redone."""
    out = copy_of(reference, tmp_path)
    s = out / "gen_001" / "samples.parquet"
    s.write_bytes(s.read_bytes()[: s.stat().st_size // 2])
    (out / "gen_002" / "eval.json").unlink()
    m = out / "metrics.jsonl"
    m.write_text(m.read_text()[:100])
    # a half-written file of generation 2's weights: its checksum no longer matches, so its training is redone
    w = out / "gen_002" / "adapter" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    r = cli(out)
    assert r.returncode == 0, r.stderr[-3000:]
    notes = sorted(line.split(" (")[0].split(": redoing")[0] + " -> " + line.rsplit("redoing ", 1)[1]
                   for line in r.stderr.splitlines() if "redoing" in line)
    assert notes == ["gen 1: gen_001/samples.parquet cannot be read -> generate/measure",
                     "gen 2: gen_002/adapter/adapter_model.safetensors does not match its checksum -> train",
                     "gen 2: gen_002/eval.json is missing -> evaluate/measure"], notes
    assert_same(out, reference[1])


def _truncate_to_generation_0(out: Path) -> None:
    """The state of a run stopped right after generation 0 (made from the reference's files)."""
    for g in (1, 2):
        shutil.rmtree(out / f"gen_{g:03d}")
    m = manifest(out)
    m["generations"] = {"0": m["generations"]["0"]}
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text().splitlines()[0] + "\n")


def test_full_disk_is_one_clear_error_keeps_finished_generations_and_resumes(cli, reference, tmp_path):
    from collapse.io import write_parquet
    from collapse.loop.rundir import disk_full as _disk_full

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    try:
        out = disk / "out"
        shutil.copytree(reference[0], out)
        _truncate_to_generation_0(out)
        gen0 = {k: v for k, v in snapshot(out).items() if k.startswith("gen_000")}
        if mounted:  # a real full disk: leave 12 KiB free, less than generation 1's adapter needs
            st = os.statvfs(disk)
            (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 12 * 1024))
            with pytest.raises(Exception) as e:  # noqa: PT011 - what pyarrow raises on a full disk
                write_parquet(disk / "probe.parquet", {"x": np.arange(10_000)})
            assert _disk_full(e.value)
            env = {}
        else:  # no tmpfs (not root): the same error injected at generation 1's first sample batch
            env = {"COLLAPSE_FAULT": "generate:1:0:enospc"}
        r = cli(out, env=env)
        assert r.returncode == 2, r.stderr[-3000:]
        (line,) = error_lines(r)
        assert "no space left on device" in line and "free space and rerun the same command to resume" in line
        assert "Traceback" not in r.stderr
        m = manifest(out)  # the manifest and generation 0 are intact
        assert all(m["generations"]["0"][s] for s in ("evaluate", "generate", "measure")) and not m["complete"]
        assert {k: v for k, v in snapshot(out).items() if k.startswith("gen_000")} == gen0
        if mounted:
            (disk / "filler").unlink()
        r = cli(out)
        assert r.returncode == 0, r.stderr[-3000:]
        assert not temp_leftovers(out)
        assert_same(out, reference[1])
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ---------------------------------------------------------------------- keep_checkpoints, overwrite


def test_keep_checkpoints_keeps_what_resume_needs_and_overwrite_starts_over(cli, tmp_path):
    """train.init=previous needs model g-1 to train g and model g to evaluate/sample; keep_checkpoints=1."""
    out = tmp_path / "out"
    args = ("train.init=previous", "keep_checkpoints=1")
    r = cli(out, *args, env={"COLLAPSE_FAULT": "train:2:3"})  # killed while training from model 1
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert (out / "gen_001" / "model" / "model.safetensors").is_file()
    r = cli(out, *args, env={"COLLAPSE_FAULT": "evaluate:2:0"})  # resumed, then killed before evaluating model 2
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not (out / "gen_001" / "model").exists() and (out / "gen_002" / "model").is_dir()
    r = cli(out, *args)  # needs model 2 (on disk), not model 1 (pruned)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "gen_001" / "model").exists() and not (out / "gen_001" / "adapter").exists()
    resumed = snapshot(out)
    (out / "stray.txt").write_text("left from before")
    r = cli(out, *args, "resume=never", "overwrite=true")  # starts over: one uninterrupted run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "new run" in r.stderr and not (out / "stray.txt").exists()
    assert snapshot(out) == resumed


# ---------------------------------------------------------------------- W&B resume and secrets


def test_wandb_resumes_the_same_run_and_no_secret_is_written(cli, reference, tmp_path):
    from wandb_offline import describe, find_run_files, read_history, wait_until_finished

    out = tmp_path / "out"
    env = {**SECRETS, "COLLAPSE_FAULT": "between:1:measure"}
    r1 = cli(out, "wandb.mode=offline", env=env)  # killed after generation 1 is measured and logged
    assert r1.returncode == -signal.SIGKILL, r1.stderr[-2000:]
    run_id = manifest(out)["wandb_run_id"]
    assert run_id
    r2 = cli(out, "wandb.mode=offline", env=SECRETS)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert_same(out, reference[1])  # W&B changes nothing in the results

    files = find_run_files(out)
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files), files
    assert all(f.parent.name.startswith("offline-run-") and run_id in f.parent.name for f in files)
    assert wait_until_finished(files[-1]), f"no exit record: {describe(files[-1])}"
    gens = [[h["generation"] for h in read_history(f, strict=False) if "test_ppl" in h] for f in files]
    assert sorted(gens[0] + gens[1]) == [0, 1, 2]  # each generation once: what the killed one lost is logged again
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for h in read_history(files[-1]):
        if "test_ppl" in h:
            assert h["test_ppl"] == pytest.approx(rows[h["generation"]]["test_ppl"], rel=1e-12)

    for secret in SECRETS.values():
        for r in (r1, r2):
            assert secret not in r.stdout and secret not in r.stderr
        for p in out.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert secret.encode() not in p.read_bytes(), f"{secret} written to {p}"


def test_wandb_resume_logs_each_row_and_artifact_once(cli, tmp_path):
    """Killed in generation 2's fine-tune after the W&B service flushed part of the run to disk: the resumed
    process logs exactly what the killed segment lacks (no row twice, none lost) and each artifact once."""
    from wandb_offline import find_run_files, read_artifacts, read_history, wait_until_finished

    out = tmp_path / "out"
    more = ("train.batch_size=1", "wandb.mode=offline")  # 128 training steps a generation: > 2 blocks of rows
    r1 = cli(out, *more, env={"COLLAPSE_FAULT": "train:2:100"})
    assert r1.returncode == -signal.SIGKILL, r1.stderr[-2000:]
    r2 = cli(out, *more)
    assert r2.returncode == 0, r2.stderr[-3000:]
    files = find_run_files(out)
    assert len(files) == 2 and wait_until_finished(files[1])
    killed, resumed = (read_history(f, strict=False) for f in files)
    assert len(killed) > 100, "the killed segment holds no rows: this test would not test the skipping"
    steps = [h["_step"] for h in killed + resumed]
    assert steps == list(range(len(steps))), "a W&B step logged twice, lost, or out of order"
    assert resumed[0]["_step"] == killed[-1]["_step"] + 1
    train = [h["train/step"] for h in killed + resumed if "train/loss" in h]
    total = sum(json.loads((out / f"gen_{g:03d}" / "train.json").read_text())["steps"] for g in (1, 2))
    assert train == list(range(1, total + 1))
    assert sorted(h["generation"] for h in killed + resumed if "test_ppl" in h) == [0, 1, 2]
    curve = json.loads((out / "gen_002" / "train.json").read_text())["curve"]
    by_step = {h["train/step"]: h["train/loss"] for h in killed + resumed if "train/loss" in h}
    first2 = total - len(curve)  # generation 2's curve: killed part and redone part agree with train.json
    assert [by_step[first2 + c["step"]] for c in curve] == [c["loss"] for c in curve]
    names = [a["name"] for f in files for a in read_artifacts(f, strict=False)
             if a["type"] not in ("run_table", "wandb-run-incremental-table")]  # ours, not W&B's table storage
    assert len(names) == len(set(names)) == 6, names  # model and corpus of generations 0..2, once each
    assert any(n.endswith("corpus-g0") for n in [a["name"] for a in read_artifacts(files[0], strict=False)])


# ---------------------------------------------------------------------- cheap checks, in process


def test_second_process_on_the_same_folder_is_refused(tmp_path):
    from collapse.errors import ConfigError
    from collapse.loop.rundir import lock_out_dir as _lock_out_dir

    held = _lock_out_dir(tmp_path)
    try:
        with pytest.raises(ConfigError, match=r"another `collapse run` \(pid \d+\) is using"):
            _lock_out_dir(tmp_path)
    finally:
        held.close()
    _lock_out_dir(tmp_path).close()  # released with its holder


def test_atomic_write_leaves_old_file_or_new_file_and_normal_permissions(tmp_path):
    from collapse.io import atomic_path, write_text

    p = tmp_path / "f.txt"
    write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["f.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_weights_and_code_loading_are_safe():
    """No pickle-based loading of user files; remote code only where the config allows it."""
    src = {str(p.relative_to(REPO / "collapse")): p.read_text() for p in (REPO / "collapse").rglob("*.py")}
    for name, text in src.items():
        assert "torch.load(" not in text, name
        assert "pickle.load" not in text and "allow_pickle=True" not in text, name
        assert "trust_remote_code=True" not in text, name
    assert "use_safetensors=True" in src["models/transformer.py"] and "use_safetensors=True" in src["models/hf.py"]
    assert "trust_remote_code=cfg.trust_remote_code" in src["models/hf.py"]
