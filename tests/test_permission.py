"""Permission events against the kernel: verdicts, deadlines, and every default path.

Each test marks a file on a private tmpfs (or the ext4 fixture for PRE_ACCESS)
and lets a child process open, read or execute it.  The child times its own
system call and reports the errno and the elapsed time, so a test can assert
both the verdict and that nobody waited past the deadline.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from _perm_helpers import background, child, drain, gather, group_maker, tasks, wait_for
from helpers import CHILD_CWD, child_env, in_thread

from afanotify import (
    AlreadyAnsweredError,
    AuditRule,
    ClosedResourceError,
    Event,
    FanoRule,
    Fanotify,
    FanotifyData,
    InitFlag,
    Response,
    Verdict,
    WouldBlock,
)

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60), pytest.mark.anyio]

CONTENT = InitFlag.CLASS_CONTENT
PRE_CONTENT = InitFlag.CLASS_PRE_CONTENT

@pytest.fixture
async def make_group() -> AsyncIterator[Callable[..., Fanotify]]:
    """Makes permission groups, and closes every one of them at teardown."""
    with group_maker(CONTENT) as make:
        yield make


def _file(root: Path, name: str, data: str = "content\n") -> Path:
    p = root / name
    p.write_text(data)
    return p


async def _consume(fan: Fanotify, decide: Callable[[FanotifyData], Verdict | bool]) -> None:
    async for ev in fan:
        verdict = decide(ev)
        if isinstance(verdict, bool):
            await (ev.allow() if verdict else ev.deny())
        else:
            await ev.respond(verdict)


# -- verdicts for each permission event ------------------------------------------


async def test_open_perm_allow_and_deny(tmpfs: Path, make_group: Callable[..., Fanotify]) -> None:
    ok, bad = _file(tmpfs, "ok"), _file(tmpfs, "bad")
    fan = make_group()
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    seen: list[str | None] = []

    def decide(ev: FanotifyData) -> bool:
        seen.append(ev.path)
        assert ev.events == Event.OPEN_PERM and ev.is_permission and not ev.answered
        return ev.path != str(bad)

    async with background(_consume(fan, decide)):
        r_ok = await child("open", ok)
        r_bad = await child("open", bad)
    assert r_ok.errno == 0
    assert r_bad.errno == errno.EPERM
    assert seen == [str(ok), str(bad)]
    st = fan.permission_stats
    assert (st.allowed, st.denied, st.defaulted) == (1, 1, 0)


async def test_access_perm_deny_read(tmpfs: Path, make_group: Callable[..., Fanotify]) -> None:
    target = _file(tmpfs, "data")
    fan = make_group()
    fan.mark(target, Event.ACCESS_PERM)
    async with background(_consume(fan, lambda ev: False)):
        result = await child("read", target)
    assert result.errno == errno.EPERM
    assert fan.permission_stats.denied == 1


async def test_open_exec_perm_deny(tmpfs: Path, make_group: Callable[..., Fanotify]) -> None:
    prog = tmpfs / "true"
    shutil.copy("/bin/true", prog)
    prog.chmod(0o755)
    fan = make_group()
    fan.mark(prog, Event.OPEN_EXEC_PERM)
    kinds: list[Event] = []

    def decide(ev: FanotifyData) -> bool:
        kinds.append(ev.events)
        return False

    async with background(_consume(fan, decide)):
        result = await child("exec", prog)
    assert result.errno == errno.EPERM
    assert kinds == [Event.OPEN_EXEC_PERM]


async def test_pre_access_range_and_deny_errno(
    ext4: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(ext4, "hsm", "x" * 10000)
    fan = make_group(PRE_CONTENT)
    fan.mark(target, Event.PRE_ACCESS)
    ranges: list[tuple[int | None, int | None]] = []

    def decide(ev: FanotifyData) -> Verdict:
        ranges.append((ev.range_offset, ev.range_count))
        return Verdict.deny(errno=errno.EIO)

    async with background(_consume(fan, decide)):
        result = await child("read", target)
    assert result.errno == errno.EIO
    assert ranges and ranges[0][0] == 0 and (ranges[0][1] or 0) > 0


@pytest.mark.parametrize("err", [errno.EAGAIN, errno.ENOSPC, errno.EPERM])
async def test_pre_access_other_errnos(
    ext4: Path, make_group: Callable[..., Fanotify], err: int
) -> None:
    target = _file(ext4, "hsm", "y" * 100)
    fan = make_group(PRE_CONTENT)
    fan.mark(target, Event.PRE_ACCESS)
    async with background(_consume(fan, lambda ev: Verdict.deny(errno=err))):
        result = await child("read", target)
    assert result.errno == err


# -- answering rules ---------------------------------------------------------------


async def test_second_answer_raises_and_bad_verdicts_write_nothing(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group()
    fan.mark(target, Event.OPEN_PERM)
    async with tasks() as ts:
        run = ts.start(child("open", target))
        with anyio.fail_after(10):
            ev = await fan.receive()
        await _answer_checks(ev)
        assert (await run.result()).errno == errno.EPERM


async def _answer_checks(ev: FanotifyData) -> None:
    try:
        with pytest.raises(ValueError, match="CLASS_PRE_CONTENT"):
            ev.deny_nowait(errno.EIO)
        with pytest.raises(ValueError, match="ENABLE_AUDIT"):
            ev.allow_nowait(audit=True)
        with pytest.raises(ValueError, match="ENABLE_AUDIT"):
            ev.respond_nowait(Verdict.deny(audit_rule=AuditRule(7)))
        assert not ev.answered  # nothing was written
        with pytest.raises(ValueError, match="answer a permission event before"):
            ev.detach_fd()
        await ev.deny()
        assert ev.answered
        with pytest.raises(AlreadyAnsweredError):
            await ev.allow()
        with pytest.raises(AlreadyAnsweredError):
            ev.deny_nowait()
    finally:
        ev.close()


async def test_audit_and_audit_rule(tmpfs: Path, make_group: Callable[..., Fanotify]) -> None:
    a, b = _file(tmpfs, "a"), _file(tmpfs, "b")
    fan = make_group(CONTENT | InitFlag.ENABLE_AUDIT)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)

    def decide(ev: FanotifyData) -> Verdict:
        if ev.path == str(a):
            return Verdict.allow(audit=True)
        return Verdict.deny(audit_rule=AuditRule(42, subj_trust=1, obj_trust=0))

    async with background(_consume(fan, decide)):
        ra = await child("open", a)
        rb = await child("open", b)
    assert (ra.errno, rb.errno) == (0, errno.EPERM)


async def test_event_fd_is_closed_after_response(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group()
    fan.mark(target, Event.OPEN_PERM)
    async with tasks() as ts:
        run = ts.start(child("open", target))
        with anyio.fail_after(10):
            ev = await fan.receive()
        fd = ev.fd
        os.fstat(fd)  # open while unanswered
        ev.close()  # answers with the default first, then closes
        assert ev.answered and ev.closed
        with pytest.raises(OSError):
            os.fstat(fd)
        assert (await run.result()).errno == 0
    assert fan.permission_stats.released == 1


# -- guarantees: every event is answered, before the deadline + 1 s ---------------

TIMEOUT = 1.0


@pytest.mark.parametrize("default", [Response.ALLOW, Response.DENY])
async def test_handler_that_sleeps_forever_hits_the_deadline(
    tmpfs: Path, make_group: Callable[..., Fanotify], default: Response
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=TIMEOUT, default_response=default)
    fan.mark(target, Event.OPEN_PERM)
    cancelled = anyio.Event()

    async def forever(ev: FanotifyData) -> bool:
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return True

    fan.on_permission(forever)
    async with background(drain(fan)):
        result = await child("open", target)
    assert result.errno == (0 if default == Response.ALLOW else errno.EPERM)
    assert TIMEOUT * 0.9 <= result.elapsed <= TIMEOUT + 1
    with anyio.fail_after(5):
        await cancelled.wait()  # the late handler was cancelled
    st = fan.permission_stats
    assert (st.timed_out, st.defaulted, st.pending) == (1, 1, 0)
    assert fan.stats.defaulted == 1


async def test_consumer_that_never_answers_hits_the_deadline(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=TIMEOUT, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    held: list[FanotifyData] = []

    async def hoard() -> None:
        async for ev in fan:
            held.append(ev)
            await anyio.sleep(3600)

    async with background(hoard()):
        result = await child("open", target)
    assert result.errno == errno.EPERM
    assert result.elapsed <= TIMEOUT + 1
    assert held and held[0].answered
    assert fan.permission_stats.timed_out == 1


@pytest.mark.parametrize("style", ["sync", "async", "bad-return"])
async def test_handler_that_raises_gets_default_at_once(
    tmpfs: Path, make_group: Callable[..., Fanotify], caplog: pytest.LogCaptureFixture,
    style: str,
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)

    def sync_handler(ev: FanotifyData) -> bool:
        raise RuntimeError("policy bug")

    async def async_handler(ev: FanotifyData) -> bool:
        await anyio.sleep(0)
        raise RuntimeError("policy bug")

    def bad_return(ev: FanotifyData) -> Any:
        return "yes"

    handler = {"sync": sync_handler, "async": async_handler, "bad-return": bad_return}[style]
    fan.on_permission(handler)
    with caplog.at_level(logging.ERROR, logger="afanotify.permission"):
        async with background(drain(fan)):
            result = await child("open", target)
    assert result.errno == errno.EPERM
    assert result.elapsed < 5  # far before the 30 s deadline
    assert fan.permission_stats.handler_errors == 1
    assert any("permission handler failed" in r.message for r in caplog.records)


async def test_cancelled_consumer_answers_what_it_holds(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    got = anyio.Event()

    async def consumer() -> None:
        ev = await fan.receive()  # held, never answered nor closed
        got.set()
        await anyio.sleep(3600)
        ev.allow_nowait()

    async with tasks() as ts:
        task = ts.start(consumer())
        run = ts.start(child("open", target))
        with anyio.fail_after(10):
            await got.wait()
        task.cancel()
        result = await run.result()
    assert result.errno == errno.EPERM
    assert result.elapsed < 5
    assert fan.permission_stats.abandoned == 1


async def test_close_answers_three_waiting_processes(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    files = [_file(tmpfs, f"f{i}") for i in range(3)]
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    held: list[FanotifyData] = []

    async def hoard() -> None:
        # receive(), not ``async for``: the iterator would release each event
        # (default verdict) when it moves on to the next.
        while True:
            held.append(await fan.receive())

    async with tasks() as ts:
        task = ts.start(hoard())
        runs = [ts.start(child("open", f)) for f in files]
        await wait_for(lambda: len(held) == 3)
        # Held and unanswered, so all three wait on us until close.
        assert not any(ev.answered for ev in held)
        await wait_for(lambda: _blocked_children() == 3)
        await fan.aclose()
        results = [await r.result() for r in runs]
        with pytest.raises(ClosedResourceError):
            await task.result(5)  # the waiting receive() ended
    # DENY shows that the group answered: the kernel would have allowed.
    assert [r.errno for r in results] == [errno.EPERM] * 3
    assert all(r.elapsed < 10 for r in results)
    assert all(ev.answered for ev in held)
    assert fan.permission_stats.at_close == 3


async def test_close_answers_events_still_in_the_kernel_queue(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    fan.receive_nowait  # noqa: B018 (not reading: the events stay in the kernel)
    async with tasks() as ts:
        runs = [ts.start(child("open", target)) for _ in range(2)]
        # Wait until both children are blocked in open(): their events are queued.
        await wait_for(lambda: _blocked_children() >= 2)
        fan.close()
        results = [await r.result() for r in runs]
    assert [r.errno for r in results] == [errno.EPERM] * 2
    assert fan.permission_stats.at_close == 2


def _blocked_children() -> int:
    """Children of this process sleeping in the kernel on a fanotify permission wait."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/wchan") as f:
                wchan = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and "fanotify" in wchan:
            n += 1
    return n


