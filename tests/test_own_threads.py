"""REPORT_TID groups: our own threads' events are skipped, and a thread id that
another process has taken over is never trusted as ours."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from helpers import collect, sh

from afanotify import Event, Fanotify, InitFlag

pytestmark = pytest.mark.kernel


async def test_own_threads_events_are_skipped_even_after_the_thread_exits(tmpfs: Path) -> None:
    target = tmpfs / "f"
    target.write_text("x")
    tids: list[int] = []
    started = threading.Event()
    release = threading.Event()

    def opener() -> None:
        tids.append(threading.get_native_id())
        target.read_text()
        started.set()
        release.wait(10)

    async with Fanotify(InitFlag.REPORT_TID) as fan:
        fan.mark(tmpfs, Event.OPEN | Event.EVENT_ON_CHILD)
        worker = threading.Thread(target=opener)
        worker.start()
        assert started.wait(10)
        (tid,) = tids
        assert fan._pipeline.is_own(tid)  # live thread of ours
        release.set()
        worker.join()
        # The sentinel comes from another process, after the thread's event.
        assert sh(f"cat {target} >/dev/null").returncode == 0
        evs = await collect(fan, lambda g: len(g) >= 1)
        assert all(e.pid != tid for e in evs)
        assert fan.stats.own_events >= 1


async def test_a_thread_id_reused_by_another_process_is_not_own(tmpfs: Path) -> None:
    async with Fanotify(InitFlag.REPORT_TID) as fan:
        other = subprocess.Popen(["sleep", "30"])
        try:
            # As if one of our threads once had this id and then exited.
            fan._pipeline.seen_tids.add(other.pid)
            assert not fan._pipeline.is_own(other.pid)
            assert other.pid not in fan._pipeline.seen_tids
        finally:
            other.kill()
            other.wait()
        # Gone again and no longer remembered: not ours either.
        assert not fan._pipeline.is_own(other.pid)
