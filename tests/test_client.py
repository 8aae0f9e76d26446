"""FanotifyClient and the dispatcher, fed synthetic events through the group's
delivery path (``fan._deliver``).  A group is created (no marks), but no
event comes from the kernel."""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from helpers import drain_client, is_open, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from afanotify import (
    ClientOverflow,
    ClosedResourceError,
    Event,
    FanoRule,
    Fanotify,
    FanotifyClient,
    FanotifyData,
    WouldBlock,
)
from afanotify.events import OWN_FD, OWN_PIDFD

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = pytest.mark.anyio

OPEN = int(Event.OPEN)
CW = int(Event.CLOSE_WRITE)
MODIFY = int(Event.MODIFY)


@pytest.fixture
async def fan() -> AsyncIterator[Fanotify]:
    async with Fanotify() as group:
        yield group


def _getting(c: FanotifyClient) -> bool:
    """A ``get()`` (or ``async for``) is waiting on the client's queue now."""
    return any(not w.done() for w in c._queue._waiters)


def synth(path: str = "/d/a", pid: int = 100, ev_types: int = OPEN, fd: bool = False,
          **kw: Any) -> FanotifyData:
    if fd:
        n = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        return FanotifyData(fd=n, pid=pid, ev_types=ev_types, path=path, _owns=OWN_FD, **kw)
    return FanotifyData(pid=pid, ev_types=ev_types, path=path, **kw)


@pytest.mark.kernel
async def test_three_rules_each_get_exactly_their_events(fan: Fanotify) -> None:
    a = fan.connect(FanoRule("a", ev_types=OPEN))
    b = FanotifyClient(fan, path_pattern="/d/+(x|y)")
    c = fan.connect(FanoRule("c", pids=[7], ev_types=CW))
    evs = [
        synth("/d/x", 1, OPEN), synth("/d/y", 7, CW), synth("/d/z", 7, CW),
        synth("/d/z", 2, MODIFY), synth("/d/x", 7, OPEN | CW),
    ]
    fan._deliver(evs)
    assert [(e.path, e.pid) for e in drain_client(a)] == [("/d/x", 1), ("/d/x", 7)]
    assert [(e.path, e.pid) for e in drain_client(b)] == [("/d/x", 1), ("/d/y", 7), ("/d/x", 7)]
    assert [(e.path, e.pid) for e in drain_client(c)] == [("/d/y", 7), ("/d/z", 7), ("/d/x", 7)]
    assert fan.dispatch_stats.unmatched == 1  # the MODIFY
    assert b.rname.startswith("client-")
    for cl in (a, b, c):
        cl.close()


@pytest.mark.kernel
async def test_fd_ownership_fan_out(fan: Fanotify) -> None:
    p1 = fan.connect(FanoRule("p1", ev_types=OPEN, pass_fd=True))
    p2 = fan.connect(FanoRule("p2", ev_types=OPEN, pass_fd=True))
    plain = fan.connect(FanoRule("plain", ev_types=OPEN))
    ev = synth(fd=True)
    orig_fd = ev.fd
    fan._deliver([ev])
    e1, e2, e3 = p1.get_nowait(), p2.get_nowait(), plain.get_nowait()
    assert e1 is ev and e1.fd == orig_fd and e1._owns & OWN_FD
    assert e2.fd >= 0 and e2.fd != orig_fd and e2._owns & OWN_FD
    assert os.path.samestat(os.fstat(e1.fd), os.fstat(e2.fd))
    assert e3.fd == -1 and e3.closed
    fds = (e1.fd, e2.fd)
    e1.close()
    assert is_open(e2.fd)  # each client owns its own descriptor
    e2.close()
    assert not any(is_open(f) for f in fds)
    assert fan.dispatch_stats.dup_fds == 1
    for cl in (p1, p2, plain):
        cl.close()


