"""Permission guarantees on asyncio and on trio: verdicts, deadlines, defaults, tasks.

Each test makes a permission group inside its body (``async with``: closed
on the way out, which answers whatever is pending), runs under pytest's
timeout, and produces its events from child processes.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

import anyio
import pytest
import sniffio
from _backends import ON_BOTH, open_in_child, run, wait_until

from afanotify import Event, Fanotify, FanotifyData, InitFlag, Response

pytestmark = [pytest.mark.kernel, ON_BOTH]


def _target(tmpfs: Path) -> Path:
    path = tmpfs / "guarded"
    path.write_text("x")
    return path


def _group(default: Response = Response.DENY, timeout: float = 5.0) -> Fanotify:
    return Fanotify(
        InitFlag.CLASS_CONTENT, default_response=default, permission_timeout=timeout
    )


def test_plain_handler_verdicts(tmpfs: Path, backend: str) -> None:
    path = _target(tmpfs)
    allowed = tmpfs / "ok"
    allowed.write_text("x")

    async def body() -> None:
        async with _group() as fan:
            fan.mark(path, Event.OPEN_PERM)
            fan.mark(allowed, Event.OPEN_PERM)
            fan.on_permission(lambda ev: ev.path == str(allowed))
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, fan)
                assert (await open_in_child(allowed))[0] == 0
                assert (await open_in_child(path))[0] == errno.EPERM
                tg.cancel_scope.cancel()
            st = fan.permission_stats
            assert (st.allowed, st.denied, st.defaulted) == (1, 1, 0)

    run(backend, body)


async def _drain(fan: Fanotify) -> None:
    async for ev in fan:
        ev.close()


def test_async_handler_runs_as_a_task_of_this_backend(tmpfs: Path, backend: str) -> None:
    path = _target(tmpfs)
    seen: list[str | None] = []

    async def handler(ev: FanotifyData) -> bool:
        await anyio.sleep(0.01)  # a real suspension: the handler is a task
        seen.append(sniffio.current_async_library())
        return True

    async def body() -> None:
        async with _group() as fan:
            fan.mark(path, Event.OPEN_PERM)
            fan.on_permission(handler)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, fan)
                for _ in range(3):
                    assert (await open_in_child(path))[0] == 0
                tg.cancel_scope.cancel()
            assert fan.permission_stats.allowed == 3

    run(backend, body)
    assert seen == [backend] * 3


def test_a_handler_past_its_deadline_is_cancelled_and_defaulted(
    tmpfs: Path, backend: str
) -> None:
    path = _target(tmpfs)
    cancelled: list[bool] = []

    async def slow(ev: FanotifyData) -> bool:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise
        return True

    async def body() -> None:
        async with _group(Response.DENY, timeout=0.3) as fan:
            fan.mark(path, Event.OPEN_PERM)
            fan.on_permission(slow)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, fan)
                err, elapsed = await open_in_child(path)
                assert err == errno.EPERM  # the default verdict, at the deadline
                assert 0.2 < elapsed < 3
                await wait_until(lambda: bool(cancelled))
                tg.cancel_scope.cancel()
            st = fan.permission_stats
            assert (st.timed_out, st.denied, st.pending) == (1, 1, 0)

    run(backend, body)
    assert cancelled == [True]


def test_a_failing_handler_gets_the_default_verdict(tmpfs: Path, backend: str) -> None:
    path = _target(tmpfs)

    async def broken(ev: FanotifyData) -> bool:
        await anyio.sleep(0)
        raise RuntimeError("boom")

    async def body() -> None:
        async with _group(Response.ALLOW) as fan:
            fan.mark(path, Event.OPEN_PERM)
            fan.on_permission(broken)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, fan)
                assert (await open_in_child(path))[0] == 0  # default ALLOW
                tg.cancel_scope.cancel()
            assert fan.permission_stats.handler_errors == 1

    run(backend, body)


def test_a_cancelled_consumer_task_has_its_events_answered_at_once(
    tmpfs: Path, backend: str
) -> None:
    path = _target(tmpfs)

    async def body() -> None:
        async with _group(Response.DENY, timeout=20) as fan:
            fan.mark(path, Event.OPEN_PERM)
            held: list[FanotifyData] = []

            async def consumer() -> None:
                held.append(await fan.receive())
                await anyio.sleep_forever()  # holds the event unanswered

            result: list[tuple[int, float]] = []

            async def open_it() -> None:
                result.append(await open_in_child(path))

            t0 = time.monotonic()
            async with anyio.create_task_group() as opener:
                opener.start_soon(open_it)
                async with anyio.create_task_group() as consumers:
                    consumers.start_soon(consumer)
                    await wait_until(lambda: bool(held))
                    consumers.cancel_scope.cancel()  # the consumer dies holding the event
            err, _elapsed = result[0]
            # Answered when the task ended, long before the 20 s deadline.
            assert err == errno.EPERM
            assert time.monotonic() - t0 < 10
            st = fan.permission_stats
            assert (st.abandoned, st.timed_out, st.pending) == (1, 0, 0)

    run(backend, body)


def test_an_event_handed_on_by_a_task_that_returned_is_not_defaulted(
    tmpfs: Path, backend: str
) -> None:
    path = _target(tmpfs)

    async def body() -> None:
        async with _group(Response.DENY, timeout=20) as fan:
            fan.mark(path, Event.OPEN_PERM)
            send, recv = anyio.create_memory_object_stream[FanotifyData](1)

            async def taker() -> None:
                await send.send(await fan.receive())  # hands it on, then returns

            async def answerer() -> None:
                ev = await recv.receive()
                await anyio.sleep(0.2)  # well after the taker returned
                ev.allow_nowait()
                ev.close()

            async with anyio.create_task_group() as tg:
                tg.start_soon(taker)
                tg.start_soon(answerer)
                assert (await open_in_child(path))[0] == 0
            st = fan.permission_stats
            assert (st.allowed, st.abandoned, st.defaulted) == (1, 0, 0)
            send.close()
            recv.close()

    run(backend, body)


def test_close_answers_pending_events_with_the_default(tmpfs: Path, backend: str) -> None:
    path = _target(tmpfs)

    async def body() -> None:
        result: list[tuple[int, float]] = []
        fan = _group(Response.DENY, timeout=20)
        try:
            fan.mark(path, Event.OPEN_PERM)

            async def open_it() -> None:
                result.append(await open_in_child(path))

            async with anyio.create_task_group() as tg:
                tg.start_soon(open_it)
                ev = await fan.receive()
                assert not ev.answered
                fan.close()
                assert ev.answered
        finally:
            fan.close()
        assert result[0][0] == errno.EPERM
        assert fan.permission_stats.at_close == 1

    run(backend, body)
