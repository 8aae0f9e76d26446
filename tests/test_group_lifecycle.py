"""Closing, cancelling and long runs: nothing leaks, nothing hangs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from helpers import CHILD_CWD, child_env, collect, open_fd_count, sh, wait_until

import afanotify
from afanotify import ClosedResourceError, Event, Fanotify, FanotifyData, InitFlag, WouldBlock

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

WRITES = Event.CLOSE_WRITE | Event.EVENT_ON_CHILD


def _receiving(fan: Fanotify) -> bool:
    """A ``receive()`` (or ``async for``) is waiting on the group's queue now."""
    return any(not w.done() for w in fan._queue._waiters)


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
    first = anyio.Event()
    ended = anyio.Event()

    async with Fanotify() as fan, anyio.create_task_group() as tg:
        fan.mark(tmpfs, WRITES)

        async def consume() -> None:
            async for ev in fan:
                got.append(ev)
                first.set()
            ended.set()

        tg.start_soon(consume)
        assert sh(f"echo x > {tmpfs}/a").returncode == 0
        with anyio.fail_after(5):
            await first.wait()
        # The consumer is now blocked waiting for a second event.
        await wait_until(lambda: _receiving(fan), "the consumer waits for a second event")
        assert not ended.is_set()
        await fan.aclose()
        with anyio.fail_after(5):
            await ended.wait()
    assert [e.path for e in got] == [f"{tmpfs}/a"]
    assert got[0].closed  # the iterator released the event it had handed out

    # A new group works afterwards.
    async with Fanotify() as fan2:
        fan2.mark(tmpfs, WRITES)
        assert sh(f"echo y > {tmpfs}/b").returncode == 0
        (ev,) = await collect(fan2, lambda g: len(g) >= 1)
    assert ev.path == f"{tmpfs}/b"


async def test_aclose_wakes_receive_with_closed_resource_error(tmpfs: Path) -> None:
    raised: list[BaseException] = []
    ended = anyio.Event()
    async with Fanotify() as fan, anyio.create_task_group() as tg:

        async def waiter() -> None:
            try:
                await fan.receive()
            except ClosedResourceError as exc:
                raised.append(exc)
            ended.set()

        tg.start_soon(waiter)
        # Let it start waiting (no event can arrive: nothing is marked).
        await wait_until(lambda: _receiving(fan), "receive() waits")
        assert not ended.is_set()
        await fan.aclose()
        with anyio.fail_after(5):
            await ended.wait()
    assert len(raised) == 1 and isinstance(raised[0], ClosedResourceError)


@pytest.mark.parametrize("flags", [InitFlag(0), InitFlag.REPORT_DFID_NAME], ids=["fd", "fid"])
async def test_cancelling_a_consumer_leaks_nothing(tmpfs: Path, flags: InitFlag) -> None:
    baseline = open_fd_count()
    holding = anyio.Event()
    ended = anyio.Event()
    fan = Fanotify(flags)
    try:
        fan.mark(tmpfs, WRITES)
        async with anyio.create_task_group() as tg:
            consumer = anyio.CancelScope()

            async def consume() -> None:
                with consumer:
                    async for _ev in fan:
                        holding.set()
                        await anyio.sleep_forever()  # hold the event until cancelled
                ended.set()

            tg.start_soon(consume)
            assert sh(f"for i in 1 2 3 4 5; do echo $i > {tmpfs}/f$i; done").returncode == 0
            with anyio.fail_after(5):
                await holding.wait()
            # Let the group read the rest into its queue while the consumer holds one.
            await wait_until(lambda: fan.stats.events_read >= 5, "the group read 5 events")
            consumer.cancel()
            with anyio.fail_after(5):
                await ended.wait()
            assert consumer.cancelled_caught
        # The group still works after its consumer was cancelled.
        ev = await _receive(fan)
        assert ev.path == f"{tmpfs}/f2"
        ev.close()
        # A receiver cancelled while waiting takes nothing with it: empty the
        # queue, cancel a waiting receive(), and the next event goes to the
        # next receiver.
        rest = []
        while True:
            try:
                rest.append(fan.receive_nowait())
            except WouldBlock:
                break
        assert [e.path for e in rest] == [f"{tmpfs}/f{i}" for i in (3, 4, 5)]
        for e in rest:
            e.close()
        taken: list[FanotifyData] = []
        async with anyio.create_task_group() as tg:
            waiter = anyio.CancelScope()

            async def wait_for_one() -> None:
                with waiter:
                    taken.append(await fan.receive())

            tg.start_soon(wait_for_one)
            await wait_until(lambda: _receiving(fan), "receive() waits")
            waiter.cancel()
        assert waiter.cancelled_caught and taken == []
        assert sh(f"echo 6 > {tmpfs}/f6").returncode == 0
        ev = await _receive(fan)
        assert ev.path == f"{tmpfs}/f6"
        ev.close()
    finally:
        await fan.aclose()
    assert open_fd_count() == baseline


