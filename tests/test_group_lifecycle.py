"""Closing, cancelling and long runs: nothing leaks, nothing hangs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import collect, open_fd_count, sh

from afanotify import ClosedResourceError, Event, Fanotify, FanotifyData, InitFlag, WouldBlock

pytestmark = pytest.mark.kernel

WRITES = Event.CLOSE_WRITE | Event.EVENT_ON_CHILD


async def test_aclose_is_idempotent(tmpfs: Path) -> None:
    fan = Fanotify()
    fan.mark(tmpfs, WRITES)
    await fan.aclose()
    await fan.aclose()
    fan.close()
    assert fan.closed
    with pytest.raises(ClosedResourceError):
        fan.fileno()
    with pytest.raises(ClosedResourceError):
        fan.mark(tmpfs, WRITES)
    with pytest.raises(ClosedResourceError):
        await fan.receive()
    with pytest.raises(ClosedResourceError):
        fan.receive_nowait()
    assert [ev async for ev in fan] == []  # iterating a closed group ends at once


async def test_aclose_wakes_an_iterator_in_another_task(tmpfs: Path) -> None:
    got: list[FanotifyData] = []
    first = asyncio.Event()

    async with Fanotify() as fan:
        fan.mark(tmpfs, WRITES)

        async def consume() -> str:
            async for ev in fan:
                got.append(ev)
                first.set()
            return "ended"

        task = asyncio.create_task(consume())
        assert sh(f"echo x > {tmpfs}/a").returncode == 0
        await asyncio.wait_for(first.wait(), 5)
        # The consumer is now blocked waiting for a second event.
        assert not task.done()
        await fan.aclose()
        assert await asyncio.wait_for(task, 5) == "ended"
    assert [e.path for e in got] == [f"{tmpfs}/a"]
    assert got[0].closed  # the iterator released the event it had handed out

    # A new group works afterwards.
    async with Fanotify() as fan2:
        fan2.mark(tmpfs, WRITES)
        assert sh(f"echo y > {tmpfs}/b").returncode == 0
        (ev,) = await collect(fan2, lambda g: len(g) >= 1)
    assert ev.path == f"{tmpfs}/b"


async def test_aclose_wakes_receive_with_closed_resource_error(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        waiter = asyncio.create_task(fan.receive())
        await asyncio.sleep(0)  # let it start waiting (no event can arrive: nothing is marked)
        assert not waiter.done()
        await fan.aclose()
        with pytest.raises(ClosedResourceError):
            await asyncio.wait_for(waiter, 5)


@pytest.mark.parametrize("flags", [InitFlag(0), InitFlag.REPORT_DFID_NAME], ids=["fd", "fid"])
async def test_cancelling_a_consumer_leaks_nothing(tmpfs: Path, flags: InitFlag) -> None:
    baseline = open_fd_count()
    holding = asyncio.Event()
    fan = Fanotify(flags)
    try:
        fan.mark(tmpfs, WRITES)

        async def consume() -> None:
            async for _ev in fan:
                holding.set()
                await asyncio.Event().wait()  # hold the event until cancelled

        task = asyncio.create_task(consume())
        assert sh(f"for i in 1 2 3 4 5; do echo $i > {tmpfs}/f$i; done").returncode == 0
        await asyncio.wait_for(holding.wait(), 5)
        # Let the group read the rest into its queue while the consumer holds one.
        while fan.stats.events_read < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The group still works after its consumer was cancelled.
        ev = await asyncio.wait_for(fan.receive(), 5)
        assert ev.path == f"{tmpfs}/f2"
        ev.close()
        # A receiver cancelled while waiting takes nothing with it.
        waiter = asyncio.create_task(fan.receive())
        await asyncio.sleep(0)
        queued = fan.stats.queued
        if not waiter.done():
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert fan.stats.queued == queued
        else:
            waiter.result().close()
    finally:
        await fan.aclose()
    assert open_fd_count() == baseline


async def test_close_releases_queued_event_fds(tmpfs: Path) -> None:
    baseline = open_fd_count()
    async with Fanotify() as fan:
        fan.mark(tmpfs, WRITES)
        assert sh(f"for i in 1 2 3; do echo $i > {tmpfs}/f$i; done").returncode == 0
        first = await asyncio.wait_for(fan.receive(), 5)
        while fan.stats.events_read < 3:
            await asyncio.sleep(0.01)
        assert open_fd_count() >= baseline + 4  # group fd + 3 event fds
    # The queued events' fds went with the group; the one handed out by
    # receive() belongs to the caller until it closes it.
    assert not first.closed and open_fd_count() == baseline + 1
    first.close()
    assert open_fd_count() == baseline


async def test_receive_nowait(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        fan.mark(tmpfs, WRITES)
        with pytest.raises(WouldBlock):
            fan.receive_nowait()
        assert sh(f"echo x > {tmpfs}/a").returncode == 0
        # The reader runs on the loop: poll until it has queued the event.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            try:
                ev = fan.receive_nowait()
                break
            except WouldBlock:
                assert loop.time() < deadline, "no event within 5 s"
                await asyncio.sleep(0.01)
        with ev:
            assert ev.path == f"{tmpfs}/a"
        assert ev.closed


_BUSY_CHILD = """
import os, sys
d = sys.argv[1]
names = [f"{d}/f{i}" for i in range(200)]
for n in names:
    with open(n, "w") as f:
        f.write("x")
i = 0
while True:
    # Stop when the parent closes our stdin (checked without blocking).
    if i % 200 == 0:
        import select
        r, _, _ = select.select([sys.stdin], [], [], 0)
        if r and not sys.stdin.read(1):
            break
    fd = os.open(names[i % 200], os.O_RDWR)
    os.write(fd, b"y")
    os.close(fd)
    i += 1
"""


@pytest.mark.timeout(300)
async def test_fd_count_back_to_baseline_after_100000_events(tmpfs: Path) -> None:
    total = 100_000
    baseline = open_fd_count()
    child = subprocess.Popen(
        [sys.executable, "-c", _BUSY_CHILD, str(tmpfs)], stdin=subprocess.PIPE
    )
    n = overflows = 0
    peak = 0
    try:
        async with Fanotify() as fan:
            fan.mark(tmpfs, Event.OPEN | Event.MODIFY | Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
            async for ev in fan:
                n += 1
                if ev.ev_types & Event.Q_OVERFLOW:
                    overflows += 1
                else:
                    assert ev.fd >= 0 and ev.path is not None
                if n % 5000 == 0:
                    peak = max(peak, open_fd_count())
                if n >= total:
                    break
            assert fan.stats.overflows == overflows
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert n == total
    # Each event fd was closed as the iterator moved on: the fds in use stayed
    # bounded by the group's queue, and all are gone now.
    assert peak < baseline + 8192 + 64
    assert open_fd_count() == baseline


async def test_a_failed_read_ends_iteration_with_an_error(
    tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Fanotify() as fan:
        fan.mark(tmpfs, WRITES)

        async def consume() -> int:
            n = 0
            async for _ev in fan:
                n += 1
            return n

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        # What the reader does when read(2) fails (e.g. EIO): stop, log, wake.
        fan._fail(OSError(5, "Input/output error"))
        with pytest.raises(ClosedResourceError, match="failed") as info:
            await asyncio.wait_for(task, 5)
        assert isinstance(info.value.__cause__, OSError)
    assert "reading the fanotify group failed" in caplog.text
