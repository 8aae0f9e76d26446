"""The group's own queue: read events go in, ``receive()`` and ``async for`` take them.

A mixin of :class:`afanotify.group.Fanotify`, in its own file because it is
one job: delivery into the bounded queue (with the events that wait while it
is full, in order) and the consumer's side, which releases what it moved
past and starts the reader again once there is room.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from . import _answer, _fastparse, _permloop
from ._pipeline import Counters
from ._queue import EventQueue
from ._reader import Reader
from .events import OWN_FD, UNANSWERED, FanotifyData, IterPathEvent
from .exceptions import ClosedResourceError, WouldBlock
from .flags import Response
from .permission import AT_CLOSE, DROPPED, PermissionTracker

if TYPE_CHECKING:
    from ._batches import BatchSink
    from ._dispatch import Dispatcher
    from ._permloop import ReadAhead

__all__ = ["OwnQueue", "events_iter"]

log = logging.getLogger(__name__)

_set_owns = FanotifyData.__dict__["_owns"].__set__
_getrefcount = sys.getrefcount
_C_ITER = _fastparse.events_iter_factory()
#: Reads a consumer may make itself in a row before it waits on the loop
#: (see OwnQueue._read_ahead).
_DIRECT_READS = 16
#: ... and until this many bytes of events (half a full read, about 85 events
#: in fd mode; a full read of 24-byte records is 4,080 bytes): a burst is
#: served from the loop, a read at a time, so the loop's timers (the
#: deadlines among them) and other tasks run between.
_DIRECT_BYTES = 2048


class _Last:
    """Where the Python ``async for`` keeps the event it handed out last."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: FanotifyData | None = None


def events_iter(group: OwnQueue) -> Any:
    """What ``group.__aiter__`` returns, made once per group.

    With the C builder: the C iterator (``csrc/fastpath_iter.c``), which
    takes the common step itself and leaves every other one to the group's
    :meth:`OwnQueue.__anext__`.  Without it (the pure core, or
    ``AFANOTIFY_PURE_PARSER=1``), a holder of the last event: the group is
    then its own iterator.  Either way ``.last`` is the group's last event.
    """
    if _C_ITER is None or os.environ.get("AFANOTIFY_PURE_PARSER"):
        return _Last()
    q = group._queue
    return _C_ITER(group, q, q._items, group._reader, group._wait_next, group._step)


