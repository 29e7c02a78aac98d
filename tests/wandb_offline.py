"""Minimal reader for W&B offline run files (``run-<id>.wandb``).

wandb 0.31 ships no public Python reader for the ``.wandb`` transaction log
(the writer lives in the Go ``wandb-core`` binary; the old Python
``wandb/sdk/internal/datastore.py`` is gone), so this module decodes it
directly.  Dependencies: the standard library plus ``wandb.proto`` (protobuf).

File format
-----------
Checked against wandb's ``core/pkg/leveldb/record.go`` (writer/reader),
``core/internal/transactionlog`` (uses ``leveldb.CRCAlgoIEEE``, header
version 0) and the legacy ``wandb/sdk/internal/datastore.py``:

* The file starts with a 7-byte W&B header: ident ``b":W&B"`` (4 bytes),
  magic ``0xBEE1`` (uint16 LE), version ``0`` (uint8).
* The header is part of block 0: the file is a sequence of 32 KiB blocks
  counted from file offset 0 (block 0 holds the 7 header bytes + chunks).
  The last block may be short (the writer flushes partial blocks).
* Chunk = crc32 (uint32 LE), payload length (uint16 LE), type (uint8:
  FULL=1, FIRST=2, MIDDLE=3, LAST=4), payload.  Chunks never cross a block
  boundary; a record that does not fit is split FIRST/MIDDLE*/LAST.  A FIRST
  chunk may be empty (chunk header written in the last 7 bytes of a block).
* If fewer than 7 bytes remain in a block they are zero padding; the next
  chunk starts at the next block.
* crc = IEEE CRC-32 over the type byte followed by the payload, i.e.
  ``zlib.crc32(payload, zlib.crc32(bytes([type])))``.
* Each reassembled payload is a serialized
  ``wandb.proto.wandb_internal_pb2.Record``.

When the file is complete (buffering!)
--------------------------------------
wandb-core keeps the current 32 KiB block in memory and writes it only when
the block is full or the stream closes.  So (verified with 0.31.0, offline):
during a run the file may be just the 7-byte header even after many
``run.log`` calls; a hard-killed (SIGKILL) process loses its unwritten
partial block -- for a short run, everything after the header (verified:
wandb-core exits without flushing); and
``run.finish()`` can return ~10 ms *before* the file is complete.  Use
:func:`wait_until_finished` after ``finish()`` before reading.

Truncated / corrupt files
-------------------------
``iter_records`` yields every complete record before the damage and then
raises :class:`WandbLogError` (a ``ValueError``) naming the problem
(truncated chunk header/payload, file ending inside a multi-chunk record,
crc mismatch, bad chunk type).  It never yields a partial or garbage record.
Pass ``strict=False`` (also accepted by the ``read_*`` helpers) to stop
silently instead, e.g. for a run that crashed or is still being written.

How wandb 0.31 stores values (observed)
---------------------------------------
* ``run.log`` flattens **every** nested dict into ``HistoryItem.nested_key``
  lists (``key`` is left empty): ``{"tail_loss": {"1-10": 1.0}}`` becomes
  ``nested_key=["tail_loss", "1-10"], value_json="1"``.  A key that already
  contains ``/`` stays one element (``nested_key=["slash/key"]``), so after
  joining with ``/`` both spellings give the same flat key ``"tail_loss/1-10"``.
* Media objects are flattened too: ``wandb.Histogram`` becomes the items
  ``hist/_type="histogram"``, ``hist/values``, ``hist/bins``; ``wandb.Table``
  becomes ``tbl/_type="table-file"``, ``tbl/path``
  (``media/table/<key>_<n>_<hash>.table.json``, relative to the run's
  ``files/`` dir), ``tbl/sha256``, ``tbl/size``, ``tbl/nrows``, ``tbl/ncols``,
  ``tbl/artifact_path``, ``tbl/_latest_artifact_path``, ``tbl/log_mode``.
  ``read_history``/``read_summary`` re-assemble any group that has a
  ``<prefix>/_type`` item into one dict under ``<prefix>`` (so
  ``row["hist"]["_type"] == "histogram"``); all other nesting is returned as
  flat ``"a/b"`` keys.  (Caveat: a plain user dict that contains a
  ``"_type"`` key would be re-assembled the same way; ``regroup_media=False``
  disables this.)
* Values are JSON in ``value_json``; ``NaN``, ``Infinity``, ``-Infinity``
  appear literally and ``json.loads`` accepts them.  The proto also has a
  typed ``oneof value`` (none/boolean/integer/number/text/json) which 0.31
  does not use; it is honoured when ``value_json`` is empty.
* Each history record has ``_step``, ``_runtime`` and usually
  ``_timestamp`` items.  A ``run.log(d)`` without ``step=`` after
  ``run.log(..., step=i)`` is merged into the row of step ``i``.
* Config: the ``run`` record carries the ``wandb.init(config=...)`` values and
  ``config`` records carry ``run.config.update`` calls.  Config is *not*
  flattened: ``{"nested": {"y": 2}}`` is one item ``key="nested",
  value_json='{"y":2}'``; a later update of ``nested`` replaces the whole
  value.  ``_wandb`` is an internal key (dropped by default).
* Summary: many incremental ``summary`` records (nested_key, like history)
  plus internal ``_wandb/runtime`` entries; later wins.

* Artifacts: ``run.log_artifact`` writes an ``artifact`` record (``name``, ``type``, ``metadata`` as JSON,
  ``aliases``, ``digest``, and a ``manifest`` whose ``contents`` list each file's ``path``, ``digest``,
  ``size`` and ``local_path``: the staging copy that ``wandb sync`` uploads).  ``wandb.Table`` values are
  logged as ``run_table`` artifacts too.  :func:`read_artifacts`.
* ``run.define_metric(name, step_metric=x)`` writes a ``metric`` record (``name``, ``step_metric``).
  :func:`read_metric_axes`.

Resumed offline runs on disk (wandb 0.31.0, verified)
-----------------------------------------------------
Offline, ``wandb.init(id=X, resume="allow"|"must"|"never"|None)`` never
appends to an earlier file and never fails: **every** init writes a *new*
directory ``<WANDB_DIR>/wandb/offline-run-<YYYYmmdd_HHMMSS>-X/`` holding its
own ``run-X.wandb`` (same run id ``X`` in every segment; a second init within
the same second gets ``offline-run-<ts>-X-1``, ``-2``, ...; ``latest-run``
symlinks to the newest).  Each segment file has exactly one ``run`` record
with ``run_id == X``; ``RunRecord.resume`` is True when resume was
"allow"/"must" (False for None/"never"), ``RunRecord.resumed`` is always
False and ``starting_step`` is 0 (offline, nothing is known about earlier
segments), and ``run.step`` restarts at 0, so pass ``step=`` explicitly.
The config of each segment contains only what that segment's init/updates
set.  To get a resumed run's whole history, read all segments in
chronological order: :func:`find_run_files` (sorted by timestamp then
collision suffix, optionally filtered by ``run_id``) and
:func:`read_history_all`.  ``find_run_file`` raises on such a directory
because it holds several files.
"""

