"""``on_permission(handler)`` on the loop: served by :class:`afanotify._permloop.LoopServer`.

The server reads the group in one C call per wake-up and runs the handler
for each event of the read.  These tests hold it to the general path's
guarantees: verdicts written in order, deadlines and default verdicts,
failures logged, other events delivered, switching servers, static rules,
and the close.  Each test marks files on a private tmpfs and lets child
processes open them; every group is closed by the fixture, and every test
runs under a timeout.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _perm_helpers import background, child, drain, group_maker, wait_for
from helpers import CHILD_CWD, child_env

from afanotify import (
    Event,
    Fanotify,
    FanotifyData,
    Response,
    Verdict,
    _consume,
    _permloop,
)
from afanotify._permloop import LoopServer, ReadAhead
from afanotify._static import StaticRule, StaticRules

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


async def test_loop_server_writes_the_verdicts_in_order_on_the_loop_thread(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    files = [_file(tmpfs, f"f{i}") for i in range(6)]
    secret = _file(tmpfs, "secret")
    fan = make_group(permission_timeout=30)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    loop_thread = threading.get_ident()
    seen: list[tuple[str | None, int]] = []

    def decide(ev: FanotifyData) -> bool | Verdict:
        seen.append((ev.path, threading.get_ident()))
        if ev.path == str(files[0]):
            return Verdict(True)  # not a bool: the general answer path
        return ev.path != str(secret)

    fan.on_permission(decide)
    async with background(drain(fan)):
        results = [await child("open", p) for p in (*files, secret)]
        assert isinstance(fan._perm.thread, LoopServer)
    assert [r.errno for r in results] == [0] * len(files) + [errno.EPERM]
    assert [p for p, _ in seen] == [str(p) for p in (*files, secret)]
    assert all(t == loop_thread for _, t in seen)
    st = fan.permission_stats
    assert (st.allowed, st.denied, st.defaulted, st.pending) == (len(files), 1, 0, 0)
    assert fan.stats.events_delivered == len(files) + 1
    assert fan.stats.reads >= len(files) + 1


async def test_many_opens_at_once_are_all_answered(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    files = [_file(tmpfs, f"f{i}") for i in range(12)]
    fan = make_group(permission_timeout=30)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    fan.on_permission(lambda ev: not str(ev.path).endswith("3"))
    async with background(drain(fan)):
        results = await asyncio.gather(*(child("open", p) for p in files))
    assert [r.errno for r in results] == [errno.EPERM if str(p).endswith("3") else 0
                                          for p in files]
    st = fan.permission_stats
    assert (st.allowed, st.denied, st.defaulted, st.pending) == (11, 1, 0, 0)


async def test_an_async_verdict_still_gets_its_deadline(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=TIMEOUT, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)

    async def never(ev: FanotifyData) -> bool:
        await asyncio.sleep(30)
        return True

    fan.on_permission(never)
    async with background(drain(fan)):
        result = await child("open", target)
    assert isinstance(fan._perm.thread, LoopServer)
    assert result.errno == errno.EPERM
    assert TIMEOUT * 0.9 <= result.elapsed <= TIMEOUT + 2
    st = fan.permission_stats
    assert (st.timed_out, st.denied, st.pending) == (1, 1, 0)


@pytest.mark.parametrize("style", ["raises", "bad-return"])
async def test_failing_handler_gets_the_default_at_once_and_is_logged(
    tmpfs: Path, make_group: Callable[..., Fanotify], style: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target, other = _file(tmpfs, "f"), _file(tmpfs, "g")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)

    def handler(ev: FanotifyData) -> Any:
        if ev.path != str(target):
            return True
        if style == "raises":
            raise RuntimeError("policy bug")
        return "yes"

    fan.on_permission(handler)
    with caplog.at_level(logging.ERROR, logger="afanotify"):
        async with background(drain(fan)):
            result = await child("open", target)
            after = await child("open", other)  # the server goes on
    assert result.errno == errno.EPERM
    assert result.elapsed < 5  # far before the 30 s deadline
    assert after.errno == 0
    st = fan.permission_stats
    assert (st.handler_errors, st.allowed, st.denied) == (1, 1, 1)
    assert any("permission handler failed" in r.getMessage() for r in caplog.records)


async def test_other_events_still_reach_async_for(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30)
    fan.mark(target, Event.OPEN_PERM | Event.CLOSE_NOWRITE)
    decided: list[int] = []
    fan.on_permission(lambda ev: decided.append(ev.pid) is None)
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


async def test_switching_between_the_servers_and_the_general_reader(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    who: list[str] = []

    def by(name: str) -> Callable[[FanotifyData], bool]:
        def handler(ev: FanotifyData) -> bool:
            who.append(name)
            return True
        return handler

    async def consume() -> None:
        async for ev in fan:
            if not ev.answered:
                who.append("iterator")
                ev.allow_nowait()  # only events no handler took

    fan.on_permission(by("loop"))
    async with background(consume()):
        assert (await child("open", target)).errno == 0
        server = fan._perm.thread
        assert isinstance(server, LoopServer)
        fan.on_permission(by("thread"), thread=True)
        assert (await child("open", target)).errno == 0
        fan.on_permission(None)
        assert fan._perm.thread is None
        assert (await child("open", target)).errno == 0
        fan.on_permission(by("loop again"))
        assert (await child("open", target)).errno == 0
        assert isinstance(fan._perm.thread, LoopServer) and fan._perm.thread is not server
    assert who == ["loop", "thread", "iterator", "loop again"]
    st = fan.permission_stats
    assert (st.allowed, st.defaulted) == (4, 0)


async def test_static_rules_decide_first_and_the_handler_gets_the_rest(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    key, txt = _file(tmpfs, "a.key"), _file(tmpfs, "b.txt")
    fan = make_group(permission_timeout=30)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    if not fan.decide_statically(StaticRules([StaticRule(False, "keys", path="*.key")], None)):
        pytest.fail("this core has no C path (AFANOTIFY_PURE_PARSER set?)")
    seen: list[str | None] = []
    fan.on_permission(lambda ev: seen.append(ev.path) is None)
    async with background(drain(fan)):
        denied = await child("open", key)
        allowed = await child("open", txt)
    assert isinstance(fan._perm.thread, LoopServer)
    assert (denied.errno, allowed.errno) == (errno.EPERM, 0)
    assert seen == [str(txt)]


async def test_close_answers_a_pending_verdict_and_unregisters(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    inside = asyncio.Event()

    async def waits(ev: FanotifyData) -> bool:
        inside.set()
        await asyncio.sleep(30)
        return True

    fan.on_permission(waits)
    async with background(drain(fan)):
        run = asyncio.create_task(child("open", target))
        await asyncio.wait_for(inside.wait(), 10)
        server = fan._perm.thread
        assert isinstance(server, LoopServer)
        fd = fan.fileno()
        fan.close()
        result = await run
    assert result.errno == errno.EPERM  # the default, written by the close
    assert result.elapsed < 10
    assert fan.permission_stats.at_close == 1
    assert not server._registered
    loop = asyncio.get_running_loop()
    assert not loop.remove_reader(fd)  # nothing registered for that number


async def test_the_general_reader_serves_when_asked(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFANOTIFY_GENERAL_READER", "1")
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30)
    fan.mark(target, Event.OPEN_PERM)
    fan.on_permission(lambda ev: False)
    async with background(drain(fan)):
        assert (await child("open", target)).errno == errno.EPERM
    assert fan._perm.thread is None
    assert fan.permission_stats.denied == 1


_OPENER = r"""
import os, sys
for path in sys.argv[1:]:
    os.close(os.open(path, os.O_RDONLY))
