"""watch_tree on a pidfd group: the events C leaves unbuilt give their pidfds back."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import open_fd_count

from afanotify import _fastparse
from afanotify.exceptions import WouldBlock
from afanotify.flags import Event, InitFlag
from afanotify.group import Fanotify

#: Writes each file named on its command line, then waits to be killed (a live
#: writer, so that the kernel gives its events a pidfd and not FAN_NOPIDFD).
WRITER = "import sys, time\nfor p in sys.argv[1:]:\n    open(p, 'w').write('x')\ntime.sleep(60)\n"


def _read_until(fan: Fanotify, name: str) -> list:
    """Every event read until a CLOSE_WRITE of ``name``, within a deadline."""
    seen: list = []
    deadline = time.monotonic() + 20
    while not any(e.name == name and e.ev_types & Event.CLOSE_WRITE for e in seen):
        if time.monotonic() > deadline:
            raise AssertionError(f"no CLOSE_WRITE of {name!r} in 20 s")
        select.select([fan.fileno()], [], [], 1)
        try:
            seen.extend(fan.read_batch())
        except WouldBlock:
            pass
    return seen


@pytest.mark.kernel
@pytest.mark.skipif(not _fastparse.available(), reason="needs the compiled core")
def test_events_outside_the_tree_close_their_pidfds(tmpfs: Path) -> None:
    flags = InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID | InitFlag.REPORT_PIDFD
    with Fanotify(flags) as fan:
        (tmpfs / "in").mkdir()
        (tmpfs / "out").mkdir()
        # Not pruned: every event of out/ is read, and C leaves all unbuilt.
        fan.watch_tree(str(tmpfs / "in"), Event.CREATE | Event.CLOSE_WRITE, prune=False)
        before = open_fd_count()
        outside = [str(tmpfs / "out" / f"o{i}") for i in range(50)]
        child = subprocess.Popen([sys.executable, "-c", WRITER, *outside,
                                  str(tmpfs / "in" / "zz-end")])
        try:
            seen = _read_until(fan, "zz-end")
            assert all(e.path is None or not e.path.startswith(str(tmpfs / "out"))
                       for e in seen), "an event outside the tree was delivered"
            assert fan._pipeline.fast is not None and fan._pipeline.c_filtered >= 100
            for e in seen:
                e.close()
            # Every pidfd of the 100 events C skipped is closed too.
            assert open_fd_count() == before
        finally:
            child.kill()
            child.wait()
