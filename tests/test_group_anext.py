"""Fanotify.__anext__: the ready awaitable of a queued event, and the coroutine path.

``__anext__`` is a plain method.  With an event queued it returns a ready
awaitable (``_fanotify._ready``, csrc/fastpath_ready.c); otherwise, for a
permission event, or without the C function, a coroutine.  Either must work
wherever a coroutine does, and an awaitable never awaited takes no event.
"""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import inspect
import sys
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import sh

import afanotify.group as group_mod
from afanotify import Event, Fanotify, FanotifyData, InitFlag

HAVE_READY = group_mod._READY is not None
needs_ready = pytest.mark.skipif(not HAVE_READY, reason="core without afn_install_ready")


def _ready() -> Any:
    from afanotify import _fanotify

    return _fanotify._ready


# -- the C object on its own ----------------------------------------------------


class Owner:
    def __init__(self) -> None:
        self.ungot: list[object] = []

    def _anext_unget(self, value: object) -> None:
        self.ungot.append(value)


def _step(aw: Any) -> object:
    with pytest.raises(StopIteration) as info:
        aw.send(None)
    return info.value.value


@needs_ready
@pytest.mark.parametrize(
    "value", [42, None, "s", (1, 2), (), ((),), ValueError("v"), StopIteration(3), [1]]
)
def test_ready_delivers_any_value_once(value: object) -> None:
    owner = Owner()
    aw = _ready()(value, owner)
    assert aw.__await__() is aw
    assert _step(aw) is value
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        aw.send(None)
    with pytest.raises(RuntimeError, match="cannot reuse"):
        next(aw)
    aw.close()  # a spent awaitable: nothing to give back
    assert owner.ungot == []


@needs_ready
def test_ready_is_a_coroutine_to_asyncio_and_inspect() -> None:
    aw = _ready()(1, None)
    assert isinstance(aw, collections.abc.Coroutine)
    assert isinstance(aw, collections.abc.Awaitable)
    assert asyncio.iscoroutine(aw)
    assert inspect.isawaitable(aw)
    assert "ready awaitable of 1" in repr(aw)
    aw.close()
    assert "spent" in repr(aw)


@needs_ready
async def test_ready_awaited_and_run_as_task() -> None:
    assert await _ready()("a", None) == "a"
    assert await asyncio.create_task(_ready()("b", None)) == "b"
    assert await asyncio.wait_for(_ready()(("c",), None), 1) == ("c",)
    assert await asyncio.gather(_ready()(1, None), _ready()(2, None)) == [1, 2]
    aw = _ready()("d", None)
    assert await aw == "d"
    with pytest.raises(RuntimeError, match="cannot reuse"):
        await aw


@needs_ready
def test_ready_send_non_none_before_start() -> None:
    aw = _ready()(1, None)
    with pytest.raises(TypeError, match="non-None"):
        aw.send(2)
    assert _step(aw) == 1


@needs_ready
def test_ready_throw_raises_what_is_thrown_and_gives_the_value_back() -> None:
    owner = Owner()
    aw = _ready()("v", owner)
    exc = KeyError("k")
    with pytest.raises(KeyError) as info:
        aw.throw(exc)
    assert info.value is exc
    assert owner.ungot == ["v"]
    with pytest.raises(RuntimeError):
        aw.send(None)  # spent, as a coroutine is once thrown into
    with pytest.raises(ValueError, match="x"):
        aw.throw(ValueError, "x")  # a spent coroutine still raises what is thrown
    with pytest.raises(ValueError) as info2:
        aw.throw(ValueError, ValueError("y"), None)
    assert str(info2.value) == "y"
    try:
        raise OSError("tb")
    except OSError as e:
        tb = e.__traceback__
    with pytest.raises(LookupError) as info3:
        aw.throw(LookupError, None, tb)
    assert info3.value.__traceback__ is not None
    with pytest.raises(TypeError):
        aw.throw(1)
    with pytest.raises(TypeError):
        aw.throw(exc, "value")
    with pytest.raises(TypeError):
        aw.throw(ValueError, None, "not a traceback")
    with pytest.raises(TypeError):
        aw.throw()
    assert owner.ungot == ["v"]


@needs_ready
def test_ready_close_or_drop_gives_the_value_back_once() -> None:
    owner = Owner()
    aw = _ready()("c", owner)
    assert aw.close() is None
    assert aw.close() is None
    assert owner.ungot == ["c"]
    _ready()("dropped", owner)  # never awaited: the value goes back
    assert owner.ungot == ["c", "dropped"]
    aw = _ready()("sent", owner)
    assert _step(aw) == "sent"
    del aw
    assert owner.ungot == ["c", "dropped"]


@needs_ready
def test_ready_unget_errors_are_reported_not_raised() -> None:
    class Bad:
        def _anext_unget(self, value: object) -> None:
            raise RuntimeError("unget failed")

    seen: list[BaseException | None] = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)
    try:
        _ready()(1, Bad()).close()
    finally:
        sys.unraisablehook = old
    assert len(seen) == 1 and str(seen[0]) == "unget failed"


@needs_ready
def test_ready_in_a_cycle_is_collected() -> None:
    class Holder:
        aw: Any

        def _anext_unget(self, value: object) -> None:
            pass

    holder = Holder()
    holder.aw = _ready()(holder, holder)  # holder -> aw -> holder
    ref = weakref.ref(holder)
    del holder
    gc.collect()
    assert ref() is None


@needs_ready
def test_ready_wrong_arguments() -> None:
    with pytest.raises(TypeError):
        _ready()(1)
    with pytest.raises(TypeError):
        _ready()(1, 2, 3)


