"""Fuzzing `collapse run --check` and `collapse measure --check` over every config key.

Hypothesis draws 1-3 overrides (any key: valid values, edge values, wrong types, empty strings, paths to
nothing / a file / a folder without a model / a place that cannot be written, odd YAML), sometimes on top of
an odd YAML config file, and runs the command in a fresh process (forked from a helper that has done the
imports). The property: exit 0, or exit 2 with exactly one stderr line and it begins with `error:`; never
a traceback; never a file written (the work folder, the model cache and the temp folder are compared before
and after). Fixed seed (derandomize) and a fixed budget, so CI is reproducible; the number of distinct
cases tried is printed. Holes found along the way are kept as named regression cases below.
"""

from __future__ import annotations

import dataclasses
import os
import time
import types
import typing
from pathlib import Path

import pytest
from conftest import TINY
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prefork import Prefork

from collapse.config import Config, all_keys

BUDGET = int(os.environ.get("COLLAPSE_FUZZ_EXAMPLES", "340"))  # about 300+ distinct cases
BASE = [*TINY, "data.max_documents=20", "generations=1", "generation.num_sequences=32", "generation.batch_size=16",
        "generation.prompt_tokens=16", "generation.new_tokens=16", "eval.max_blocks=16", "wandb.mode=disabled",
        "measure.samples=8", "measure.window=64"]
SEEN: set[tuple] = set()

# ---------------------------------------------------------------------- what the cases are made of


def _field(key: str) -> tuple[typing.Any, tuple | None]:
    """(type annotation, choices) of a dotted config key."""
    cls: typing.Any = Config
    parts = key.split(".")
    for p in parts[:-1]:
        cls = typing.get_type_hints(cls)[p]
    f = {f.name: f for f in dataclasses.fields(cls)}[parts[-1]]
    return typing.get_type_hints(cls)[parts[-1]], f.metadata.get("choices")


ODD_YAML = ["[", "{a: 1", "'unterminated", "!!python/object/apply:os.system ['true']", "a: b: c", "- x", "&a [*a]",
            "~", "null", "\t", "{}", "[]", "'", "\"", ":", "?", "%YAML 9.9", "---", "0x1F", "1e400", ".nan", "-.inf"]
WRONG = ["abc", "true", "false", "[1, 2]", "{x: 1}", "", "1.5", "-1", "0", "1e9", "99999999999999999999", "nan", "inf"]


def _paths(work: Path) -> list[str]:
    return [str(work / "nothing-here"), str(work / "afile.txt"), str(work / "empty"), str(work / "nomodel"),
            str(work / "afile.txt" / "sub"), "/proc/forbidden", str(work / "bad.jsonl"), str(work / "short.txt"),
            str(work / "doc.parquet"), str(work / "odd.suffix"), "kjv", "scratch", "org/name", "..", ".", "~"]


def value_strategy(key: str, work: Path) -> st.SearchStrategy[str]:
    tp, choices = _field(key)
    base = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
    pool = [st.sampled_from(WRONG), st.sampled_from(ODD_YAML)]
    if choices:
        pool.append(st.sampled_from(list(choices)))
    if base is int:
        pool += [st.integers(-5, 5).map(str), st.integers(0, 5000).map(str), st.sampled_from(["2**70", "1_000"])]
    elif base is float:
        pool += [st.floats(allow_nan=True, allow_infinity=True).map(repr), st.floats(0, 1).map(repr)]
    elif base is bool:
        pool += [st.sampled_from(["true", "false", "yes", "no", "on", "1", "maybe"])]
    elif typing.get_origin(base) is list and typing.get_args(base)[0] is dict:  # measure.decodings
        pool += [st.sampled_from(["[{temperature: 0}]", "[{num_beams: 2, repetition_penalty: 3}]", "[{bogus: 1}]",
                                  "[{temperature: .nan}]", "[{name: a}, {name: a}]", "[{top_p: 0}]", "[c_attn]", "[]"])]
    elif typing.get_origin(base) is list:
        pool += [st.sampled_from(["[c_attn]", "c_fc,c_proj", "[]", "[lm_head]", "[1, 2]", "[nope]", "[[a]]"])]
    else:  # str
        pool += [st.text(max_size=12).filter(lambda s: "\x00" not in s), st.sampled_from(_paths(work))]
    if key == "curate.kind":  # the registered curators, valid and not
        from collapse.loop.curate import CURATORS

        pool.append(st.sampled_from(["none", *CURATORS]))
    if key in ("out_dir", "data.source", "model.name_or_path"):
        pool = [st.sampled_from(_paths(work))] * 3 + pool
    return st.one_of(pool)


