"""The group's loop under trio: the methods of an asyncio loop it uses, on trio's primitives.

Imported only while trio runs (see :func:`afanotify._loop.running_loop`), so
trio is not a dependency.  One :class:`TrioLoop` per ``trio.run``, kept in a
``RunVar``.

trio has no callbacks and no orphan tasks, and a library cannot borrow the
caller's nursery for reading it does on its own; so everything here runs in
*system tasks*, which live as long as the run and are cancelled when its
main task ends:

* a reader is a system task looping on ``anyio.wait_readable(fd)`` and
  calling the group's readiness callback, inside a cancel scope that
  ``remove_reader`` cancels.  Cancelling a task waiting in
  ``wait_readable`` removes it from trio's epoll set at once, so a new
  reader for the same fd never finds it busy;
* a timer is a system task sleeping in its own cancel scope;
* a task (an async permission handler, the async-predicate dispatch) runs
  its coroutine in a cancel scope, records how it ended, and calls its done
  callbacks, as an ``asyncio.Task`` does;
* a task that took a permission event is watched through an instrument's
  ``task_exited`` hook (trio tasks have no done callbacks).

A system task that raises crashes the whole run, so every callback is run
under ``try``, and a failure is logged, as asyncio's loop does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import trio

__all__ = ["TrioLoop", "TrioTask", "current_loop"]

log = logging.getLogger(__name__)

_LOOP: trio.lowlevel.RunVar[TrioLoop] = trio.lowlevel.RunVar("afanotify_loop")


def current_loop() -> TrioLoop:
    """This run's loop adapter (made on first use).

    :raises RuntimeError: outside a trio run
    """
    try:
        return _LOOP.get()
    except LookupError:
        loop = TrioLoop()
        _LOOP.set(loop)
        return loop


def _run_callback(callback: Callable[[], object], what: str) -> None:
    try:
        callback()
    except Exception:
        log.exception("afanotify %s failed", what)


class _Timer:
    """A callback to run after a delay; ``cancel()`` from any thread."""

    __slots__ = ("_loop", "_scope", "cancelled")

    def __init__(self, loop: TrioLoop) -> None:
        self._loop = loop
        self._scope = trio.CancelScope()
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self._loop.run_here_or_soon(self._scope.cancel)


class TrioTask:
    """A coroutine run in a system task, with the parts of ``asyncio.Task`` the group uses."""

    def __init__(self, loop: TrioLoop, coro: Coroutine[Any, Any, Any]) -> None:
        self._loop = loop
        self._coro = coro
        self._scope = trio.CancelScope()
        self._trio_task: trio.lowlevel.Task | None = None
        self._done = self._cancelled = False
        self._result: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[TrioTask], object]] = []
        self._name = getattr(coro, "__qualname__", "task")

    async def _run(self) -> None:
        self._trio_task = trio.lowlevel.current_task()
        try:
            if self._scope.cancel_called:
                self._coro.close()  # cancelled before it started: it never runs
                self._cancelled = True
            else:
                with self._scope:
                    self._result = await self._coro
                self._cancelled = self._scope.cancelled_caught
        except Exception as exc:
            self._exc = exc
        except BaseException:
            self._cancelled = True  # the run is ending: its system tasks are cancelled
            raise
        finally:
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
            for cb in callbacks:
                _run_callback(lambda cb=cb: cb(self), "task done callback")  # type: ignore[misc]

    def cancel(self) -> bool:
        """Cancel, unless done; from the task itself it does nothing (as the group needs)."""
        if self._done:
            return False
        if self._loop.on_thread():
            try:
                current: trio.lowlevel.Task | None = trio.lowlevel.current_task()
            except RuntimeError:
                current = None
            if current is not None and current is self._trio_task:
                return False
            self._scope.cancel()
        else:
            self._loop.call_soon_threadsafe(self.cancel)
        return True

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._cancelled

    def exception(self) -> BaseException | None:
        return self._exc

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._result

    def get_name(self) -> str:
        return self._name

    def add_done_callback(self, callback: Callable[[TrioTask], object]) -> None:
        if self._done:
            _run_callback(lambda: callback(self), "task done callback")
        else:
            self._callbacks.append(callback)


class _TaskExits(trio.abc.Instrument):
    """Calls back when a watched task exits, saying whether it ended badly."""

    def __init__(self) -> None:
        self.watched: dict[trio.lowlevel.Task, list[Callable[[object, str, bool], None]]] = {}

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        callbacks = self.watched.pop(task, None)
        if not callbacks:
            return
        # A child that raised (trio.Cancelled included) has already made its
        # nursery cancel itself when this hook runs; a task that returned
        # normally has not.  (A task that returns normally inside a nursery
        # that is being cancelled for another reason counts as ended badly:
        # what it held gets the default verdict at once instead of at its
        # deadline.)
        nursery = task.parent_nursery
        badly = nursery is None or nursery.cancel_scope.cancel_called
        for cb in callbacks:
            _run_callback(lambda cb=cb: cb(task, task.name, badly), "task exit hook")  # type: ignore[misc]


class TrioLoop:
    """The event-loop methods a group uses, for one trio run (see the module docstring)."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._readers: dict[int, trio.CancelScope] = {}
        self._exits: _TaskExits | None = None
        self._closed = False
        trio.lowlevel.spawn_system_task(self._watch_run, name="afanotify run watcher")

    async def _watch_run(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._closed = True  # the main task ended: system tasks are cancelled

    def __repr__(self) -> str:
        return f"<TrioLoop {'closed' if self._closed else 'running'}>"

    # -- threads -----------------------------------------------------------

    def on_thread(self) -> bool:
        """True when called inside this run, on its thread."""
        try:
            return trio.lowlevel.current_trio_token() is self._token
        except RuntimeError:
            return False

    def run_here_or_soon(self, fn: Callable[[], object]) -> None:
        if self.on_thread():
            fn()
        else:
            self.call_soon_threadsafe(fn)

    def call_soon_threadsafe(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the run's thread soon; does nothing once the run ended."""
        try:
            self._token.run_sync_soon(_run_callback, callback, "callback")
        except trio.RunFinishedError:
            pass

    def is_closed(self) -> bool:
        return self._closed

    # -- reading -----------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        old = self._readers.pop(fd, None)
        if old is not None:
            old.cancel()
        scope = self._readers[fd] = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._read, fd, callback, scope, name=f"afanotify fd{fd}")

    async def _read(self, fd: int, callback: Callable[[], object], scope: trio.CancelScope) -> None:
        with scope:
            # Checked before each wait, with no checkpoint in between: a task
            # spawned just before its reader was removed (and the fd closed,
            # its number perhaps reused) must never register that fd.
            while not scope.cancel_called:
                try:
                    await anyio.wait_readable(fd)
                except anyio.ClosedResourceError:
                    return  # notify_closing: the group is closing the fd
                except OSError as exc:  # closed from another thread meanwhile
                    log.error("cannot wait for fanotify fd %d: %s", fd, exc)
                    return
                _run_callback(callback, "reader callback")

    def remove_reader(self, fd: int) -> bool:
        scope = self._readers.pop(fd, None)
        if scope is None:
            return False
        self.run_here_or_soon(scope.cancel)  # close() may run on another thread
        return True

    def notify_closing(self, fd: int) -> None:
        """Wake whoever waits on ``fd`` before it is closed (on the run's thread only)."""
        self.remove_reader(fd)
        if self.on_thread() and not self._closed:
            anyio.notify_closing(fd)

    # -- timers and tasks --------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Timer:
        timer = _Timer(self)
        trio.lowlevel.spawn_system_task(self._later, delay, callback, timer, name="afanotify timer")
        return timer

    async def _later(self, delay: float, callback: Callable[[], object], timer: _Timer) -> None:
        with timer._scope:
            await trio.sleep(max(0.0, delay) if math.isfinite(delay) else math.inf)
        if not timer.cancelled:
            _run_callback(callback, "timer")

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> TrioTask:
        task = TrioTask(self, coro)
        trio.lowlevel.spawn_system_task(task._run, name=f"afanotify {task.get_name()}")
        return task

    def current_task(self) -> trio.lowlevel.Task | None:
        try:
            return trio.lowlevel.current_task()
        except RuntimeError:
            return None

    def watch_task(
        self, task: object, callback: Callable[[object, str, bool], None]
    ) -> None:
        """Call ``callback(task, name, ended_badly)`` when the trio task ``task`` exits."""
        if self._exits is None:
            self._exits = _TaskExits()
            trio.lowlevel.add_instrument(self._exits)
        assert isinstance(task, trio.lowlevel.Task)
        self._exits.watched.setdefault(task, []).append(callback)
