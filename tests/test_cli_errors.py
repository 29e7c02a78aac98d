"""User errors through the real command line: exit code 2, one clean `error:` line, nothing written."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, TINY_RUN, run_cli


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "body.jsonl").write_text("".join(json.dumps({"body": f"document number {i}"}) + "\n" for i in range(10)))
    (d / "empty.txt").write_text("")
    (d / "empty.jsonl").write_text("")
    (d / "empty_texts.jsonl").write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(10)))
    (d / "tiny.txt").write_text("\n\n".join(f"The quick brown fox {i}." for i in range(20)) + "\n")
    (d / "short.txt").write_text("\n\n".join(f"Short paragraph number {i}." for i in range(40)) + "\n")
    (d / "latin1.txt").write_bytes("Caf\u00e9 au lait.\n\nNa\u00efve.\n".encode("latin-1"))  # 0xe9 at byte 3
    (d / "bad.parquet").write_text("this is not parquet")
    (d / "mixed.jsonl").write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(4))
                                   + json.dumps({"body": "no text here"}) + "\n")
    (d / "a-folder").mkdir()
    return d


def _env(cache) -> dict:
    # an empty model cache of the test's own (it shows whether a model was built), and no network
    return {"COLLAPSE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# (id, command, overrides, text the error line must contain); `{d}` is the data folder
CASES = [
    ("unknown-key", "measure", ["generation.temprature=0.5"], "generation.temperature"),
    ("wrong-type", "measure", ["generations=abc"], "generations"),
    ("out-of-range-window", "measure", ["measure.window=255"], "measure.window"),
    ("missing-data-file", "measure", ["data.source=/nonexistent/x.txt"], "/nonexistent/x.txt"),
    ("text-field-absent", "measure", ["data.source={d}/body.jsonl"], "body"),
    ("data-not-a-regular-file", "measure", ["data.source=/dev/null"], "not a regular file"),
    ("data-a-folder", "measure", ["data.source={d}/a-folder"], "not a regular file (a folder)"),
    ("data-not-utf8", "measure", ["data.source={d}/latin1.txt"], "not UTF-8 text (byte 3 is 0xe9)"),
    ("data-not-parquet", "measure", ["data.source={d}/bad.parquet"], "not a readable parquet file"),
    ("jsonl-row-without-text-field", "measure", ["data.source={d}/mixed.jsonl"], "line 5 has no `text` field"),
    ("empty-txt", "measure", ["data.source={d}/empty.txt"], "empty"),
    ("empty-jsonl", "measure", ["data.source={d}/empty.jsonl"], "empty"),
    ("empty-texts-jsonl", "measure", ["data.source={d}/empty_texts.jsonl"], "empty"),
    ("examples-too-short", "measure", ["data.source={d}/short.txt", "measure.window=256"], "shorter than"),
    # long enough for the window, too small to pre-train the scratch model on a single 128-token block
    ("corpus-too-small-for-scratch", "measure", ["data.source={d}/tiny.txt", "measure.window=8"], "block_size"),
    ("window-beyond-context", "measure", ["measure.window=512"], "context of 256"),
    ("hub-dataset-offline", "measure", ["data.source=some-org/some-dataset"], "offline"),
    ("no-such-model-folder", "measure", ["model.name_or_path=./no-such-model"], "no-such-model"),
    ("hub-id-offline", "measure", ["model.name_or_path=some-org/some-model"], "offline"),
    ("run-real-fraction", "run", ["regime.real_fraction=-0.1"], "regime.real_fraction"),
    ("run-generations-0", "run", ["generations=0"], "generations"),
    ("run-beyond-context", "run", ["generation.prompt_tokens=200", "generation.new_tokens=100"], "context of 256"),
    ("run-lora-targets", "run", ["train.lora.target_modules=[nope]"], "nope"),
    # once refused by the training stage after generation 0 was written (issue 40): now by the plan
    ("run-batch-not-divisible", "run", ["train.batch_size=3", "train.grad_accum=2"],
     "train.batch_size=3 must be divisible by processes × train.grad_accum = 1 × 2"),
    ("measure-bad-decoding", "measure", ["measure.decodings=[{{num_beams: 0}}]"], "measure.decodings[0]"),
    # the curate stage (issue 38): an unknown curator, a share outside (0, 1], a scoring model that does not exist
    ("run-curate-unknown-kind", "run", ["curate.kind=magic"], "curate.kind='magic' is not one of"),
    ("run-curate-share-0", "run", ["curate.kind=reference", "curate.share=0"], "curate.share=0.0 is out of range"),
    ("run-curate-share-above-1", "run", ["curate.kind=random", "curate.share=1.5"], "curate.share=1.5 is out of range"),
    ("run-curate-no-such-model", "run", ["curate.kind=perplexity", "curate.score_with=gen7"], "curate.score_with"),
]


def test_a_setting_a_stage_would_refuse_is_refused_by_check_too(tmp_path):
    out = tmp_path / "r"
    r = run_cli("run", "--check", "train.batch_size=3", "train.grad_accum=2", f"out_dir={out}",
                env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "must be divisible" in lines[0], r.stderr[-2000:]
    assert not out.exists()


def test_check_reads_the_process_count_from_the_launchers_environment(tmp_path):
    """`--check` builds no Accelerator: the launcher's WORLD_SIZE and RANK are what it divides by and who prints."""
    launched = {"HF_HUB_OFFLINE": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "true"}
    r = run_cli("run", "--check", "train.batch_size=3", f"out_dir={tmp_path / 'r'}", env={**launched, "RANK": "0"})
    assert r.returncode == 2 and "= 2 × 1" in r.stderr, r.stderr[-2000:]
    main = run_cli("run", "--check", f"out_dir={tmp_path / 'r'}", env={**launched, "RANK": "0"})
    assert main.returncode == 0 and "2 process(es) on cpu" in main.stdout, main.stderr[-2000:]
    other = run_cli("run", "--check", f"out_dir={tmp_path / 'r'}", env={**launched, "RANK": "1"})
    assert other.returncode == 0 and other.stdout == "", other.stdout  # one plan, from the main process
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command, overrides, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_clean_line(tmp_path, data_files, command, overrides, needle):
    out = tmp_path / "out"
    base = TINY_RUN if command == "run" else TINY
    args = [o.format(d=data_files) for o in overrides]
    cache = tmp_path / "cache"
    r = run_cli(command, *base, *args, f"out_dir={out}", env=_env(cache), timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr[-3000:]}"
    assert lines[0].startswith("error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert not out.exists(), f"{out} was written: {sorted(p.name for p in out.rglob('*'))}"
    # every case fails before a model is built: the (empty) model cache stays empty
    built = sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []
    assert not built, f"a model was built or cached before the error: {built}"


def test_overrides_may_follow_an_option(tmp_path):
    # `collapse run CONFIG --check key=value`: the overrides after --check count; an unknown option does not
    r = run_cli("run", "configs/tiny.yaml", "--check", "seed=3", f"out_dir={tmp_path / 'o'}", "wandb.mode=disabled")
    assert r.returncode == 0 and f"{tmp_path / 'o'}: new run" in r.stdout, r.stderr[-2000:]
    r = run_cli("run", "--check", "--bogus", f"out_dir={tmp_path / 'o'}")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
