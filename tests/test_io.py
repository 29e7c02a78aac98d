"""Atomic writes of folders: a failed write leaves nothing behind; a finished one replaces (or keeps) the old."""

from __future__ import annotations

import errno

import pytest

from collapse.io import atomic_dir


def test_failed_folder_write_leaves_nothing_not_even_its_parents(tmp_path):
    with pytest.raises(OSError), atomic_dir(tmp_path / "gen_001" / "adapter") as tmp:
        (tmp / "weights.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_folder_write_replaces_or_keeps(tmp_path):
    dest = tmp_path / "gen_002" / "model"
    for text in ("old", "new"):
        with atomic_dir(dest) as tmp:
            (tmp / "w.txt").write_text(text)
    assert (dest / "w.txt").read_text() == "new"
    with atomic_dir(dest, replace=False) as tmp:  # another process finished the same build first
        (tmp / "w.txt").write_text("late")
    assert (dest / "w.txt").read_text() == "new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]  # no temporary folder left
