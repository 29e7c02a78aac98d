"""`collapse sweep`: grid parsing (YAML block and command line), the shipped experiment configs, and a
tiny two-seed sweep end to end (runs, resumability, one report with the seed group's summary)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO, TINY_RUN, run_cli

from collapse.errors import ConfigError
from collapse.loop.sweep import parse_grid, point_name


def test_yaml_axes_and_command_line_axes():
    axes, fixed = parse_grid(["seed=0,1,2", "generations=3"], {"regime.kind": ["replace", "mix"]})
    assert axes == [("regime.kind", ["replace", "mix"]), ("seed", ["0", "1", "2"])]
    assert fixed == ["generations=3"]


def test_command_line_replaces_or_fixes_a_yaml_axis():
    grid = {"generation.temperature": [0.7, 1.0, 1.3], "seed": [0, 1, 2]}
    axes, fixed = parse_grid(["generation.temperature=0.7,1.3"], grid)
    assert axes == [("generation.temperature", ["0.7", "1.3"]), ("seed", ["0", "1", "2"])]  # replaced, not doubled
    axes, fixed = parse_grid(["seed=4"], grid)
    assert axes == [("generation.temperature", ["0.7", "1.0", "1.3"])] and fixed == ["seed=4"]


def test_list_valued_keys_are_not_split_into_an_axis():
    axes, fixed = parse_grid(["train.lora.target_modules=c_attn,c_proj"])
    assert axes == [] and fixed == ["train.lora.target_modules=c_attn,c_proj"]


def test_bad_items_raise_config_errors():
    with pytest.raises(ConfigError, match="key=v1,v2"):
        parse_grid(["seed"])
    with pytest.raises(ConfigError):
        parse_grid(["regime.knd=replace,mix"])


def test_point_names_are_folder_names():
    assert point_name([("regime.kind", "mix"), ("seed", "1")]) == "regime.kind=mix,seed=1"
    assert point_name([("model.name_or_path", "facebook/opt-125m")]) == "model.name_or_path=facebook_opt-125m"
    assert point_name([]) == "single"


@pytest.mark.parametrize("block, needle", [
    ("points:\n  - {curate.kind: random}\n  - {curate.knd: random}\n", "curate.knd"),  # a bad key in points:
    ("points:\n  - {generation.temperature: -1}\n", "generation.temperature"),  # a bad value in points:
    ("sweep:\n  sed: [0, 1]\n", "sed"),  # a bad key in sweep:
    ("points:\n  - {curate.real_share: 0.5}\n", "curate.kind is none"),  # keys that only fail together
])
def test_a_bad_grid_is_one_line_and_leaves_no_folder(tmp_path, block, needle):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("# collapse sweep grid.yaml\ngenerations: 1\n" + block)
    for out in (tmp_path / "new", tmp_path / "old"):
        if out.name == "old":  # an --out folder that already existed is left as it was
            out.mkdir()
            (out / "keep.txt").write_text("mine")
        r = run_cli("sweep", str(cfg), "--out", str(out), timeout=120)
        assert r.returncode == 2 and needle in r.stderr, r.stderr[-800:]
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not out.exists() if out.name == "new" else sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("name, runs", [("regimes", 9), ("decoding", 9), ("training", 4), ("remedies-pool", 24),
                                        ("remedies-oversample", 6), ("cloze", 6)])
def test_shipped_experiment_configs_validate(tmp_path, name, runs):
    r = run_cli("sweep", f"configs/experiments/{name}.yaml", "--dry-run", "--out", str(tmp_path / name), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"sweep: {runs} runs" in r.stderr
    assert not (tmp_path / name).exists()  # a dry run writes nothing, not even the base config its runs would read


# slow (~2 min on 2 cores: two full runs, a report, a resume): the sweep's run/report/interrupt paths stay in
# the default suite through test_ctrl_c_* (sweep start and stop), test_run and test_report.
@pytest.mark.slow
def test_a_two_seed_sweep_runs_resumes_and_reports(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", *[a for a in TINY_RUN if not a.startswith("generations=")], "generations=1", "seed=0,1",
            "--out", str(out)]
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p.name for p in out.iterdir() if (p / "metrics.jsonl").is_file())
    assert runs == ["seed=0", "seed=1"]
    for name in runs:
        assert yaml.safe_load((out / name / "config.yaml").read_text())["seed"] == int(name[-1])
        assert len((out / name / "metrics.jsonl").read_text().splitlines()) == 2  # generations 0 and 1
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert len(summary) == 1 and summary[0]["metrics"]["test_ppl"]["n"] == 2 and summary[0]["generation"] == 1
    assert (out / "report" / "report.html").is_file()
    def stamps():
        return {str(p.relative_to(out)): p.stat().st_mtime_ns for n in runs
                for p in (out / n).glob("gen_*/*") if p.name in ("samples.parquet", "adapter", "eval.json")}

    before = stamps()
    assert len(before) == 2 * 5  # per run: samples + eval of gens 0 and 1, and gen 1's adapter
    again = run_cli(*args, timeout=300)  # finished runs are resumed with nothing left to do
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("(resuming)") == 2
    assert stamps() == before



@pytest.mark.parametrize("whom", ["group", "sweep"])
def test_ctrl_c_stops_the_sweep_and_its_run_cleanly(tmp_path, whom):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or a SIGINT to the sweep alone,
    while its first run is in generation 1: both stop with exit 130, the run says how to resume, the
    sweep says how to continue, no traceback, and the next run never starts."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sw"
    args = [*[a for a in TINY_RUN if not a.startswith("generations=")], "generations=1", "seed=0,1", "--out", str(out)]
    env = dict(os.environ, COLLAPSE_FAULT="generate:1:0:pause")
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "collapse", "sweep", *args], stdout=subprocess.DEVNULL, stderr=fh,
                             env=env, cwd=REPO, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        shard = out / "seed=0" / "gen_001" / "shards" / "b000000.parquet"

        def seen() -> str:
            files = sorted(str(f.relative_to(out)) for f in out.rglob("*")) if out.exists() else []
            return f"exit code {p.poll()}; files {files}\nstderr:\n{err.read_text()[-2000:]}"

        # the event: the first run's batch 0 of generation 1 on disk (it then sleeps until a signal);
        # the deadline only ends a wait that saw neither that nor the sweep ending
        deadline = time.monotonic() + 300
        while not shard.exists():
            if p.poll() is not None:
                pytest.fail(f"the sweep ended before its first run reached generation 1: {seen()}")
            if time.monotonic() > deadline:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                pytest.fail(f"gave up waiting for {shard.relative_to(out)}: {seen()}")
            time.sleep(0.1)
        if whom == "group":
            os.killpg(p.pid, signal.SIGINT)
        else:
            os.kill(p.pid, signal.SIGINT)
        try:
            rc = p.wait(timeout=120)  # ends the wait only: a run that ignored the signal would sleep for an hour
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            pytest.fail(f"the sweep did not stop after SIGINT: {seen()}")
    text = err.read_text()
    assert rc == 130, (rc, text[-2000:])
    assert "rerun the same command to resume" in text  # the run's own message: it was not killed
    assert text.count("sweep interrupted") == 1 and "Traceback" not in text
    assert not (out / "seed=1").exists()
    # the run stopped in the stage it was in: batch 1 of generation 1 never started
    assert not (out / "seed=0" / "gen_001" / "shards" / "b000001.parquet").exists()
    assert not (out / "seed=0" / "gen_001" / "samples.parquet").exists()


def test_wandb_sweep_file_is_the_grid_and_its_command_runs_a_point(tmp_path):
    """--wandb-sweep writes a W&B grid sweep whose command, expanded as `wandb agent` does, is the `collapse run`
    of that point: same config, the folder `collapse sweep` would use, the sweep's tag, and the point's W&B group
    (its config without the seed); the file names the metric to minimise."""
    import shlex
    import subprocess
    import sys

    from wandb_offline import find_run_files, read_run_info, wait_until_finished

    parent, f = tmp_path / "grid", tmp_path / "sweep.yaml"
    items = [*TINY_RUN, "generations=1", "wandb.mode=offline", "seed=0,1", "generation.temperature=0.7,1.0"]
    r = run_cli("sweep", *items, "--out", str(parent), "--wandb-sweep", str(f), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not parent.exists() or not any(parent.iterdir())  # nothing ran here
    doc = yaml.safe_load(f.read_text())
    assert doc["method"] == "grid" and doc["name"] == "grid" and doc["project"] == "collapse"
    assert doc["parameters"] == {"seed": {"values": [0, 1]}, "generation.temperature": {"values": [0.7, 1.0]}}
    assert doc["metric"] == {"name": "change/test_ppl", "goal": "minimize"}
    cmd = doc["command"]
    assert cmd[:5] == ["${env}", "${interpreter}", "-m", "collapse", "run"] and cmd[-2:] == ["--under", str(parent)]
    assert cmd[5:] == [str(tmp_path / "sweep.base.yaml"), "${args_no_hyphens}", "--under", str(parent)]
    base_wandb = yaml.safe_load((tmp_path / "sweep.base.yaml").read_text())["wandb"]
    assert base_wandb["group"] is None and base_wandb["tags"] == ["sweep-grid"]
    # the agent's expansion (wandb/wandb_agent.py): ${env} -> /usr/bin/env, ${interpreter} -> python, and
    # ${args_no_hyphens} -> f"{key}={value}" per parameter
    point = {"seed": 1, "generation.temperature": 0.7}
    argv = []
    for c in cmd:
        argv += {"${env}": [], "${interpreter}": [sys.executable],
                 "${args_no_hyphens}": [f"{k}={v}" for k, v in point.items()]}.get(c, [c])
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**__import__("os").environ, "COLLAPSE_SKIP_REPORT": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, shlex.join(argv) + "\n" + run.stderr[-3000:]
    out = parent / "seed=1,generation.temperature=0.7"  # the folder `collapse sweep` names this point
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["generation"] == 1
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["generation"]["temperature"] == 0.7 and cfg["wandb"]["tags"] == ["sweep-grid"]
    (w,) = find_run_files(out)
    info = read_run_info(w)
    from collapse.tracking.mode import default_group

    other_seed = {**cfg, "seed": 0, "out_dir": "elsewhere"}
    assert wait_until_finished(w) and info["group"] == default_group(cfg) == default_group(other_seed)
    assert info["tags"] == ["sweep-grid"] and info["job_type"] == "recursion"
    # the local sweep runs the same points with the same tag
    r = run_cli("sweep", *items, "--out", str(parent), "--dry-run", timeout=120)
    assert r.returncode == 0 and f"out_dir={out}" in r.stderr and 'wandb.tags=["sweep-grid"]' in r.stderr


def test_wandb_sweep_needs_an_axis(tmp_path):
    r = run_cli("sweep", "seed=1", "--out", str(tmp_path), "--wandb-sweep", str(tmp_path / "s.yaml"), timeout=120)
    assert r.returncode == 2 and "needs at least one axis" in r.stderr
