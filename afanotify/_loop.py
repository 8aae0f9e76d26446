"""Which event loop a group runs on: asyncio's own loop, or trio through a small adapter.

The group needs five things of its loop: watch the group fd for reading
(``add_reader`` / ``remove_reader``), run a callback later (deadlines, the
retry after running out of fds), run a callback from another thread (the
watchdog), start a task (async permission handlers, async predicates), and
say whether it is closed.  An asyncio loop has all five as they are, so the
asyncio path calls the loop directly, exactly as before this seam existed.
Under trio, :class:`afanotify._trio.TrioLoop` offers the same methods on
anyio's and trio's primitives (``anyio.wait_readable`` in a system task,
``notify_closing`` before the fd is closed).

:func:`running_loop` is called only where the group first meets a loop (its
first read, a client's first ``get()``), never per event.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

__all__ = ["Cancellable", "LoopLike", "TaskLike", "running_loop"]


class Cancellable(Protocol):
    """A timer the loop will run unless cancelled."""

    def cancel(self) -> object: ...


class TaskLike(Protocol):
    """What the group uses of a task: ``asyncio.Task``, or :class:`afanotify._trio.TrioTask`."""

    def cancel(self) -> object: ...

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def result(self) -> Any: ...

    def get_name(self) -> str: ...

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...


class LoopLike(Protocol):
    """The part of an event loop a group uses (an asyncio loop is one as it is)."""

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None: ...

    def remove_reader(self, fd: int) -> bool: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable: ...

    def call_soon_threadsafe(self, callback: Callable[[], object]) -> object: ...

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> Any: ...

    def is_closed(self) -> bool: ...


def running_loop() -> LoopLike:
    """The loop of the running asyncio loop or trio run, in this thread.

    :raises RuntimeError: if neither runs here
    """
    # asyncio is imported here, not with the module: a group read without a
    # loop (``afanotify watch``, read_batch()) never needs it.
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    # Only look for trio if it was imported: a program that never imports
    # it cannot be running it.
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            from . import _trio

            return _trio.current_loop()
    raise RuntimeError(
        "no running event loop: use a Fanotify group from asyncio (asyncio.run) or trio "
        "(trio.run, or anyio.run(..., backend='trio')), or read it synchronously with "
        "read_batch()"
    )
