"""Answering permission events: verdicts, deadlines, default answers, handlers.

A process that touches a file marked for a permission event (OPEN_PERM,
ACCESS_PERM, OPEN_EXEC_PERM, PRE_ACCESS) sleeps in the kernel until the group
writes a ``struct fanotify_response`` for the event's fd, or until the group fd
is closed.  Everything here exists so that a response is always written,
exactly once, and soon:

* every event read from the kernel gets a deadline (``permission_timeout``);
  one timer, armed for the oldest pending event, answers the overdue ones with
  the group's default verdict;
* a handler that raises, a consumer task that is cancelled or fails, an event
  closed or dropped unanswered, and the group closing all answer with the
  default verdict at once;
* the response is written before anything that can block (logging included)
  and before the event's fd is closed: the kernel matches a response to its
  event by the fd number.

The deadline timer runs on the event loop (asyncio's, or trio's through
:mod:`afanotify._trio`), so a loop that blocks cannot keep it; for that case
a :class:`Watchdog` thread answers instead.  Everything else here runs on
the loop's thread, and a lock serialises answering between the two.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _ffi
from ._answer import BUILD_FAILED as BUILD_FAILED
from ._answer import answer_and_close_or_false as _answer_and_close
from ._answer import write_plain
from ._loop import Cancellable, LoopLike, TaskLike
from ._verdict import ALLOW as ALLOW
from ._verdict import DENY as DENY
from ._verdict import AuditRule as AuditRule
from ._verdict import PermissionHandler as PermissionHandler
from ._verdict import Verdict as Verdict
from ._verdict import VerdictLike as VerdictLike
from ._verdict import encode_verdict as encode_verdict
from ._verdict import to_verdict as to_verdict
from .events import UNANSWERED, FanotifyData, LazyPathEvent
from .exceptions import AlreadyAnsweredError, ClosedResourceError, InheritedGroupError
from .flags import PERM_EVENTS, Response

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "AuditRule",
    "PermissionHandler",
    "PermissionStatistics",
    "PermissionTracker",
    "Verdict",
    "ALLOW",
    "DENY",
    "to_verdict",
    "encode_verdict",
]

log = logging.getLogger(__name__)

_EAGER = sys.version_info >= (3, 12)
_EAGER_START: dict[str, Any] = {"eager_start": True}
_ALLOW = int(Response.ALLOW)
_DENY = int(Response.DENY)
_PERM = int(PERM_EVENTS)


class PermissionStatistics(NamedTuple):
    """A snapshot of a group's permission counters."""

    #: Permission events read and not answered yet.
    pending: int
    #: Events answered ALLOW (by anyone, defaults included; own events excluded).
    allowed: int
    #: Events answered DENY (with or without an errno; defaults included).
    denied: int
    #: Events answered with the default verdict, for any of the reasons below.
    defaulted: int
    #: ... because their deadline passed.
    timed_out: int
    #: ... because the handler raised or returned something that is not a verdict.
    handler_errors: int
    #: ... because the task that received them was cancelled or failed.
    abandoned: int
    #: ... because a queue was full (the group's own, or a client's).
    dropped: int
    #: ... because they were closed unanswered (``event.close()``, iteration moved on).
    released: int
    #: ... because the group closed.
    at_close: int
    #: Handler verdicts that arrived after the deadline and were discarded.
    late: int
    #: Notification events dropped because a permission group's queue was full
    #: (such a group keeps reading; see docs/permissions.md).
    notifications_dropped: int
    #: Permission events the watchdog thread answered because the event loop
    #: did not read them in time (also counted in ``defaulted``).
    stalled: int
    #: Permission events the kernel denied itself: it could not open their fd in
    #: this process (EMFILE/ENFILE...); also in ``denied`` (docs/reliability.md).
    denied_by_kernel: int = 0
    #: Permission events answered with the default verdict because building
    #: the events of their read failed (also counted in ``defaulted``).
    build_failed: int = 0


