"""Atomic file writes and the parquet formats of the run folder.

Every file is written to a temporary name in the same folder, fsynced, then renamed: a reader (or a
resumed run) sees either the old file or the complete new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once, at import (os.umask can only be read by setting it)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success fsync and rename it onto ``path``.

    The temporary name is ``.<name>.<random>.tmp`` (hidden, never mistaken for a finished file; a
    resumed run deletes leftovers of a killed one). The file gets the usual permissions (umask), not
    the 0600 of ``mkstemp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
    except OSError:  # pragma: no cover - filesystems without modes
        pass
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextmanager
def atomic_dir(path: str | Path, replace: bool = True):
    """Yield a hidden temporary folder next to ``path``; on success it becomes ``path``.

    An existing ``path`` is replaced (``replace=True``) or kept, the new folder then discarded
    (``replace=False``: another process finished the same build first). On failure nothing of the
    temporary folder stays, and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    made = [p for p in path.parents if not p.exists()]  # folders this call creates (removed again on failure)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ok = False
    try:
        yield tmp
        if path.exists():
            if not replace:
                return
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if replace or not path.exists():
                raise  # (keep: a build of the same key finished in the meantime)
        _fsync_dir(path.parent)
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in [] if ok else made:  # deepest first: nothing of a failed write stays, not even an empty folder
            try:
                p.rmdir()
            except OSError:
                break


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        x = float(x)
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None  # JSON has no NaN/inf; null is honest
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def dumps_line(obj: Any) -> str:
    return json.dumps(_jsonable(obj))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays in one compressed .npz, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def write_parquet(path: str | Path, columns: dict[str, Any]) -> None:
    """Write a table of equal-length columns; 2-D int arrays become list<int32> columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: _arrow_column(v) for k, v in columns.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _arrow_column(v: Any):
    import pyarrow as pa

    if isinstance(v, np.ndarray) and v.ndim == 2:
        flat = pa.array(v.reshape(-1).astype(np.int32))
        offsets = pa.array(np.arange(0, v.size + 1, v.shape[1], dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, flat)
    if isinstance(v, list) and v and isinstance(v[0], np.ndarray):
        return pa.array([x.astype(np.int32).tolist() for x in v], type=pa.list_(pa.int32()))
    return pa.array(v)


def read_id_column(path: str | Path, column: str) -> np.ndarray:
    """A list<int> column of a parquet file as a 2-D int32 array (rows must share a length)."""
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=[column]).column(column).combine_chunks()
    flat = col.values.to_numpy(zero_copy_only=False).astype(np.int32)
    n = len(col)
    return flat.reshape(n, -1) if n else flat.reshape(0, 0)


def is_temp_name(name: str) -> bool:
    """A temporary file or folder of an unfinished write (``.<name>.<random>.tmp``, ``.gen_001.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")