@st.composite
def cases(draw, work: Path):
    keys = draw(st.lists(st.sampled_from(all_keys()), min_size=1, max_size=3, unique=True))
    overrides = [f"{k}={draw(value_strategy(k, work))}" for k in keys]
    command = draw(st.sampled_from(["run", "measure"]))
    yaml_text = draw(st.none() | st.sampled_from([*ODD_YAML, "generation:\n  top_k: [1]\n", "model: 3\n",
                                                    "sweep: {seed: [0, 1]}\n", "train:\n  lora:\n    r: 0\n",
                                                    "points: [{curate.kind: random}]\n", "points: 3\n"]))
    return command, yaml_text, tuple(overrides)


# ---------------------------------------------------------------------- running one case


def _snapshot(*roots: Path) -> set[str]:
    out = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                out.add(os.path.join(dirpath, n))
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The work folder with its bad inputs, a built tiny scratch model (cached), and the forking helper."""
    from collapse.config import load_config
    from collapse.data import load_splits
    from collapse.models.scratch import get_scratch_model

    work = tmp_path_factory.mktemp("fuzz")
    (work / "afile.txt").write_text("not a folder\n")
    (work / "empty").mkdir()
    (work / "nomodel").mkdir()
    (work / "nomodel" / "README.md").write_text("no model here\n")
    (work / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    (work / "short.txt").write_text("too short\n\nfor anything\n")
    (work / "doc.parquet").write_bytes(b"PAR1 not really")
    (work / "odd.suffix").write_text("text\n")
    (work / "logs").mkdir()
    tmp = work / "tmp"  # the children's temp folder: a --check must leave nothing in it
    tmp.mkdir()
    # a model cache of its own: the session's is shared with the other pytest-xdist workers, whose builds would
    # show up as files a --check wrote
    shared, own = os.environ["COLLAPSE_CACHE"], work / "cache"
    os.environ["COLLAPSE_CACHE"] = str(own)
    cfg = load_config(None, BASE)
    get_scratch_model(cfg.model.scratch, load_splits(cfg.data), show_progress=False)
    runner = Prefork(env={"OMP_NUM_THREADS": "1"})  # one thread: no OpenMP pool, which a fork would deadlock
    for command in ("run", "measure"):  # the lazy imports of a check, done once for every child
        runner.warm([command, "--check", *BASE, f"out_dir={work / 'warm'}"])
    child_env = {**os.environ, "TMPDIR": str(tmp), "COLLAPSE_SKIP_REPORT": "1", "OMP_NUM_THREADS": "1"}
    try:
        yield work, runner, child_env
    finally:
        runner.close()
        os.environ["COLLAPSE_CACHE"] = shared


def run_check(env, command: str, yaml_text: str | None, overrides: tuple[str, ...], n: int):
    """Run one case; returns (exit code, stderr, files written)."""
    work, runner, child_env = env
    args = [command, "--check"]
    if yaml_text is not None:
        cfg = work / "logs" / f"{n}.yaml"
        cfg.write_text(yaml_text)
        args.append(str(cfg))
    out_dir = work / "runs" / str(n)  # fresh per case, unless the case sets its own
    args += [*BASE, f"out_dir={out_dir}", *overrides]
    stdout, stderr = work / "logs" / f"{n}.out", work / "logs" / f"{n}.err"
    before = _snapshot(work, Path(os.environ["COLLAPSE_CACHE"]))
    pid = runner.start(args, child_env, stdout, stderr, cwd=work)
    rc = runner.wait(pid, timeout=120)
    written = _snapshot(work, Path(os.environ["COLLAPSE_CACHE"])) - before - {str(stdout), str(stderr)}
    return rc, stderr.read_text(), sorted(written)


def assert_property(result, case) -> None:
    rc, err, written = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, f"{case}: a traceback\n{err[-3000:]}"
    assert rc in (0, 2), f"{case}: exit {rc}\n{err[-2000:]}"
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: not one error line:\n{err[-2000:]}"
    assert not written, f"{case}: --check wrote {written}"


# ---------------------------------------------------------------------- the fuzz test and the regressions


def drive(work: Path, budget: int, each) -> None:
    """``each(case)`` for ``budget`` cases drawn from :func:`cases` (fixed seed; no shrinking: a case is a few
    overrides already, and each try costs a process)."""
    @settings(max_examples=budget, derandomize=True, deadline=None, database=None, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    @given(cases(work))
    def prop(case):
        each(case)

    prop()


def test_fuzz_check_property(env, capsys):
    """Every generated case satisfies the property; all failures of the run are reported together."""
    work, failures, times = env[0], [], []

    def each(case):
        SEEN.add(case)
        t0 = time.perf_counter()
        result = run_check(env, *case, n=len(SEEN))
        times.append((time.perf_counter() - t0, case))
        try:
            assert_property(result, case)
        except AssertionError as e:
            failures.append(str(e))

    drive(work, BUDGET, each)
    with capsys.disabled():
        slow = sorted(times, key=lambda t: -t[0])[:3]
        print(f"\nfuzz: {len(SEEN)} distinct --check cases, {len(failures)} failing; slowest: "
              + "; ".join(f"{t:.1f} s {c}" for t, c in slow))
    assert not failures, f"{len(failures)} cases broke the property:\n\n" + "\n\n".join(failures[:20])
    assert len(SEEN) >= min(BUDGET * 0.88, 300), len(SEEN)  # hypothesis repeats a few; the budget is not cut


def _work(env) -> Path:
    return env[0]


# named regressions: the holes of the issue and those the fuzzer found (each once exited 1 or printed more)
REGRESSIONS = {
    "out_dir under a file": ("run", None, ("out_dir={work}/afile.txt/sub",)),
    "out_dir that cannot be created": ("run", None, ("out_dir=/proc/forbidden",)),
    "measure into a file": ("measure", None, ("out_dir={work}/afile.txt",)),
    "model folder without a model": ("run", None, ("model.name_or_path={work}/nomodel",)),
    "jsonl line that is not JSON": ("run", None, ("data.source={work}/bad.jsonl",)),
    # found by the fuzzer
    "negative split seed (numpy refused it)": ("run", None, ("data.split_seed=-1",)),
    "more samples than memory (MemoryError)": ("run", None, ("generation.num_sequences=99999999999999999999",)),
    "logging to a stream closed under it": ("run", None, ("data.max_documents=abc",)),
    "negative eval block size (numpy's reshape refused it)": ("run", None, ("eval.block_size=-3",)),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regression_case(env, name):
    command, yaml_text, overrides = REGRESSIONS[name]
    case = (command, yaml_text, tuple(o.format(work=_work(env)) for o in overrides))
    rc, err, written = result = run_check(env, *case, n=1000 + list(REGRESSIONS).index(name))
    assert_property(result, case)
    assert rc == 2, f"{name}: accepted\n{err}"


def test_beam_search_temperature_is_warned(env):
    rc, err, written = run_check(env, "run", None, ("generation.num_beams=3", "generation.temperature=0.5"), n=2000)
    out = (_work(env) / "logs" / "2000.out").read_text()
    assert rc == 0 and not written, err
    assert "temperature=0.5 has no effect with beam search" in out
    assert out.startswith("collapse run --check: ready") and "out_dir" in out and "W&B" in out
