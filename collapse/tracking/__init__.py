"""A small logger protocol, W&B one backend of it: the window onto the recursion.

What a `collapse run` logs to W&B (``wandb.mode``, default ``auto``):

* per generation, against ``generation``: every scalar of metrics.jsonl, the tail loss and bucket shift per
  bucket, the gen0-perplexity histogram, a few sample texts, the tail loss of all buckets on one chart
  (``charts/tail_loss``), the bucket-shift heatmap and the test-perplexity plot as images;
* every fine-tune, against ``train/step`` (continuing across generations; ``train/generation`` says whose):
  ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s`` every ``wandb.log_every`` steps,
  ``val/nll`` and ``train/epoch_loss`` per epoch;
* artifacts with their lineage: corpus g (``samples.parquet``, made from model g) and model g (the adapter or
  model, made from the corpora it was trained on and its starting weights; ``wandb.log_weights=false`` keeps
  only that record), and ``report.html`` at the end (what is logged when: :mod:`collapse.tracking.run`). Offline, one run logs them all with the made-from
  metadata; online, each training and each generation is also a short run of the same group that *uses* its
  inputs and logs its output, so W&B's lineage graph draws the recursion (a graph is acyclic: one run cannot
  both make and use a corpus).

W&B is imported lazily, used on the main process only, never prompts, and the key never reaches the run
folder (the config we upload is the resolved config, which holds no key). ``run`` holds what a run logs,
stage by stage. May import config, errors, io, metrics (the row's figures), report (the charts); never the loop.

Resume. W&B's own step (``_step``) of every row is a function of (generation, training step) alone
(:class:`StepAxis`), so a resumed process logs each row at the step the killed one used. Rows and artifacts
the W&B run already has are not logged again: online, W&B says from which step on it lacks rows
(``starting_step``) and gives an artifact logged twice with the same content one version; offline, every
process writes its own segment file (``wandb/offline-run-*-<id>/``), so the earlier segments are read
(:func:`offline_state`): what the killed process flushed to disk is skipped, the rest is logged again.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("collapse")


class Logger(Protocol):
    active: bool

    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def log_train(self, metrics: dict[str, Any], generation: int, step: int) -> None: ...
    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...
    def log_histogram(self, key: str, values: np.ndarray, step: int, bins: np.ndarray | None = None) -> None: ...
    def log_image(self, key: str, path: str | Path, step: int) -> None: ...
    def log_lines(self, key: str, xs: list, ys: list[list], keys: list[str], title: str, step: int,
                  xname: str = "generation") -> None: ...
    def log_artifact(self, name: str, type: str, paths: list[Path], metadata: dict, uses: tuple[str, ...] = (),
                     job: str | None = None) -> None: ...
    def log_config(self, config: dict[str, Any]) -> None: ...
    def close(self, exit_code: int = 0) -> None: ...


class NullLogger:
    active = False
    log_weights = False

    def log(self, metrics, step):
        pass

    def log_train(self, metrics, generation, step):
        pass

    def log_table(self, key, columns, rows, step):
        pass

    def log_histogram(self, key, values, step, bins=None):
        pass

    def log_image(self, key, path, step):
        pass

    def log_lines(self, key, xs, ys, keys, title, step, xname="generation"):
        pass

    def log_artifact(self, name, type, paths, metadata, uses=(), job=None):
        pass

    def log_config(self, config):
        pass

    def has_generation(self, g: int) -> bool:
        return True  # nothing to log

    def close(self, exit_code: int = 0):
        pass


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"tail_loss": {"1-10": 3.2}}`` -> ``{"tail_loss/1-10": 3.2}`` (W&B draws each as a line series)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) or v is None:
            if v is not None:
                out[key] = float(v) if isinstance(v, (float, np.floating)) else int(v)
    return out


# ---------------------------------------------------------------------- which mode


def logged_in() -> bool:
    """Whether W&B would find credentials without asking: what wandb 0.31 reads (``wbauth._use_system_auth``):
    WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, or a netrc entry (NETRC, else ~/.netrc) for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import netrc
    from urllib.parse import urlsplit

    path = Path(os.environ["NETRC"]).expanduser() if os.environ.get("NETRC") else Path.home() / ".netrc"
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        creds = netrc.netrc(path).authenticators(host) if path.is_file() and host else None
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(creds and creds[2])




