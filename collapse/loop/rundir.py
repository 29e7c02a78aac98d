"""The run folder, without torch: layout, lock, manifest, resume checks, sample shards.

Shared by ``collapse run`` (writes it), ``collapse report`` and ``collapse sweep`` (read it).

    <out_dir>/config.yaml  manifest.json  metrics.jsonl  reference_counts.npy  .lock
    <out_dir>/gen_NNN/     samples.parquet  eval.json  metrics.json  gen0_ppl.npy  train.json
                           adapter/ or model/ (safetensors)   shards/ (while generating)

Every file is written atomically (``collapse.io.atomic_path``); a stage is recorded in the manifest
only after all its files are complete, so a kill at any moment loses at most the stage in flight.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

from collapse import fault
from collapse.config import RESULT_NEUTRAL_KEYS, Config, config_diff
from collapse.errors import ConfigError, DataError, first_line
from collapse.io import atomic_path, dumps_line, is_temp_name, read_id_column, read_json, write_text
from collapse.loop.integrity import damaged, redoing

STAGES = ("train", "evaluate", "harness", "generate", "curate", "measure")  # harness, curate: where the config asks
# a stage found broken on resume is redone together with the stages that read its files
REDO_WITH = {"train": ("train",), "evaluate": ("evaluate", "measure"), "harness": ("harness", "measure"),
             "generate": ("generate", "curate", "measure"), "curate": ("curate", "measure"), "measure": ("measure",)}
LOCK_NAME = ".lock"
EVAL_BLOCKS = "eval_blocks.npz"  # per test block and bucket: summed NLL and token count (the test intervals' units)
BOOTSTRAP = "bootstrap.npz"  # every figure of a generation under each bootstrap resample (paired changes)


def gen_dir(out: str | Path, g: int) -> Path:
    return Path(out) / f"gen_{g:03d}"


def gen_number(folder: str | Path) -> int | None:
    """g for a folder named ``gen_NNN``, else None."""
    name = Path(folder).name
    return int(name[4:]) if name.startswith("gen_") and name[4:].isdigit() else None


# ---------------------------------------------------------------------- manifest


class Manifest:
    """Which stages of which generation are complete. Written atomically after the files it names."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    @classmethod
    def load_or_new(cls, path: Path, fingerprint: str) -> Manifest:
        if path.is_file():
            try:
                data = read_json(path)
                if not isinstance(data, dict) or not isinstance(data.get("generations"), dict):
                    raise ValueError("no 'generations' table")
                if not all(isinstance(v, dict) and str(k).isdigit() for k, v in data["generations"].items()):
                    raise ValueError("malformed 'generations' table")
            except (ValueError, OSError, UnicodeDecodeError) as e:
                msg = first_line(e, 120)
                raise DataError(f"{path} is corrupt ({msg}): delete it to redo every stage of the run (same "
                                "results), or start over with resume=never overwrite=true.") from None
            data.pop("_current_gen", None)  # written by older versions
            return cls(path, data)
        return cls(path, {"version": 1, "fingerprint": fingerprint, "generations": {}, "complete": False,
                          "wandb_run_id": None})

    def done(self, g: int, stage: str) -> bool:
        return bool(self.data["generations"].get(str(g), {}).get(stage))

    def measured(self, last: int) -> list[int]:
        """The generations 0..last whose measure stage (their metrics row) is recorded."""
        return [g for g in range(last + 1) if self.done(g, "measure")]

    def mark(self, g: int, stage: str, is_main: bool) -> None:
        self.data["generations"].setdefault(str(g), {})[stage] = True
        self.save(is_main, g, stage)
        fault.point("between", g, stage)

    def clear(self, g: int, stages: tuple[str, ...]) -> None:
        entry = self.data["generations"].get(str(g), {})
        for s in stages:
            entry.pop(s, None)
        self.data["complete"] = False

    def save(self, is_main: bool, g: int | None = None, stage: str | None = None) -> None:
        """Write the manifest; ``(g, stage)`` names the record being added (the ``manifest`` fault point)."""
        if not is_main:
            return
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(dumps_line(self.data) + "\n")
            if g is not None:
                fault.point("manifest", g, stage)  # temporary file written, rename not yet done


# ---------------------------------------------------------------------- the folder


