"""A read whose events cannot be built leaves no process waiting (issue #14).

If building a read's events raises (MemoryError, a bug in the builder or
in the code around it), the permission events of that read not yet handed
to anything that answers them must get the default verdict at once, be
counted (``permission_stats.build_failed``) and logged, and the group must
fail loudly (its consumer gets ClosedResourceError naming the failure).

The failure is induced by replacing the C builder, for the test only, with
one that builds ``ok`` events of the first read and then raises MemoryError
(nothing in the library changes for it).  Each read path is tried: the
loop server of a plain handler, ``thread=True``, ``async for`` (the
consumer's own read, and the group's general reader), and the guard's loop
path (static rules, then the handler).  The group timeout is 30 s and the
watchdog is far off, so an open answered within seconds was answered by the
failure path.  Private tmpfs; every group closed by the fixture.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _perm_helpers import all_blocked as _all_blocked
from _perm_helpers import background, child, fds_into, group_maker, queued_at_least, wait_queued

from afanotify import (
    ClosedResourceError,
    Event,
    Fanotify,
    FanotifyData,
    InitFlag,
    Response,
    _fastparse,
    _permloop,
)
from afanotify._permloop import LoopServer
from afanotify._permthread import PermissionThread
from afanotify._static import StaticRule, StaticRules

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


class FailingBuild:
    """The C builder, failing on its first call after building ``ok`` events."""

    def __init__(self, real: Any, ok: int) -> None:
        self.real = real
        self.ok = ok
        self.failed = 0

    def __call__(self, out: Any, start: int, count: int, src: Any, arena: Any,
                 events: list[FanotifyData], *rest: Any) -> Any:  # fmt: skip
        if self.failed:
            return self.real(out, start, count, src, arena, events, *rest)
        if self.ok:
            self.real(out, start, min(count, start + self.ok), src, arena, events, *rest)
        self.failed += 1
        raise MemoryError("induced by the test: the builder ran out of memory")


@pytest.fixture(params=[0, 1], ids=["nothing-built", "one-built"])
def failing_build(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FailingBuild:
    fake = FailingBuild(_permloop._BUILD, request.param)
    # Both callers of the C builder: the permission paths' and the pipeline's.
    monkeypatch.setattr(_permloop, "_BUILD", fake)
    monkeypatch.setattr(_fastparse, "_BUILD", fake)
    return fake


def _file(root: Path, name: str) -> Path:
    p = root / name
    p.write_text("content\n")
    return p


async def _consume(fan: Fanotify, seen: list[BaseException]) -> None:
    try:
        async for ev in fan:
            ev.allow_nowait()
    except ClosedResourceError as exc:
        seen.append(exc)


def _assert_failed_loudly(
    fan: Fanotify, fake: FailingBuild, seen: list[BaseException], caplog: pytest.LogCaptureFixture,
) -> None:
    assert fake.failed == 1
    st = fan.permission_stats
    assert (st.build_failed, st.defaulted, st.denied, st.allowed, st.pending) == (1, 1, 1, 0, 0)
    assert any("building the events of a read failed" in r.getMessage() for r in caplog.records)
    assert len(seen) == 1 and "building the events of a read failed" in str(seen[0])


async def _run_one_open(
    fan: Fanotify, target: Path, fake: FailingBuild, caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[BaseException] = []
    caplog.set_level(logging.ERROR)
    async with background(_consume(fan, seen)):
        result = await child("open", target, timeout=CHILD_TIMEOUT)
        assert result.errno == errno.EPERM, "the default verdict (DENY) answers it"
        assert result.elapsed < CHILD_TIMEOUT
        # The consumer sees the failure (the group failed with it).
        for _ in range(500):
            if seen:
                break
            await _sleep_a_tick()
    _assert_failed_loudly(fan, fake, seen, caplog)


async def _sleep_a_tick() -> None:
    await asyncio.sleep(0.01)


async def test_loop_handler_read_that_fails_to_build_is_answered(
    tmpfs: Path, make_group: Callable[..., Fanotify], failing_build: FailingBuild,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    fan.on_permission(lambda ev: True)
    assert isinstance(fan._perm.thread, LoopServer)
    await _run_one_open(fan, target, failing_build, caplog)


async def test_thread_handler_read_that_fails_to_build_is_answered(
    tmpfs: Path, make_group: Callable[..., Fanotify], failing_build: FailingBuild,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    fan.on_permission(lambda ev: True, thread=True)
    assert isinstance(fan._perm.thread, PermissionThread)
    await _run_one_open(fan, target, failing_build, caplog)


@pytest.mark.parametrize("reader", ["read-ahead", "general"])
async def test_async_for_read_that_fails_to_build_is_answered(
    tmpfs: Path, make_group: Callable[..., Fanotify], failing_build: FailingBuild,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, reader: str,
) -> None:
    if reader == "general":
        monkeypatch.setenv("AFANOTIFY_GENERAL_READER", "1")
    target = _file(tmpfs, "f")
    fan = make_group(default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    await _run_one_open(fan, target, failing_build, caplog)


async def test_guard_loop_path_read_that_fails_to_build_is_answered(
    tmpfs: Path, make_group: Callable[..., Fanotify], failing_build: FailingBuild,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The guard's path on the loop: static rules first (in C), what they do
    # not decide built for the handler.
    target = _file(tmpfs, "f.txt")
    fan = make_group(default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    if not fan.decide_statically(StaticRules([StaticRule(False, "keys", path="*.key")], None)):
        pytest.fail("this core has no C path (AFANOTIFY_PURE_PARSER set?)")
    fan.on_permission(lambda ev: True)
    await _run_one_open(fan, target, failing_build, caplog)


async def test_a_read_of_several_events_is_answered_whole(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every open waits in the kernel before the first read: one read holds
    # all of them; the builder builds two and fails.  Each open is answered.
    files = [_file(tmpfs, f"f{i}") for i in range(4)]
    fan = make_group(default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    fake = FailingBuild(_permloop._BUILD, 2)
    monkeypatch.setattr(_permloop, "_BUILD", fake)
    monkeypatch.setattr(_fastparse, "_BUILD", fake)
    fan.on_permission(lambda ev: True)
    opens = [asyncio.ensure_future(child("open", p, timeout=CHILD_TIMEOUT)) for p in files]
    try:
        poll = select.poll()
        poll.register(fan.fileno(), select.POLLIN)
        # Wait (with a deadline) until every open is blocked: the children
        # start one after another, so give each its event in the queue.
        deadline = asyncio.get_running_loop().time() + CHILD_TIMEOUT
        while not poll.poll(0) or not await _all_blocked(len(files)):
            assert asyncio.get_running_loop().time() < deadline, "the opens never blocked"
            await asyncio.sleep(0.01)
        seen: list[BaseException] = []
        async with background(_consume(fan, seen)):
            results = await asyncio.gather(*opens)
    finally:
        for t in opens:
            t.cancel()
    assert [r.errno for r in results] == [errno.EPERM] * len(files)
    st = fan.permission_stats
    assert (st.build_failed, st.denied, st.pending) == (len(files), len(files), 0)


@pytest.mark.parametrize("ok", [0, 1], ids=["nothing-built", "one-built"])
async def test_general_reader_failure_closes_every_fd_of_the_read(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, ok: int,
) -> None:
    # One read of the general reader holds a notification (CLOSE_NOWRITE of
    # a file opened before) and a permission event; building fails after
    # ``ok`` events.  The permission event gets the default verdict, and
    # neither event's fd stays open in this process (a notification's fd
    # was left open: nobody held it).
    monkeypatch.setenv("AFANOTIFY_GENERAL_READER", "1")
    watched, guarded = _file(tmpfs, "watched"), _file(tmpfs, "guarded")
    fan = make_group(default_response=Response.DENY)
    fan.mark(watched, Event.CLOSE_NOWRITE)
    fan.mark(guarded, Event.OPEN_PERM)
    assert (await child("open", watched, timeout=CHILD_TIMEOUT)).errno == 0
    opening = asyncio.ensure_future(child("open", guarded, timeout=CHILD_TIMEOUT))
    try:
        await queued_at_least(fan, 2 * 24, timeout=CHILD_TIMEOUT)  # both events, before any read
        fake = FailingBuild(_permloop._BUILD, ok)
        monkeypatch.setattr(_permloop, "_BUILD", fake)
        monkeypatch.setattr(_fastparse, "_BUILD", fake)
        caplog.set_level(logging.ERROR)
        seen: list[BaseException] = []
        async with background(_consume(fan, seen)):
            result = await opening
            deadline = asyncio.get_running_loop().time() + CHILD_TIMEOUT
            while not seen:
                assert asyncio.get_running_loop().time() < deadline, "the group did not fail"
                await _sleep_a_tick()
    finally:
        opening.cancel()
    assert fake.failed == 1
    assert result.errno == errno.EPERM
    assert fds_into(tmpfs) == []
    st = fan.permission_stats
    assert (st.build_failed, st.denied, st.allowed, st.pending) == (1, 1, 0, 0)
    assert "building the events of a read failed" in str(seen[0])


async def test_general_reader_failure_in_a_notification_group_closes_its_fds(
    tmpfs: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without permission events the error still goes to the loop, as
    # before; the read's fds are closed first.
    target = _file(tmpfs, "f")
    errors: list[BaseException] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx["exception"]))
    try:
        with Fanotify(0) as fan:
            fan.mark(target, Event.CLOSE_NOWRITE)
            for _ in range(3):
                assert (await child("open", target, timeout=CHILD_TIMEOUT)).errno == 0
            await queued_at_least(fan, 3 * 24, timeout=CHILD_TIMEOUT)
            fake = FailingBuild(_permloop._BUILD, 1)
            monkeypatch.setattr(_fastparse, "_BUILD", fake)
            with pytest.raises(MemoryError):
                fan._handle_batch(fan._reader.read_once())
            assert fake.failed == 1
            assert fds_into(tmpfs) == []
    finally:
        loop.set_exception_handler(None)


async def test_guard_loop_path_stops_reading_after_a_read_fails_to_build(
    tmpfs: Path, make_group: Callable[..., Fanotify], failing_build: FailingBuild,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After the failure the group has failed: the loop server unregisters
    # the fd (as the general reader pauses), and the next open waits for the
    # watchdog (stalled, DENY), with the loop idle meanwhile.  The server
    # left registered is called back at once for ever, the loop spinning.
    reads = 0
    real_read_once = LoopServer.read_once

    def counted(self: LoopServer) -> int:
        nonlocal reads
        reads += 1
        return real_read_once(self)

    monkeypatch.setattr(LoopServer, "read_once", counted)
    first, second = _file(tmpfs, "a.txt"), _file(tmpfs, "b.txt")
    fan = make_group(default_response=Response.DENY, permission_timeout=1.0)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    if not fan.decide_statically(StaticRules([StaticRule(False, "keys", path="*.key")], None)):
        pytest.fail("this core has no C path (AFANOTIFY_PURE_PARSER set?)")
    fan.on_permission(lambda ev: True)
    server = fan._perm.thread
    assert isinstance(server, LoopServer)
    await _run_one_open(fan, first, failing_build, caplog)
    before = reads
    result = await child("open", second, timeout=CHILD_TIMEOUT)
    assert result.errno == errno.EPERM
    assert fan.permission_stats.stalled == 1, "the watchdog answered it"
    assert reads - before <= 2, f"the loop server was called {reads - before} times meanwhile"
    assert not server._registered


def _pidfds() -> int:
    """How many pidfds this process holds."""
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[pidfd]":
                n += 1
        except OSError:
            pass
    return n


@pytest.mark.parametrize("thread", [False, True], ids=["loop", "thread"])
async def test_a_read_that_fails_to_build_closes_its_events_pidfds(
    tmpfs: Path, make_group: Callable[..., Fanotify], failing_build: FailingBuild, thread: bool,
) -> None:
    # REPORT_PIDFD: each event of the read carries a pidfd besides its fd.
    # The events never built are answered from the read's bytes: their
    # pidfds, like their fds, are closed there (nothing else knows them).
    files = [_file(tmpfs, f"f{i}") for i in range(3)]
    before = _pidfds()
    fan = make_group(InitFlag.CLASS_CONTENT | InitFlag.REPORT_PIDFD, default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    fan.on_permission(lambda ev: True, thread=thread)
    opens = [asyncio.ensure_future(child("open", p, timeout=CHILD_TIMEOUT)) for p in files]
    await wait_queued(fan, len(files))
    seen: list[BaseException] = []
    async with background(_consume(fan, seen)):
        results = await asyncio.gather(*opens)
    assert [r.errno for r in results] == [errno.EPERM] * len(files)
    assert failing_build.failed == 1
    assert fan.permission_stats.build_failed == len(files)
    assert _pidfds() - before == 0, "pidfds of the read left open"


def test_a_late_failure_does_not_close_a_malformed_events_fd_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read of one malformed event (an info record 2 bytes long) and one good
    # event, in a notification group; decoding fails after the malformed one
    # was released (fd closed).  The failure path closes the good event's fd
    # and leaves the malformed one's alone: closed twice, its number might
    # name another file by then (and the second close raised EBADF, hiding
    # the error).
    import struct

    from afanotify import _answer

    bad_fd = os.open("/dev/null", os.O_RDONLY)
    good_fd = os.open("/dev/null", os.O_RDONLY)
    meta = struct.Struct("=IBBHQii")
    bad = meta.pack(24 + 4, 3, 0, 24, int(Event.OPEN), bad_fd, 1) + struct.pack("=BBH", 1, 0, 2)
    good = meta.pack(24, 3, 0, 24, int(Event.OPEN), good_fd, 1)
    closed: list[int] = []
    real_close = os.close

    def counting_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    with Fanotify() as fan:

        def late_failure() -> None:
            raise RuntimeError("a late failure")

        monkeypatch.setattr(fan._pipeline.fdguard, "recovered", late_failure)
        monkeypatch.setattr(os, "close", counting_close)
        with pytest.raises(RuntimeError, match="a late failure"):
            _answer.decode_or_fail(fan, memoryview(bytearray(bad + good)),
                                   lambda pl, view, loop: pl.decode(view, loop))
        monkeypatch.undo()
    assert sorted(closed) == sorted([bad_fd, good_fd])