def resolve_mode(mode: str) -> tuple[str, str]:
    """``wandb.mode`` -> (``disabled`` | ``offline`` | ``online``, why, when it is not what was asked)."""
    if mode == "auto":
        env = {"dryrun": "offline", "run": "online"}.get(os.environ.get("WANDB_MODE", "").strip().lower(),
                                                         os.environ.get("WANDB_MODE", "").strip().lower())
        if env in ("disabled", "offline"):
            return env, f"WANDB_MODE={env}"
        if env != "online":
            return ("online", "logged in to W&B") if logged_in() else ("offline", "not logged in to W&B")
        mode = "online"
    if mode == "online" and not logged_in():
        return "offline", "no W&B API key (WANDB_API_KEY or netrc)"
    return mode, ""


# ---------------------------------------------------------------------- W&B's step of every row


class StepAxis:
    """W&B's ``_step`` for every row, the same in a resumed process as in the killed one.

    Rows come in this order: generation 0's fine-tune steps (``train.gen0_epochs``), generation 0's row,
    generation 1's fine-tune steps, generation 1's row, ... ``steps_of(g)`` is the number of optimizer steps
    of generation g's fine-tune (0 when it has none), read from the finished fine-tunes' train.json.
    """

    def __init__(self, steps_of: Callable[[int], int] = lambda g: 0):
        self.steps_of = steps_of

    def _trained_before(self, g: int) -> int:
        return sum(self.steps_of(k) for k in range(g))

    def train_step(self, g: int, s: int) -> int:
        """``train/step`` of step s (1-based) of generation g's fine-tune: continues across generations."""
        return self._trained_before(g) + s

    def train(self, g: int, s: int) -> int:
        return self._trained_before(g) + g + s - 1

    def row(self, g: int) -> int:
        return self._trained_before(g) + g + self.steps_of(g)


def train_steps(out: Path) -> Callable[[int], int]:
    """``steps_of`` for :class:`StepAxis` from a run folder: gen_g/train.json's ``steps`` (kept once read)."""
    known: dict[int, int] = {}

    def steps_of(g: int) -> int:
        if g not in known:
            p = Path(out) / f"gen_{g:03d}" / "train.json"
            if not p.is_file():
                return 0
            known[g] = int(json.loads(p.read_text()).get("steps", 0))
        return known[g]

    return steps_of


# ---------------------------------------------------------------------- what earlier offline segments hold