async def test_close_releases_queued_event_fds(tmpfs: Path) -> None:
    baseline = open_fd_count()
    async with Fanotify() as fan:
        fan.mark(tmpfs, WRITES)
        assert sh(f"for i in 1 2 3; do echo $i > {tmpfs}/f$i; done").returncode == 0
        first = await _receive(fan)
        await wait_until(lambda: fan.stats.events_read >= 3, "the group read 3 events")
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
        deadline = anyio.current_time() + 5
        while True:
            try:
                ev = fan.receive_nowait()
                break
            except WouldBlock:
                assert anyio.current_time() < deadline, "no event within 5 s"
                await anyio.sleep(0.01)
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
        [sys.executable, "-c", _BUSY_CHILD, str(tmpfs)], stdin=subprocess.PIPE,
        env=child_env(), cwd=CHILD_CWD,
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
    raised: list[BaseException] = []
    ended = anyio.Event()
    async with Fanotify() as fan, anyio.create_task_group() as tg:
        fan.mark(tmpfs, WRITES)

        async def consume() -> None:
            try:
                async for _ev in fan:
                    pass
            except ClosedResourceError as exc:
                raised.append(exc)
            ended.set()

        tg.start_soon(consume)
        await wait_until(lambda: _receiving(fan), "the consumer waits")
        # What the reader does when read(2) fails (e.g. EIO): stop, log, wake.
        fan._fail(OSError(5, "Input/output error"))
        with anyio.fail_after(5):
            await ended.wait()
        (exc,) = raised
        assert isinstance(exc, ClosedResourceError) and "failed" in str(exc)
        assert isinstance(exc.__cause__, OSError)
    assert "reading the fanotify group failed" in caplog.text


_LOW_FD_LIMIT = """
import asyncio, json, logging, os, resource, subprocess, sys
import afanotify._open
from afanotify import Event, Fanotify, InitFlag

d, total, hold, limit, high, old = sys.argv[1], *map(int, sys.argv[2:7])
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
if old:  # as on a kernel before 6.13, which lacks FAN_REPORT_FD_ERROR
    afanotify._open._fd_error_known = False
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
# ``high`` descriptors parked at the top of the table, as an application may hold them
spare = os.open("/dev/null", os.O_RDONLY)
parked = [os.dup2(spare, limit - 1 - i) for i in range(high)]
os.close(spare)
MAKE = (
    "import os, sys\\n"
    "for i in range(int(sys.argv[2])):\\n"
    "    os.close(os.open(f'{sys.argv[1]}/f{i}', os.O_CREAT | os.O_WRONLY))"
)

async def main():
    async with Fanotify() as fan:
        fan.mark(d, Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        subprocess.run([sys.executable, "-c", MAKE, d, str(total)], check=True,
                       pass_fds=(), close_fds=True)
        n, held, fd_errors, names = 0, [], 0, set()
        while True:
            try:
                ev = await asyncio.wait_for(fan.receive(), 1.0)
            except asyncio.TimeoutError:
                break
            n += 1
            fd_errors += ev.fd_error is not None
            if ev.path is not None:
                names.add(ev.path)
            held.append(ev)
            if len(held) > hold:  # hold: how many events the consumer keeps open
                for e in held:
                    e.close()
                held = []
        for e in held:
            e.close()
        # The group still works.
        subprocess.run(["touch", f"{d}/last"], check=True)
        with await asyncio.wait_for(fan.receive(), 5) as last:
            ok = last.path == f"{d}/last"
        st = fan.stats
        print(json.dumps({
            "received": n, "lost": st.lost, "ok": ok, "fd_errors": fd_errors,
            "stats_fd_errors": st.fd_errors, "paths": len(names),
            "fd_error_flag": bool(fan.flags & InitFlag.REPORT_FD_ERROR),
        }))

asyncio.run(main())
"""


async def _receive(fan: Fanotify, timeout: float = 5) -> FanotifyData:
    with anyio.fail_after(timeout):
        return await fan.receive()