from __future__ import annotations

import json
import re
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

__all__ = [
    "WandbLogError",
    "describe",
    "find_run_file",
    "find_run_files",
    "iter_records",
    "read_artifacts",
    "read_config",
    "read_history",
    "read_metric_axes",
    "read_history_all",
    "read_run_info",
    "read_summary",
    "wait_until_finished",
]

HEADER_IDENT = b":W&B"
HEADER_MAGIC = 0xBEE1
HEADER_VERSION = 0
HEADER_LEN = 7  # both the file header and each chunk header are 7 bytes
BLOCK_LEN = 32 * 1024

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

_CRC_SEED = {t: zlib.crc32(bytes([t])) for t in (FULL, FIRST, MIDDLE, LAST)}


class WandbLogError(ValueError):
    """The .wandb file is malformed, truncated or corrupt."""


# --------------------------------------------------------------------------
# Low level: chunks and records
# --------------------------------------------------------------------------


def _iter_payloads(
    data: bytes, *, verify_crc: bool = True
) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(start, end, payload)`` for each record in the raw bytes of a
    .wandb file: ``start`` is the offset of the record's first chunk header,
    ``end`` the offset just past its last chunk."""
    if len(data) < HEADER_LEN:
        raise WandbLogError(f"file too short for W&B header ({len(data)} bytes)")
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER_LEN])
    if ident != HEADER_IDENT or magic != HEADER_MAGIC:
        raise WandbLogError(
            f"not a W&B run file: header ident={ident!r} magic={magic:#x}"
        )
    if version != HEADER_VERSION:
        raise WandbLogError(f"unsupported W&B log version {version}")

    pos = HEADER_LEN
    size = len(data)
    pending: list[bytes] | None = None  # chunks of a FIRST..LAST record
    record_start = pos

    while True:
        left_in_block = BLOCK_LEN - pos % BLOCK_LEN
        if left_in_block < HEADER_LEN:
            # trailer: zero padding up to the block end
            pos += left_in_block
            continue
        if pos >= size:
            break
        if pos + HEADER_LEN > size:
            raise WandbLogError(
                f"truncated chunk header at offset {pos} "
                f"({size - pos} of {HEADER_LEN} bytes)"
            )
        crc, length, ctype = struct.unpack_from("<IHB", data, pos)
        if crc == 0 and length == 0 and ctype == 0:
            # A zeroed region (e.g. preallocated / mmap'd file): the Go reader
            # skips the rest of the block when it is looking for a new record.
            if pending is not None:
                raise WandbLogError(
                    f"zeroed chunk inside multi-chunk record at offset {pos}"
                )
            pos += left_in_block
            continue
        if ctype not in _CRC_SEED:
            raise WandbLogError(f"bad chunk type {ctype} at offset {pos}")
        if HEADER_LEN + length > left_in_block:
            raise WandbLogError(
                f"chunk at offset {pos} (length {length}) overflows its block"
            )
        start = pos + HEADER_LEN
        end = start + length
        if end > size:
            raise WandbLogError(
                f"truncated chunk payload at offset {pos}: "
                f"need {length} bytes, have {size - start}"
            )
        payload = data[start:end]
        if verify_crc and zlib.crc32(payload, _CRC_SEED[ctype]) != crc:
            raise WandbLogError(f"crc mismatch in chunk at offset {pos}")

        if ctype == FULL:
            if pending is not None:
                raise WandbLogError(
                    f"FULL chunk at offset {pos} inside a multi-chunk record"
                )
            yield pos, end, payload
        elif ctype == FIRST:
            if pending is not None:
                raise WandbLogError(
                    f"FIRST chunk at offset {pos} inside a multi-chunk record"
                )
            pending = [payload]
            record_start = pos
        else:  # MIDDLE / LAST
            if pending is None:
                raise WandbLogError(
                    f"{'MIDDLE' if ctype == MIDDLE else 'LAST'} chunk at offset "
                    f"{pos} without a FIRST chunk"
                )
            pending.append(payload)
            if ctype == LAST:
                yield record_start, end, b"".join(pending)
                pending = None
        pos = end

    if pending is not None:
        raise WandbLogError(
            f"file ends inside a multi-chunk record that starts at offset "
            f"{record_start}"
        )


def iter_records(
    path: str | Path, *, strict: bool = True, verify_crc: bool = True
) -> Iterator[wandb_internal_pb2.Record]:
    """Yield the ``Record`` protobufs stored in a ``run-*.wandb`` file, in order.

    All complete records before any damage are yielded.  On a truncated or
    corrupt file, raises :class:`WandbLogError` afterwards if ``strict``
    (default), otherwise stops silently.
    """
    data = Path(path).read_bytes()
    try:
        for _, _, payload in _iter_payloads(data, verify_crc=verify_crc):
            rec = wandb_internal_pb2.Record()
            try:
                rec.ParseFromString(payload)
            except Exception as e:  # protobuf DecodeError
                raise WandbLogError(f"cannot decode Record protobuf: {e}") from e
            yield rec
    except WandbLogError:
        if strict:
            raise


def wait_until_finished(
    path: str | Path, timeout: float = 60.0, poll: float = 0.02
) -> bool:
    """Wait until the .wandb file contains the run's ``exit`` record.

    Needed right after ``run.finish()`` in wandb 0.31 offline mode: finish()
    can return before wandb-core has written its last buffered block (the
    file may still be just the 7-byte header for ~10 ms).  Returns True as
    soon as the exit record is there; ``timeout`` only ends a wait that never
    saw it (e.g. a crashed run that never wrote an exit record): then False,
    and :func:`describe` says what the file held.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            for rec in iter_records(path, strict=False):
                if rec.WhichOneof("record_type") == "exit":
                    return True
        except (OSError, WandbLogError):  # header not written yet
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def describe(path: str | Path) -> str:
    """What a .wandb file holds, for a failure message: its size and its records by type (exit or not)."""
    p = Path(path)
    if not p.exists():
        return f"{p}: no such file"
    size = p.stat().st_size
    kinds: dict[str, int] = {}
    note = ""
    try:
        for rec in iter_records(p, strict=True):
            k = rec.WhichOneof("record_type") or "?"
            kinds[k] = kinds.get(k, 0) + 1
    except (OSError, WandbLogError) as e:
        note = f"; unreadable after that: {e}"
    recs = ", ".join(f"{k} x{n}" for k, n in kinds.items()) or "none (header only)"
    return f"{p}: {size} bytes; records: {recs}; exit record: {'yes' if 'exit' in kinds else 'no'}{note}"


