"""Checksums of a run folder: every file a stage writes gets its sha256 in the manifest when the stage is
recorded; a resume (and ``collapse verify``) compares them, so a damaged file is never read as data.

A stage whose file no longer matches is redone (``rundir.verify_stages``); the redone data that a rerun
reproduces bit for bit (weights, samples, evaluation and measurement files; not ``train.json``'s timings
nor a library's metadata such as ``adapter_config.json``, whose lists follow set order) must equal the
record when a later generation was built on them: otherwise the run stops with one line rather than mix
two histories.
Weights pruned by ``keep_checkpoints`` are simply absent, not damaged. Imports no torch.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from collapse.errors import DataError

KEY = "checksums"  # manifest: {"<g>": {"<stage>": {"<path in gen_g>": sha256}}}
EXPECTED = "checksums_redoing"  # the records of stages being redone after damage: what they must restore
EXACT_SUFFIXES = (".safetensors", ".parquet", ".npz", ".npy")  # data a redo gives back bit for bit
EXACT_NAMES = ("eval.json", "metrics.json", "curate.json")
STAGE_FILES = {"evaluate": ("eval.json", "eval_blocks.npz"), "harness": ("harness.json",), "generate": ("samples.parquet",),
               "curate": ("curated.parquet", "curate.json"),
               "measure": ("metrics.json", "gen0_ppl.npy", "bootstrap.npz")}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def stage_files(d: Path, stage: str) -> list[Path]:
    """The files of generation folder ``d`` that ``stage`` wrote (those present)."""
    if stage == "train":  # the weights: every folder of the generation but the shards in flight
        subs = sorted(p for p in d.iterdir() if p.is_dir() and p.name != "shards") if d.is_dir() else []
        files = [p for sub in subs for p in sorted(sub.rglob("*")) if p.is_file()]
        return files + ([d / "train.json"] if (d / "train.json").is_file() else [])
    return [d / n for n in STAGE_FILES.get(stage, ()) if (d / n).is_file()]


def exact(rel: str) -> bool:
    """Whether a redo reproduces the file bit for bit (else it is checked for damage only)."""
    return rel.endswith(EXACT_SUFFIXES) or rel in EXACT_NAMES


def _is_weights(rel: str) -> bool:
    return "/" in rel  # inside a weights folder (only weights live in a generation's folders)


def record(manifest, d: Path, g: int, stage: str, later_done: bool) -> float:
    """Put the sha256 of ``stage``'s files in the manifest (saved with the stage's record); returns the seconds.

    A stage redone after damage must give back what the later generations were built on (``later_done``):
    else DataError, before the stage is recorded."""
    t0 = time.perf_counter()
    sums = {p.relative_to(d).as_posix(): sha256(p) for p in stage_files(d, stage)}
    expected = manifest.data.get(EXPECTED, {}).get(str(g), {}).pop(stage, None)
    if expected is not None and later_done:
        for rel, want in expected.items():
            if not exact(rel) or rel not in sums:
                continue
            if sums[rel] != want:
                raise DataError(f"{d.name}/{rel} was damaged; redone here it differs from the file the later "
                                "generations were built on (another machine or thread count wrote it): restore it "
                                "from a copy, or start over with resume=never overwrite=true.")
    manifest.data.setdefault(KEY, {}).setdefault(str(g), {})[stage] = sums
    return time.perf_counter() - t0


def _compare(d: Path, sums: dict[str, str], only: tuple[str, ...] | None = None):
    """(path in ``d``, "ok" | "missing" | "damaged") of each recorded file; pruned weights are skipped (absent by
    ``keep_checkpoints``: where they are needed, the kind's check says so)."""
    for rel, want in sums.items():
        if only is not None and rel not in only:
            continue
        p = d / rel
        if not p.is_file():
            if not _is_weights(rel):
                yield rel, "missing"
            continue
        yield rel, "ok" if sha256(p) == want else "damaged"


def damaged(manifest, out: Path, g: int, stage: str) -> str | None:
    """The first file of a recorded stage whose bytes no longer match their checksum, or None."""
    d = out / f"gen_{g:03d}"
    for rel, state in _compare(d, manifest.data.get(KEY, {}).get(str(g), {}).get(stage) or {}):
        if state == "missing":
            return f"{d.name}/{rel} is missing"
        if state == "damaged":
            return f"{d.name}/{rel} does not match its checksum (damaged)"
    return None


def redoing(manifest, g: int, stage: str) -> None:
    """Keep the record of a damaged stage about to be redone: its redo is compared with it (``record``)."""
    sums = manifest.data.get(KEY, {}).get(str(g), {}).get(stage)
    if sums is not None:
        manifest.data.setdefault(EXPECTED, {}).setdefault(str(g), {}).setdefault(stage, sums)


def verify_folder(out: Path, only: tuple[str, ...] | None = None) -> tuple[list[str], int]:
    """``collapse verify``: (one line per damaged or missing file, files checked). Reads the folder only;
    ``only``: the file names to check (what ``collapse report`` reads)."""
    from collapse.io import read_json

    out = Path(out)
    path = out / "manifest.json"
    if not path.is_file():
        raise DataError(f"{out} holds no manifest.json: not a run folder of `collapse run`.")
    try:
        data = read_json(path)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path} cannot be read ({e}): the folder cannot be verified.") from None
    problems, checked = [], 0
    for g, stages in sorted((data.get(KEY) or {}).items(), key=lambda kv: int(kv[0])):
        d = out / f"gen_{int(g):03d}"
        for stage, sums in stages.items():
            for rel, state in _compare(d, sums, only):
                checked += state != "missing"
                if state == "missing":
                    problems.append(f"{d.name}/{rel}: missing (written by {stage})")
                elif state == "damaged":
                    problems.append(f"{d.name}/{rel}: damaged (its sha256 differs from the one {stage} recorded)")
    return problems, checked