def _run_low_limit(
    tmpfs: Path, total: int, hold: int, *, limit: int = 256, high: int = 0, old: bool = False
) -> tuple[dict[str, object], str]:
    r = subprocess.run(
        [sys.executable, "-c", _LOW_FD_LIMIT, str(tmpfs), str(total), str(hold), str(limit),
         str(high), str(int(old))],
        env=child_env(), cwd=CHILD_CWD,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def _kernel_has_fd_error() -> bool:
    return InitFlag.REPORT_FD_ERROR in afanotify.features().init_flags


#: The two ways a group can meet a full fd table: with FAN_REPORT_FD_ERROR
#: (the default where the kernel has it) and as on a kernel without it.
_MODES = [pytest.param(False, id="fd_error"), pytest.param(True, id="no_fd_error")]


def _skip_without_fd_error(old: bool) -> None:
    if not old and not _kernel_has_fd_error():
        pytest.skip("this kernel lacks FAN_REPORT_FD_ERROR (Linux 6.13)")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("old", _MODES)
def test_fd_mode_under_a_low_open_file_limit_loses_nothing(tmpfs: Path, old: bool) -> None:
    # 3000 queued fd events, RLIMIT_NOFILE 256: reads are sized to the fds
    # the process can take, so the kernel never has to drop one.
    _skip_without_fd_error(old)
    result, log = _run_low_limit(tmpfs, 3000, 0, old=old)
    assert result == {"received": 3000, "lost": 0, "ok": True, "fd_errors": 0,
                      "stats_fd_errors": 0, "paths": 3000, "fd_error_flag": not old}, log
    assert "dropped" not in log and "without a descriptor" not in log


def _check_nothing_lost(result: dict[str, object], log: str) -> None:
    # Every event arrived; those the kernel could not open an fd for (only
    # with FAN_REPORT_FD_ERROR) arrived without one, counted and logged once
    # per episode with the fix.
    assert result["received"] == 3000 and result["lost"] == 0 and result["ok"] is True, log
    assert result["fd_errors"] == result["stats_fd_errors"]
    assert result["paths"] + result["fd_errors"] == 3000  # type: ignore[operator]
    if result["fd_errors"]:
        assert result["fd_error_flag"]
        starts = log.count("arrive without a descriptor")
        assert starts >= 1 and starts - log.count("get their descriptors again") in (0, 1)
        assert "ulimit -n" in log
    else:
        assert "descriptor" not in log, log


@pytest.mark.timeout(150)
@pytest.mark.parametrize("limit", [256, 64])
@pytest.mark.parametrize("old", _MODES)
def test_a_consumer_holding_most_fds_loses_nothing(tmpfs: Path, old: bool, limit: int) -> None:
    # The consumer keeps most of its fds busy with events (160 of 256, or
    # 40 of 64): reads shrink to the free fds (never below the reserve the
    # reader keeps for the kernel), and stop while there are none.
    _skip_without_fd_error(old)
    result, log = _run_low_limit(tmpfs, 3000, limit * 5 // 8, limit=limit, old=old)
    _check_nothing_lost(result, log)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("old", _MODES)
def test_fds_held_high_in_the_table_are_counted_not_lost(tmpfs: Path, old: bool) -> None:
    # The application parks 120 fds at the top of a 256 table, and holds 60
    # events: the free slots are fewer than the reader's estimate.  With
    # FAN_REPORT_FD_ERROR every event still arrives, those without an fd
    # counted and logged; without it the reader counts the open fds, so the
    # kernel never has to drop one.
    _skip_without_fd_error(old)
    result, log = _run_low_limit(tmpfs, 3000, 60, high=120, old=old)
    _check_nothing_lost(result, log)
    if old:
        assert result["fd_errors"] == 0


async def test_events_read_before_a_failure_are_still_delivered(tmpfs: Path) -> None:
    baseline = open_fd_count()
    async with Fanotify() as fan:
        fan.mark(tmpfs, WRITES)
        assert sh(f"for i in 1 2 3; do echo $i > {tmpfs}/f$i; done").returncode == 0
        first = await _receive(fan)
        first.close()
        await wait_until(lambda: fan.stats.events_read >= 3, "the group read 3 events")
        fan._fail(OSError(5, "Input/output error"))
        got = []
        with pytest.raises(ClosedResourceError, match="failed"):
            async for ev in fan:
                got.append(ev.path)
        assert got == [f"{tmpfs}/f2", f"{tmpfs}/f3"]
    assert open_fd_count() == baseline


_SYNC_LOW_LIMIT = """
import json, resource, subprocess, sys
from afanotify import Event, Fanotify, WouldBlock

d = sys.argv[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
with Fanotify() as fan:
    fan.mark(d, Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
    subprocess.run(["sh", "-c", f"for i in $(seq 1000); do : > {d}/f$i; done"], check=True)
    sizes = []
    while True:
        try:
            batch = fan.read_batch()
        except WouldBlock:
            break
        sizes.append(len(batch))
        for ev in batch:
            ev.close()
    print(json.dumps({"sizes": sizes, "lost": fan.stats.lost}))
"""


def test_read_batch_is_sized_to_the_fd_limit(tmpfs: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", _SYNC_LOW_LIMIT, str(tmpfs)],
        env=child_env(), cwd=CHILD_CWD,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert sum(result["sizes"]) == 1000 and result["lost"] == 0
    assert max(result["sizes"]) <= 256 // 2  # half the limit: the budget