class _Entry:
    """One pending permission event."""

    __slots__ = ("event", "deadline", "task", "handler_task")

    def __init__(self, event: FanotifyData, deadline: float) -> None:
        self.event = event
        self.deadline = deadline
        #: The consumer task that received the event (``receive()`` / ``async for``).
        self.task: object = None
        #: The task running an async ``on_permission`` handler for it.
        self.handler_task: TaskLike | None = None


# Reasons an event was answered with the default verdict (PermissionStatistics fields).
TIMED_OUT = "timed_out"
STALLED = "stalled"
HANDLER_ERROR = "handler_errors"
ABANDONED = "abandoned"
DROPPED = "dropped"
RELEASED = "released"
AT_CLOSE = "at_close"


class PermissionTracker:
    """The pending permission events of one group, their deadlines and verdicts.

    Pending events are kept in a dict by fd, which is also arrival order.  As
    every event gets the same timeout, arrival order is deadline order: one
    timer armed for the oldest pending event is enough, and registering an
    event costs a clock read and a dict insert.  An answered event leaves the
    dict; a timer that fires early (its event was answered) re-arms for the
    new oldest one.
    """

    def __init__(self, flags: int, timeout: float, default: Response) -> None:
        self._flags = flags
        #: The group fd the answers go to: set by the group when it opens,
        #: -1 once it is closed (the kernel then allowed what was pending).
        self.fd = -1
        #: True from the moment the group starts closing.
        self.closed = False
        self.timeout = timeout
        self.default = default
        self._pending: dict[int, _Entry] = {}
        self._timer: Cancellable | None = None
        self._loop: LoopLike | None = None
        #: Consumer tasks (asyncio or trio) -> fds of the events they took.
        self._watched_tasks: dict[object, set[int]] = {}
        self.handler: PermissionHandler | None = None
        self.allowed = self.denied = self.late = self.queue_dropped = self.kernel_denied = 0
        self._reasons: dict[str, int] = dict.fromkeys(
            (TIMED_OUT, HANDLER_ERROR, ABANDONED, DROPPED, RELEASED, AT_CLOSE, STALLED,
             BUILD_FAILED),
            0,
        )
        #: Serialises answering with the watchdog thread: whoever clears an
        #: event's UNANSWERED bit writes its response before anyone else can
        #: look at the event again.  Never held while user code runs.
        self.lock = threading.RLock()
        #: True in a forked child: the parent answers its events, never the child.
        self.inherited = False
        #: The ``on_permission(thread=True)`` thread, and True while it serves
        #: (deadlines are then the watchdog's): see _permthread.py.
        self.thread: Any = None
        self.threaded = False
        #: A loop server replaced mid-read, which still serves it (_permthread.use).
        self.retired: Any = None

    def disown(self) -> None:
        """In a forked child: write no answer from now on (see docs/group.md, fork).

        Events still released here are marked answered without a write (their fds closed)."""
        self.inherited = True
        self.fd = -1
        self.thread = self.retired = None  # not copied by fork
        self.threaded = False
        # A thread of the parent (the watchdog) may have held the lock at the
        # fork; in the child that thread does not exist to release it.
        self.lock = threading.RLock()
        self._timer = None
        self._loop = None
        self._watched_tasks.clear()
        for entry in self._pending.values():
            entry.task = entry.handler_task = None

    def _check_owner(self) -> None:
        if self.inherited:
            raise InheritedGroupError(
                "this permission event belongs to the process that read it, not to this "
                "forked child: answer it in the parent (a child may only add marks and "
                "close its copy of the group)"
            )

    # -- bookkeeping ---------------------------------------------------

    @property
    def defaulted(self) -> int:
        return sum(self._reasons.values())

    def statistics(self) -> PermissionStatistics:
        r = self._reasons
        return PermissionStatistics(
            len(self._pending), self.allowed, self.denied, self.defaulted, r[TIMED_OUT],
            r[HANDLER_ERROR], r[ABANDONED], r[DROPPED], r[RELEASED], r[AT_CLOSE], self.late,
            self.queue_dropped, r[STALLED], self.kernel_denied, r[BUILD_FAILED],
        )

    def __len__(self) -> int:
        return len(self._pending)

    def pending_events(self) -> list[FanotifyData]:
        with self.lock:
            return [e.event for e in self._pending.values()]

    def add(self, ev: FanotifyData, loop: LoopLike | None) -> None:
        """Start the clock for a permission event just read from the kernel."""
        entry = _Entry(ev, time.monotonic() + self.timeout)
        with self.lock:
            self._pending[ev.fd] = entry
        if loop is not None:
            self._loop = loop
            if self._timer is None:
                self._arm(entry.deadline)

    def received_by(self, ev: FanotifyData) -> None:
        """Note the task that took ``ev``: if it is cancelled or fails, ``ev`` is defaulted."""
        entry = self._pending.get(ev.fd)
        if entry is None or entry.event is not ev:
            return
        watch: Any = None
        loop = self._loop
        try:
            if loop is not None and getattr(loop, "_thread_id", None) == _get_ident():
                # This thread's running asyncio loop: its task, without the
                # getpid() of get_running_loop()'s fork check (Python 3.11).
                task: Any = _current_task_of(loop)  # type: ignore[arg-type]
            else:
                task = _asyncio().current_task()
        except RuntimeError:
            # trio: the task is watched through the loop adapter's exit hook.
            current = getattr(self._loop, "current_task", None)
            task = current() if current is not None else None
            watch = getattr(self._loop, "watch_task", None)
        if task is None:
            return
        with self.lock:
            if not ev._owns & UNANSWERED:
                return
            entry.task = task
            fds = self._watched_tasks.get(task)
            if fds is None:
                fds = self._watched_tasks[task] = set()
                if watch is None:
                    task.add_done_callback(self._task_done)
                else:
                    watch(task, self._task_ended)
            fds.add(ev.fd)

    def _forget(self, fd: int) -> _Entry | None:
        entry = self._pending.pop(fd, None)
        if entry is not None and entry.task is not None:
            fds = self._watched_tasks.get(entry.task)
            if fds is not None:
                fds.discard(fd)
        return entry

    # -- answering -----------------------------------------------------

    def respond(self, ev: FanotifyData, verdict: Verdict) -> None:
        """Write ``verdict`` for ``ev``.

        :raises ValueError: if ``ev`` is not a permission event or the verdict
            does not suit the group (nothing is written then)
        :raises AlreadyAnsweredError: if ``ev`` was answered before
        :raises ClosedResourceError: if the group closed (it answered ``ev`` then)
        :raises OSError: if the kernel rejects the response
        :raises InheritedGroupError: in a forked child (the parent answers its events)
        """
        if not ev.is_permission or ev.fd < 0:
            raise ValueError(f"{ev.events!r} is not a permission event: there is nothing to answer")
        self._check_owner()
        response, rule = encode_verdict(verdict, self._flags)
        self.write(ev, response, rule)

    def answer(
        self, ev: FanotifyData, allowed: bool, errno: int | None, audit: bool,
        audit_rule: AuditRule | None,
    ) -> None:
        """Write allow or deny for ``ev`` (:class:`~afanotify.events.Responder`).

        :raises: as :meth:`respond`
        """
        if errno is None and not audit and audit_rule is None and ev.ev_types & _PERM:
            # Plain allow or deny: valid for every permission group.
            if self.inherited:
                self._check_owner()
            write_plain(self, ev, allowed)  # self.write, in one step
            return
        self.respond(ev, Verdict(allowed, errno, audit, audit_rule))

    def release(self, ev: FanotifyData, reason: str) -> None:
        """Answer ``ev`` with the default verdict, counted under ``reason``; logs a failure."""
        err = self.answer_default(ev, reason)
        if err is not None:
            log.error("could not answer permission event fd=%d: %s", ev.fd, err)

    def write(self, ev: FanotifyData, response: int, rule: AuditRule | None = None) -> None:
        """Write an encoded response and mark ``ev`` answered.

        :raises AlreadyAnsweredError: if ``ev`` was answered before
        """
        with self.lock:
            entry = self._write_locked(ev, response, rule)
        if entry is not None and entry.handler_task is not None:
            task, entry.handler_task = entry.handler_task, None
            if task.done():
                return
            loop, aio = self._loop, sys.modules.get("asyncio")  # no asyncio: trio's loop
            if aio and aio._get_running_loop() is loop:
                if task is not _current_task():
                    task.cancel()
            elif aio and isinstance(loop, aio.AbstractEventLoop):
                if not loop.is_closed():
                    loop.call_soon_threadsafe(task.cancel)  # from the watchdog
            else:
                task.cancel()  # trio: from any thread, and not from the task itself

    def _write_locked(
        self, ev: FanotifyData, response: int, rule: AuditRule | None
    ) -> _Entry | None:
        owns = ev._owns
        if not owns & UNANSWERED:
            if self.closed:
                raise ClosedResourceError(
                    f"permission event fd={ev.fd} was answered when its group closed"
                )
            raise AlreadyAnsweredError(
                f"permission event fd={ev.fd} was already answered "
                "(by you, or with the default verdict: deadline passed, handler failed, "
                "or the event was closed or dropped)"
            )
        object.__setattr__(ev, "_owns", owns & ~UNANSWERED)
        entry = self._forget(ev.fd)
        if self.fd < 0:
            return entry  # the kernel allowed it when the group fd closed
        if response & _DENY:
            self.denied += 1
        else:
            self.allowed += 1
        if rule is None:
            _ffi.respond(self.fd, ev.fd, response)
        else:
            _ffi.respond_audit(self.fd, ev.fd, response, *rule)
        return entry

    def answer_default(self, ev: FanotifyData, reason: str) -> OSError | None:
        """Answer ``ev`` with the default verdict, if it is still unanswered.

        Never raises; returns the OSError of a failed write for the caller to
        log *after* it has answered everything it has to answer.
        """
        with self.lock:  # wait for a watchdog write in progress
            if not ev._owns & UNANSWERED:
                return None
            if self.fd >= 0:
                # Once the group fd is closed the kernel has allowed the event
                # itself: no verdict of ours to count (write() marks it answered).
                self._reasons[reason] += 1
            try:
                self.write(ev, int(self.default))
            except OSError as exc:
                return exc
        return None

    def count_kernel_denied(self, n: int) -> None:
        """Count permission events the kernel denied because it could not open their fd."""
        self.kernel_denied += n
        self.denied += n

    def count_unbuilt(self, response: int) -> None:
        """Count a response written for an event of a read whose build failed (``_answer``)."""
        self._reasons[BUILD_FAILED] += 1
        if response & _DENY:
            self.denied += 1
        else:
            self.allowed += 1

    def count_stalled(self, response: int) -> None:
        """Count a response the watchdog wrote itself for an event the loop never read."""
        self._reasons[STALLED] += 1
        if response & _DENY:
            self.denied += 1
        else:
            self.allowed += 1

    def expire(self, now: float | None = None) -> int:
        """Answer every event whose deadline has passed; returns how many."""
        if now is None:
            now = time.monotonic()
        expired: list[FanotifyData] = []
        with self.lock:
            for entry in self._pending.values():
                if entry.deadline > now:
                    break
                expired.append(entry.event)
            if not expired:
                return 0
            errors = [self.answer_default(ev, TIMED_OUT) for ev in expired]
        # Responses are written; now it is safe to spend time on logging.
        log.warning(
            "%d permission event(s) passed their %.3gs deadline: answered %s",
            len(expired), self.timeout, self.default.name,
        )
        _log_write_errors(expired, errors)
        return len(expired)

    # -- the timer -----------------------------------------------------

    def _arm(self, when: float) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._timer = loop.call_later(max(0.0, when - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        self.expire()
        self._arm_for_oldest()

    def _arm_for_oldest(self) -> None:
        with self.lock:
            head = next(iter(self._pending.values()), None)
        if head is not None:
            self._arm(head.deadline)

    def ensure_timer(self, loop: LoopLike) -> None:
        """Arm the timer for events read before the loop was known (sync reads)."""
        self._loop = loop
        if self._timer is None:
            self._arm_for_oldest()

    # -- tasks ---------------------------------------------------------

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        badly = task.cancelled() or task.exception() is not None
        how = "cancelled" if task.cancelled() else "failed"
        self._task_ended(task, task.get_name(), badly, how)

    def _task_ended(
        self, task: object, name: str, badly: bool, how: str = "raised or was cancelled"
    ) -> None:
        fds = self._watched_tasks.pop(task, None)
        if not fds:
            return
        # A task that returns normally may have handed its events on; the
        # deadline covers those.  One that was cancelled or failed cannot
        # answer any more: answer for it now.
        with self.lock:
            if not badly:
                for fd in fds:
                    entry = self._pending.get(fd)
                    if entry is not None:
                        entry.task = None
                return
            events = [self._pending[fd].event for fd in fds if fd in self._pending]
            errors = [self.answer_default(ev, ABANDONED) for ev in events]
        if events:
            log.warning(
                "consumer task %s ended (%s) holding %d unanswered permission event(s): "
                "answered %s", name, how, len(events), self.default.name,
            )
        _log_write_errors(events, errors)

    # -- the handler ---------------------------------------------------

    def dispatch(self, ev: FanotifyData) -> None:
        """Run the ``on_permission`` handler for ``ev`` (on the loop, from the reader)."""
        handler = self.handler
        assert handler is not None
        try:
            result = handler(ev)
        except Exception as exc:
            self._handler_failed(ev, exc)
            return
        if (result is True or result is False) and _answer_and_close(self, ev, result):
            return  # the common verdict: written and the fd closed in one C call
        dispatch_result(self, ev, result)

    def _handler_done(self, ev: FanotifyData, task: TaskLike) -> None:
        if task.cancelled():
            # Cancelled by a deadline, a close, or an answer written elsewhere
            # (those log or count their own answer), or by someone else.
            if ev._owns & UNANSWERED:
                err = self.answer_default(ev, HANDLER_ERROR)
                log.warning(
                    "permission handler for %s (pid %d) was cancelled before it answered: "
                    "answered %s", ev.path, ev.pid, self.default.name,
                )
                if err is not None:
                    _log_write_errors([ev], [err])
            ev.close()
            return
        exc = task.exception()
        if exc is not None:
            self._handler_failed(ev, exc)
            return
        self._apply(ev, task.result())

    def _apply(self, ev: FanotifyData, result: object) -> None:
        if not ev._owns & UNANSWERED:
            if result is not None:
                self.late += 1
                log.debug("discarded handler verdict %r for an event already answered", result)
            ev.close()
            return
        try:
            if result is True or result is False:
                self.write(ev, _ALLOW if result else _DENY)
            else:
                self.respond(ev, to_verdict(result))
        except (TypeError, ValueError) as exc:
            self._handler_failed(ev, exc)
            return
        except OSError as exc:
            ev.close()
            log.error("could not answer permission event fd=%d: %s", ev.fd, exc)
            return
        ev.close()

    def _handler_failed(self, ev: FanotifyData, exc: BaseException) -> None:
        err = self.answer_default(ev, HANDLER_ERROR)
        ev.close()
        log.error(
            "permission handler failed for %s (pid %d): answered %s",
            ev.path, ev.pid, self.default.name, exc_info=exc,
        )
        if err is not None:
            _log_write_errors([ev], [err])

    # -- closing -------------------------------------------------------

    def close(self) -> list[FanotifyData]:
        """Answer everything pending (the group fd is still open); returns those events."""
        # From here on a server stopped tells a close from a switch (LoopServer.stop).
        self.closed = True
        retired, self.retired = self.retired, None
        if retired is not None:
            retired.stop()
        if self.thread is not None:
            # Before anything is answered here: it reads and answers too.
            self.thread.stop()
            self.thread = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        events = self.pending_events()
        handler_tasks = [
            e.handler_task for e in self._pending.values() if e.handler_task is not None
        ]
        errors = [self.answer_default(ev, AT_CLOSE) for ev in events]
        for task in handler_tasks:
            if not task.done():
                task.cancel()
        if events:
            log.info(
                "group closed with %d pending permission event(s): answered %s",
                len(events), self.default.name,
            )
        _log_write_errors(events, errors)
        self._watched_tasks.clear()
        return events


def dispatch_result(perm: PermissionTracker, ev: FanotifyData, result: object) -> None:
    """Act on what an ``on_permission`` handler returned (but a verdict written in C)."""
    if inspect.isawaitable(result):
        entry = perm._pending.get(ev.fd)
        if entry is None or entry.event is not ev:
            # Answered while the handler ran synchronously up to its first await.
            _close_awaitable(result)
            ev.close()
            return
        if ev.__class__ is LazyPathEvent:
            # An async handler's path is read now, before its body runs: read
            # at its first ask, it would be the file's path after every await
            # up to the deadline (a file renamed meanwhile, e.g. from a
            # denied directory into an allowed one, would be allowed by name).
            ev._read_path()
        task: TaskLike
        loop = perm._loop
        aio = sys.modules.get("asyncio")  # imported by its loop, if the loop is asyncio's
        if loop is not None and (aio is None or not isinstance(loop, aio.AbstractEventLoop)):
            # trio: a system task, started on the next scheduling round
            coro = result if inspect.iscoroutine(result) else _awaited(result)
            task = loop.create_task(coro)
        elif _EAGER and inspect.iscoroutine(result):
            # Python 3.12+: run the handler up to its first real suspension
            # now, so one that never awaits costs no trip through the loop.
            asyncio = _asyncio()
            task = asyncio.Task(result, loop=asyncio.get_running_loop(), **_EAGER_START)
            if task.done():
                perm._handler_done(ev, task)
                return
        else:
            task = _asyncio().ensure_future(result)
        entry.handler_task = task
        task.add_done_callback(lambda t, ev=ev: perm._handler_done(ev, t))  # type: ignore[misc]
        return
    perm._apply(ev, result)


_get_ident = threading.get_ident


def _asyncio() -> ModuleType:
    """asyncio, imported at its first use: ``afanotify watch`` runs no asyncio loop."""
    import asyncio

    return asyncio


def _first_current_task_of(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    global _current_task_of
    import asyncio

    _current_task_of = asyncio.current_task
    return asyncio.current_task(loop)


#: asyncio.current_task with its loop given: a dict lookup, no running-loop check.
#: asyncio's own from the first call on: the module imports asyncio only once a
#: loop needs it (``afanotify watch`` runs none).
_current_task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    _first_current_task_of
)


def _current_task() -> asyncio.Task[Any] | None:
    import asyncio

    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _close_awaitable(obj: object) -> None:
    close = getattr(obj, "close", None)
    if close is not None:
        close()


def _log_write_errors(events: list[FanotifyData], errors: list[OSError | None]) -> None:
    for ev, err in zip(events, errors, strict=True):
        if err is not None:
            log.error("could not answer permission event fd=%d: %s", ev.fd, err)


def check_timeout(value: object) -> float:
    """Validate ``permission_timeout``.

    :raises TypeError, ValueError: naming the argument
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"permission_timeout must be a number of seconds, not {type(value).__name__}"
        )
    t = float(value)
    if not 0 < t < 86400 * 365:
        raise ValueError(
            f"permission_timeout must be a positive, finite number of seconds, got {value!r}: "
            "every permission event needs a deadline"
        )
    return t
