"""A handler that closes the group, or removes itself, in the middle of a read (issue #14).

One read of the group can hold many events; the permission servers (the
loop's, ``_permloop.py``, and ``thread=True``'s, ``_permthread.py``) give
them to the handler one after another.  What the handler does to the group
meanwhile must not let through what it should not:

* the group closed by the handler, or by the loop while a thread handler
  runs: every permission event of the read gets the default verdict while
  the group fd is still open (closing it would make the kernel allow them),
  each is counted once, and the fds of the read's other events are closed;
* the handler removed or replaced (the group stays open): the rest of the
  read goes to the new handler or the consumer, not to a default verdict.

Every open waits in the kernel before the first read (``wait_queued``), so
one read holds all of them.  Private tmpfs; every group is closed by the
fixture, every test runs under a timeout.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from _perm_helpers import background, child, drain, group_maker, wait_for, wait_queued
from helpers import CHILD_CWD, child_env

from afanotify import Event, Fanotify, FanotifyData, Response, _permloop

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not _permloop.AVAILABLE, reason="needs the compiled core"),
]

#: Far beyond the time a child is given: a deadline cannot be what answers.
GROUP_TIMEOUT = 30.0
CHILD_TIMEOUT = 10.0


@pytest_asyncio.fixture  # asyncio only: pytest-asyncio runs in strict mode
async def make_group() -> AsyncIterator[Callable[..., Fanotify]]:
    with group_maker(permission_timeout=GROUP_TIMEOUT) as make:
        yield make


def _files(root: Path, n: int) -> list[Path]:
    files = [root / f"f{i}" for i in range(n)]
    for p in files:
        p.write_text("content\n")
    return files


def _fds_on(path: Path) -> int:
    """How many of this process's descriptors name ``path``."""
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                n += 1
        except OSError:
            pass
    return n


def _read(path: Path) -> None:
    subprocess.run(["cat", str(path)], check=True, stdout=subprocess.DEVNULL,
                   env=child_env(), cwd=CHILD_CWD)  # fmt: skip


