"""File renames and an object's own events (MOVE_SELF, DELETE_SELF) named in C, on the kernel.

The C builder fills these shapes before the batch's first directory change;
the group's Python resolver (``Pipeline._resolve_fid``) is then asked only
for directory events.  What each event must say is the path its object had
when the event happened, or nothing (``path_resolved`` False): an object
deleted by the time its batch is read cannot be looked up, and is never
named by a guess.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from helpers import collect, sh

from afanotify import Event, Fanotify, FanotifyData, InitFlag

pytestmark = pytest.mark.kernel

FLAGS = InitFlag.REPORT_FID | InitFlag.REPORT_DFID_NAME
FILE_SHAPES = Event.RENAME | Event.MOVE_SELF | Event.DELETE_SELF
MASK = Event.CREATE | Event.DELETE | Event.ONDIR | FILE_SHAPES
END = "zz_end"
_SENTINELS = itertools.count()


async def _run(fan: Fanotify, root: Path, *steps: str) -> list[FanotifyData]:
    """Run each step in a child, reading its events (up to a sentinel) before the next."""
    got: list[FanotifyData] = []
    for step in steps:
        end = f"{END}{next(_SENTINELS)}"
        r = sh(f"cd {root} && {step} && touch {end}")
        assert r.returncode == 0, r.stderr
        got += await collect(fan, lambda g, end=end: any(e.name == end for e in g))
    return [e for e in got if not (e.name or "").startswith(END)]


def _count_python(fan: Fanotify) -> list[int]:
    """The masks of the events the group's Python resolver is asked for, as they come."""
    pipeline: Any = fan._pipeline
    seen: list[int] = []
    inner = pipeline._resolve_fid

    def counting(ev: FanotifyData, i: int, prev: FanotifyData | None = None) -> None:
        seen.append(int(ev.ev_types))
        inner(ev, i, prev)

    pipeline._resolve_fid = counting
    return seen


def _file_events_in_python(seen: list[int]) -> list[int]:
    return [m for m in seen if m & FILE_SHAPES and not m & Event.ONDIR]


async def test_renames_and_moves_in_one_batch(anyfs: Path) -> None:
    script = (
        "mkdir a b && touch a/f a/keep && mv a/f a/g && mv a/g b/h && mv a/keep a/kept"
        " && rm b/h"
    )
    async with Fanotify(FLAGS) as fan:
        fan.mark(anyfs, MASK, "filesystem")
        seen = _count_python(fan)
        evs = await _run(fan, anyfs, script)
    ren = [(e.old_path, e.new_path, e.path, e.path_resolved) for e in evs
           if e.ev_types & Event.RENAME]  # fmt: skip
    assert ren == [
        (f"{anyfs}/a/f", f"{anyfs}/a/g", f"{anyfs}/a/g", True),
        (f"{anyfs}/a/g", f"{anyfs}/b/h", f"{anyfs}/b/h", True),
        (f"{anyfs}/a/keep", f"{anyfs}/a/kept", f"{anyfs}/a/kept", True),
    ]
    moves = [(e.path, e.path_resolved) for e in evs if e.ev_types & Event.MOVE_SELF]
    # f (maybe merged into one event: same object, same process) was deleted
    # later in the batch: unresolved.  keep is still there, as a/kept.
    assert moves[-1] == (f"{anyfs}/a/kept", True)
    assert set(moves[:-1]) == {(None, False)} and 1 <= len(moves) - 1 <= 2
    gone = [(e.path, e.path_resolved) for e in evs if e.ev_types & Event.DELETE_SELF]
    assert gone == [(None, False)]
    assert _file_events_in_python(seen) == []


async def test_renames_and_moves_across_batches(anyfs: Path) -> None:
    async with Fanotify(FLAGS) as fan:
        fan.mark(anyfs, MASK, "filesystem")
        seen = _count_python(fan)
        evs = await _run(fan, anyfs, "mkdir a b", "touch a/f", "mv a/f a/g", "mv a/g b/h",
                         "rm b/h")  # fmt: skip
    ren = [(e.old_path, e.new_path, e.path_resolved) for e in evs if e.ev_types & Event.RENAME]
    assert ren == [(f"{anyfs}/a/f", f"{anyfs}/a/g", True), (f"{anyfs}/a/g", f"{anyfs}/b/h", True)]
    # Each read while the file was still where it had just moved.
    moves = [(e.path, e.path_resolved) for e in evs if e.ev_types & Event.MOVE_SELF]
    assert moves == [(f"{anyfs}/a/g", True), (f"{anyfs}/b/h", True)]
    gone = [(e.path, e.path_resolved) for e in evs if e.ev_types & Event.DELETE_SELF]
    assert gone == [(None, False)]
    assert _file_events_in_python(seen) == []
