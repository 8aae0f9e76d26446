"""A file's MOVE_SELF named by the rename just before it, only where that holds.

The kernel queues a rename's FAN_RENAME and then the moved file's MOVE_SELF,
so the C builder names a MOVE_SELF that comes right after a file's rename by
the same process with the rename's new path, once name_to_handle_at(2) shows
that the MOVE_SELF's object is at that path (a lookup by handle costs three
times as much).  Two threads of one process renaming at once interleave
their events; the first test makes that order by hand, from the kernel's own
records, and shows that a MOVE_SELF is never named by another file's rename.

The group is read here with os.read and the bytes decoded by the group
(``_drain.decode_batch``), so the order of the records is the test's.
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CHILD_CWD

from afanotify import Event, Fanotify, FanotifyData, InitFlag, _drain

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

FLAGS = InitFlag.REPORT_FID | InitFlag.REPORT_DFID_NAME
MASK = Event.RENAME | Event.MOVE_SELF | Event.CREATE | Event.ONDIR

RENAMES = r"""
import os, sys
for old, new in zip(sys.argv[1::2], sys.argv[2::2]):
    os.rename(old, new)
"""


def _records(fan: Fanotify, count: int) -> list[bytes]:
    """The next ``count`` events of ``fan``, each as its own bytes."""
    out: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(out)} of {count} events"
        if not select.select([fan.fileno()], [], [], left)[0]:
            continue
        data = os.read(fan.fileno(), 1 << 16)
        off = 0
        while off < len(data):
            (n,) = struct.unpack_from("=I", data, off)
            out.append(data[off : off + n])
            off += n
    assert len(out) == count, out
    return out


def _mask(rec: bytes) -> int:
    return int(struct.unpack_from("=Q", rec, 8)[0])


def _rename(*paths: Path) -> None:
    subprocess.run([sys.executable, "-c", RENAMES, *map(str, paths)], check=True, timeout=20,
                   cwd=CHILD_CWD)


def _moves(evs: list[FanotifyData]) -> list[tuple[str | None, bool]]:
    return [(e.path, e.path_resolved) for e in evs if e.ev_types == Event.MOVE_SELF]


def test_a_move_self_after_another_file_s_rename_is_not_named_by_it(tmpfs: Path) -> None:
    for d in "ab":
        (tmpfs / d).mkdir()
        (tmpfs / d / "p").write_text(d)
    with Fanotify(FLAGS) as fan:
        fan.mark(tmpfs, MASK, "filesystem")
        _rename(tmpfs / "a/p", tmpfs / "a/q", tmpfs / "b/p", tmpfs / "b/q")
        recs = _records(fan, 4)
        assert [_mask(r) for r in recs] == [Event.RENAME, Event.MOVE_SELF] * 2
        # As two threads would interleave them: a's MOVE_SELF after b's rename.
        evs = _drain.decode_batch(fan, b"".join([recs[0], recs[2], recs[1], recs[3]]))
    try:
        assert [(e.old_path, e.new_path) for e in evs if e.ev_types == Event.RENAME] == [
            (f"{tmpfs}/a/p", f"{tmpfs}/a/q"), (f"{tmpfs}/b/p", f"{tmpfs}/b/q")
        ]
        assert _moves(evs) == [(f"{tmpfs}/a/q", True), (f"{tmpfs}/b/q", True)]
    finally:
        for e in evs:
            e.close()


def test_a_move_self_whose_new_path_holds_another_file_now(tmpfs: Path) -> None:
    # p renamed to q; before the batch is read, q is replaced by another file
    # and p is gone: its MOVE_SELF is not named q (it is unresolved).
    (tmpfs / "p").write_text("p")
    (tmpfs / "w").write_text("w")
    with Fanotify(FLAGS) as fan:
        fan.mark(tmpfs, MASK, "filesystem")
        _rename(tmpfs / "p", tmpfs / "q")
        recs = _records(fan, 2)
        (tmpfs / "w").rename(tmpfs / "q")  # this process: the group is not read again
        evs = _drain.decode_batch(fan, b"".join(recs))
    try:
        assert _moves(evs) == [(None, False)]
    finally:
        for e in evs:
            e.close()


def test_a_renamed_file_with_another_link_is_named_by_its_new_name(tmpfs: Path) -> None:
    # A lookup by handle may name any of an inode's links; the rename says which.
    (tmpfs / "d").mkdir()
    (tmpfs / "d" / "p").write_text("p")
    os.link(tmpfs / "d" / "p", tmpfs / "h")
    with Fanotify(FLAGS) as fan:
        fan.mark(tmpfs, MASK, "filesystem")
        _rename(tmpfs / "d/p", tmpfs / "d/q")
        recs = _records(fan, 2)
        evs = _drain.decode_batch(fan, b"".join(recs))
    try:
        assert _moves(evs) == [(f"{tmpfs}/d/q", True)]
    finally:
        for e in evs:
            e.close()