@pytest.mark.parametrize("thread", [False, True], ids=["loop", "thread"])
async def test_removing_the_handler_mid_read_leaves_the_rest_to_the_consumer(
    tmpfs: Path, make_group: Callable[..., Fanotify], thread: bool,
) -> None:
    files = _files(tmpfs, 2)
    fan = make_group(default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    calls = 0

    def handler(ev: FanotifyData) -> bool:
        nonlocal calls
        calls += 1
        fan.on_permission(None)  # done filtering: the consumer decides from now on
        return True

    consumed: list[str | None] = []

    async def consume() -> None:
        async for ev in fan:
            if ev.is_permission:
                consumed.append(ev.path)
                ev.allow_nowait()
            ev.close()

    fan.on_permission(handler, thread=thread)
    opens = [asyncio.ensure_future(child("open", p, timeout=CHILD_TIMEOUT)) for p in files]
    await wait_queued(fan, len(files))
    async with background(consume()):
        results = await asyncio.gather(*opens)
    assert calls == 1
    assert [r.errno for r in results] == [0, 0], "the consumer allowed the one the handler left"
    assert len(consumed) == 1
    st = fan.permission_stats
    assert (st.allowed, st.denied, st.at_close, st.defaulted) == (2, 0, 0, 0)


async def test_replacing_the_handler_mid_read_gives_the_rest_to_the_new_one(
    tmpfs: Path, make_group: Callable[..., Fanotify],
) -> None:
    files = _files(tmpfs, 3)
    fan = make_group(default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    first: list[FanotifyData] = []
    second: list[FanotifyData] = []

    def new(ev: FanotifyData) -> bool:
        second.append(ev)
        return True

    def old(ev: FanotifyData) -> bool:
        first.append(ev)
        fan.on_permission(new)
        return True

    fan.on_permission(old)
    opens = [asyncio.ensure_future(child("open", p, timeout=CHILD_TIMEOUT)) for p in files]
    await wait_queued(fan, len(files))
    async with background(drain(fan)):
        results = await asyncio.gather(*opens)
    assert [r.errno for r in results] == [0, 0, 0]
    assert (len(first), len(second)) == (1, 2)
    st = fan.permission_stats
    assert (st.allowed, st.denied, st.at_close) == (3, 0, 0)


@pytest.mark.parametrize("thread", [False, True], ids=["loop", "thread"])
async def test_a_handler_closing_the_group_closes_the_other_events_of_its_read(
    tmpfs: Path, make_group: Callable[..., Fanotify], thread: bool,
) -> None:
    # One read: [CLOSE_NOWRITE x, OPEN_PERM y, CLOSE_NOWRITE x]; the handler
    # closes the group at y.  The fds of both x events are closed with it.
    x, y = tmpfs / "x", tmpfs / "y"
    x.write_text("x\n")
    y.write_text("y\n")
    fan = make_group(default_response=Response.DENY)
    fan.mark(x, Event.CLOSE_NOWRITE)
    fan.mark(y, Event.OPEN_PERM)
    calls = 0

    def handler(ev: FanotifyData) -> bool:
        nonlocal calls
        calls += 1
        fan.close()
        return True

    fan.on_permission(handler, thread=thread)
    _read(x)
    blocked = asyncio.ensure_future(child("open", y, timeout=CHILD_TIMEOUT))
    await wait_queued(fan, 1)
    _read(x)
    assert _fds_on(x) == 0
    async with background(drain(fan)):
        result = await blocked
    assert calls == 1
    assert result.errno == errno.EPERM, "answered by the close, with the default verdict"
    assert fan.closed
    # The server closes them as it ends the read (on its thread, or on the
    # loop with thread=True's hand-on): soon, not necessarily yet.
    await wait_for(lambda: _fds_on(x) == 0)
    st = fan.permission_stats
    assert (st.denied, st.allowed, st.at_close, st.late) == (1, 0, 1, 1)


@pytest.mark.parametrize("thread", [False, True], ids=["loop", "thread"])
async def test_a_handler_closing_the_group_gives_the_rest_of_its_read_the_default(
    tmpfs: Path, make_group: Callable[..., Fanotify], thread: bool,
) -> None:
    # DENY by default: the open in the handler and the three after it in the
    # same read are denied (the close answers them), never allowed by the
    # kernel as the fd closes; each is counted once.
    files = _files(tmpfs, 4)
    fan = make_group(default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    calls = 0

    def handler(ev: FanotifyData) -> bool:
        nonlocal calls
        calls += 1
        fan.close()
        return True

    fan.on_permission(handler, thread=thread)
    opens = [asyncio.ensure_future(child("open", p, timeout=CHILD_TIMEOUT)) for p in files]
    await wait_queued(fan, len(files))
    async with background(drain(fan)):
        results = await asyncio.gather(*opens)
    assert calls == 1
    assert [r.errno for r in results] == [errno.EPERM] * len(files)
    # The handler's own verdict comes after the close answered its event:
    # on its thread that may be after the opens' answers.
    await wait_for(lambda: fan.permission_stats.late == 1)
    st = fan.permission_stats
    assert (st.denied, st.allowed, st.at_close, st.defaulted) == (4, 0, 4, 4)
    assert (st.late, st.dropped, st.pending) == (1, 0, 0)


async def test_closing_the_group_while_a_thread_handler_runs_denies_the_rest_of_its_read(
    tmpfs: Path, make_group: Callable[..., Fanotify],
) -> None:
    # The loop closes the group while the thread's handler is still running
    # (longer than the close waits for the thread): the read's other events
    # get the default verdict then, not the kernel's allow after the close.
    files = _files(tmpfs, 4)
    fan = make_group(default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    inside = threading.Event()
    release = threading.Event()

    def handler(ev: FanotifyData) -> bool:
        inside.set()
        release.wait(CHILD_TIMEOUT)
        return True

    fan.on_permission(handler, thread=True)
    opens = [asyncio.ensure_future(child("open", p, timeout=CHILD_TIMEOUT)) for p in files]
    await wait_queued(fan, len(files))
    try:
        async with background(drain(fan)):
            assert await asyncio.to_thread(inside.wait, CHILD_TIMEOUT)
            fan.close()  # application shutdown, from the loop
            results = await asyncio.gather(*opens)
    finally:
        release.set()
    assert [r.errno for r in results] == [errno.EPERM] * len(files)
    st = fan.permission_stats
    assert (st.denied, st.allowed, st.at_close, st.defaulted) == (4, 0, 4, 4)


@pytest.mark.parametrize("thread", [False, True], ids=["new-on-loop", "new-on-thread"])
async def test_a_handler_replaced_mid_read_whose_successor_closes_the_group_denies_the_rest(
    tmpfs: Path, make_group: Callable[..., Fanotify], thread: bool,
) -> None:
    # The first handler replaces itself; its server goes on with the read
    # and gives the next event to the new handler, which closes the group.
    # The read's two other events get the default verdict from that close,
    # as they would from the current server's.
    files = _files(tmpfs, 4)
    fan = make_group(default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    calls: list[str] = []

    def closing(ev: FanotifyData) -> bool:
        calls.append("closing")
        fan.close()
        return True

    def first(ev: FanotifyData) -> bool:
        calls.append("first")
        fan.on_permission(closing, thread=thread)
        return True

    fan.on_permission(first)
    opens = [asyncio.ensure_future(child("open", p, timeout=CHILD_TIMEOUT)) for p in files]
    await wait_queued(fan, len(files))
    async with background(drain(fan)):
        results = await asyncio.gather(*opens)
    assert calls == ["first", "closing"]
    assert sorted(r.errno for r in results) == [0] + [errno.EPERM] * 3
    st = fan.permission_stats
    assert (st.allowed, st.denied, st.at_close, st.late) == (1, 3, 3, 1)
