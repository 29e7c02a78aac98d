"""What the earlier offline segments of a resumed W&B run hold: read from their ``.wandb`` files."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path


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
