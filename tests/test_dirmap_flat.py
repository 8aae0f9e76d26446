"""A map that forgets each batch, in a batch without directory moves: roots, no parent lookups.

Such a map (its group does not see every directory move) names a directory
by ``open_by_handle_at`` once per batch; in a batch the C walk found no
directory move in, the directory is kept as a root with its absolute path
instead of being linked under its parents (a ``name_to_handle_at`` per
level, every batch).  What it gives must be what the linked map gives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from afanotify import Event, FanotifyData, InitFlag, _dirmap, _ffi

pytestmark = pytest.mark.kernel

_DELETE_DIR = Event.DELETE | Event.ONDIR


def _map(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[_dirmap.DirMap, list[str]]:
    """A map that cannot see moves (no marks noted), learning ``root``; and its parent lookups."""
    dm = _dirmap.DirMap(64, int(InitFlag.REPORT_DFID_NAME))
    dm.add_mount(str(root))
    assert not dm.tracking
    asked: list[str] = []
    real = _dirmap._handle_at

    def counted(fsid: tuple[int, int], path: str) -> Any:
        asked.append(path)
        return real(fsid, path)

    monkeypatch.setattr(_dirmap, "_handle_at", counted)
    return dm, asked


def _handle(root: Path, path: Path) -> Any:
    fd = os.open(root, os.O_PATH)
    try:
        fsid = _ffi.fsid_of_fd(fd)
    finally:
        os.close(fd)
    h = _dirmap._handle_at(fsid, str(path))
    assert h is not None
    return h


def test_a_batch_without_moves_names_a_deep_directory_without_its_parents(
    tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmpfs / "a" / "b" / "c"
    deep.mkdir(parents=True)
    h = _handle(tmpfs, deep)
    dm, asked = _map(tmpfs, monkeypatch)
    for _ in range(2):  # each batch afresh
        dm.begin()
        dm.walked(0)
        assert dm.c_lookup(h) == str(deep)
        assert dm.dir_at(h, 5) == str(deep)
    assert asked == []
    # With a directory move in the batch it is linked, as before.
    dm.begin()
    dm.walked(1)
    assert dm.dir_at(h, 0) == str(deep)
    assert asked == [str(tmpfs / "a" / "b"), str(tmpfs / "a"), str(tmpfs)]


def test_a_directory_deleted_in_a_flat_batch_leaves_the_map(
    tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmpfs / "a" / "b").mkdir(parents=True)
    ha, hb = _handle(tmpfs, tmpfs / "a"), _handle(tmpfs, tmpfs / "a" / "b")
    dm, _asked = _map(tmpfs, monkeypatch)
    dm.begin()
    dm.walked(0)
    assert dm.c_lookup(hb) == str(tmpfs / "a" / "b")
    assert dm.dir_at(ha, 1) == str(tmpfs / "a")  # the DELETE's own directory, resolved first
    dm.apply(FanotifyData(ev_types=_DELETE_DIR, dfid=ha, name="b"), 1)
    # Its handle names nothing any more (not even its old path).
    assert dm.path(hb) is None
    assert dm.path(ha) == str(tmpfs / "a")


def test_a_flat_root_deleted_from_a_directory_the_map_cannot_name_leaves_it_too(
    tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmpfs / "p" / "b").mkdir(parents=True)
    (tmpfs / "q" / "c").mkdir(parents=True)
    hp, hb = _handle(tmpfs, tmpfs / "p"), _handle(tmpfs, tmpfs / "p" / "b")
    hc = _handle(tmpfs, tmpfs / "q" / "c")
    dm, _asked = _map(tmpfs, monkeypatch)
    dm.begin()
    dm.walked(0)
    assert dm.c_lookup(hb) == str(tmpfs / "p" / "b")
    assert dm.c_lookup(hc) == str(tmpfs / "q" / "c")
    (tmpfs / "p" / "b").rmdir()
    (tmpfs / "p").rmdir()
    # The DELETE of b, from p, which the map does not know (gone when read).
    dm.apply(FanotifyData(ev_types=_DELETE_DIR, dfid=hp, name="b"), 1)
    assert dm.path(hb) is None
    assert dm.path(hc) == str(tmpfs / "q" / "c")  # another name: kept
    assert dm.dir_at(hb, 2) is None  # looked up again: gone
