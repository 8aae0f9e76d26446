"""``on_permission(handler, thread=True)``: a plain handler served on the group's own thread.

Each test marks files on a private tmpfs and lets child processes open them;
every group is closed by the fixture, and every test runs under a timeout.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio
from _backends import ON_BOTH, open_in_child, run, wait_until
from _perm_helpers import background, child, drain, fds_into, group_maker, queued_bytes, wait_for

from afanotify import Event, Fanotify, FanotifyData, InitFlag, Response, Verdict

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

TIMEOUT = 1.5


@pytest_asyncio.fixture  # asyncio only: pytest-asyncio runs in strict mode
async def make_group() -> AsyncIterator[Callable[..., Fanotify]]:
    with group_maker() as make:
        yield make


def _file(root: Path, name: str) -> Path:
    p = root / name
    p.write_text("content\n")
    return p


async def test_handler_runs_on_its_thread_and_its_verdicts_are_written(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    ok, secret, errno_file = _file(tmpfs, "ok"), _file(tmpfs, "secret"), _file(tmpfs, "eacces")
    fan = make_group(permission_timeout=30)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    loop_thread = threading.get_ident()
    seen: list[tuple[str | None, int]] = []

    def decide(ev: FanotifyData) -> bool | Verdict:
        seen.append((ev.path, threading.get_ident()))
        if ev.path == str(errno_file):
            return Verdict(False)
        return ev.path != str(secret)

    fan.on_permission(decide, thread=True)
    async with background(drain(fan)):
        results = [await child("open", p) for p in (ok, secret, errno_file)]
    assert [r.errno for r in results] == [0, errno.EPERM, errno.EPERM]
    assert [p for p, _ in seen] == [str(ok), str(secret), str(errno_file)]
    assert all(t != loop_thread for _, t in seen)
    st = fan.permission_stats
    assert (st.allowed, st.denied, st.defaulted, st.pending) == (1, 2, 0, 0)
    assert fan.stats.events_delivered == 3


async def test_blocking_handler_gets_the_deadline_and_the_loop_keeps_running(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=TIMEOUT, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    release = threading.Event()
    returned = threading.Event()

    def slow(ev: FanotifyData) -> bool:
        release.wait(20)
        returned.set()
        return True  # too late: the default was written at the deadline

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    fan.on_permission(slow, thread=True)
    async with background(drain(fan)), background(ticker()):
        result = await child("open", target)
        assert ticks >= int(TIMEOUT / 0.05) // 2  # the loop ran while the handler blocked
        release.set()
        await wait_for(returned.is_set)
        await wait_for(lambda: fan.permission_stats.late == 1)
    assert result.errno == errno.EPERM
    assert TIMEOUT * 0.9 <= result.elapsed <= TIMEOUT + 1
    st = fan.permission_stats
    assert (st.timed_out, st.late, st.allowed, st.denied) == (1, 1, 0, 1)


@pytest.mark.parametrize("style", ["raises", "bad-return", "awaitable"])
async def test_failing_handler_gets_the_default_at_once(
    tmpfs: Path, make_group: Callable[..., Fanotify], style: str
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)

    async def coro() -> bool:
        return True

    def handler(ev: FanotifyData) -> Any:
        if style == "raises":
            raise RuntimeError("policy bug")
        if style == "awaitable":
            return coro()
        return "yes"

    fan.on_permission(handler, thread=True)
    async with background(drain(fan)):
        result = await child("open", target)
    assert result.errno == errno.EPERM
    assert result.elapsed < 5  # far before the 30 s deadline
    assert fan.permission_stats.handler_errors == 1


async def test_async_handler_is_refused_on_a_thread(
    make_group: Callable[..., Fanotify]
) -> None:
    fan = make_group()

    async def handler(ev: FanotifyData) -> bool:
        return True

    with pytest.raises(TypeError, match="thread=False"):
        fan.on_permission(handler, thread=True)
    assert fan._perm.handler is None


async def test_other_events_still_reach_async_for(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30)
    fan.mark(target, Event.OPEN_PERM | Event.CLOSE_NOWRITE)
    decided: list[int] = []
    fan.on_permission(lambda ev: decided.append(ev.pid) is None, thread=True)
    got: list[FanotifyData] = []

    async def consume() -> None:
        async for ev in fan:
            got.append(ev)

    async with background(consume()):
        result = await child("open", target)
        await wait_for(lambda: any(ev.events & Event.CLOSE_NOWRITE for ev in got))
    assert result.errno == 0
    assert len(decided) == 1
    assert all(not ev.is_permission for ev in got)
    assert got[0].path == str(target)


async def test_removing_the_handler_gives_reading_back_to_the_loop(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    fan.on_permission(lambda ev: True, thread=True)

    async def consume() -> None:
        async for ev in fan:
            if not ev.answered:
                ev.allow_nowait()  # only events the handler did not take

    async with background(consume()):
        assert (await child("open", target)).errno == 0
        thread = fan._perm.thread
        assert thread is not None and thread._thread.is_alive()
        fan.on_permission(None)
        assert fan._perm.thread is None and not thread._thread.is_alive()
        assert (await child("open", target)).errno == 0  # answered by the consumer
    st = fan.permission_stats
    assert (st.allowed, st.defaulted) == (2, 0)


async def test_a_read_in_flight_when_the_handler_is_removed_goes_to_the_loop(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thread has read the event but not served it when on_permission(None)
    # stops it: the group stays open, so the event is the loop's consumer's
    # to answer, not the default's (DENY here).
    from afanotify import _permthread

    target = _file(tmpfs, "f")
    in_batch, go = threading.Event(), threading.Event()
    real = _permthread.PermissionThread._batch

    def held_batch(self: Any, dec: Any, src: Any, count: int) -> None:
        in_batch.set()
        go.wait(20)
        real(self, dec, src, count)

    monkeypatch.setattr(_permthread.PermissionThread, "_batch", held_batch)
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    fan.on_permission(lambda ev: True, thread=True)
    seen: list[str | None] = []

    async def consume() -> None:
        async for ev in fan:
            seen.append(ev.path)
            ev.allow_nowait()

    async with background(consume()):
        opener = asyncio.ensure_future(child("open", target))
        await wait_for(in_batch.is_set, 20)
        threading.Timer(0.2, go.set).start()  # lets the thread go once it is told to stop
        fan.on_permission(None)
        assert (await opener).errno == 0
    assert seen == [str(target)]
    st = fan.permission_stats
    assert (st.allowed, st.defaulted, st.at_close) == (1, 0, 0)


async def test_close_with_a_handler_running_answers_its_event(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    inside = threading.Event()
    release = threading.Event()

    def slow(ev: FanotifyData) -> bool:
        inside.set()
        release.wait(20)
        return True

    fan.on_permission(slow, thread=True)
    async with background(drain(fan)):
        run = asyncio.create_task(child("open", target))
        await wait_for(inside.is_set)
        t0 = time.monotonic()
        fan.close()
        closed_in = time.monotonic() - t0
        result = await run
    release.set()
    assert result.errno == errno.EPERM  # the default, written by the close
    assert result.elapsed < 10
    assert closed_in < 5
    assert fan.permission_stats.at_close == 1


def test_thread_is_refused_where_it_cannot_serve(tmpfs: Path) -> None:
    with Fanotify(InitFlag.CLASS_CONTENT | InitFlag.REPORT_TID) as fan:
        with pytest.raises(ValueError, match="REPORT_TID"):
            fan.on_permission(lambda ev: True, thread=True)


@ON_BOTH
def test_thread_handler_on_both_backends(tmpfs: Path, backend: str) -> None:
    ok, secret = _file(tmpfs, "ok"), _file(tmpfs, "secret")

    async def body() -> None:
        async with Fanotify(InitFlag.CLASS_CONTENT, default_response=Response.DENY,
                            permission_timeout=30) as fan:
            fan.mark(tmpfs, Event.OPEN_PERM | Event.CLOSE_NOWRITE | Event.EVENT_ON_CHILD)
            fan.on_permission(lambda ev: ev.path == str(ok), thread=True)
            closes: list[str | None] = []

            async def consume() -> None:
                async for ev in fan:
                    closes.append(ev.path)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                assert (await open_in_child(ok))[0] == 0
                assert (await open_in_child(secret))[0] == errno.EPERM
                # the notification reached the loop's iterator through the thread
                await wait_until(lambda: str(ok) in closes)
                tg.cancel_scope.cancel()
            st = fan.permission_stats
            assert (st.allowed, st.denied, st.defaulted) == (1, 1, 0)
            assert fan._perm.thread is not None and fan._perm.thread.started

    run(backend, body)


async def test_a_failed_thread_answers_its_event_and_gives_reading_back(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch
) -> None:
    from afanotify import _permthread

    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    on: list[int] = []

    def broken(self: Any, ev: FanotifyData, handler: Any) -> None:
        raise RuntimeError("a bug in the thread, not in the handler")

    monkeypatch.setattr(_permthread.PermissionThread, "_dispatch", broken)
    fan.on_permission(lambda ev: on.append(threading.get_ident()) is None, thread=True)
    async with background(drain(fan)):
        failed = await child("open", target)
        await wait_for(lambda: fan._perm.thread is None)
        assert fan._reader.delegate is None and fan._reader.reading
        result = await child("open", target)
    assert failed.errno == errno.EPERM  # the default, at once, not at the 30 s deadline
    assert failed.elapsed < 10
    assert fan.permission_stats.abandoned == 1
    assert result.errno == 0  # the handler's verdict, from the loop now
    assert on == [threading.get_ident()]


async def test_a_handler_that_closes_the_group_leaves_nothing_of_its_batch(
    tmpfs: Path, make_group: Callable[..., Fanotify], caplog: pytest.LogCaptureFixture
) -> None:
    # The first open is read alone (the others start once the handler has
    # it); the first call waits (with a deadline) until the other opens are
    # queued, so the next read holds them all; the second call closes the
    # group.  The events of that read not yet given to the handler get the
    # default verdict (DENY) from the close, not the kernel's allow when the
    # fd closes; their fds are closed, and the thread ends.
    files = [_file(tmpfs, f"f{i}") for i in range(6)]
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    calls = 0
    first_call = threading.Event()

    def handler(ev: FanotifyData) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_call.set()
            deadline = time.monotonic() + 20
            while queued_bytes(fan) < (len(files) - 1) * 24:
                assert time.monotonic() < deadline, "the other opens never queued"
                time.sleep(0.005)  # polling the queue, on the handler's thread
        elif calls == 2:
            fan.close()
        return True

    fan.on_permission(handler, thread=True)
    server = fan._perm.thread
    assert server is not None
    caplog.set_level(logging.WARNING)
    async with background(drain(fan)):
        first = asyncio.ensure_future(child("open", files[0], timeout=20))
        assert await asyncio.to_thread(first_call.wait, 20), "the first open never came"
        results = await asyncio.gather(first, *(child("open", p, timeout=20) for p in files[1:]))
    await wait_for(lambda: not server._thread.is_alive())
    assert calls == 2
    assert sorted(r.errno for r in results) == [0] + [errno.EPERM] * (len(files) - 1)
    assert fds_into(tmpfs) == []
    st = fan.permission_stats
    assert (st.allowed, st.denied, st.pending, st.late) == (1, len(files) - 1, 0, 1)
    assert st.abandoned == 0  # the thread did not fail on the way
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
