"""HandleResolver's last-handle shortcut: same answers as the cache, same invalidation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from afanotify import _ffi
from afanotify._proc import HandleResolver
from afanotify.events import FileHandle

pytestmark = pytest.mark.kernel


def _handle(path: Path) -> FileHandle:
    fd = os.open(path, os.O_RDONLY)
    try:
        fsid = _ffi.fsid_of_fd(fd)
    finally:
        os.close(fd)
    htype, raw, _ = _ffi.name_to_handle(_ffi.lib.AT_FDCWD, str(path))
    return FileHandle(fsid, htype, raw)


def test_repeated_handle_object_hits_without_going_stale_after_invalidate(tmpfs: Path) -> None:
    (tmpfs / "a").mkdir()
    res = HandleResolver(16)
    res.add_mount(str(tmpfs))
    try:
        h = _handle(tmpfs / "a")
        assert res.resolve(h) == f"{tmpfs}/a"
        assert res.resolve(h) == f"{tmpfs}/a"
        assert (res.hits, res.misses) == (1, 1)
        os.rename(tmpfs / "a", tmpfs / "b")
        res.invalidate()  # what the group does on a directory move
        assert res.resolve(h) == f"{tmpfs}/b"
        assert res.misses == 2
    finally:
        res.close()


def test_no_cache_means_no_shortcut_either(tmpfs: Path) -> None:
    (tmpfs / "a").mkdir()
    res = HandleResolver(0)
    res.add_mount(str(tmpfs))
    try:
        h = _handle(tmpfs / "a")
        assert res.resolve(h) == f"{tmpfs}/a"
        os.rename(tmpfs / "a", tmpfs / "b")
        assert res.resolve(h) == f"{tmpfs}/b"
        assert (res.hits, res.misses) == (0, 2)
    finally:
        res.close()