# --------------------------------------------------------------------------
# Locating run files
# --------------------------------------------------------------------------

_OFFLINE_DIR_RE = re.compile(r"^offline-run-(\d{8}_\d{6})-(.+)$")


def _segment_sort_key(path: Path) -> tuple:
    """Chronological key for .../offline-run-<ts>-<id>[-<n>]/run-<id>.wandb."""
    run_id = path.stem.removeprefix("run-")
    m = _OFFLINE_DIR_RE.match(path.parent.name)
    if not m:
        return ("", 0, str(path))
    ts, rest = m.groups()
    n = 0
    if rest != run_id and rest.startswith(run_id + "-"):
        suffix = rest[len(run_id) + 1 :]
        n = int(suffix) if suffix.isdigit() else 0
    return (ts, n, str(path))


def find_run_files(wandb_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """All ``run-*.wandb`` files in ``wandb_dir``, ``wandb_dir/offline-run-*/``
    or ``wandb_dir/wandb/offline-run-*/`` (``wandb_dir`` may also be the file
    itself), optionally only those of ``run_id``, sorted chronologically
    (directory timestamp, then the ``-1``, ``-2`` collision suffix)."""
    d = Path(wandb_dir)
    if d.is_file():
        return [d]
    found: set[Path] = set()
    for pattern in (
        "run-*.wandb",
        "offline-run-*/run-*.wandb",
        "wandb/offline-run-*/run-*.wandb",
    ):
        found.update(p for p in d.glob(pattern) if p.is_file())
    if run_id is not None:
        found = {p for p in found if p.name == f"run-{run_id}.wandb"}
    return sorted(found, key=_segment_sort_key)


def find_run_file(wandb_dir: str | Path) -> Path:
    """The single ``run-*.wandb`` file under ``wandb_dir`` (see find_run_files).

    Raises FileNotFoundError if there is none and ValueError if there are
    several (several runs, or segments of a resumed offline run -- use
    :func:`find_run_files` / :func:`read_history_all` for those).
    """
    files = find_run_files(wandb_dir)
    if not files:
        raise FileNotFoundError(
            f"no run-*.wandb file under {wandb_dir} "
            "(looked in ., offline-run-*/ and wandb/offline-run-*/)"
        )
    if len(files) > 1:
        listing = "\n  ".join(str(f) for f in files)
        raise ValueError(
            f"expected exactly one run-*.wandb file under {wandb_dir}, "
            f"found {len(files)} (several runs or a resumed offline run?):"
            f"\n  {listing}"
        )
    return files[0]


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    return find_run_file(p) if p.is_dir() else p


# --------------------------------------------------------------------------
# Decoding items
# --------------------------------------------------------------------------


def _item_key(item: Any) -> str:
    return item.key if item.key else "/".join(item.nested_key)


def _item_value(item: Any) -> Any:
    if item.value_json:
        return json.loads(item.value_json)  # accepts NaN / Infinity
    if "value" in item.DESCRIPTOR.oneofs_by_name:  # HistoryItem's typed oneof
        which = item.WhichOneof("value")
        if which == "json":
            return json.loads(item.json)
        if which is not None and which != "none":
            return getattr(item, which)
    return None


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Flatten plain nested dicts into ``"a/b"`` keys; media dicts (with a
    ``_type``) and empty dicts are kept whole."""
    if isinstance(value, dict) and value and "_type" not in value:
        for k, v in value.items():
            _flatten(f"{prefix}/{k}", v, out)
    else:
        out[prefix] = value


def _regroup_media(flat: dict[str, Any]) -> dict[str, Any]:
    """Re-assemble ``p/_type``, ``p/x``, ... into ``{p: {"_type":..., "x":...}}``
    (outermost prefix wins); other keys pass through unchanged, in order."""
    prefixes = sorted(
        (k[: -len("/_type")] for k in flat if k.endswith("/_type")), key=len
    )
    if not prefixes:
        return flat
    out: dict[str, Any] = {}
    for k, v in flat.items():
        p = next((p for p in prefixes if k.startswith(p + "/")), None)
        if p is None:
            out[k] = v
            continue
        group = out.setdefault(p, {})
        if not isinstance(group, dict):  # pathological: "p" is also a leaf
            group = out[p] = {"": group}
        parts = k[len(p) + 1 :].split("/")
        for part in parts[:-1]:
            group = group.setdefault(part, {})
        group[parts[-1]] = v
    return out


def _merge_updates(target: dict[str, Any], updates: Any, removes: Any) -> None:
    for item in updates:
        _flatten(_item_key(item), _item_value(item), target)
    for item in removes:
        key = _item_key(item)
        for k in [k for k in target if k == key or k.startswith(key + "/")]:
            del target[k]


# --------------------------------------------------------------------------
# High level readers
# --------------------------------------------------------------------------


def read_history(
    path: str | Path, *, regroup_media: bool = True, strict: bool = True
) -> list[dict[str, Any]]:
    """One dict per ``history`` record, in file order, with flat ``"a/b"``
    keys (see module docstring), including ``_step`` (int), ``_runtime`` and
    ``_timestamp``.  Media groups (histogram, table-file, ...) are returned as
    one dict under their key unless ``regroup_media=False``.  ``path`` may be
    a .wandb file or a directory for :func:`find_run_file`."""
    rows: list[dict[str, Any]] = []
    for rec in iter_records(_resolve(path), strict=strict):
        if rec.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in rec.history.item:
            _flatten(_item_key(item), _item_value(item), row)
        if "_step" not in row and rec.history.HasField("step"):
            row["_step"] = rec.history.step.num
        rows.append(_regroup_media(row) if regroup_media else row)
    return rows


def read_history_all(
    wandb_dir: str | Path,
    run_id: str | None = None,
    *,
    regroup_media: bool = True,
    strict: bool = True,
) -> list[dict[str, Any]]:
    """Concatenated history of all segments of a (resumed) offline run, in
    chronological segment order.  ``run_id`` is required when ``wandb_dir``
    holds files of several run ids.  Steps re-logged by a later segment
    (resume from an earlier checkpoint) appear twice; callers decide how to
    de-duplicate (e.g. keep the last row per ``_step``)."""
    files = find_run_files(wandb_dir, run_id)
    if not files:
        raise FileNotFoundError(f"no run-{run_id or '*'}.wandb under {wandb_dir}")
    ids = {f.name for f in files}
    if len(ids) > 1:
        raise ValueError(
            f"several run ids under {wandb_dir}: {sorted(ids)}; pass run_id"
        )
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(read_history(f, regroup_media=regroup_media, strict=strict))
    return rows


def read_config(
    path: str | Path, *, keep_internal: bool = False, strict: bool = True
) -> dict[str, Any]:
    """The run config: the ``run`` record's config, then ``config`` records
    (``run.config.update``) applied in order (later wins, top-level keys
    replaced whole).  Values JSON-decoded, nested dicts stay nested.
    ``_wandb`` (any ``_``-prefixed key) is dropped unless ``keep_internal``."""
    cfg: dict[str, Any] = {}

    def apply(updates: Any, removes: Any) -> None:
        for item in updates:
            keys = [item.key] if item.key else list(item.nested_key)
            d = cfg
            for k in keys[:-1]:
                d = d.setdefault(k, {})
            d[keys[-1]] = _item_value(item)
        for item in removes:
            keys = [item.key] if item.key else list(item.nested_key)
            d = cfg
            for k in keys[:-1]:
                d = d.get(k, {})
            if isinstance(d, dict):
                d.pop(keys[-1], None)

    for rec in iter_records(_resolve(path), strict=strict):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            apply(rec.run.config.update, rec.run.config.remove)
        elif kind == "config":
            apply(rec.config.update, rec.config.remove)
    if not keep_internal:
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return cfg


_KEEP_UNDERSCORE = ("_step", "_runtime", "_timestamp")


def read_summary(
    path: str | Path,
    *,
    keep_internal: bool = False,
    regroup_media: bool = True,
    strict: bool = True,
) -> dict[str, Any]:
    """The final run summary: the ``run`` record's summary and all ``summary``
    records merged in order (later wins), flat ``"a/b"`` keys and media
    regrouped as in :func:`read_history`.  ``_wandb/...`` and other
    ``_``-prefixed keys except ``_step``/``_runtime``/``_timestamp`` are
    dropped unless ``keep_internal``."""
    flat: dict[str, Any] = {}
    for rec in iter_records(_resolve(path), strict=strict):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            _merge_updates(flat, rec.run.summary.update, rec.run.summary.remove)
        elif kind == "summary":
            _merge_updates(flat, rec.summary.update, rec.summary.remove)
    if not keep_internal:
        flat = {
            k: v
            for k, v in flat.items()
            if not k.startswith("_") or k in _KEEP_UNDERSCORE
        }
    return _regroup_media(flat) if regroup_media else flat


def read_run_info(path: str | Path, *, strict: bool = True) -> dict[str, Any]:
    """Metadata from the (first) ``run`` record plus the exit record.

    Keys: ``run_id``, ``entity``, ``project``, ``group``, ``job_type``,
    ``display_name``, ``notes``, ``tags`` (list), ``resume`` (True if
    init asked for resume="allow"/"must"), ``resumed`` (server-confirmed
    resume; always False offline), ``forked``, ``starting_step``,
    ``start_time`` (unix seconds or None), ``exit_code`` (None if the run did
    not finish cleanly / no exit record), ``n_run_records``.
    """
    info: dict[str, Any] | None = None
    n_run = 0
    exit_code = None
    for rec in iter_records(_resolve(path), strict=strict):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            n_run += 1
            if info is None:
                r = rec.run
                start = None
                if r.HasField("start_time"):
                    start = r.start_time.seconds + r.start_time.nanos * 1e-9
                info = {
                    "run_id": r.run_id,
                    "entity": r.entity,
                    "project": r.project,
                    "group": r.run_group,
                    "job_type": r.job_type,
                    "display_name": r.display_name,
                    "notes": r.notes,
                    "tags": list(r.tags),
                    "resume": bool(getattr(r, "resume", False)),
                    "resumed": bool(r.resumed),
                    "forked": bool(getattr(r, "forked", False)),
                    "starting_step": int(r.starting_step),
                    "start_time": start,
                }
        elif kind == "exit":
            exit_code = rec.exit.exit_code
    if info is None:
        raise WandbLogError(f"no run record in {path}")
    info["exit_code"] = exit_code
    info["n_run_records"] = n_run
    return info


def read_artifacts(path: str | Path, *, strict: bool = True) -> list[dict[str, Any]]:
    """One dict per ``artifact`` record, in file order: ``name``, ``type``, ``metadata`` (decoded JSON, {} if
    none), ``aliases``, ``digest``, ``files`` ({path in the artifact: size}) and ``local_paths`` ({path: the
    staged copy})."""
    out = []
    for rec in iter_records(_resolve(path), strict=strict):
        if rec.WhichOneof("record_type") != "artifact":
            continue
        a = rec.artifact
        out.append({
            "name": a.name,
            "type": a.type,
            "metadata": json.loads(a.metadata) if a.metadata else {},
            "aliases": list(a.aliases),
            "digest": a.digest,
            "files": {e.path: e.size for e in a.manifest.contents},
            "local_paths": {e.path: e.local_path for e in a.manifest.contents},
        })
    return out


def read_metric_axes(path: str | Path, *, strict: bool = True) -> dict[str, str]:
    """``{metric name: its step metric}`` from the ``metric`` records (``define_metric``); a metric defined
    without a step metric maps to ``""``; later definitions win."""
    axes: dict[str, str] = {}
    for rec in iter_records(_resolve(path), strict=strict):
        if rec.WhichOneof("record_type") == "metric" and rec.metric.name:
            axes[rec.metric.name] = rec.metric.step_metric
    return axes