print("done")
"""


async def _opens_in_one_child(paths: list[Path], timeout: float = 20.0) -> None:
    """One child that opens ``paths`` in turn, each open waiting for its verdict."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OPENER, *map(str, paths), stdout=asyncio.subprocess.PIPE,
        env=child_env(), cwd=CHILD_CWD,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0 and out.strip() == b"done"


async def test_async_for_answers_back_to_back_opens_in_order_and_the_loop_still_runs(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    files = [_file(tmpfs, f"f{i:03}") for i in range(200)]
    fan = make_group(permission_timeout=30)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    seen: list[str | None] = []
    ticks = 0

    async def consume() -> None:
        async for ev in fan:
            seen.append(ev.path)
            ev.allow_nowait()

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    async with background(consume()), background(ticker()):
        await _opens_in_one_child(files)
    assert seen == [str(p) for p in files]
    assert isinstance(fan._ahead, ReadAhead)  # the consumer read with the C read
    st = fan.permission_stats
    assert (st.allowed, st.defaulted, st.pending) == (200, 0, 0)
    # The consumer reads the next event itself at most _DIRECT_READS times
    # in a row, then waits on the loop: other tasks run meanwhile.
    assert ticks >= len(files) // (_consume._DIRECT_READS + 1)


async def test_an_event_the_consumer_holds_still_gets_its_deadline(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=TIMEOUT, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    held: list[FanotifyData] = []

    async def hold() -> None:
        held.append(await fan.receive())
        await asyncio.sleep(30)

    async with background(hold()):
        result = await child("open", target)
        assert held and held[0].answered
    assert result.errno == errno.EPERM
    assert TIMEOUT * 0.9 <= result.elapsed <= TIMEOUT + 2
    assert fan.permission_stats.timed_out == 1
    held[0].close()


#: Many threads opening the marked files at once, so that every read is full.
_BURST_OPENER = r"""
import os, sys, threading
rounds, paths = int(sys.argv[1]), sys.argv[3:]
def run():
    for _ in range(rounds):
        for p in paths:
            os.close(os.open(p, os.O_RDONLY))
threads = [threading.Thread(target=run) for _ in range(int(sys.argv[2]))]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""
#: Events of one full 4096-byte read in fd mode (24-byte records), and what
#: the loop may serve between two of its turns: the reader's read plus the
#: consumer's own reads, one full read's worth each.
_FULL_READ = 4096 // 24
_BETWEEN_TURNS = 2 * _FULL_READ + 16


@pytest.mark.parametrize("how", ["receive", "handler"])
async def test_a_burst_of_opens_leaves_the_loop_its_turns(
    tmpfs: Path, make_group: Callable[..., Fanotify], how: str
) -> None:
    """32 threads opening at once: a bounded number of events per turn of the loop.

    Reading again after a short read, and a consumer reading the kernel by
    itself, are for one opener waiting on its answer; under a burst the loop
    still runs its timers (the deadlines) and other tasks every read or two.
    """
    files = [_file(tmpfs, f"f{i}") for i in range(50)]
    group = make_group(permission_timeout=30)
    group.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    since_tick = most = served = 0

    def count() -> None:
        nonlocal since_tick, most, served
        since_tick += 1
        served += 1
        most = max(most, since_tick)

    async def consume() -> None:
        while True:
            ev = await group.receive()
            count()
            ev.allow_nowait()
            ev.close()

    def handler(ev: FanotifyData) -> bool:
        count()
        return True

    async def ticker() -> None:
        nonlocal since_tick
        while True:
            await asyncio.sleep(0)  # every turn of the loop
            since_tick = 0

    rounds, threads = 8, 32
    if how == "handler":
        group.on_permission(handler)
        group._ensure_reader()
    async with background(ticker()):
        async with background(consume()) if how == "receive" else _nothing():
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _BURST_OPENER, str(rounds), str(threads),
                *map(str, files), env=child_env(), cwd=CHILD_CWD,
            )  # fmt: skip
            assert await asyncio.wait_for(proc.wait(), 50) == 0
    assert served == rounds * threads * len(files)
    assert most <= _BETWEEN_TURNS, (most, served)


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_a_serve_failure_fails_the_group_not_the_loops_exception_handler(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A bug in the server's per-event step (here: the /proc lookup raises)
    # answers the read's events with the default verdict and fails the
    # group, whose consumer sees it; the loop's exception handler sees nothing.
    from afanotify import ClosedResourceError

    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY, proc_info=True)
    fan.mark(target, Event.OPEN_PERM)
    fan.on_permission(lambda ev: True)

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("induced by the test")

    monkeypatch.setattr(_permloop, "process_info", broken)
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: handled.append(ctx))
    caplog.set_level(logging.ERROR)
    seen: list[BaseException] = []

    async def consume() -> None:
        try:
            await drain(fan)
        except ClosedResourceError as exc:
            seen.append(exc)

    try:
        async with background(consume()):
            result = await child("open", target, timeout=10)
            await wait_for(lambda: bool(seen))
    finally:
        loop.set_exception_handler(None)
    assert result.errno == errno.EPERM
    assert handled == []
    assert "serving a permission read failed" in str(seen[0])
    st = fan.permission_stats
    assert (st.abandoned, st.denied, st.pending) == (1, 1, 0)
    assert any("serving a permission read failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("thread", [False, True], ids=["loop", "thread"])
async def test_stats_after_a_handler_closes_the_group(
    tmpfs: Path, make_group: Callable[..., Fanotify], thread: bool,
) -> None:
    # Many opens at once; the handler closes the group on its 5th call.  The
    # handler is never called again, and every event the group counts is
    # counted once: allowed = the handler's verdicts + what the close
    # answered (the event in the handler is answered by the close, the
    # handler's late verdict discarded).
    files = [_file(tmpfs, f"f{i}") for i in range(20)]
    fan = make_group(permission_timeout=30)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    calls = 0

    def handler(ev: FanotifyData) -> bool:
        nonlocal calls
        calls += 1
        if calls == 5:
            fan.close()
        return True

    fan.on_permission(handler, thread=thread)
    async with background(drain(fan)):
        results = await asyncio.gather(*(child("open", p, timeout=20) for p in files))
    assert [r.errno for r in results] == [0] * len(files)
    assert calls == 5
    st = fan.permission_stats
    assert st.late == 1
    assert st.allowed == (calls - 1) + st.at_close
    assert st.defaulted == st.at_close


async def test_the_descriptor_budget_counts_the_events_read_since_it_was_looked_at(
    tmpfs: Path, make_group: Callable[..., Fanotify],
) -> None:
    # An async handler holds its events (and their fds) across reads: once
    # the reads since the last look could have used the room it found, the
    # next read looks again (not only every 64th read).  The room found is
    # capped just above the threshold, so two events use it up.
    files = [_file(tmpfs, f"f{i}") for i in range(3)]
    fan = make_group(permission_timeout=30)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    release = asyncio.Event()
    held: list[FanotifyData] = []

    async def hold(ev: FanotifyData) -> bool:
        held.append(ev)
        await release.wait()
        return True

    fan.on_permission(hold)
    guard = fan._pipeline.fdguard
    real = guard.free_fds
    looks: list[int] = []

    def counted() -> int:
        looks.append(len(fan._perm))
        return min(real(), _permloop._ROOM + 2)

    guard.free_fds = counted  # type: ignore[method-assign]
    async with background(drain(fan)):
        opens = [asyncio.ensure_future(child("open", p, timeout=20)) for p in files]
        try:
            for n in range(1, len(files) + 1):
                await wait_for(lambda n=n: len(held) >= n)  # type: ignore[misc]
        finally:
            release.set()
        results = await asyncio.gather(*opens)
    assert [r.errno for r in results] == [0] * len(files)
    # Looked at again, with events pending, after two reads.
    assert sum(1 for pending in looks if pending) >= 1