async def test_full_group_queue_answers_overflow_at_once(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    files = [_file(tmpfs, f"f{i}") for i in range(3)]
    fan = make_group(maxsize=1, permission_timeout=TIMEOUT, default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    fan._ensure_reader()  # read, but never take an event from the queue
    results = await gather(*(child("open", f) for f in files))
    assert [r.errno for r in results] == [errno.EPERM] * 3
    assert all(r.elapsed <= TIMEOUT + 1 for r in results)
    st = fan.permission_stats
    assert st.dropped == 2  # answered at once
    assert st.timed_out == 1  # the one that fitted waited for its deadline
    assert sorted(r.elapsed for r in results)[1] < TIMEOUT * 0.9


async def test_handler_reads_the_judged_file(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    clean, infected = _file(tmpfs, "clean", "hello\n"), _file(tmpfs, "bad", "EICAR virus\n")
    fan = make_group(permission_timeout=10)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)

    async def scan(ev: FanotifyData) -> bool:
        # Through the event fd: opened by the kernel without generating events.
        head = os.pread(ev.fd, 4096, 0)
        # By path, in a thread: that open() is the group's own event, which the
        # group allows at once, so the loop must stay free to read it.
        assert ev.path is not None
        body = await in_thread(Path(ev.path).read_bytes)
        assert head == body
        return b"virus" not in body

    fan.on_permission(scan)
    async with background(drain(fan)):
        r_clean = await child("open", clean)
        r_bad = await child("open", infected)
    assert (r_clean.errno, r_bad.errno) == (0, errno.EPERM)
    assert fan.stats.own_events >= 2
    assert fan.permission_stats.defaulted == 0


# -- clients (afanotify.client) -------------------------------------------------------


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_client_drop_policy_answers_dropped_events_at_once(
    tmpfs: Path, make_group: Callable[..., Fanotify], policy: str
) -> None:
    files = [_file(tmpfs, f"f{i}") for i in range(3)]
    fan = make_group(permission_timeout=TIMEOUT, default_response=Response.DENY)
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    client = fan.connect(FanoRule("all", ev_types=Event.OPEN_PERM), maxsize=1,
                         overflow=policy)  # type: ignore[arg-type]
    try:
        with pytest.raises(WouldBlock):
            client.get_nowait()  # starts the reader; nothing taken afterwards
        results = await gather(*(child("open", f) for f in files))
        assert [r.errno for r in results] == [errno.EPERM] * 3
        assert all(r.elapsed <= TIMEOUT + 1 for r in results)
        st = fan.permission_stats
        assert st.dropped == 2  # answered at once
        assert st.timed_out == 1  # the queued one waited for its deadline
        assert sorted(r.elapsed for r in results)[1] < TIMEOUT * 0.9
        assert client.stats.dropped == 2
    finally:
        client.close()


async def test_cancelled_client_consumer_answers_what_it_holds(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=30, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    client = fan.connect(FanoRule("perm", ev_types=Event.OPEN_PERM))
    got = anyio.Event()

    async def consumer() -> None:
        await client.get()
        got.set()
        await anyio.sleep(3600)

    try:
        async with tasks() as ts:
            task = ts.start(consumer())
            run = ts.start(child("open", target))
            with anyio.fail_after(10):
                await got.wait()
            task.cancel()
            result = await run.result()
    finally:
        client.close()
    assert result.errno == errno.EPERM and result.elapsed < 5
    assert fan.permission_stats.abandoned == 1


# -- the watchdog: a blocked event loop cannot keep its deadlines -----------------------

_STUCK_AGENT = r"""
import asyncio, json, sys, time
from afanotify import Event, Fanotify, InitFlag
path, watchdog = sys.argv[1], sys.argv[2] == "1"

async def main():
    async with Fanotify(InitFlag.CLASS_CONTENT, permission_timeout=1.0,
                        watchdog=watchdog) as fan:
        fan.mark(path, Event.OPEN_PERM)

        async def reader():
            async for ev in fan:
                await ev.allow()

        task = asyncio.create_task(reader())
        await asyncio.sleep(0)  # one turn of the loop: the reader waits for events now
        t0 = time.monotonic()
        with open(path) as f:  # on the loop's thread: our own event, and nobody to read it
            data = f.read()
        elapsed = time.monotonic() - t0
        task.cancel()
        print(json.dumps({"elapsed": elapsed, "data": data, "own": fan.stats.own_events}))

asyncio.run(main())
"""


@pytest.mark.parametrize("watchdog", [True, False])
async def test_watchdog_frees_a_loop_blocked_on_its_own_open(tmpfs: Path, watchdog: bool) -> None:
    target = _file(tmpfs, "judged", "payload")
    with anyio.move_on_after(6) as scope:
        # At the deadline run_process kills the agent (the wait is killable;
        # the kernel allows when the group fd goes) and reaps it.
        proc = await anyio.run_process(
            [sys.executable, "-c", _STUCK_AGENT, str(target), "1" if watchdog else "0"],
            check=False, env=child_env(), cwd=CHILD_CWD,
        )
    if scope.cancelled_caught:
        assert not watchdog, "the agent deadlocked despite its watchdog"
        return
    assert watchdog, "expected a deadlock without the watchdog"
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["data"] == "payload"
    assert 1.0 <= data["elapsed"] <= 2.0
    assert data["own"] == 1


async def test_watchdog_answers_for_a_loop_blocked_by_a_handler(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=TIMEOUT, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)
    blocked = 0.0

    def slow(ev: FanotifyData) -> bool:
        nonlocal blocked
        t0 = time.monotonic()
        time.sleep(TIMEOUT + 2)  # a badly written handler: blocks the loop
        blocked = time.monotonic() - t0
        return True

    fan.on_permission(slow)
    async with background(drain(fan)):
        result = await child("open", target)
    assert blocked >= TIMEOUT + 2
    assert result.errno == errno.EPERM  # the default, not the handler's late True
    assert result.elapsed <= TIMEOUT + 1
    st = fan.permission_stats
    assert (st.timed_out, st.late) == (1, 1)


async def test_watchdog_answers_when_nobody_reads(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=TIMEOUT, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)  # and never read
    result = await child("open", target)
    assert result.errno == errno.EPERM
    assert TIMEOUT * 0.9 <= result.elapsed <= TIMEOUT + 1
    assert fan.permission_stats.stalled == 1


def test_sync_reader_answers_overdue_events(tmpfs: Path) -> None:
    # No event loop at all: read_batch() and answer_overdue() from plain code.
    target = _file(tmpfs, "f")
    with Fanotify(CONTENT, permission_timeout=0.5, default_response=Response.DENY,
                  watchdog=False) as fan:
        fan.mark(target, Event.OPEN_PERM)
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import os; os.open({str(target)!r}, os.O_RDONLY)"],
            stderr=subprocess.PIPE, env=child_env(), cwd=CHILD_CWD,
        )
        try:
            events: list[FanotifyData] = []
            deadline = time.monotonic() + 10
            while not events and time.monotonic() < deadline:
                try:
                    events = fan.read_batch()
                except WouldBlock:
                    time.sleep(0.01)
            read_at = time.monotonic()
            assert len(events) == 1 and not events[0].answered
            assert fan.answer_overdue() == 0  # not yet
            answered = 0
            while not answered and time.monotonic() < deadline:
                answered = fan.answer_overdue()
                if not answered:
                    time.sleep(0.01)
            assert answered == 1
            assert time.monotonic() - read_at >= fan.permission_timeout
            assert events[0].answered
            _, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
            proc.wait()
        assert b"PermissionError" in err
        assert fan.permission_stats.timed_out == 1
        events[0].close()


class _SlowLogHandler(logging.Handler):
    """A log handler that blocks, as a log to a stuck disk or socket would."""

    def __init__(self, seconds: float) -> None:
        super().__init__(logging.WARNING)
        self.seconds = seconds
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        time.sleep(self.seconds)


@pytest.mark.parametrize("path", ["deadline", "handler-error"])
async def test_responses_are_written_before_logging(
    tmpfs: Path, make_group: Callable[..., Fanotify], path: str
) -> None:
    target = _file(tmpfs, "f")
    fan = make_group(permission_timeout=TIMEOUT, default_response=Response.DENY)
    fan.mark(target, Event.OPEN_PERM)

    async def forever(ev: FanotifyData) -> bool:
        await anyio.sleep(3600)
        return True

    def broken(ev: FanotifyData) -> bool:
        raise RuntimeError("policy bug")

    fan.on_permission(forever if path == "deadline" else broken)
    slow = _SlowLogHandler(3.0)
    logger = logging.getLogger("afanotify.permission")
    logger.addHandler(slow)
    try:
        async with tasks() as ts:
            ts.start(drain(fan))
            result = await child("open", target)
    finally:
        logger.removeHandler(slow)
    assert slow.records, "the path under test logs"
    assert result.errno == errno.EPERM
    # Had the log line come first, the child would have waited 3 s more.
    limit = TIMEOUT + 1 if path == "deadline" else 1.0
    assert result.elapsed <= limit
