"""EventQueue.put_many: the batched block-policy path behaves as put() per event."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from afanotify._queue import EventQueue
from afanotify.events import FanotifyData


def _events(n: int) -> list[FanotifyData]:
    return [FanotifyData(-1, i, 1) for i in range(n)]


def _one_by_one(q: EventQueue, events: list[FanotifyData]) -> int:
    n = 0
    for ev in events:
        if not q.put(ev):
            break
        n += 1
    return n


@pytest.mark.parametrize(
    ("maxsize", "batches"), [(5, [3, 4, 2]), (4, [4, 1]), (10, [3]), (1, [2, 2])]
)
def test_put_many_matches_put_loop(maxsize: int, batches: list[int]) -> None:
    a, b = EventQueue(maxsize), EventQueue(maxsize)
    for size in batches:
        evs = _events(size)
        assert a.put_many(evs) == _one_by_one(b, evs)
        assert a.statistics() == b.statistics()
    got_a = [a.get_nowait().pid for _ in range(len(a))]
    got_b = [b.get_nowait().pid for _ in range(len(b))]
    assert got_a == got_b


@pytest.mark.anyio
async def test_put_many_wakes_one_waiter_per_event() -> None:
    q = EventQueue(10)
    got: list[FanotifyData] = []

    async def waiter() -> None:
        got.append(await q.get())

    async def until(cond: Callable[[], bool]) -> None:
        while not cond():
            await anyio.sleep(0)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(waiter)
            await until(lambda: len(q._waiters) == 3)  # all three wait
            assert q.put_many(_events(2)) == 2
            await until(lambda: len(got) == 2)
            for _ in range(10):  # the third was not woken: it still waits
                await anyio.sleep(0)
            assert len(got) == 2 and sum(not w.done() for w in q._waiters) == 1
            assert q.put_many(_events(1)) == 1
    assert sorted(e.pid for e in got) == [0, 0, 1]


def test_put_many_on_full_queue_signals_block_once() -> None:
    spaces: list[int] = []
    q = EventQueue(2, on_space=lambda: spaces.append(1))
    assert q.put_many(_events(3)) == 2
    assert q.put_many(_events(1)) == 0
    assert q.statistics().blocked == 1
    q.get_nowait()
    assert spaces == [1]


@pytest.mark.parametrize("batched", [False, True])
def test_one_stall_is_counted_once(batched: bool) -> None:
    # A consumer that takes one event at a time from a full queue keeps the
    # producer stalled: that is one stall, however many refills it takes
    # (issue 15: 16,598 for one stall).  It ends once the queue drained to half.
    q = EventQueue(8)

    def offer() -> bool:
        return q.put_many(_events(1)) == 1 if batched else q.put(_events(1)[0])

    while offer():
        pass
    assert q.statistics().blocked == 1
    for _ in range(1000):
        q.get_nowait()
        assert offer()
        assert not offer()
    assert q.statistics().blocked == 1
    while len(q) > 4:
        q.get_nowait()
    while offer():
        pass
    assert q.statistics().blocked == 2
