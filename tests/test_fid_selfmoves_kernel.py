"""An object's own events when it moves again later in the same read.

A FID-only event (MOVE_SELF, DELETE_SELF, or any event of a ``REPORT_FID``
group) is named by looking its handle up when the batch is read.  If the
object moved again later in the batch, that lookup gives its last place, not
the place it had at the event: such an event is left unresolved, never
named wrongly.  And where the group reports a directory's MOVE_SELF but not
where it went (no MOVED_FROM/MOVED_TO or RENAME marked), no path looked up
now holds for the events before that move.

Each script runs to its end before the group is read, so its events arrive
in one read (one batch).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from helpers import collect, sh

from afanotify import Event, Fanotify, FanotifyData, InitFlag

pytestmark = pytest.mark.kernel

_N = itertools.count()


async def _one_batch(fan: Fanotify, root: Path, script: str) -> list[FanotifyData]:
    end = f"zz_end{next(_N)}"
    r = sh(f"cd {root} && {script} && touch {end}")
    assert r.returncode == 0, r.stderr
    return await collect(
        fan, lambda got: any(e.name == end or (e.path or "").endswith(end) for e in got)
    )


async def test_a_file_moved_twice_in_one_batch(tmpfs: Path) -> None:
    flags = InitFlag.REPORT_FID | InitFlag.REPORT_DFID_NAME
    mask = Event.CREATE | Event.DELETE | Event.ONDIR | Event.RENAME | Event.MOVE_SELF
    async with Fanotify(flags) as fan:
        fan.mark(tmpfs, mask, "filesystem")
        evs = await _one_batch(fan, tmpfs, "mkdir a && touch a/k && mv a/k a/k1 && mv a/k1 a/k2")
    moves = [(e.path, e.path_resolved) for e in evs if e.ev_types & Event.MOVE_SELF]
    # Two MOVE_SELF events, unless the kernel merged them (same object and process).
    assert 1 <= len(moves) <= 2, evs
    assert moves[-1] == (f"{tmpfs}/a/k2", True)
    if len(moves) == 2:
        assert moves[0] == (None, False)
    renames = [(e.old_path, e.new_path) for e in evs if e.ev_types & Event.RENAME]
    assert renames == [(f"{tmpfs}/a/k", f"{tmpfs}/a/k1"), (f"{tmpfs}/a/k1", f"{tmpfs}/a/k2")]


async def test_a_fid_only_event_before_its_objects_move(tmpfs: Path) -> None:
    async with Fanotify(InitFlag.REPORT_FID) as fan:
        fan.mark(tmpfs, Event.ATTRIB | Event.MOVE_SELF, "filesystem")
        evs = await _one_batch(
            fan, tmpfs, "mkdir a && touch a/f && chmod 600 a/f && mv a/f a/g"
            " && touch a/s && chmod 600 a/s",
        )  # fmt: skip
    attribs = [(e.path, e.path_resolved) for e in evs if e.ev_types & Event.ATTRIB]
    # f's ATTRIB came before its move: not named a/g.  s never moved: named.
    assert (f"{tmpfs}/a/g", True) not in attribs, attribs
    assert (f"{tmpfs}/a/s", True) in attribs, attribs
    assert any(p is None and not ok for p, ok in attribs), attribs
    moves = [(e.path, e.path_resolved) for e in evs if e.ev_types & Event.MOVE_SELF]
    assert moves == [(f"{tmpfs}/a/g", True)]


async def test_a_directory_moved_where_the_group_does_not_see(tmpfs: Path) -> None:
    flags = InitFlag.REPORT_FID | InitFlag.REPORT_DFID_NAME
    async with Fanotify(flags) as fan:
        fan.mark(tmpfs, Event.CREATE | Event.MOVE_SELF | Event.ONDIR, "filesystem")
        evs = await _one_batch(fan, tmpfs, "mkdir a && touch a/f && mv a/f a/g && mv a z")
    wrong = [
        (e.ev_types, e.path) for e in evs
        if e.path_resolved and (e.path or "").startswith(f"{tmpfs}/z/")
    ]  # fmt: skip
    assert not wrong, evs
    creates = [(e.path, e.path_resolved) for e in evs
               if e.ev_types == Event.CREATE and e.name == "f"]  # fmt: skip
    assert creates == [("f", False)], evs
    # The events after the move are named where things are.
    assert (f"{tmpfs}/z", True) in [(e.path, e.path_resolved) for e in evs
                                    if e.ev_types & Event.MOVE_SELF]  # fmt: skip


@pytest.mark.parametrize("size", [1, 2, 65536])
async def test_a_renamed_file_then_its_directories_renamed(tmpfs: Path, size: int) -> None:
    flags = InitFlag.REPORT_FID | InitFlag.REPORT_DFID_NAME
    mask = Event.CREATE | Event.DELETE | Event.ONDIR | Event.RENAME | Event.MOVE_SELF
    async with Fanotify(flags, handle_cache_size=size) as fan:
        fan.mark(tmpfs, mask, "filesystem")
        await _one_batch(fan, tmpfs, "mkdir a b")
        evs = await _one_batch(fan, tmpfs, "touch a/f && mv a/f b/g && mv b c && mv a d")
    renames = [(e.old_path, e.new_path, e.path_resolved) for e in evs
               if e.ev_types & Event.RENAME and not e.ev_types & Event.ONDIR]  # fmt: skip
    assert len(renames) == 1, evs
    assert renames[0] in ((f"{tmpfs}/a/f", f"{tmpfs}/b/g", True),) or not renames[0][2], renames