class OwnQueue:
    """Delivery into the group's own queue, and receiving from it."""

    # Set by Fanotify.__init__.
    default_response: Response
    _queue: EventQueue
    _held: list[FanotifyData]
    _reader: Reader
    _perm: PermissionTracker
    _counters: Counters
    _clients: Dispatcher
    _perm_class: bool
    _consuming: bool
    _closed: bool
    _error: BaseException | None
    #: See :func:`events_iter`; its ``last`` is the event ``async for`` handed out last.
    _events_iter: Any
    #: Reads the consumer made itself since it last waited (see _read_ahead).
    _direct: int = 0
    #: Bytes those reads brought (see _DIRECT_BYTES).
    _direct_bytes: int = 0
    #: The C read of _read_ahead, made at its first use; False where there is none.
    _ahead: ReadAhead | Literal[False] | None = None

    @property
    def _iter_last(self) -> FanotifyData | None:
        return self._events_iter.last  # type: ignore[no-any-return]

    @_iter_last.setter
    def _iter_last(self, ev: FanotifyData | None) -> None:
        self._events_iter.last = ev
    #: Set while a ``batches()`` iterator runs: each read goes to it whole.
    _batch_sink: BatchSink | None

    def _ensure_reader(self) -> None:
        raise NotImplementedError

    def _pause(self) -> None:
        raise NotImplementedError

    def _fail(self, exc: OSError) -> None:
        raise NotImplementedError

    def _resume(self) -> None:
        raise NotImplementedError

    # -- delivering --------------------------------------------------------

    def _deliver(self, events: list[FanotifyData]) -> None:
        if self._closed:
            # Read before the close (a handler closed the group in the middle
            # of its read's batch): nobody takes them now.
            for ev in events:
                ev._release(AT_CLOSE)
            return
        if self._perm.handler is not None:
            events = self._dispatch_permission(events)
            if not events:
                return
        if self._clients.active:
            self._clients.dispatch(events)
            return
        sink = self._batch_sink
        if sink is not None:
            if sink.put(events) and not self._perm_class:
                self._pause()
            return
        taken = self._queue.put_many(events)
        self._counters.events_delivered += taken
        if taken < len(events):
            if self._perm_class:
                self._overflow_drop(events[taken:])
            else:
                # The queue is full: keep the rest for when it drains.
                self._held.extend(events[taken:])
                self._pause()

    def _dispatch_permission(self, events: list[FanotifyData]) -> list[FanotifyData]:
        """Hand permission events to the ``on_permission`` handler; return the rest."""
        rest: list[FanotifyData] = []
        dispatch = self._perm.dispatch
        for ev in events:
            if ev._owns & UNANSWERED:
                self._counters.events_delivered += 1
                dispatch(ev)
            else:
                rest.append(ev)
        return rest

    def _overflow_drop(self, rest: list[FanotifyData]) -> None:
        # A permission group keeps reading when its queue is full: what is
        # read and does not fit is answered with the default verdict now
        # (response first, then the fd is closed, then the log line).
        perm = 0
        for ev in rest:
            if ev._owns & UNANSWERED:
                perm += 1
            ev._release(DROPPED)
        self._perm.queue_dropped += len(rest) - perm
        log.warning(
            "event queue full (maxsize=%d): dropped %d event(s), %d permission event(s) "
            "answered %s", self._queue.maxsize, len(rest), perm, self.default_response.name,
        )

    # -- consuming -------------------------------------------------------

    def _release_last(self) -> None:
        last = self._iter_last
        if last is not None:
            self._iter_last = None
            last.close()

    def receive_nowait(self) -> FanotifyData:
        """The next event if one is waiting; the caller owns it.

        :raises WouldBlock: if none is waiting
        :raises ClosedResourceError: if the group is closed
        """
        self._ensure_reader()
        self._consuming = True
        ev = self._queue.get_nowait()
        if ev._owns & UNANSWERED:
            self._perm.received_by(ev)
        self._refill()
        if type(ev) is IterPathEvent:
            ev._read_path()  # read ahead for async for: a receiver may close it before asking
        return ev

    async def receive(self) -> FanotifyData:
        """The next event; the caller owns it (close it, or use ``with event:``).

        :raises ClosedResourceError: if the group is closed (or closes while waiting)
        """
        self._ensure_reader()
        self._consuming = True
        if not self._queue._items:
            if self._read_ahead():
                ev = self._queue.get_nowait()
                if ev._owns & UNANSWERED:
                    self._perm.received_by(ev)
                self._refill()
                if type(ev) is IterPathEvent:
                    ev._read_path()  # see receive_nowait
                return ev
            # The wait below gives the loop its turn (a queue with events in
            # it would not): only then may the consumer read by itself again.
            self._direct = 0
            self._direct_bytes = 0
        try:
            ev = await self._queue.get()
        except ClosedResourceError:
            if self._error is not None:
                raise ClosedResourceError(f"the group failed: {self._error}") from self._error
            raise
        if ev._owns & UNANSWERED:
            self._perm.received_by(ev)
        self._refill()
        if type(ev) is IterPathEvent:
            ev._read_path()  # see receive_nowait
        return ev

    def _read_ahead(self) -> bool:
        """Read the kernel once now, in the consumer's task; True if an event is queued then.

        For a permission group whose consumer found the queue empty: the
        next event is often already in the kernel's queue (the process it
        answered opened the next file at once), and reading it here hands it
        over without a trip through the loop (the loop's readiness callback,
        then waking this task).  At most _DIRECT_READS in a row, then the
        consumer waits on the loop as usual, so timers and other tasks run.
        Nothing read: one read(2) that found nothing.
        """
        reader = self._reader
        if (
            not self._perm_class or not reader.reading or self._closed
            or self._error is not None or self._direct >= _DIRECT_READS
            or self._direct_bytes >= _DIRECT_BYTES
        ):  # fmt: skip
            return False
        ahead = self._ahead
        if ahead is None:
            ahead = self._ahead = _permloop.read_ahead(self) or False  # type: ignore[arg-type]
        if not ahead:
            return False  # no C read here (or AFANOTIFY_GENERAL_READER): the loop reads
        self._direct += 1
        try:
            self._direct_bytes += ahead.read_once()
        except _answer.BuildFailed as exc:
            self._fail(exc)  # the read's events are answered: fail as the loop's reader would
            return False
        return bool(self._queue._items)

    def _refill(self) -> None:
        held = self._held
        # Move held events in once the queue is down to half, not one per
        # event taken: each move costs a shift of the whole held list.
        if held and len(self._queue) <= self._queue.maxsize // 2:
            taken = self._queue.put_many(held)
            self._counters.events_delivered += taken
            del held[:taken]
        if held:
            return
        if self._error is not None:
            if not len(self._queue):
                self._queue.close()  # drained: the next receive reports the error
        elif self._reader.paused:
            self._resume()

    def __aiter__(self) -> AsyncIterator[FanotifyData]:
        """``async for event in fan``: each event is closed when the loop moves on.

        Detach what you keep (``event.detach_fd()``).  The loop ends when the
        group closes; if reading failed, it raises :class:`ClosedResourceError`
        naming the failure.
        """
        it = self._events_iter
        return self if isinstance(it, _Last) else it

    async def __anext__(self) -> FanotifyData:
        # Moving past an event releases what the consumer did not detach.
        last = self._iter_last
        if last is not None:
            self._iter_last = None
            owns = last._owns
            if owns == OWN_FD and (
                type(last) is FanotifyData
                # Read ahead (lazy path), and held by no one but `last` and
                # the consumer's loop variable: nobody can ask for its path.
                or (type(last) is IterPathEvent and _getrefcount(last) <= 3)
            ):
                # FanotifyData.close() for the usual case (only an fd), inline.
                _set_owns(last, 0)
                os.close(last.fd)
            elif owns:
                last._moved_past()  # (an IterPathEvent counts who else holds it)
        ev = self._step()
        if ev is not None:
            self._iter_last = ev
            return ev
        return await self._wait_next()

    async def _wait_next(self) -> FanotifyData:
        # The step that waits: __anext__'s, and the C iterator's once its
        # _step found nothing to hand out.
        try:
            ev = await self.receive()
        except ClosedResourceError:
            if self._error is not None:
                raise  # a failed read ends the iteration loudly, not as if closed
            raise StopAsyncIteration from None
        self._iter_last = ev
        self._grant()
        return ev

    def _step(self) -> FanotifyData | None:
        """The part of ``async for``'s step that never waits: the next event, or None.

        None: the consumer must wait, which :meth:`__anext__` does (through
        ``receive()``).  Called by ``__anext__`` and, as a plain call with
        no coroutine, by the C iterator (``csrc/fastpath_iter.c``), each of
        which holds on to the event as the one handed out last.
        """
        # The common case, once reading has started: an event is already
        # queued.  Same steps as receive(), without its await and checks.
        # (The loop check is left to receive(), reached whenever the queue is
        # empty: on Python 3.11 asyncio.get_running_loop() costs a getpid()
        # system call, too much to pay per event.)
        reader = self._reader
        if not (self._consuming and (reader.reading or reader.paused) and not self._closed):
            return None
        if not self._queue._items and not self._read_ahead():
            # Read ahead here, without receive()'s coroutine; when that
            # found nothing, receive() waits on the loop (no second read).
            self._direct = _DIRECT_READS
            return None
        try:
            ev = self._queue.get_nowait()
        except (WouldBlock, ClosedResourceError):
            return None
        if ev._owns & UNANSWERED:
            self._perm.received_by(ev)
        # _refill() has work only when held events fit (see there), or
        # when nothing is held and reading is to resume (or fail).
        held = self._held
        if (
            len(self._queue) <= self._queue.maxsize // 2 if held
            else reader.paused or self._error is not None
        ):  # fmt: skip
            self._refill()
        self._grant()
        return ev

    def _grant(self) -> None:
        # How many of the queued events the C step (csrc/fastpath_iter.c)
        # may take before this step must run again: those it can take with
        # no bookkeeping.  None before reading starts, once the group is
        # closed or failed, or while the queue signalled full (get_nowait
        # clears that, with a resume).  With events held back (the reader is
        # paused then) or the queue stalled, only down to the point where
        # _refill moves them in and get_nowait clears the stall; with none
        # held but the reader paused, none (_refill resumes it at once).
        it = self._events_iter
        if isinstance(it, _Last):
            return
        q = self._queue
        reader = self._reader
        if (
            not (reader.reading or reader.paused) or self._closed
            or self._error is not None or q._full_signalled
        ):  # fmt: skip
            it.grant = 0
            return
        n = len(q._items)  # (not len(q): a Python call per event)
        if self._held or q._stalled:
            n -= q.maxsize // 2 + 1
        elif reader.paused:
            n = 0
        it.grant = max(n, 0)