# -- a real group ----------------------------------------------------------------

N = 6


@pytest.fixture(params=["ready", "coroutine"])
def anext_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "ready":
        if not HAVE_READY:
            pytest.skip("core without afn_install_ready")
    else:
        monkeypatch.setattr(group_mod, "_READY", None)
    yield request.param


@pytest.fixture
async def queued(tmpfs: Path, anext_path: str) -> AsyncIterator[tuple[Fanotify, list[str]]]:
    """A group with N close-write events: the first is taken, the rest are queued."""
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(tmpfs, Event.CLOSE_WRITE, "filesystem")
        names = [f"f{i}" for i in range(N)]
        assert sh(f"cd {tmpfs} && touch {' '.join(names)}").returncode == 0
        first = await asyncio.wait_for(anext(fan), 5)
        assert first.name == names[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(fan._queue) + len(fan._held) < N - 1:
            assert loop.time() < deadline, "events did not arrive"
            await asyncio.sleep(0.01)
        yield fan, names[1:]


def _is_ready(aw: object, anext_path: str) -> bool:
    return (type(aw).__name__ == "ReadyAwaitable") == (anext_path == "ready")


async def _names_until(fan: Fanotify, got: list[str | None], n: int) -> list[str | None]:
    """Add the names of events from ``async for`` to ``got`` until it holds ``n``."""
    async for ev in fan:
        got.append(ev.name)
        if len(got) == n:
            break
    return got


@pytest.mark.kernel
async def test_async_for_and_anext(queued: tuple[Fanotify, list[str]], anext_path: str) -> None:
    fan, names = queued
    got: list[str | None] = [(await anext(fan)).name]
    aw = fan.__anext__()
    assert _is_ready(aw, anext_path)
    got.append((await aw).name)
    assert await _names_until(fan, got, len(names)) == names


@pytest.mark.kernel
async def test_create_task_and_wait_for(
    queued: tuple[Fanotify, list[str]], anext_path: str
) -> None:
    fan, names = queued
    aw = anext(fan)
    assert _is_ready(aw, anext_path)
    ev = await asyncio.create_task(aw)
    assert ev.name == names[0]
    ev = await asyncio.wait_for(fan.__anext__(), 5)
    assert ev.name == names[1]
    ev = await asyncio.ensure_future(fan.__anext__())
    assert ev.name == names[2]
    assert [e.name for e in await asyncio.gather(anext(fan), anext(fan))] == names[3:5]


@pytest.mark.kernel
async def test_a_task_cancelled_before_it_ran_takes_no_event(
    queued: tuple[Fanotify, list[str]], anext_path: str
) -> None:
    fan, names = queued
    task = asyncio.create_task(anext(fan))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(asyncio.TimeoutError):
        # On 3.11 the task is cancelled before its first step; on 3.12+ the
        # awaitable may run and the event then comes back as the result.
        ev = await asyncio.wait_for(fan.__anext__(), 0)
        names.remove(ev.name)  # pragma: no cover - 3.12+
        raise asyncio.TimeoutError
    assert await _names_until(fan, [], len(names)) == names


@pytest.mark.kernel
async def test_awaitables_closed_or_dropped_take_no_event(
    queued: tuple[Fanotify, list[str]], anext_path: str
) -> None:
    fan, names = queued
    fan.__anext__().close()
    dropped = fan.__anext__()
    if anext_path == "ready":
        del dropped  # never awaited (a coroutine would warn)
        gc.collect()
    else:
        dropped.close()
    aw = fan.__anext__()
    with pytest.raises(ZeroDivisionError):
        aw.throw(ZeroDivisionError())
    assert (await anext(fan)).name == names[0]
    # An awaitable discarded after the consumer moved on gives nothing back:
    # its event was released when the next one was asked for.
    early = fan.__anext__()
    later = await fan.__anext__()
    assert later.name == (names[2] if anext_path == "ready" else names[1])
    early.close()
    rest = []
    async for ev in fan:
        rest.append(ev.name)
        if len(rest) == len(names) - (3 if anext_path == "ready" else 2):
            break
    assert rest == names[len(names) - len(rest):]


@pytest.mark.kernel
async def test_the_previous_event_is_released_when_the_next_is_asked_for(
    tmpfs: Path, anext_path: str
) -> None:
    async with Fanotify() as fan:  # events with fds
        fan.mark(tmpfs, Event.CLOSE_WRITE, "mount")
        assert sh(f"touch {tmpfs}/a {tmpfs}/b {tmpfs}/c").returncode == 0
        evs: list[FanotifyData] = []
        async for ev in fan:
            evs.append(ev)
            if len(evs) == 2:
                break
        assert evs[0].closed and not evs[1].closed
        aw = fan.__anext__()
        assert evs[1].closed
        last = await asyncio.wait_for(aw, 5)
        assert not last.closed
    assert last.closed


@pytest.mark.kernel
async def test_closing_the_group_ends_iteration(tmpfs: Path, anext_path: str) -> None:
    fan = Fanotify()
    fan.mark(tmpfs, Event.CLOSE_WRITE, "mount")
    assert sh(f"touch {tmpfs}/a {tmpfs}/b").returncode == 0
    first = await asyncio.wait_for(anext(fan), 5)
    aw = fan.__anext__() if len(fan._queue) else None
    await fan.aclose()
    assert first.closed
    if aw is not None:
        # Taken before the close: delivered, or, when never awaited, released.
        aw.close()
    with pytest.raises(StopAsyncIteration):
        await anext(fan)
