"""The read-ahead thread behind a FID group's reads (``afanotify/_threaded.py``).

A burst bigger than one read makes the group read full buffers, and each
full read asks the thread for the next: these tests drain such bursts
(a small ``buffer_size`` makes many reads of a few thousand events) and
check order, paths, overflow, flow control, close and a synchronous read
after the loop's.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import anyio
import pytest
from _backends import ON_BOTH, run
from helpers import collect

from afanotify import Event, Fanotify, FanotifyData, InitFlag, WouldBlock
from afanotify._ffi import lib
from afanotify._threaded import ThreadedReader

pytestmark = pytest.mark.kernel

#: Small reads: a few hundred events each, so a burst is many reads.
BUF = 16384


def _create(directory: Path, n: int, prefix: str = "f") -> None:
    """Create ``n`` files in another process (the group skips its own events)."""
    code = (
        "import sys, os\n"
        "d, n, p = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
        "for i in range(n):\n"
        "    os.close(os.open(f'{d}/{p}{i}', os.O_CREAT | os.O_WRONLY, 0o644))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(directory), str(n), prefix], check=True,
                   timeout=60)  # fmt: skip


def _reader(fan: Fanotify) -> ThreadedReader:
    reader = fan._reader
    assert isinstance(reader, ThreadedReader), "this machine should give FID groups the thread"
    return reader


def _open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name == "afanotify-read"}


async def _drain_batches(fan: Fanotify, n: int) -> list[list[FanotifyData]]:
    batches: list[list[FanotifyData]] = []
    got = 0
    async with fan.batches() as it:
        while got < n:
            batch = await asyncio.wait_for(it.__anext__(), 10)
            batches.append(batch)
            got += len(batch)
    return batches


async def test_a_burst_arrives_whole_in_order_one_read_per_batch(tmpfs: Path) -> None:
    (tmpfs / "d").mkdir()
    n = 4000
    async with Fanotify(InitFlag.REPORT_DFID_NAME, buffer_size=BUF) as fan:
        fan.mark(tmpfs, Event.CREATE, "filesystem")
        _create(tmpfs / "d", n)  # all queued before the first read
        batches = await _drain_batches(fan, n)
        events = [e for b in batches for e in b]
        assert [e.path for e in events] == [f"{tmpfs}/d/f{i}" for i in range(n)]
        assert all(e.path_resolved for e in events)
        # One read per batch, and the thread made all but the first.
        assert fan.stats.reads == len(batches) > 10
        assert lib.aft_reads(_reader(fan)._r) >= len(batches) - 1
        assert fan.stats.overflows == 0


async def test_a_kernel_overflow_is_surfaced_after_the_queued_events(tmpfs: Path) -> None:
    (tmpfs / "d").mkdir()
    async with Fanotify(InitFlag.REPORT_DFID_NAME, buffer_size=BUF) as fan:
        fan.mark(tmpfs, Event.CREATE, "filesystem")
        _create(tmpfs / "d", 17000)  # more than the kernel's queue (16384 events)
        got: list[FanotifyData] = []
        async with fan.batches() as it:
            while not any(e.ev_types & Event.Q_OVERFLOW for e in got):
                got += await asyncio.wait_for(it.__anext__(), 10)
        kept = [e for e in got if not e.ev_types & Event.Q_OVERFLOW]
        assert got[-1].ev_types & Event.Q_OVERFLOW
        assert fan.stats.overflows == 1
        # What the kernel kept comes first, in order, each with its path.
        assert [e.name for e in kept] == [f"f{i}" for i in range(len(kept))]
        assert len(kept) >= 16000 and all(e.path_resolved for e in kept)
        _reader(fan)


async def test_a_paused_group_leaves_its_backlog_in_the_kernel(tmpfs: Path) -> None:
    (tmpfs / "d").mkdir()
    n = 4000
    async with Fanotify(InitFlag.REPORT_DFID_NAME, buffer_size=BUF) as fan:
        fan.mark(tmpfs, Event.CREATE, "filesystem")
        _create(tmpfs / "d", n)
        async with fan.batches() as it:
            first = await asyncio.wait_for(it.__anext__(), 10)
            sink = it._sink
            assert sink is not None
            deadline = time.monotonic() + 10
            while not fan._reader.paused:  # the batches read ahead fill the sink
                assert time.monotonic() < deadline, "the reader never paused"
                await asyncio.sleep(0.001)
            held = len(first) + sum(len(b) for b in sink.ready)
            # Paused: no more than the sink's batches and at most two reads
            # of the thread's were taken from the kernel.
            assert fan.stats.reads <= 1 + len(sink.ready) + 1
            reader = _reader(fan)
            deadline = time.monotonic() + 10
            while lib.aft_reads(reader._r) < fan.stats.reads + 1:  # it reads on ...
                assert time.monotonic() < deadline, "the thread did not read on"
                await asyncio.sleep(0.001)
            # ... into its free buffers only: a later read by the thread would
            # be a third one waiting.  (Checked again after the loop's turns.)
            for _ in range(20):
                await asyncio.sleep(0.005)
                assert lib.aft_reads(reader._r) <= fan.stats.reads + 2
            assert held < n
        # The rest is still there, in order, for the next consumer.
        rest = await collect(fan, lambda g: len(g) >= n - len(first), timeout=10)
        assert [e.name for e in rest] == [f"f{i}" for i in range(len(first), n)]


@pytest.mark.parametrize("round_", [1, 2])
async def test_close_during_a_burst_is_prompt_and_leaks_nothing(tmpfs: Path, round_: int) -> None:
    (tmpfs / "d").mkdir()
    fds_before = _open_fds()
    assert not _threads()
    fan = Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.UNLIMITED_QUEUE, buffer_size=BUF)
    try:
        fan.mark(tmpfs, Event.CREATE | Event.DELETE, "filesystem")
        _create(tmpfs / "d", 20000)
        it = fan.batches()
        await asyncio.wait_for(it.__anext__(), 10)
        reader = _reader(fan)
        assert reader.thread is not None and reader.thread.is_alive()
        assert reader._asked  # a full read: the thread reads on
    finally:
        t0 = time.monotonic()
        fan.close()
        took = time.monotonic() - t0
    assert took < 1.0
    assert reader.thread is not None and not reader.thread.is_alive()
    assert not _threads()
    assert _open_fds() == fds_before
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(it.__anext__(), 5)


async def test_a_synchronous_read_takes_the_read_asked_of_the_thread(tmpfs: Path) -> None:
    (tmpfs / "d").mkdir()
    n = 3000
    async with Fanotify(InitFlag.REPORT_DFID_NAME, buffer_size=BUF) as fan:
        fan.mark(tmpfs, Event.CREATE, "filesystem")
        _create(tmpfs / "d", n)
        it = fan.batches()
        first = await asyncio.wait_for(it.__anext__(), 10)
        reader = _reader(fan)
        fan._reader.pause()  # the loop reads no more: what follows is read_batch's
        assert reader._asked
        rest_in_sink = [e for b in it._sink.ready for e in b] if it._sink else []
        sync: list[FanotifyData] = []
        while True:  # the thread's reads first, then the kernel's queue
            try:
                sync += fan.read_batch()
            except WouldBlock:
                break
        assert not reader._asked
        got = first + rest_in_sink + sync
        assert len(got) == n
        assert [e.name for e in got] == [f"f{i}" for i in range(len(got))]
        await it.aclose()


def test_groups_that_carry_descriptors_keep_the_loops_reader() -> None:
    from afanotify._threaded import eligible

    assert eligible(InitFlag.REPORT_DFID_NAME)
    assert not eligible(InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_PIDFD)
    assert not eligible(InitFlag.CLASS_NOTIF)
    assert not eligible(InitFlag.CLASS_CONTENT)


@ON_BOTH
def test_async_for_drains_a_burst_and_cancels_on_either_loop(tmpfs: Path, backend: str) -> None:
    (tmpfs / "d").mkdir()
    n = 4000

    async def body() -> None:
        async with Fanotify(InitFlag.REPORT_DFID_NAME, buffer_size=BUF) as fan:
            fan.mark(tmpfs, Event.CREATE, "filesystem")
            _create(tmpfs / "d", n)
            names: list[str | None] = []
            with anyio.fail_after(10):
                async for ev in fan:
                    names.append(ev.name)
                    if len(names) == n // 2:
                        break
            # A consumer cancelled while the thread reads ahead loses nothing.
            with anyio.move_on_after(0.05):
                async for ev in fan:
                    names.append(ev.name)
                    await anyio.sleep(1)
            with anyio.fail_after(10):
                async for ev in fan:
                    names.append(ev.name)
                    if len(names) == n:
                        break
            assert names == [f"f{i}" for i in range(n)]
            assert lib.aft_reads(_reader(fan)._r) > 10

    run(backend, body)


async def test_a_forked_child_closing_its_copy_leaves_the_parent_reading(tmpfs: Path) -> None:
    (tmpfs / "d").mkdir()
    n = 2000
    async with Fanotify(InitFlag.REPORT_DFID_NAME, buffer_size=BUF) as fan:
        fan.mark(tmpfs, Event.CREATE, "filesystem")
        _create(tmpfs / "d", n)
        first = await collect(fan, lambda g: len(g) >= n, timeout=10)
        reader = _reader(fan)
        assert reader.thread is not None and reader.thread.is_alive()
        with warnings.catch_warnings():  # Python 3.12+: fork with threads running
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: close its copies only, then leave at once
            code = 1
            try:
                fan.close()
                code = 0 if fan.closed and reader._wake == -1 else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's thread and eventfd are untouched: it reads on.
        _create(tmpfs / "d", n, prefix="g")
        later = await collect(fan, lambda g: len(g) >= n, timeout=10)
        assert [e.name for e in first + later] == (
            [f"f{i}" for i in range(n)] + [f"g{i}" for i in range(n)]
        )
        assert reader.thread.is_alive()