def _records(path: Path):
    """The Record protobufs of a ``run-*.wandb`` file up to its first damage (a killed process leaves a tail).

    The format (wandb-core's transaction log, a leveldb log): a 7-byte header (``:W&B``, magic 0xBEE1 as
    uint16 LE, version 0), then 32 KiB blocks counted from offset 0; each chunk is crc32 (uint32 LE, IEEE
    over the type byte then the payload), payload length (uint16 LE), type (1 full, 2 first, 3 middle,
    4 last) and the payload, never crossing a block (fewer than 7 bytes left: zero padding). A record's
    reassembled payload is a ``wandb_internal_pb2.Record``; the file is written a block at a time, so a
    killed process loses its last partial block.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        return
    pos, pending = 7, None
    while True:
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        if pos + 7 > len(data):
            return
        crc, n, kind = struct.unpack_from("<IHB", data, pos)
        if crc == n == kind == 0 and pending is None:
            pos += left
            continue
        payload = data[pos + 7:pos + 7 + n]
        if kind not in (1, 2, 3, 4) or len(payload) < n or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            return
        pos += 7 + n
        if kind == 1:
            whole = payload
        elif kind == 2:
            pending = [payload]
            continue
        elif pending is None:
            return
        else:
            pending.append(payload)
            if kind == 3:
                continue
            whole, pending = b"".join(pending), None
        rec = wandb_internal_pb2.Record()
        try:
            rec.ParseFromString(whole)
        except Exception:  # noqa: BLE001 - damaged: what came before stands
            return
        yield rec


def offline_segments(run_dir: Path, run_id: str) -> list[Path]:
    """The folders of every offline segment of W&B run ``run_id`` under ``run_dir/wandb``, oldest first."""
    found = [p.parent for p in (Path(run_dir) / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb")]
    return sorted(found, key=lambda d: d.name)


def offline_state(run_dir: Path, run_id: str) -> tuple[int, set[str]]:
    """(the first W&B step no earlier offline segment holds, the artifact names they hold)."""
    last, names = -1, set()
    for d in offline_segments(run_dir, run_id):
        for rec in _records(d / f"run-{run_id}.wandb"):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                steps = [int(json.loads(i.value_json)) for i in rec.history.item
                         if (i.key or "/".join(i.nested_key)) == "_step" and i.value_json]
                step = steps[0] if steps else (rec.history.step.num if rec.history.HasField("step") else -1)
                last = max(last, step)
            elif kind == "artifact":
                names.add(rec.artifact.name)
    return last + 1, names


# ---------------------------------------------------------------------- the W&B backend


class WandbLogger:
    """One W&B run (and, online, a short run per training and per generation for the lineage graph)."""

    active = True

    def __init__(self, *, mode: str, project: str, entity: str | None, group: str | None, tags: list[str],
                 name: str | None, run_dir: Path, config: dict[str, Any], run_id: str | None = None,
                 resume: bool = False, log_weights: bool = True, log_every: int = 1, axis: StepAxis | None = None,
                 wandb_module=None):
        if wandb_module is None:
            import wandb as wandb_module
        wandb = self._wandb = wandb_module
        asked = mode
        self.mode, why = resolve_mode(mode)
        if self.mode == "offline" and asked == "online":
            log.warning(f"wandb.mode=online but {why}: logging offline (`wandb sync` later).")
        self.run_dir, self.project, self.entity, self.group = Path(run_dir), project, entity, group
        self.name = name or Path(run_dir).name
        self.log_weights, self.log_every = log_weights, log_every
        self.axis = axis or StepAxis()
        self.first_step, self.artifacts_logged = 0, set()
        if resume and run_id and self.mode == "offline":
            self.first_step, self.artifacts_logged = offline_state(self.run_dir, run_id)
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_DISABLE_GIT", "true")
        self._settings = wandb.Settings(console="off", save_code=False, disable_git=True, x_disable_stats=True)
        init = dict(project=project, entity=entity, group=group, tags=list(tags) or None, name=self.name,
                    dir=str(run_dir), config=config, id=run_id, resume="allow" if resume else None,
                    settings=self._settings, reinit="create_new")
        try:
            self.run = wandb.init(mode=self.mode, **init)
        except Exception as e:  # noqa: BLE001 - online but no server: the run goes on, offline
            if self.mode != "online":
                raise
            log.warning(f"W&B could not start online ({type(e).__name__}: {str(e)[:200]}): logging offline.")
            self.mode = "offline"
            if resume and run_id:
                self.first_step, self.artifacts_logged = offline_state(self.run_dir, run_id)
            self.run = wandb.init(mode="offline", **init)
        self.id = self.run.id
        if self.mode == "online":
            start = getattr(self.run, "starting_step", 0)
            self.first_step = max(self.first_step, start if isinstance(start, int) else 0)
        self._last = -1  # W&B's step of the latest row logged (W&B drops a row logged below it)
        self._defined: set[str] = set()
        self._made: dict[str, Any] = {}  # artifacts logged by this process, by name (online: the lineage runs use them)

    # ---- rows

    def _emit(self, data: dict[str, Any], wstep: int, x: str) -> None:
        if wstep < self.first_step or wstep < self._last:  # the W&B run has it already
            return
        for k in data:  # each series gets its x-axis once: `generation`, or `train/step` for training curves
            if k not in self._defined:
                self._defined.add(k)
                self.run.define_metric(k, **({} if k == x else {"step_metric": x}))
        self.run.log(data, step=wstep)
        self._last = wstep

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """One generation's series (``step`` is the generation)."""
        self._emit({**flatten(metrics), "generation": step}, self.axis.row(step), "generation")

    def log_train(self, metrics: dict[str, Any], generation: int, step: int) -> None:
        """One point of generation ``generation``'s training curves; ``step`` counts from 1 in its fine-tune."""
        self._emit({**flatten(metrics), "train/step": self.axis.train_step(generation, step),
                    "train/generation": generation}, self.axis.train(generation, step), "train/step")

    def _media(self, key: str, obj, step: int) -> None:
        self._emit({key: obj, "generation": step}, self.axis.row(step), "generation")

    def log_table(self, key, columns, rows, step):
        self._media(key, self._wandb.Table(columns=columns, data=rows), step)

    def log_histogram(self, key, values, step, bins=None):
        values = np.asarray(values, dtype=np.float64)
        if bins is not None:
            hist = self._wandb.Histogram(np_histogram=np.histogram(values, bins=bins))
        else:
            hist = self._wandb.Histogram(values)
        self._media(key, hist, step)

    def log_image(self, key, path, step):
        self._media(key, self._wandb.Image(str(path)), step)

    def log_lines(self, key, xs, ys, keys, title, step, xname="generation"):
        """Several series on one chart (W&B's ``line_series``), e.g. the tail loss of every bucket."""
        if self.has_generation(step):
            return
        chart = self._wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=title, xname=xname)
        self._media(key, chart, step)

    # ---- artifacts

    def log_artifact(self, name: str, type: str, paths: list[Path], metadata: dict, uses: tuple[str, ...] = (),
                     job: str | None = None) -> None:
        """Log ``paths`` as artifact ``name`` once. ``uses``: the artifacts it was made from; online, a short run
        (``job``) of this run's group uses them and logs it, so the lineage graph draws the edge."""
        if name in self.artifacts_logged:
            return
        try:
            self._log_artifact(name, type, paths, metadata, uses, job)
        except Exception as e:  # noqa: BLE001 - W&B must not stop the recursion; a resumed run tries again
            log.warning(f"W&B: artifact {name} not logged ({e.__class__.__name__}: {str(e)[:200]}).")

    def _log_artifact(self, name, type, paths, metadata, uses, job) -> None:
        import tempfile

        art = self._wandb.Artifact(name, type=type, metadata=metadata)
        with tempfile.TemporaryDirectory(prefix="collapse-wandb-") as tmp:  # added files are copied at once
            (Path(tmp) / "made_from.json").write_text(json.dumps(metadata, indent=1, default=str) + "\n")
            art.add_file(str(Path(tmp) / "made_from.json"))
        for p in paths:
            p = Path(p)
            if p.is_dir():
                art.add_dir(str(p))
            else:
                art.add_file(str(p))
        if self.mode == "online" and job is not None:
            stage = self._wandb.init(project=self.project, entity=self.entity, group=self.group or self.name,
                                     job_type=job.split("-")[0], name=f"{self.name}-{job}", mode="online",
                                     dir=str(self.run_dir), settings=self._settings, reinit="create_new",
                                     config={"made_by": self.id})
            try:
                for u in uses:
                    made = self._made.get(u)
                    if made is not None:
                        made.wait()  # logged by an earlier lineage run of this process: committed first
                        stage.use_artifact(made)
                    else:  # logged before a resume: this run's name is unique (it carries the run id)
                        stage.use_artifact(f"{u}:latest")
                stage.log_artifact(art)
            finally:
                stage.finish()
        else:
            self.run.log_artifact(art)
        self._made[name] = art
        self.artifacts_logged.add(name)

    def log_config(self, config):
        self.run.config.update(config, allow_val_change=True)

    def has_generation(self, g: int) -> bool:
        """Whether the W&B run already holds generation g's row (a resumed run)."""
        return self.axis.row(g) < max(self.first_step, self._last)

    def sync_command(self) -> str | None:
        """The exact command that uploads this offline run (every segment of a resumed one, oldest first)."""
        if self.mode != "offline":
            return None
        dirs = offline_segments(self.run_dir, self.id)
        return "wandb sync " + " ".join(shlex.quote(str(d)) for d in dirs) if dirs else None

    def close(self, exit_code: int = 0):
        self.run.finish(exit_code=exit_code)
        cmd = self.sync_command()
        if cmd and exit_code == 0:
            log.info(f"W&B: logged offline; to upload: {cmd}")


