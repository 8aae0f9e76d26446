"""Events, clients, overflow, cancellation and closing, each on asyncio and on trio.

Every test body is one coroutine run by :func:`_backends.run` on both
backends (see tests/_backends.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest
import sniffio
import trio
from _backends import ON_BOTH, collect, run, sh, wait_until
from helpers import run_in_child

from afanotify import (
    ClientOverflow,
    ClosedResourceError,
    Event,
    FanoRule,
    Fanotify,
    FanotifyClient,
    FanotifyData,
    InitFlag,
)
from afanotify._trio import TrioLoop

pytestmark = [pytest.mark.kernel, ON_BOTH]

WRITES = Event.CLOSE_WRITE | Event.EVENT_ON_CHILD
CREATES = Event.CREATE | Event.EVENT_ON_CHILD


def test_the_group_runs_on_the_backend_it_is_used_from(tmpfs: Path, backend: str) -> None:
    async def body() -> None:
        async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
            fan.mark(tmpfs, CREATES)
            client = fan.connect(FanoRule(name="all", ev_types=Event.CREATE))
            await sh(f"touch {tmpfs}/a")
            ev = await collect(client, lambda g: bool(g))
            assert ev[0].path == f"{tmpfs}/a"
            loop = fan._reader.loop
            if backend == "trio":
                # The reader waits in a trio system task, not on an asyncio loop.
                assert isinstance(loop, TrioLoop)
                assert trio.lowlevel.current_task() is not None
                with pytest.raises(RuntimeError):
                    asyncio.get_running_loop()
            else:
                assert loop is asyncio.get_running_loop()
            assert sniffio.current_async_library() == backend

    run(backend, body)


def test_receive_and_async_for_deliver_every_event_in_order(tmpfs: Path, backend: str) -> None:
    async def body() -> list[str]:
        async with Fanotify() as fan:
            fan.mark(tmpfs, WRITES)
            await sh(f"for i in 1 2 3 4 5; do echo x > {tmpfs}/f$i; done")
            first = await fan.receive()
            paths = [first.path]
            first.close()
            with anyio.fail_after(5):
                async for ev in fan:
                    paths.append(ev.path)
                    if len(paths) == 5:
                        break
            assert first.closed
        return [str(p) for p in paths]

    assert run(backend, body) == [f"{tmpfs}/f{i}" for i in range(1, 6)]


def test_a_full_queue_stops_reading_and_loses_nothing(tmpfs: Path, backend: str) -> None:
    n = 300

    async def body() -> None:
        async with Fanotify(InitFlag.REPORT_DFID_NAME, maxsize=4) as fan:
            fan.mark(tmpfs, CREATES)
            await sh(f"cd {tmpfs} && for i in $(seq 1 {n}); do : > f$i; done")
            evs = await collect(fan, lambda g: len(g) >= n, timeout=20)
            assert [e.name for e in evs] == [f"f{i}" for i in range(1, n + 1)]
            stats = fan.stats
            assert (stats.overflows, stats.lost, stats.events_read) == (0, 0, n)

    run(backend, body)


_MANY_FILES = """
import os, sys
d = sys.argv[1]
for i in range(int(sys.argv[2])):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
"""


def test_a_kernel_queue_overflow_arrives_as_an_event(tmpfs: Path, backend: str) -> None:
    limit = int(Path("/proc/sys/fs/fanotify/max_queued_events").read_text())

    async def body() -> None:
        async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
            fan.mark(tmpfs, CREATES)
            # Nothing reads while the child runs: the kernel queue fills up.
            r = run_in_child(_MANY_FILES, str(tmpfs), str(limit + 100), timeout=60)
            assert r.returncode == 0, r.stderr
            evs = await collect(
                fan, lambda g: bool(g) and bool(g[-1].ev_types & Event.Q_OVERFLOW), timeout=30
            )
            assert len(evs) == limit + 1
            assert fan.stats.overflows == 1

    run(backend, body)


def test_a_receiver_cancelled_while_waiting_takes_nothing(tmpfs: Path, backend: str) -> None:
    async def body() -> None:
        async with Fanotify() as fan:
            fan.mark(tmpfs, WRITES)
            taken: list[FanotifyData] = []

            async def waiter() -> None:
                taken.append(await fan.receive())

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await wait_until(lambda: fan._reader.reading)  # it is waiting now
                await anyio.sleep(0.05)  # let it block in the queue's wait
                tg.cancel_scope.cancel()
            assert taken == []
            await sh(f"echo x > {tmpfs}/a")
            with anyio.fail_after(5):
                ev = await fan.receive()
            assert ev.path == f"{tmpfs}/a"
            ev.close()
            # Timed-out receives in a loop lose nothing either.
            await sh(f"for i in 1 2 3; do echo x > {tmpfs}/b$i; done")
            got: list[str] = []
            with anyio.fail_after(10):
                while len(got) < 3:
                    with anyio.move_on_after(0.001):
                        e = await fan.receive()
                        got.append(str(e.path))
                        e.close()
            assert got == [f"{tmpfs}/b{i}" for i in (1, 2, 3)]

    run(backend, body)


def test_close_ends_the_iterators_waiting_in_other_tasks(tmpfs: Path, backend: str) -> None:
    async def body() -> None:
        fan = Fanotify()
        fan.mark(tmpfs, WRITES)
        client = FanotifyClient(fan, name="c", ev_types=Event.CLOSE_WRITE)
        ended: list[str] = []

        async def group_iter() -> None:
            async for ev in fan:
                ev.close()
            ended.append("group")

        async def client_get() -> None:
            with pytest.raises(ClosedResourceError):
                await client.get()
            ended.append("client")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(group_iter)
                tg.start_soon(client_get)
                await wait_until(lambda: fan._reader.reading)
                await anyio.sleep(0.05)
                await fan.aclose()
        assert sorted(ended) == ["client", "group"]

    run(backend, body)


def test_clients_get_their_events_and_overflow_markers(tmpfs: Path, backend: str) -> None:
    async def body() -> None:
        async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
            fan.mark(tmpfs, CREATES)
            logs = fan.connect(FanoRule(name="logs", path_pattern=f"{tmpfs}/*.log"))
            small = fan.connect(
                FanoRule(name="small", ev_types=Event.CREATE), maxsize=2, overflow="drop_oldest"
            )
            await sh(f"cd {tmpfs} && touch a.log b.txt c.log d.txt e.txt")
            got = await collect(logs, lambda g: len(g) >= 2)
            assert [e.name for e in got] == ["a.log", "c.log"]
            await wait_until(lambda: small.stats.matched == 5)
            first = await small.get()
            assert isinstance(first, ClientOverflow) and first.dropped == 3
            rest = [await small.get(), await small.get()]
            assert [e.name for e in rest] == ["d.txt", "e.txt"]
            await sh(f"touch {tmpfs}/f.log")
            with anyio.fail_after(5):
                async for ev in logs:  # async for on a client, on this backend
                    assert ev.name == "f.log"
                    break

    run(backend, body)


def test_async_predicates_run_in_a_task_of_this_backend(tmpfs: Path, backend: str) -> None:
    seen: list[str | None] = []

    async def is_log(ev: FanotifyData) -> bool:
        await anyio.sleep(0)  # a real checkpoint: the dispatch runs as a task
        seen.append(sniffio.current_async_library())
        return str(ev.name).endswith(".log")

    async def body() -> None:
        async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
            fan.mark(tmpfs, CREATES)
            logs = fan.connect(FanoRule(name="logs", ev_types=Event.CREATE, predicate=is_log))
            await sh(f"cd {tmpfs} && touch a.log b.txt c.log")
            got = await collect(logs, lambda g: len(g) >= 2)
            assert [e.name for e in got] == ["a.log", "c.log"]
            await wait_until(lambda: len(seen) == 3)

    run(backend, body)
    assert seen == [backend] * 3