def prepare_out_dir(cfg: Config) -> tuple[Path, bool, bool]:
    """Check out_dir against the config; returns (path, resuming, wipe). Writes and deletes nothing.

    ``wipe``: the folder holds something and resume=never overwrite=true asks to start over; it is
    emptied only after the whole config has been validated (a typo must not cost a finished run).
    """
    out = Path(cfg.out_dir)
    cfg_path = out / "config.yaml"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} is a file, not a folder: choose another out_dir.")
    if out.is_dir() and any(p.name != LOCK_NAME and not is_temp_name(p.name) for p in out.iterdir()):
        if cfg.resume == "auto" and cfg_path.is_file():
            from collapse.config import load_config

            try:
                old = load_config(cfg_path, embedded=True)  # a resolved dump: every key is written
            except (ConfigError, ValueError, OSError) as e:  # damaged: the manifest's fingerprint still says whose
                if _manifest_fingerprint(out) == cfg.fingerprint():
                    return out, True, False  # the same config: it is written again
                raise ConfigError(f"{cfg_path} cannot be read ({first_line(e, 100)}) and the manifest does not "
                                  "vouch for this config: restore it, or rerun with resume=never overwrite=true.") from None
            if old.fingerprint() != cfg.fingerprint() and _manifest_fingerprint(out) == cfg.fingerprint():
                return out, True, False  # config.yaml disagrees with its own manifest (cut short): it is written again
            if old.fingerprint() != cfg.fingerprint():
                keys = [k for k in config_diff(old.to_dict(), cfg.to_dict()) if k.split(".")[0] not in RESULT_NEUTRAL_KEYS]
                raise ConfigError(f"{out} holds a run with a different config ({', '.join(keys)}): use another "
                                  "out_dir, or resume=never overwrite=true to start over.")
            return out, True, False
        if cfg.resume == "auto" and _manifest_fingerprint(out) == cfg.fingerprint():
            return out, True, False  # config.yaml lost, the manifest says the run is this config's: resume
        if cfg.resume == "auto":
            what = "holds no config.yaml for its manifest.json" if (out / "manifest.json").is_file() else "holds no run"
            raise ConfigError(f"{out} is not empty and {what}: choose another out_dir or set overwrite=true "
                              "with resume=never.")
        if not cfg.overwrite:
            raise ConfigError(f"{out} is not empty: add overwrite=true to delete it and start over.")
        return out, False, True
    return out, False, False


def base_file_digest(out: Path, file: Path) -> str:
    """The sha256 of a single-file base model (GGUF); a resume refuses a file the run did not begin with."""
    from collapse.models.gguf import sha256

    digest = sha256(file)
    try:
        recorded = read_json(out / "manifest.json").get("base_model_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None  # a new run, or a manifest the resume checks report on their own
    if recorded not in (None, digest):
        raise DataError(f"{file} is not the file this run began with (sha256 {digest[:12]}…, the run recorded "
                        f"{recorded[:12]}…): restore that file, or start over in another out_dir.")
    return digest


def _manifest_fingerprint(out: Path) -> str | None:
    """The config fingerprint a run folder's manifest records, or None (none, or unreadable)."""
    try:
        data = read_json(out / "manifest.json")
        return data.get("fingerprint") if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - a damaged manifest is reported where it is loaded
        return None


def lock_out_dir(out: Path):
    """Hold ``out/.lock`` (flock) for the process's lifetime; a second run in the same folder is refused."""
    try:
        import fcntl  # noqa: F401 - only to know whether this platform has flock
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return None
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / LOCK_NAME, "a+")  # noqa: SIM115 - held open until the run ends
    try:
        _take_lock(fh, out)
    except ConfigError:
        fh.close()
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def check_unlocked(out: Path) -> None:
    """Refuse a folder another `collapse run` holds, without taking its lock (nothing is written)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return
    lock = out / LOCK_NAME
    if not lock.is_file():
        return
    with open(lock) as fh:
        _take_lock(fh, out)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _take_lock(fh, out: Path) -> None:
    """flock ``fh`` (``out/.lock``) without waiting; refuse with the holder's pid when another run has it."""
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        pid = fh.read().strip()
        raise ConfigError(f"another `collapse run`{f' (pid {pid})' if pid else ''} is using {out} right now: wait "
                          "for it to end, or choose another out_dir.") from None