@pytest.mark.kernel
async def test_without_pass_fd_the_library_closes_the_fd(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", ev_types=OPEN))
    ev = synth(fd=True)
    fd = ev.fd
    fan._deliver([ev])
    got = c.get_nowait()
    assert got.fd == -1 and got.closed
    assert not is_open(fd)
    c.close()


@pytest.mark.kernel
async def test_unmatched_events_are_released_and_counted(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", ev_types=CW))
    ev = synth(fd=True)
    fan._deliver([ev])
    assert ev.closed and not is_open(ev.fd)
    assert fan.dispatch_stats.unmatched == 1 and fan.dispatch_stats.dispatched == 0
    c.close()


@pytest.mark.kernel
async def test_pidfd_is_duplicated_or_stripped_like_fd(fan: Fanotify) -> None:
    p1 = fan.connect(FanoRule("p1", ev_types=OPEN, pass_fd=True))
    p2 = fan.connect(FanoRule("p2", ev_types=OPEN, pass_fd=True))
    plain = fan.connect(FanoRule("plain", ev_types=OPEN))
    fd = os.open("/dev/null", os.O_RDONLY)
    pidfd = os.pidfd_open(os.getpid())
    ev = FanotifyData(fd=fd, pidfd=pidfd, pid=1, ev_types=OPEN, _owns=OWN_FD | OWN_PIDFD)
    fan._deliver([ev])
    e1, e2, e3 = p1.get_nowait(), p2.get_nowait(), plain.get_nowait()
    assert e1.pidfd == pidfd
    assert e2.pidfd >= 0 and e2.pidfd != pidfd and e2._owns == OWN_FD | OWN_PIDFD
    assert e3.pidfd == -1 and e3.fd == -1
    for e in (e1, e2):
        e.close()
    for cl in (p1, p2, plain):
        cl.close()


@pytest.mark.kernel
@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
async def test_drop_policies_count_and_mark(fan: Fanotify, policy: str) -> None:
    slow = fan.connect(FanoRule("slow", ev_types=OPEN), maxsize=3, overflow=policy)  # type: ignore[arg-type]
    fast = fan.connect(FanoRule("fast", ev_types=OPEN), maxsize=100)
    evs = [synth(f"/d/{i}", fd=True) for i in range(10)]
    fds = [e.fd for e in evs]
    fan._deliver(evs)
    st = slow.stats
    assert st.matched == 10 and st.dropped == 7 and st.queued == 3
    got = [slow.get_nowait() for _ in range(4)]
    assert isinstance(got[0], ClientOverflow)
    assert got[0].dropped == 7 and got[0].ev_types == int(Event.Q_OVERFLOW) and got[0].fd == -1
    kept = [e.path for e in got[1:]]
    newest, oldest = ["/d/7", "/d/8", "/d/9"], ["/d/0", "/d/1", "/d/2"]
    assert kept == (newest if policy == "drop_oldest" else oldest)
    for e in got:
        e.close()
    st = slow.stats
    assert st.matched == st.received + st.dropped + st.queued + st.held + st.discarded
    assert st.received == 3
    # The other client is unaffected and got every event.
    assert len(drain_client(fast)) == 10
    # Nothing leaked: every descriptor was closed (the fast client had no pass_fd).
    assert not any(is_open(f) for f in fds)
    with pytest.raises(WouldBlock):
        slow.get_nowait()
    slow.close()
    fast.close()


@pytest.mark.kernel
async def test_block_policy_pauses_reading_and_loses_nothing(fan: Fanotify) -> None:
    fan._ensure_reader()
    assert fan._reader.reading
    slow = fan.connect(FanoRule("slow", ev_types=OPEN), maxsize=2)
    other = fan.connect(FanoRule("other", ev_types=OPEN), maxsize=100)
    fan._deliver([synth(f"/d/{i}") for i in range(5)])
    assert slow.stats.queued == 2 and slow.stats.held == 3 and slow.stats.blocked == 1
    assert fan._reader.paused and not fan._reader.reading
    assert len(drain_client(other)) == 5  # already-read events still reach the others
    # Each get moves one held event into the queue, in order.
    got = [slow.get_nowait().path for _ in range(2)]
    assert fan._reader.paused and slow.stats.held == 1
    got.append(slow.get_nowait().path)
    assert slow.stats.held == 0
    assert not fan._reader.paused and fan._reader.reading
    got += [slow.get_nowait().path for _ in range(2)]
    assert got == [f"/d/{i}" for i in range(5)]
    st = slow.stats
    assert st.dropped == 0 and st.matched == st.received == 5
    slow.close()
    other.close()


@pytest.mark.kernel
async def test_closing_a_blocked_client_resumes_reading(fan: Fanotify) -> None:
    fan._ensure_reader()
    slow = fan.connect(FanoRule("slow", ev_types=OPEN, pass_fd=True), maxsize=1)
    other = fan.connect(FanoRule("other", ev_types=CW))
    fan._deliver([synth(fd=True), synth(fd=True)])
    held_fd = slow._held[0].fd
    assert fan._reader.paused
    slow.close()
    assert not fan._reader.paused and fan._reader.reading
    assert not is_open(held_fd)
    assert slow.stats.discarded == 2
    other.close()


@pytest.mark.kernel
async def test_close_stops_delivery_at_once(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", ev_types=OPEN, pass_fd=True))
    keep = fan.connect(FanoRule("keep", ev_types=OPEN))
    ev = synth(fd=True)
    fan._deliver([ev])
    c.close()
    assert not is_open(ev.fd)  # queued, unread: released
    fan._deliver([synth()])
    assert c.stats.matched == 1
    with pytest.raises(ClosedResourceError):
        c.get_nowait()
    with pytest.raises(ClosedResourceError):
        await c.get()
    assert len(drain_client(keep)) == 2
    keep.close()


@pytest.mark.kernel
async def test_waiting_get_wakes_on_close(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", ev_types=OPEN))
    raised: list[BaseException] = []
    async with anyio.create_task_group() as tg:

        async def waiter() -> None:
            try:
                await c.get()
            except ClosedResourceError as exc:
                raised.append(exc)

        tg.start_soon(waiter)
        await wait_until(lambda: _getting(c), "get() waits")
        c.close()
    assert len(raised) == 1 and isinstance(raised[0], ClosedResourceError)


@pytest.mark.kernel
async def test_disconnect_by_rule_and_by_client(fan: Fanotify) -> None:
    rule = FanoRule("r", ev_types=OPEN)
    c1 = fan.connect(rule)
    c2 = fan.connect(FanoRule("r", ev_types=Event.OPEN))  # equal rule
    c3 = fan.connect(FanoRule("other", ev_types=OPEN))
    assert fan.disconnect(rule) == 2
    assert c1.closed and c2.closed and not c3.closed
    assert fan.disconnect(c3) == 1
    assert fan.disconnect(c3) == 0
    with pytest.raises(TypeError, match="FanoRule or FanotifyClient"):
        fan.disconnect("r")  # type: ignore[arg-type]


@pytest.mark.kernel
async def test_group_close_ends_clients(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", ev_types=OPEN, pass_fd=True))
    ev = synth(fd=True)
    fan._deliver([ev])
    got: list[FanotifyData] = []

    async def consume() -> None:
        async for e in c:
            got.append(e)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await wait_until(lambda: len(got) == 1 and _getting(c), "the consumer waits")
            await fan.aclose()
    assert len(got) == 1 and not is_open(ev.fd) and c.closed


@pytest.mark.kernel
async def test_async_for_releases_previous_event(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", ev_types=OPEN, pass_fd=True))
    evs = [synth(fd=True) for _ in range(2)]
    fan._deliver(evs)
    it = c.__aiter__()
    first = await it.__anext__()
    assert is_open(first.fd)
    await it.__anext__()
    assert first.closed
    await c.aclose()
    assert all(e.closed for e in evs)


@pytest.mark.kernel
async def test_sync_predicate_dispatches_inline(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", predicate=lambda e: e.pid % 2 == 0))
    fan._deliver([synth(pid=1), synth(pid=2), synth(pid=4)])
    assert fan._clients._task is None  # no task was created
    assert [e.pid for e in drain_client(c)] == [2, 4]
    c.close()


@pytest.mark.kernel
async def test_async_predicate_keeps_order_and_pauses_reading(fan: Fanotify) -> None:
    fan._ensure_reader()

    async def slow_even(e: FanotifyData) -> bool:
        await anyio.sleep(0.001 * (5 - e.pid % 5))
        return e.pid % 2 == 0

    a = fan.connect(FanoRule("a", predicate=slow_even))
    s = fan.connect(FanoRule("s", ev_types=OPEN))
    fan._deliver([synth(pid=i) for i in range(10)])
    assert fan._reader.paused  # the group waits for the async dispatch
    fan._deliver([synth(pid=i) for i in range(10, 14)])  # queued behind, in order
    with anyio.fail_after(2):
        got = [(await a.get()).pid for _ in range(7)]
    assert got == [0, 2, 4, 6, 8, 10, 12]
    await wait_until(lambda: fan._clients._task is None, "the dispatch task ended", 1.0)
    assert fan._clients._task is None and not fan._reader.paused
    assert [e.pid for e in drain_client(s)] == list(range(14))
    a.close()
    s.close()


@pytest.mark.kernel
async def test_failing_predicate_is_counted_not_fatal(fan: Fanotify) -> None:
    def boom(e: FanotifyData) -> bool:
        raise RuntimeError("boom")

    c = fan.connect(FanoRule("c", predicate=boom))
    ok = fan.connect(FanoRule("ok", ev_types=OPEN))
    fan._deliver([synth()])
    assert c.stats.predicate_errors == 1 and c.stats.matched == 0
    assert len(drain_client(ok)) == 1
    c.close()
    ok.close()


@pytest.mark.kernel
async def test_kernel_overflow_reaches_every_client(fan: Fanotify) -> None:
    a = fan.connect(FanoRule("a", ev_types=OPEN))
    b = fan.connect(FanoRule("b", pids=[3]))
    fan._deliver([FanotifyData(ev_types=int(Event.Q_OVERFLOW))])
    for c in (a, b):
        [e] = drain_client(c)
        assert e.ev_types == int(Event.Q_OVERFLOW) and not isinstance(e, ClientOverflow)
        c.close()


@pytest.mark.kernel
async def test_group_queue_is_a_consumer_only_once_received_from(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", ev_types=OPEN))
    fan._deliver([synth("/d/1", fd=True)])
    with pytest.raises(WouldBlock):
        fan.receive_nowait()  # nothing reached the group: nobody was reading it
    fan._deliver([synth("/d/2", fd=True), synth("/d/3", ev_types=CW, fd=True)])
    e = fan.receive_nowait()
    assert e.path == "/d/2" and e.fd >= 0  # the group gets the original and its fd
    assert fan.receive_nowait().path == "/d/3"  # match-all
    assert [x.path for x in drain_client(c)] == ["/d/1", "/d/2"]
    e.close()
    c.close()


@pytest.mark.kernel
async def test_last_client_leaving_stops_reading_when_group_unread(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", ev_types=OPEN))
    with pytest.raises(WouldBlock):
        c.get_nowait()
    assert fan._reader.reading
    c.close()
    assert not fan._reader.reading  # the kernel keeps events for the next reader


@pytest.mark.kernel
async def test_proc_read_only_when_a_candidate_needs_it(fan: Fanotify) -> None:
    by_type = fan.connect(FanoRule("t", ev_types=CW))
    by_exe = fan.connect(FanoRule("e", ev_types=OPEN, exe_pattern="*python*"))
    me = os.getpid()
    fan._deliver([synth(pid=me, ev_types=CW)])
    assert fan.dispatch_stats.proc_reads == 0
    [e] = drain_client(by_type)
    assert e.exe is None
    fan._deliver([synth(pid=me, ev_types=OPEN)])
    assert fan.dispatch_stats.proc_reads == 1
    [e] = drain_client(by_exe)
    assert e.exe == os.readlink("/proc/self/exe") and e.cwd == os.getcwd()
    by_type.close()
    by_exe.close()


@pytest.mark.kernel
async def test_process_gone_fields_none_and_exe_rule_does_not_match(fan: Fanotify) -> None:
    by_exe = fan.connect(FanoRule("e", exe_pattern="*"))
    by_type = fan.connect(FanoRule("t", ev_types=OPEN))
    gone = 2**22 + 12345  # above pid_max: no such process
    fan._deliver([synth(pid=gone)])
    assert by_exe.stats.matched == 0
    [e] = drain_client(by_type)
    assert e.exe is None and e.cwd is None
    by_exe.close()
    by_type.close()


@pytest.mark.kernel
async def test_client_arguments_are_checked(fan: Fanotify) -> None:
    with pytest.raises(ValueError, match="overflow"):
        FanotifyClient(fan, ev_types=OPEN, overflow="spill")
    with pytest.raises(ValueError, match="maxsize"):
        FanotifyClient(fan, ev_types=OPEN, maxsize=0)
    with pytest.raises(ValueError, match="at least one criterion"):
        FanotifyClient(fan)
    with pytest.raises(TypeError, match="either"):
        FanotifyClient(fan, FanoRule("r", ev_types=OPEN), ev_types=OPEN)
    assert not fan._clients.active
    async with Fanotify(resolve_paths=False) as nopaths:
        with pytest.raises(ValueError, match="resolve_paths"):
            nopaths.connect(FanoRule("p", path_pattern="*"))
    await fan.aclose()
    with pytest.raises(ClosedResourceError):
        fan.connect(FanoRule("r", ev_types=OPEN))


@pytest.mark.kernel
async def test_client_context_managers(fan: Fanotify) -> None:
    async with FanotifyClient(fan, ev_types=OPEN) as c:
        assert not c.closed
    assert c.closed
    with fan.connect(FanoRule("r", ev_types=OPEN)) as c2:
        pass
    assert c2.closed
    assert not fan._clients.active


def test_client_overflow_marker_pickles_and_is_fanotify_data() -> None:
    m = ClientOverflow(ev_types=int(Event.Q_OVERFLOW), dropped=3)
    assert isinstance(m, FanotifyData) and m.closed
    assert pickle.loads(pickle.dumps(m)) == m


@pytest.mark.kernel
async def test_path_index_keeps_semantics_and_order(fan: Fanotify) -> None:
    rules = [
        FanoRule("deep", path_pattern="/d/x/+(a|b)"),
        FanoRule("star", path_pattern="*/a"),  # not indexable: checked for every event
        FanoRule("dir", path_pattern="/d/*"),
        FanoRule("partial", path_pattern="/d/x/a*", ev_types=OPEN),
        FanoRule("other", path_pattern="/e/*"),
        FanoRule("bytes", path_pattern=b"/d/x/?"),
    ]
    clients = [fan.connect(r) for r in rules]
    rename = int(Event.RENAME)
    events = [
        synth("/d/x/a"), synth("/d/x/b", ev_types=CW), synth("/e/a"), synth("/f/zz"),
        synth(None, ev_types=OPEN),  # type: ignore[arg-type]
        FanotifyData(ev_types=rename, old_path="/e/q", new_path="/g/q", path="/g/q"),
    ]
    fan._deliver(events)
    got = {c.rule.name: [e.path for e in drain_client(c)] for c in clients}
    # The directory index gives exactly what each rule's own matches() says.
    assert got == {r.name: [e.path for e in events if r.matches(e)] for r in rules}
    assert got == {
        "deep": ["/d/x/a", "/d/x/b"],
        "star": ["/d/x/a", "/e/a"],
        "dir": ["/d/x/a", "/d/x/b"],
        "partial": ["/d/x/a"],
        "other": ["/e/a", "/g/q"],
        "bytes": ["/d/x/a", "/d/x/b"],
    }
    for c in clients:
        c.close()


@pytest.mark.kernel
async def test_permission_primary_is_first_matching_client_in_connect_order(
    fan: Fanotify,
) -> None:
    from afanotify.events import UNANSWERED

    late = fan.connect(FanoRule("late", path_pattern="/d/*"))
    early_star = fan.connect(FanoRule("star", path_pattern="*"))
    fd = os.open("/dev/null", os.O_RDONLY)
    ev = FanotifyData(fd=fd, pid=5, ev_types=int(Event.OPEN_PERM), path="/d/a",
                      _owns=OWN_FD | UNANSWERED)
    fan._deliver([ev])
    first, second = late.get_nowait(), early_star.get_nowait()
    assert first is ev  # connected first, so it holds the answerable original
    assert second.fd == -1 and second.answered
    object.__setattr__(ev, "_owns", OWN_FD)  # no kernel behind this fd: skip the verdict
    ev.close()
    late.close()
    early_star.close()


@pytest.mark.kernel
async def test_permission_class_group_never_blocks() -> None:
    from afanotify import InitFlag

    async with Fanotify(InitFlag.CLASS_CONTENT, maxsize=1) as fan:
        c = fan.connect(FanoRule("c", ev_types=OPEN), maxsize=1)
        assert c.overflow == "drop_newest"
        with pytest.raises(ValueError, match="no deadline"):
            FanotifyClient(fan, ev_types=OPEN, overflow="block")
        with pytest.raises(WouldBlock):
            fan.receive_nowait()  # the group's own queue is a consumer now
        fan._deliver([synth(f"/d/{i}", fd=True) for i in range(3)])
        assert not fan._reader.paused
        assert fan.dispatch_stats.group_dropped == 2
        st = c.stats
        assert st.queued == 1 and st.dropped == 2 and st.held == 0
        fan.receive_nowait().close()
        c.close()


@pytest.mark.kernel
async def test_group_failure_delivers_queued_events_then_errors(fan: Fanotify) -> None:
    fan._ensure_reader()
    c = fan.connect(FanoRule("c", ev_types=OPEN), maxsize=1)
    fan._deliver([synth("/d/1"), synth("/d/2")])  # one queued, one held (block)
    fan._fail(OSError(5, "Input/output error"))
    assert (await c.get()).path == "/d/1"
    assert c.get_nowait().path == "/d/2"
    with pytest.raises(ClosedResourceError, match="failed"):
        await c.get()
    assert c.stats.received == 2
    c.close()


@pytest.mark.kernel
async def test_group_failure_ends_clients_with_an_error(fan: Fanotify) -> None:
    c = fan.connect(FanoRule("c", ev_types=OPEN))
    raised: list[BaseException] = []

    async def consume() -> None:
        try:
            async for _ in c:
                pass
        except ClosedResourceError as exc:
            raised.append(exc)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await wait_until(lambda: _getting(c), "the consumer waits")
            fan._fail(OSError(5, "Input/output error"))
    (exc,) = raised
    assert isinstance(exc, ClosedResourceError) and "failed" in str(exc)
    with pytest.raises(ClosedResourceError, match="failed"):
        c.get_nowait()


# -- the dispatcher's shortcuts agree with the rules ----------------------

_PATTERNS = ["/a/*", "/a/b/*", "/a/b/c", "*/c", "/b/+(c|d)", "/a/?", "!(/a/*)", "/a/b*"]
_rule_st = st.builds(
    dict,
    pids=st.lists(st.sampled_from([1, 2, 3]), max_size=2),
    ev_types=st.sampled_from([0, OPEN, CW, OPEN | CW]),
    path_pattern=st.none() | st.sampled_from(_PATTERNS),
    exe_pattern=st.none() | st.sampled_from(["*/cat", "/bin/*"]),
)
_event_st = st.builds(
    dict,
    pid=st.sampled_from([1, 2, 3, 4]),
    ev_types=st.sampled_from([OPEN, CW, MODIFY, OPEN | CW, int(Event.RENAME)]),
    path=st.none() | st.sampled_from(["/a/b/c", "/a/x", "/b/c", "/a/b", "/c", "/a/bz"]),
    exe=st.none() | st.sampled_from(["/bin/cat", "/usr/bin/cat", "/bin/ls"]),
    old_path=st.none() | st.sampled_from(["/a/b/c", "/b/d"]),
    cwd=st.just("/"),  # with cwd known, the dispatcher does not read /proc
)


@pytest.mark.kernel
@settings(max_examples=150, deadline=None)
@given(st.lists(_rule_st, min_size=1, max_size=6), st.lists(_event_st, max_size=12))
def test_dispatch_equals_matching_each_rule(
    rule_kws: list[dict[str, Any]], event_kws: list[dict[str, Any]]
) -> None:
    rules = []
    for i, kw in enumerate(rule_kws):
        try:
            rules.append(FanoRule(f"r{i}", **kw))
        except ValueError:
            continue  # no criterion
    # range_offset tags each event, since fan-out copies are new objects.
    events = [FanotifyData(range_offset=i, **kw) for i, kw in enumerate(event_kws)]

    async def run() -> dict[str, list[int | None]]:
        async with Fanotify() as fan:
            clients = [fan.connect(r, maxsize=100) for r in rules]
            fan._deliver(events[: len(events) // 2])
            fan._deliver(events[len(events) // 2:])  # the cache is warm now
            return {c.rule.name: [e.range_offset for e in drain_client(c)] for c in clients}

    # The dispatcher's matching, not the backend, is under test: asyncio only.
    got = asyncio.run(run())
    want = {r.name: [e.range_offset for e in events if r.matches(e)] for r in rules}
    assert got == want


@pytest.mark.kernel
async def test_group_close_during_async_dispatch_releases_everything() -> None:
    never = anyio.Event()

    async def stuck(e: FanotifyData) -> bool:
        await never.wait()
        return True

    fan = Fanotify()
    try:
        c = fan.connect(FanoRule("stuck", predicate=stuck, pass_fd=True))
        evs = [synth(fd=True) for _ in range(3)]
        fan._deliver(evs)
        task = fan._clients._task
        assert task is not None
        await anyio.sleep(0)  # the predicate task starts and waits
        assert not task.done()
    finally:
        await fan.aclose()
    assert all(e.closed and not is_open(e.fd) for e in evs)
    assert c.closed
    await wait_until(task.done, "the cancelled predicate task ended", 1.0)
    assert task.cancelled()
