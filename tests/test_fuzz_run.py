"""`--check` is a promise: a config it accepts runs to the end (slow tier).

Hypothesis draws 1-3 overrides as tests/test_fuzz_check.py does (any key, valid and odd values), with every size
key capped to a tiny value (CAPS: a case never asks for more work than a few seconds), for `collapse run` and
`collapse measure`. A case that `--check` refuses is skipped; one it accepts is then run for real, with a time
limit per case (LIMIT_S: a case past it is a failure). The property: exit 0, or exit 2 with one `error:` line
that names one of the failures no check can foresee (a non-finite training loss, out of memory, a full disk).
Fixed seed, fixed budget; the number of accepted configs that ran is printed. Holes found are kept below as
named regression cases.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from prefork import Prefork
from test_fuzz_check import BASE, drive

pytestmark = pytest.mark.slow

BUDGET = int(os.environ.get("COLLAPSE_FUZZ_RUN_EXAMPLES", "340"))  # cases drawn; about one in ten passes --check
LIMIT_S = 120  # per run; the base config runs in a few seconds
# the largest value a size key may take here (an int above it is replaced by the cap; the cases stay valid)
CAPS = {
    "generations": 2, "generation.num_sequences": 48, "generation.batch_size": 48, "generation.prompt_tokens": 24,
    "generation.new_tokens": 24, "generation.num_beams": 3, "generation.top_k": 50, "train.epochs": 2,
    "train.batch_size": 32, "train.grad_accum": 4, "train.gen0_epochs": 0, "train.gen0_blocks": 64, "curate.oversample": 3,
    "train.gen0_val_every": 8, "train.lora.r": 16, "eval.max_blocks": 16, "eval.block_size": 64,
    "eval.batch_size": 64, "measure.samples": 12, "measure.window": 96, "stats.resamples": 200,
    "data.max_documents": 40, "data.min_chars": 400, "regime.size": 96, "keep_checkpoints": 3,
    "model.scratch.steps": 30, "model.scratch.n_layer": 2, "model.scratch.d_model": 64, "model.scratch.n_head": 4,
    "model.scratch.vocab_size": 600, "model.scratch.context": 256, "model.scratch.block_size": 64,
    "model.scratch.batch_size": 16, "model.scratch.eval_every": 10, "model.scratch.patience": 20,
    "data.synthetic.vocab": 120, "data.synthetic.documents": 200, "data.synthetic.doc_tokens": 48,
    "data.synthetic.truth_documents": 32, "wandb.log_every": 50,
}
# a non-finite loss (the fine-tune's, or the scratch model's pre-training at an absurd model.scratch.lr: no check can
# tell which rate diverges on which data), out of memory, a full disk
FORESEEABLE_NOT = re.compile(r"training loss became|pre-training diverged \(loss (nan|inf)|out of memory|no space left",
                             re.I)
SEEN: set[tuple] = set()
RAN: list[tuple] = []


def capped(override: str) -> str:
    """``key=value`` with an integer (or a list of integers) above the key's cap replaced by the cap."""
    key, _, value = override.partition("=")
    cap = CAPS.get(key)
    if cap is None:
        return override
    try:
        v = float(value)
    except ValueError:
        return override
    return f"{key}={cap}" if v > cap or v != v else override


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from collapse.config import load_config
    from collapse.data import load_splits
    from collapse.models.scratch import get_scratch_model

    work = tmp_path_factory.mktemp("fuzzrun")
    for name in ("logs", "runs", "empty"):
        (work / name).mkdir()
    (work / "afile.txt").write_text("not a folder\n")
    cfg = load_config(None, BASE)
    get_scratch_model(cfg.model.scratch, load_splits(cfg.data), show_progress=False)
    runner = Prefork(env={"OMP_NUM_THREADS": "1"})
    for command in ("run", "measure"):
        runner.warm([command, "--check", *BASE, f"out_dir={work / 'warm'}"])
    child_env = {**os.environ, "COLLAPSE_SKIP_REPORT": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    yield work, runner, child_env
    runner.close()


def run_case(env, command: str, yaml_text: str | None, overrides: tuple[str, ...], n: int, cap: bool = True):
    """(--check's exit code, the run's exit code or None, the run's stderr); ``cap``: size keys capped (CAPS)."""
    work, runner, child_env = env
    args = [command]
    if yaml_text is not None:
        cfg = work / "logs" / f"{n}.yaml"
        cfg.write_text(yaml_text)
        args.append(str(cfg))
    args += [*BASE, f"out_dir={work / 'runs' / str(n)}", *(capped(o) if cap else o for o in overrides)]
    log = work / "logs" / str(n)
    pid = runner.start([args[0], "--check", *args[1:]], child_env, log.with_suffix(".cout"), log.with_suffix(".cerr"),
                       cwd=work)
    rc_check = runner.wait(pid, timeout=120)
    if rc_check != 0:
        return rc_check, None, ""
    pid = runner.start(args, child_env, log.with_suffix(".out"), log.with_suffix(".err"), cwd=work)
    try:
        rc = runner.wait(pid, timeout=LIMIT_S)
    except TimeoutError:
        return 0, "timeout", f"ran past {LIMIT_S} s"
    return 0, rc, log.with_suffix(".err").read_text()


def assert_runs(result, case) -> None:
    rc_check, rc, err = result
    if rc_check != 0:
        return
    lines = [ln for ln in err.splitlines() if ln.strip().startswith("error:")]
    assert rc != "timeout", f"{case}: accepted by --check, {err}"
    assert "Traceback" not in err, f"{case}: accepted by --check, then a traceback\n{err[-3000:]}"
    if rc != 0:
        assert rc == 2 and len(lines) == 1 and FORESEEABLE_NOT.search(lines[0]), \
            f"{case}: accepted by --check, then exit {rc}:\n{err[-2000:]}"


def test_what_check_accepts_runs_to_the_end(env, capsys):
    failures = []

    def each(case):
        SEEN.add(case)
        t0 = time.perf_counter()
        result = run_case(env, *case, n=len(SEEN))
        if result[0] == 0:
            RAN.append((time.perf_counter() - t0, case))
        try:
            assert_runs(result, case)
        except AssertionError as e:
            failures.append(str(e))

    drive(env[0], BUDGET, each)
    with capsys.disabled():
        slow = sorted(RAN, key=lambda t: -t[0])[:3]
        print(f"\nfuzz (runs): {len(SEEN)} cases drawn, {len(RAN)} accepted by --check and run to the end, "
              f"{len(failures)} failing; slowest: " + "; ".join(f"{t:.1f} s {c}" for t, c in slow))
    assert not failures, f"{len(failures)} accepted configs did not run:\n\n" + "\n\n".join(failures[:20])
    assert len(RAN) >= 30, len(RAN)  # the property was exercised, not skipped


# named regressions: settings --check once accepted and a stage then refused (issue 40)
REGRESSIONS = {
    "train batch not divisible by grad_accum": ("run", None, ("train.batch_size=3", "train.grad_accum=2")),
    "gen0 budget beyond the training rows": ("run", None, ("train.gen0_blocks=100000000",)),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regression_case(env, name):
    rc_check, rc, err = result = run_case(env, *REGRESSIONS[name], n=1000 + list(REGRESSIONS).index(name), cap=False)
    assert rc_check == 2, f"{name}: --check accepted it"
    assert_runs(result, REGRESSIONS[name])


def test_caps_keep_cases_valid():
    assert capped("generations=5000") == "generations=2" and capped("generations=1") == "generations=1"
    assert capped("generations=abc") == "generations=abc" and capped("seed=99999") == "seed=99999"
