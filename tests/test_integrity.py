"""A run folder you can trust: each stage records the sha256 of what it wrote; a resume and `collapse verify`
compare them, so a damaged file is redone to the same numbers or refused with one line, never read as data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_RUN, run_cli


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "run"
    r = run_cli("run", *TINY_RUN, f"out_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _flip(path: Path) -> None:
    """Bytes inverted in the middle of the file: its size and header stay intact."""
    b = bytearray(path.read_bytes())
    i = len(b) // 2
    b[i:i + 8] = bytes(x ^ 0xFF for x in b[i:i + 8])
    path.write_bytes(bytes(b))


def _rerun(out: Path):
    return run_cli("run", *TINY_RUN, f"out_dir={out}")


def _error_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


def test_every_stage_records_the_sha256_of_its_files(finished):
    sums = json.loads((finished / "manifest.json").read_text())["checksums"]
    assert sorted(sums) == ["0", "1", "2"]
    assert set(sums["1"]) == {"train", "evaluate", "generate", "measure"}
    assert "adapter/adapter_model.safetensors" in sums["1"]["train"] and "train.json" in sums["1"]["train"]
    assert set(sums["1"]["measure"]) == {"metrics.json", "gen0_ppl.npy", "bootstrap.npz"}
    r = run_cli("verify", str(finished))
    assert r.returncode == 0 and "files match their checksums" in r.stdout, r.stderr


def test_verify_names_each_damaged_or_missing_file(finished, tmp_path):
    out = _copy(finished, tmp_path)
    _flip(out / "gen_001" / "adapter" / "adapter_model.safetensors")
    (out / "gen_002" / "samples.parquet").unlink()
    r = run_cli("verify", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stdout.splitlines() == [
        "gen_001/adapter/adapter_model.safetensors: damaged (its sha256 differs from the one train recorded)",
        "gen_002/samples.parquet: missing (written by generate)"]
    assert len(_error_lines(r)) == 1 and "2 file(s)" in _error_lines(r)[0]
    m = json.loads((out / "manifest.json").read_text())  # a folder from before checksums: said, not refused
    m.pop("checksums")
    (out / "manifest.json").write_text(json.dumps(m))
    r = run_cli("verify", str(out))
    assert r.returncode == 0 and "no checksums" in r.stdout


def test_a_folder_from_before_checksums_resumes_with_one_note(finished, tmp_path):
    out = _copy(finished, tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    m.pop("checksums")
    (out / "manifest.json").write_text(json.dumps(m))
    r = _rerun(out)
    assert r.returncode == 0 and sum("no checksums" in ln for ln in r.stderr.splitlines()) == 1, r.stderr[-2000:]
    assert (out / "metrics.jsonl").read_bytes() == (finished / "metrics.jsonl").read_bytes()


def test_the_report_refuses_a_damaged_file_it_would_read(finished, tmp_path):
    out = _copy(finished, tmp_path)
    _flip(out / "gen_001" / "metrics.json")
    r = run_cli("report", str(out), "--out", str(tmp_path / "rep"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(_error_lines(r)) == 1 and "gen_001/metrics.json: damaged" in _error_lines(r)[0], r.stderr[-2000:]


def test_a_flipped_adapter_is_redone_to_the_same_numbers(finished, tmp_path):
    """The fault that once went silent: bytes flipped inside a finished generation's weights."""
    out = _copy(finished, tmp_path)
    _flip(out / "gen_001" / "adapter" / "adapter_model.safetensors")
    r = _rerun(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gen_001/adapter/adapter_model.safetensors does not match its checksum" in r.stderr
    assert (out / "metrics.jsonl").read_bytes() == (finished / "metrics.jsonl").read_bytes()
    assert run_cli("verify", str(out)).returncode == 0


def test_a_redo_that_cannot_give_back_the_file_stops_with_one_line_and_keeps_later_generations(finished, tmp_path):
    """As if another machine had written generation 1's samples: the record names bytes this one cannot remake."""
    out = _copy(finished, tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    m["checksums"]["1"]["generate"]["samples.parquet"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(m))
    r = _rerun(out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = _error_lines(r)
    assert len(errors) == 1 and "gen_001/samples.parquet" in errors[0] and "differs" in errors[0], r.stderr[-2000:]
    assert (out / "gen_002" / "metrics.json").read_bytes() == (finished / "gen_002" / "metrics.json").read_bytes()


# every kind of file a rerun reads, damaged three ways; the rerun of the same command must end with the
# undamaged run's metrics or with one line naming the file, never with other numbers and exit 0
FILES = ["gen_001/samples.parquet", "gen_001/adapter/adapter_model.safetensors", "gen_001/adapter/adapter_config.json",
         "gen_001/train.json", "gen_001/eval.json", "gen_001/eval_blocks.npz", "gen_001/metrics.json",
         "gen_001/bootstrap.npz", "gen_001/gen0_ppl.npy", "gen_002/samples.parquet", "manifest.json", "config.yaml",
         "metrics.jsonl", "reference_counts.npy"]
DAMAGE = ["flip", "truncate", "delete"]


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", FILES)
def test_corruption_fuzz(finished, tmp_path, name, damage):
    out = _copy(finished, tmp_path)
    path = out / name
    if damage == "flip":
        _flip(path)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()
    r = _rerun(out)
    if r.returncode == 0:
        assert (out / "metrics.jsonl").read_bytes() == (finished / "metrics.jsonl").read_bytes(), r.stderr[-2000:]
    else:
        errors = _error_lines(r)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert len(errors) == 1 and Path(name).name in errors[0], r.stderr[-2000:]
