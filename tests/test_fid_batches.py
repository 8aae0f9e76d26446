"""``Fanotify.batches()``: one list per read, and who owns each event's descriptors."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from helpers import is_open, sh

from afanotify import Event, Fanotify, FanotifyData, InitFlag

pytestmark = pytest.mark.kernel


async def _next(it: object, timeout: float = 5.0) -> list[FanotifyData]:
    return await asyncio.wait_for(it.__anext__(), timeout)  # type: ignore[attr-defined]


async def test_a_batch_is_every_event_of_one_read_with_full_paths(tmpfs: Path) -> None:
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(tmpfs, Event.CREATE | Event.ONDIR, "filesystem")
        # All 41 events are queued before the group first reads: one read.
        script = f"cd {tmpfs} && mkdir d && for i in $(seq 40); do : > d/f$i; done"
        assert sh(script).returncode == 0
        it = fan.batches()
        batch = await _next(it)
        assert isinstance(batch, list) and len(batch) == 41
        assert [e.path for e in batch] == [f"{tmpfs}/d"] + [f"{tmpfs}/d/f{i}" for i in range(1, 41)]
        assert all(e.path_resolved for e in batch)
        assert fan.stats.reads == 1 and fan.stats.events_delivered == 41
        # A second read is a second batch.
        assert sh(f": > {tmpfs}/d/g1 && : > {tmpfs}/d/g2").returncode == 0
        batch2 = await _next(it)
        assert [e.name for e in batch2] == ["g1", "g2"]
        assert fan.stats.reads == 2
        await it.aclose()


async def test_each_batch_keeps_its_fds_until_the_next_is_asked_for(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        fan.mark(tmpfs, Event.CLOSE_WRITE, "mount")
        assert sh(f"for i in 1 2 3; do : > {tmpfs}/f$i; done").returncode == 0
        it = fan.batches()
        first = await _next(it)
        assert [e.path for e in first] == [f"{tmpfs}/f{i}" for i in (1, 2, 3)]
        fds = [e.fd for e in first]
        assert all(is_open(fd) for fd in fds)
        kept = first[1].detach_fd()
        assert sh(f": > {tmpfs}/g").returncode == 0
        second = await _next(it)
        assert [e.name or e.path for e in second] == [f"{tmpfs}/g"]
        # Asking for the second batch closed the first's fds, except the detached one.
        # (the new event's fd may reuse a number the first batch freed)
        for fd in (fds[0], fds[2]):
            assert not is_open(fd) or fd == second[0].fd
        assert is_open(kept)
        assert first[0].closed and first[2].closed
        os.close(kept)
        last_fd = second[0].fd
        async with it:
            pass
        assert not is_open(last_fd)  # leaving the context released the last batch


async def test_events_not_taken_go_back_to_the_group(tmpfs: Path) -> None:
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(tmpfs, Event.CREATE, "filesystem")
        assert sh(f": > {tmpfs}/a").returncode == 0
        async with fan.batches() as it:
            (a,) = await _next(it)
            assert a.name == "a"
            with pytest.raises(RuntimeError, match="already has a batches"):
                await fan.batches().__anext__()
            assert sh(f": > {tmpfs}/b").returncode == 0
            # Let the reader read b into the iterator, which then closes untaken.
            for _ in range(200):
                if it._sink is not None and it._sink.ready:
                    break
                await asyncio.sleep(0.01)
            assert it._sink is not None and it._sink.ready
        ev = await asyncio.wait_for(fan.receive(), 5)
        assert ev.name == "b" and ev.path == f"{tmpfs}/b"  # nothing lost


async def test_closing_the_group_ends_the_batches_and_releases_them(tmpfs: Path) -> None:
    fan = Fanotify()
    fan.mark(tmpfs, Event.CLOSE_WRITE, "mount")
    assert sh(f": > {tmpfs}/a").returncode == 0
    it = fan.batches()
    (a,) = await _next(it)
    fd = a.fd
    waiter = asyncio.ensure_future(_next(it))
    await asyncio.sleep(0.05)
    fan.close()
    with pytest.raises(StopAsyncIteration):
        await waiter
    assert not is_open(fd) and a.closed