def make_logger(wcfg, run_dir: Path, config: dict[str, Any], is_main: bool, run_id: str | None = None,
                resume: bool = False, axis: StepAxis | None = None):
    if not is_main or not wants_wandb(wcfg):
        return NullLogger()
    return WandbLogger(mode=wcfg.mode, project=wcfg.project, entity=wcfg.entity, group=wcfg.group, tags=wcfg.tags,
                       name=wcfg.name or Path(run_dir).name, run_dir=Path(run_dir), config=config, run_id=run_id,
                       resume=resume, log_weights=getattr(wcfg, "log_weights", True),
                       log_every=getattr(wcfg, "log_every", 1), axis=axis)


def wants_wandb(wcfg) -> bool:
    return resolve_mode(wcfg.mode)[0] != "disabled"


def new_run_id() -> str:
    """A W&B run id, chosen before ``wandb.init`` so a run killed at any moment resumes the same W&B run.

    Under ``wandb agent`` (a W&B sweep) the agent's id: the sweep waits for the run it started."""
    import secrets
    import string

    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def close_quietly(logger, exit_code: int) -> None:
    """Close ``logger`` on the way out of a failed run; never hide the error that stopped it."""
    if logger is None:
        return
    try:
        logger.close(exit_code=exit_code)
    except Exception:  # noqa: BLE001
        pass