def empty_out_dir(out: Path) -> None:
    for p in out.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def clean_temp(out: Path) -> None:
    """Delete what a killed run was writing: hidden ``*.tmp`` files and folders (never a finished file)."""
    folders = [out, *sorted(out.glob("gen_*")), *sorted(out.glob("gen_*/shards"))]
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if is_temp_name(p.name):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def disk_full(e: BaseException | None) -> bool:
    """An OSError ENOSPC, or a library's wrapping of one (pyarrow, safetensors, torch say it in words)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def rewrite_metrics_jsonl(out: Path, gens: list[int]) -> None:
    """metrics.jsonl = the metrics.json rows of the measured generations ``gens``, rewritten whole (idempotent)."""
    lines = [dumps_line(read_json(gen_dir(out, g) / "metrics.json")) for g in sorted(gens)]
    write_text(out / "metrics.jsonl", "".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------- checks on resume


def _json_problem(d: Path, name: str, key: str) -> str | None:
    try:
        obj = read_json(d / name)
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"no '{key}'")
    except FileNotFoundError:
        return f"{d.name}/{name} is missing"
    except Exception as e:  # noqa: BLE001
        return f"{d.name}/{name} cannot be read ({first_line(e, 120)})"
    return None


def _samples_problem(d: Path, n_seq: int) -> str | None:
    import pyarrow.parquet as pq

    path = d / "samples.parquet"
    if not path.is_file():
        return f"{d.name}/samples.parquet is missing"
    try:
        pf = pq.ParquetFile(path)
        rows, names = pf.metadata.num_rows, set(pf.schema_arrow.names)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        return f"{d.name}/samples.parquet cannot be read ({first_line(e, 120)})"
    if not {"token_ids", "prompt_ids"} <= names:
        return f"{d.name}/samples.parquet lacks the token_ids/prompt_ids columns"
    if rows != n_seq:
        return f"{d.name}/samples.parquet holds {rows} rows, not {n_seq}"
    return None


def stage_problem(stage: str, g: int, out: Path, n_seq: int, weights_problem,
                  pool: tuple[int, int] | None = None) -> str | None:
    """Why the recorded stage ``stage`` of generation g cannot be trusted, or None. Reads metadata only
    (``weights_problem(folder)``: the model kind's check of a weights folder)."""
    d = gen_dir(out, g)
    if stage == "train":
        if g == 0:  # the fine-tune on real text (train.gen0_epochs)
            return weights_problem(d / "model")
        return _json_problem(d, "train.json", "val_nll")
    if stage == "evaluate":
        return _json_problem(d, "eval.json", "test_ppl")
    if stage == "harness":
        return _json_problem(d, "harness.json", "tasks")
    if stage == "generate":
        return _samples_problem(d, n_seq)
    if stage == "curate":  # pool: (its rows, the training rows); a pool of the samples alone without one
        return _curated_problem(d, *(pool or (n_seq, n_seq)))
    problem = _json_problem(d, "metrics.json", "test_ppl")
    if problem is None:
        try:
            np.load(d / "gen0_ppl.npy", allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            problem = f"{d.name}/gen0_ppl.npy cannot be read ({first_line(e, 120)})"
    if problem is None:
        problem = _intervals_problem(d)
    return problem


def _curated_problem(d: Path, n_pool: int, n_train: int) -> str | None:
    """A curate record that cannot be read, or whose rows do not add up to the pool and the training set."""
    problem = _json_problem(d, "curate.json", "kept_share")
    if problem is None:
        try:
            from collapse.loop.curate import read_repeats

            rep = read_repeats(d)
            if len(rep) != n_pool or int(rep.sum()) != n_train:
                return (f"{d.name}/curated.parquet holds {len(rep)} pool rows and {int(rep.sum())} training rows, not "
                        f"{n_pool} and {n_train}")
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            return f"{d.name}/curated.parquet cannot be read ({first_line(e, 120)})"
    return problem


OLDER = "measured without intervals (an older collapse)"


def _intervals_problem(d: Path) -> str | None:
    """A measured generation without its intervals (an older collapse) or with a damaged bootstrap.npz."""
    try:
        row = read_json(d / "metrics.json")
    except Exception:  # noqa: BLE001 - reported by _json_problem
        return None
    if "intervals" not in row:
        return OLDER
    if row["intervals"] is None:
        return None  # stats.resamples=0
    try:
        with np.load(d / BOOTSTRAP, allow_pickle=False) as z:
            z.files  # noqa: B018 - reads the zip directory
    except Exception as e:  # noqa: BLE001
        return f"{d.name}/bootstrap.npz cannot be read ({first_line(e, 120)})"
    return None


def verify_stages(manifest: Manifest, out: Path, generations: int, n_seq: int, weights_sub: str,
                  continues_previous: bool, weights_problem, curates: bool = False,
                  pool: tuple[int, int] | None = None, harness: bool = False) -> list[str]:
    """On resume: un-record every stage whose files are missing or damaged, so it is redone.

    A stage found broken is redone with the stages of its generation that read its files (samples ->
    measure, eval.json -> measure). Later generations stay: they were computed from the intact file,
    and the redone stage reproduces it exactly (every stage is deterministic). Weights (in
    ``gen_g/<weights_sub>``) are checked where a stage still to run needs them (they may be pruned by
    keep_checkpoints otherwise; ``continues_previous``: generation g+1 trains from model g); if they
    are missing or damaged, that generation's training is redone. Returns one note per redone stage.
    """
    notes, older = [], {}
    if manifest.data["generations"] and "checksums" not in manifest.data:
        notes.append("no checksums: this run folder was made before collapse recorded them; its files are checked "
                     "as before, the stages from now on record theirs")
    for g in range(generations, -1, -1):  # newest first: a redone training needs the weights before it
        if str(g) not in manifest.data["generations"]:
            continue
        for stage in STAGES:
            if not manifest.done(g, stage):
                continue
            why = stage_problem(stage, g, out, n_seq, weights_problem, pool) or damaged(manifest, out, g, stage)
            if why == OLDER:
                older[g] = "measure"
                manifest.clear(g, REDO_WITH[stage])
            elif why:  # a curate stage the run never recorded (no curate.kind) is not named
                redo = tuple(s for s in REDO_WITH[stage] if s != "curate" or stage == s or manifest.done(g, s))
                for s in redo:  # what the redo must give back where later generations were built on it
                    if manifest.done(g, s):
                        redoing(manifest, g, s)
                manifest.clear(g, redo)
                notes.append(f"gen {g}: {why}: redoing {'/'.join(redo)}")
        if manifest.done(g, "evaluate") and not (gen_dir(out, g) / EVAL_BLOCKS).is_file():
            # evaluated by an older collapse: the per-block losses behind the test intervals are missing;
            # evaluate again where the weights are at hand (never retrain for an interval)
            if (g == 0 and not manifest.done(0, "train")) or not weights_problem(
                    gen_dir(out, g) / ("model" if g == 0 else weights_sub)):
                manifest.clear(g, REDO_WITH["evaluate"])
                older[g] = "evaluate/measure"
        if g > 0 and manifest.done(g, "train"):
            needed = (not manifest.done(g, "evaluate") or not manifest.done(g, "generate")
                      or (harness and not manifest.done(g, "harness"))
                      or (continues_previous and g < generations and not manifest.done(g + 1, "train"))
                      or (curates and g < generations and not manifest.done(g, "curate")))  # may score with model g
            if needed:
                why = weights_problem(gen_dir(out, g) / weights_sub)
                if why:
                    manifest.clear(g, ("train",))
                    notes.append(f"gen {g}: weights needed to resume: {why}: redoing train")
    if older:  # one line for a run made before intervals, not two per generation
        gens = sorted(older)
        what = " and ".join(sorted(set(older.values())))
        notes.append(f"gens {', '.join(map(str, gens))} were measured by an older collapse (no intervals): redoing "
                     f"{what} for the intervals (nothing is retrained)")
    return notes


# ---------------------------------------------------------------------- samples on disk


def shard_path(d: Path, b: int) -> Path:
    return d / "shards" / f"b{b:06d}.parquet"


def finished_shards(d: Path) -> set[int]:
    """Batch shards on disk (written atomically: a shard that exists is complete)."""
    s = d / "shards"
    if not s.is_dir():
        return set()
    out = set()
    for f in s.glob("b*.parquet"):
        try:
            out.add(int(f.stem[1:]))
        except ValueError:
            continue
    return out


def merge_shards(d: Path, n_batches: int) -> None:
    """Stream the batch shards, in order, into one samples.parquet (one shard in memory at a time)."""
    import pyarrow.parquet as pq

    writer = None
    with atomic_path(d / "samples.parquet") as tmp:
        for b in range(n_batches):
            t = pq.read_table(shard_path(d, b))
            if writer is None:
                writer = pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
        if writer is not None:
            writer.close()
    shutil.rmtree(d / "shards", ignore_errors=True)


def load_samples(out: Path, g: int, keep_prompt: bool = False) -> np.ndarray:
    """Generation g's corpus as rows of token ids (continuations, or prompt + continuation)."""
    path = gen_dir(out, g) / "samples.parquet"
    try:
        gen = read_id_column(path, "token_ids")
        if keep_prompt:
            gen = np.concatenate([read_id_column(path, "prompt_ids"), gen], axis=1)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"{path} cannot be read ({first_line(e, 120)}): delete it and rerun the same command; "
                        "it is regenerated (identically) on resume.") from None
    return gen
