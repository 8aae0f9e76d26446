"""A plain ``on_permission`` handler served on the event loop, one C read per wake-up.

``fan.on_permission(handler)`` (without ``thread=True``) in a permission
group whose events the C core can build takes this reader instead of the
group's general one (``_reader.py`` through ``_pipeline.py``).  When the loop
says the group fd is readable, one call into C (``afp_read_walk_now`` in
``csrc/fastpath_rules.c``) reads and walks the batch, the C builder makes the
events, and for each permission event the tracker registers it (deadline
timer on the loop, as before) and runs the handler, whose ``True``/``False``
is written and the fd closed in one more C call.  Between two events of one
read there is no asyncio machinery, no queue, and no per-read work the
general reader needs for every kind of group (the descriptor budget is
looked at every :data:`_BUDGET_EVERY` reads, as on the permission thread).

Everything else is the general path's: the handler runs through
:meth:`PermissionTracker.dispatch` (an awaitable result becomes a task, an
exception or a non-verdict gives the default verdict and is logged), the
deadline timer and the watchdog answer for a handler or a loop that does not,
the group's own events are allowed and dropped, malformed ones allowed and
logged, and every event that is not an unanswered permission event goes to
:meth:`Fanotify._deliver` (the queue, clients, ``batches()``).  A group with
static rules set (``decide_statically``) reads each batch through the
general pipeline, which applies them first.

A consumer of ``receive()``/``async for`` in a permission group that finds
the queue empty reads once itself through :class:`ReadAhead` (the same read
and batch; see ``OwnQueue._read_ahead``).  ``AFANOTIFY_GENERAL_READER=1`` in
the environment turns both off (the group's general reader serves), for
comparisons.

The server is the group reader's delegate (as the permission thread is): the
group's close stops it first (through ``PermissionTracker.thread``), before
anything pending is answered, and it unregisters the fd from the loop then.
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from . import _answer, _fastparse
from ._answer import answer_and_close
from ._ffi import ffi, lib
from ._loop import LoopLike
from ._parser import parse_event
from ._proc import fd_path, process_info
from .events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData, IterPathEvent, LazyPathEvent
from .exceptions import ParseError
from .flags import DIR_CHANGE_EVENTS, Event, InitFlag, Response
from .permission import ABANDONED, AT_CLOSE, PermissionTracker, _Entry, dispatch_result

if TYPE_CHECKING:
    from .group import Fanotify

__all__ = ["AVAILABLE", "LoopServer"]

log = logging.getLogger(__name__)

#: The compiled core has the C read (the pure one does not).
AVAILABLE = hasattr(lib, "afp_read_walk_args") and _fastparse.available()
#: Bytes per read: at most 170 event fds at once, as on the permission thread.
_READ = 4096
#: Reads per readiness callback, so one busy group cannot starve the loop.
_READS_PER_WAKEUP = 16
#: Bytes after which a callback ends: a read at least half full counts as a
#: full one (a full read of 24-byte records is 4,080 bytes, under _READ).
_FULL = _READ // 2
#: Reads between two looks at the descriptor budget (_fdlimit.FdGuard), while
#: nothing but the handler holds the group's events.
_BUDGET_EVERY = 64
#: Free descriptors under which every read looks again (four full reads' worth).
_ROOM = 4 * (_READ // 24)
#: Seconds to wait before reading again after the kernel ran out of fds for us.
_FD_RETRY_DELAY = 0.05
_OVERFLOW = int(Event.Q_OVERFLOW)
_DIR_CHANGE = int(DIR_CHANGE_EVENTS)
_monotonic = time.monotonic
#: Permission events' paths read when first asked (see LazyPathEvent).
LAZY_PATHS = not os.environ.get("AFANOTIFY_EAGER_PATHS")
_set_class = object.__setattr__
_set_path = FanotifyData.__dict__["path"].__set__
_set_path_resolved = FanotifyData.__dict__["path_resolved"].__set__
_set_owns = FanotifyData.__dict__["_owns"].__set__
_OWN_FD_UNANSWERED = OWN_FD | UNANSWERED
_afp_answer: Any = getattr(lib, "afp_answer", None)
_ALLOW = int(Response.ALLOW)
_DENY = int(Response.DENY)
_read_walk_args: Any = getattr(lib, "afp_read_walk_args", None)
_BUILD: Any = _fastparse._BUILD
_MAX_DIRS = _fastparse._MAX_DIRS
_PERM = _fastparse._PERM
_B_OWNED, _B_FD_ERROR, _B_RESOLVE, _B_UNTRACK = (
    (lib.AFN_B_OWNED, lib.AFN_B_FD_ERROR, lib.AFN_B_RESOLVE, lib.AFN_B_UNTRACK)
    if AVAILABLE else (0, 0, 0, 0)
)
#: The errors of a read the C builder took whole (never appended to).
_NO_ERRORS: list[ParseError] = []
#: The builder's directory tables for fd events, which never fill them.
_NO_DIRS: list[Any] = [None] * _MAX_DIRS
_NO_BY_RECORD: dict[Any, Any] = {}
_set_responder = FanotifyData.__dict__["_responder"].__set__
_set_exe = FanotifyData.__dict__["exe"].__set__
_set_cwd = FanotifyData.__dict__["cwd"].__set__


def supported(group: Fanotify) -> bool:
    """True if ``group``'s plain handler can be served by :class:`LoopServer`."""
    from ._permthread import supported as thread_supported

    return (
        AVAILABLE and group._perm_class and thread_supported(group) is None
        and not os.environ.get("AFANOTIFY_GENERAL_READER")
    )


class LoopServer:
    """Reads the group on the loop and runs its plain handler (see the module docstring)."""

    # Slots: past 30 attributes an instance dict stops sharing its keys, and
    # every attribute read of the per-read path gets slower (measured).
    __slots__ = ("_group", "_fd", "_perm", "_pipeline", "_counters", "_fdguard", "_min_read",
        "_capacity", "_lazy", "_resolve", "_proc_info", "_pidfd_reported", "_fd_error", "_own",
        "_dec", "_buf", "_views", "_pybuf", "_cflags", "_fddir", "_size", "_args", "_args_out",
        "_budget_in", "_fits_left", "_loop", "started", "_registered", "_stopped", "_inflight",
        "_iterated",)

    def __init__(self, group: Fanotify) -> None:
        self._group = group
        self._fd = group._fd
        self._perm = group._perm
        self._pipeline = group._pipeline
        self._counters = group._counters
        self._fdguard = group._pipeline.fdguard
        self._min_read = group._reader._max_event_len
        self._capacity = group._queue.maxsize
        #: resolve_paths: the handler's events get their path when it is first
        #: asked (LazyPathEvent), the others here, none by the C walk
        #: (``AFANOTIFY_EAGER_PATHS=1``: all by the walk, for comparisons).
        self._lazy = group.resolve_paths and LAZY_PATHS and self._lazy_paths()
        self._resolve = group.resolve_paths and not self._lazy
        self._proc_info = group.proc_info
        self._pidfd_reported = bool(group.flags & InitFlag.REPORT_PIDFD)
        self._fd_error = bool(group.flags & InitFlag.REPORT_FD_ERROR)
        self._own = group._pipeline.own_tids if group.ignore_own else frozenset()
        self._dec = self._decoder(group)
        self._buf: Any = ffi.new("unsigned char[]", _READ)
        self._views: dict[int, Any] = {}
        self._pybuf: bytearray | None = None
        self._cflags = lib.AFN_RESOLVE_FD_PATHS if self._resolve else 0
        self._fddir = -1
        self._size = _READ
        # The C read's arguments, set once (and again when one changes).
        self._args: Any = ffi.new("struct afp_read_args *")
        self._args_out: Any = None
        self._set_args()
        self._budget_in = 0
        #: Descriptors free at the last look, less the most the reads since took.
        self._fits_left = 0
        self._loop: LoopLike | None = None
        #: True once started (the reader's delegate then read instead of it).
        self.started = False
        #: True while the fd is registered with the loop by this server.
        self._registered = False
        self._stopped = False
        #: The events of the batch being served (see _end_batch).
        self._inflight: list[FanotifyData] | None = None
        #: A read ahead for the group's own consumer (ReadAhead).
        self._iterated = False

    def _decoder(self, group: Fanotify) -> _fastparse.Decoder:
        return _fastparse.Decoder(_READ)

    def _lazy_paths(self) -> bool:
        return True

    def _set_args(self) -> None:
        a = self._args
        dec = self._dec
        a.group_fd = self._fd
        a.walk = 1
        a.fddir = self._fddir
        a.flags = self._cflags
        a.buf = self._buf
        a.bufsize = self._size
        a.out = dec._out
        a.cap = dec._cap
        a.arena = dec._arena
        a.arena_cap = dec._arena_size
        a.arena_used = dec._arena_used
        a.stop = dec._stop
        # The pipeline's decoder (ReadAhead) grows its entries for a larger
        # batch of its own: looked at before every read.
        self._args_out = dec._out

    def start(self, loop: LoopLike | None) -> bool:
        """Register the fd with ``loop`` (the reader's delegate); True: the reader must not."""
        if self._stopped or loop is None:
            return False
        if not self._registered:
            if self._resolve and self._fddir < 0:
                self._fddir = self._dec.open_fd_dir()
            self._loop = loop
            self._args.fddir = self._fddir
            loop.add_reader(self._fd, self._on_readable)
            self._registered = self.started = True
        return True

    def stop(self) -> None:
        """Unregister for good (idempotent); the loop may already be closed.

        Called first by the group's close (``perm.closed`` set), the fd still
        open: the permission events of the batch being served (a handler
        closed the group) that the handler has not been given yet are
        answered with the default verdict now (``at_close``).  The serving
        loop then goes on to the batch's end, finds them answered, and the
        group, closed, releases every event it is handed (fds closed).
        Called as the handler is removed or replaced (the group stays open),
        it leaves the batch alone: its other events go to the new handler or
        to the consumer.
        """
        self._stopped = True
        self._unregister()
        if self._perm.closed:
            self._end_batch()
        self._dec.close()

    def _end_batch(self) -> None:
        batch = self._inflight
        if not batch:
            return
        perm = self._perm
        pending = perm._pending
        for ev in batch:
            if ev._owns & UNANSWERED and pending.get(ev.fd) is None:
                _set_responder(ev, perm)
                perm.release(ev, AT_CLOSE)

    def _unregister(self) -> None:
        if self._registered and self._loop is not None:
            self._registered = False
            try:
                self._loop.remove_reader(self._fd)
            except Exception:  # the loop may already be closed
                pass

    # -- reading ---------------------------------------------------------

    def _on_readable(self) -> None:
        # Read again after a short read too: answering an event lets its
        # process run on, and its next event is often queued by the time the
        # verdict's write returns.  A read that finds nothing ends the
        # callback (one read(2) more than the loop needed).
        # At most about one full read's worth of events per callback, however many
        # reads bring it: a burst is served a read per loop iteration, so
        # timers (deadlines) and other tasks run between.
        # A failure (building or serving a read) must not reach the loop's
        # exception handler, where nobody sees it: the read's events are
        # answered by then (serve_built), and the group fails with it.
        got = 0
        for _ in range(_READS_PER_WAKEUP):
            try:
                n = self.read_once()
            except Exception as exc:
                self._serve_failed(exc)
                return
            if not n:
                return
            got += n
            if got >= _FULL:
                return

    def read_once(self) -> int:
        """Read the group once and serve the batch; returns the bytes read (0: none)."""
        group = self._group
        if self._stopped or group._closed or group._error is not None:
            if group._error is not None:
                # The group failed (a read built by its general pipeline,
                # _handle_batch, with static rules): it stops reading, as its
                # general reader does, and the watchdog answers what waits.
                # Left registered, the level-triggered fd would call us again
                # at once, for ever.
                self._unregister()
                self._stopped = True
            return 0
        # Also once the events read since the last look could have used the
        # room it found (an async handler holds its events' descriptors).
        if (self._budget_in <= 0 or self._fits_left <= _ROOM) and not self._budget():
            return 0
        self._budget_in -= 1
        guard = self._fdguard
        if guard._size and not guard._roomy:
            return self._read_tight()
        static = self._pipeline.static is not None
        a = self._args
        if self._dec._out is not self._args_out:
            self._set_args()
        walk = 0 if static else 1  # the C walk is the decoder's own work with static rules
        if a.walk != walk:
            a.walk = walk
        count: int = _read_walk_args(a)
        n: int = a.nread
        if n == 0:
            if count < 0:
                self._failed(-count)
            return 0  # nothing queued (or a retry is scheduled)
        c = self._counters
        c.reads += 1
        c.bytes_read += n
        self._fits_left -= n // 24  # at most this many new descriptors
        if static:
            self._group._handle_batch(memoryview(ffi.buffer(self._buf, n)))
            return n
        src = self._views.get(n)
        if src is None:
            # A view per read size, made once: most reads are the same few
            # sizes (one event, two...).
            if len(self._views) > 64:
                self._views.clear()
            src = self._views[n] = ffi.buffer(self._buf, n)
        serve_built(self._dec, src, count, self._fd_error, self._resolve, self._own,
                    self._perm, self._serve)  # fmt: skip
        return n

    def _read_tight(self) -> int:
        # Near the open-file limit the guard's reserve of descriptors must be
        # released for the read (the kernel installs the events' fds then,
        # see _fdlimit.py): its own read, and the group's general pipeline.
        if self._pybuf is None:
            self._pybuf = bytearray(_READ)
        try:
            n = self._fdguard.read(self._fd, memoryview(self._pybuf)[: self._size])
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._failed(exc.errno or _errno.EIO)
            return 0
        if n <= 0:
            return 0
        c = self._counters
        c.reads += 1
        c.bytes_read += n
        self._group._handle_batch(memoryview(self._pybuf)[:n])
        return n

    def _budget(self) -> bool:
        # The kernel drops an event whose fd it cannot install: never read
        # more events than there are descriptors for, nor more than the
        # group's queue has room for (the rest wait in the kernel; a full
        # queue still reads one event, answered at once if it does not fit,
        # as the group's reader does).  Looked at every read while others
        # hold events (the queue, clients), else every _BUDGET_EVERY reads
        # or sooner, once the reads since could have used the room found.
        fits = self._fits_left = self._fdguard.free_fds()
        if fits < 1:
            self._retry_later()
            return False
        queued = self._group._queued()
        roomy = fits > _ROOM and not queued
        self._budget_in = _BUDGET_EVERY if roomy else 1
        room = min(fits, self._capacity - queued)
        size = min(_READ, max(self._min_read, room * 24))
        if size != self._size:
            self._size = self._args.bufsize = size
        return True

    def _failed(self, err: int) -> None:
        exc = OSError(err, f"reading the fanotify group failed: {os.strerror(err)}")
        if not self._fdguard.read_failed(exc):  # counted and logged there, if retryable
            self._stop_reading(exc)
        elif err in (_errno.EMFILE, _errno.ENFILE):
            self._retry_later()  # no descriptors: wait for the application to close some

    def _serve_failed(self, exc: Exception) -> None:
        if not isinstance(exc, _answer.BuildFailed):
            # serve_built answered the read's events (counted as abandoned).
            log.error("serving a permission read failed: the group stops reading", exc_info=exc)
            err = OSError(_errno.EIO, f"serving a permission read failed ({exc!r})")
            err.__cause__ = exc
            exc = err
        self._stop_reading(exc)

    def _stop_reading(self, exc: OSError) -> None:
        self._unregister()
        self._stopped = True
        self._group._fail(exc)

    def _retry_later(self) -> None:
        self._unregister()
        if self._loop is not None:
            self._loop.call_later(_FD_RETRY_DELAY, self._retry)

    def _retry(self) -> None:
        if not self._stopped and not self._group._closed:
            self.start(self._loop)

    # -- one batch -------------------------------------------------------

    def _batch(self, src: Any, count: int) -> None:
        serve_built(self._dec, src, count, self._fd_error, self._resolve, self._own,
                    self._perm, self._serve)  # fmt: skip

    def _serve(self, events: list[FanotifyData], errors: list[Any]) -> None:
        self._inflight = events  # see _end_batch
        pipeline = self._pipeline
        failed = bool(errors)
        for err in errors:
            pipeline.bad_event(err)
        c = self._counters
        c.events_read += len(events)
        perm = self._perm
        own = self._own
        loop = self._loop
        lazy = self._lazy
        # The events of a read ahead for ``async for`` go to the group's own
        # queue: lazy too, unless clients or batches() may take them.
        iterated = lazy and self._iterated and not (
            self._group._clients.active or self._group._batch_sink is not None
        )
        rest: list[FanotifyData] | None = None
        for ev in events:
            if ev.pid in own:
                pipeline._drop_own(ev)
                continue
            mask = ev.ev_types
            if mask & _OVERFLOW:
                c.overflows += 1
                log.warning("fanotify queue overflowed: the kernel dropped events")
            elif ev.fd < 0 and self._fd_error and ev.fd_error is not None:
                self._fdguard.fd_error(ev.fd_error, ev.is_permission)
                failed = True
            if self._proc_info:
                exe, cwd = process_info(ev.pid, ev.pidfd, pidfd_reported=self._pidfd_reported)
                _set_exe(ev, exe)
                _set_cwd(ev, cwd)
            if ev._owns & UNANSWERED:
                _set_responder(ev, perm)
                if perm.handler is not None:
                    if lazy:
                        _set_class(ev, "__class__", LazyPathEvent)
                    c.events_delivered += 1
                    add_and_dispatch(perm, ev, loop)
                    continue
                perm.add(ev, loop)
            if lazy:
                if iterated and ev._owns & OWN_FD:
                    _set_class(ev, "__class__", IterPathEvent)  # read when asked (events.py)
                else:
                    eager_path(ev)  # kept past its close by whoever receives it
            if rest is None:
                rest = []
            rest.append(ev)
        self._inflight = None
        if not failed and self._fdguard._short:
            self._fdguard.recovered()
        if rest:
            self._group._deliver(rest)


class ReadAhead(LoopServer):
    """One read made by a consumer that found the group's queue empty (``_consume.py``).

    The same read and batch as the server's, for a group the general reader
    serves on the loop: it shares the pipeline's decoder (and its
    /proc/self/fd), is never registered with the loop, and leaves failures
    to that reader (it counts them, and the reader meets them again on its
    own next read).
    """

    __slots__ = ()

    def __init__(self, group: Fanotify) -> None:
        super().__init__(group)
        self._loop = group._reader.loop
        self._fddir = self._args.fddir = self._dec._fddir if self._resolve else -1
        self._iterated = True

    def _decoder(self, group: Fanotify) -> _fastparse.Decoder:
        fast = group._pipeline.fast
        assert fast is not None  # see supported()
        return fast

    def _serve(self, events: list[FanotifyData], errors: list[Any]) -> None:
        # The usual read ahead: unanswered permission events with their fds,
        # none of ours, none malformed, for the group's own queue alone, with
        # room for all, nobody waiting on it (the consumer reads it itself),
        # nothing held back, no handler, no process details.  Each is
        # registered (its deadline) and queued, as the general way does it
        # through perm.add, _deliver and put_many; anything else goes that way.
        group = self._group
        q = group._queue
        items = q._items
        perm = self._perm
        if (
            errors or self._proc_info or perm.handler is not None
            or group._clients._clients or group._batch_sink is not None or group._held
            or q._waiters or q.policy != "block" or len(items) + len(events) > q.maxsize
        ):  # fmt: skip
            super()._serve(events, errors)
            return
        own = self._own
        for ev in events:
            if ev._owns != _OWN_FD_UNANSWERED or ev.pid in own:
                super()._serve(events, errors)
                return
        n = len(events)
        c = self._counters
        c.events_read += n
        deadline = _monotonic() + perm.timeout
        lazy = self._lazy
        with perm.lock:
            pending = perm._pending
            for ev in events:
                _set_responder(ev, perm)
                if lazy:
                    _set_class(ev, "__class__", IterPathEvent)
                pending[ev.fd] = _Entry(ev, deadline)
        loop = self._loop
        if loop is not None:
            perm._loop = loop
            if perm._timer is None:
                perm._arm(deadline)
        if self._fdguard._short:
            self._fdguard.recovered()
        items.extend(events)
        q._delivered += n
        if len(items) > q._high:
            q._high = len(items)
        c.events_delivered += n

    def _lazy_paths(self) -> bool:
        # Its events go to the group's queue as IterPathEvents: read when
        # asked, or before a close while anyone may still ask (events.py);
        # receive() reads them as it hands them over.
        return True

    def start(self, loop: LoopLike | None) -> bool:
        return False  # never the group's reader

    def stop(self) -> None:
        self._stopped = True  # the decoder is the pipeline's: closed with it

    def _stop_reading(self, exc: OSError) -> None:
        pass  # the general reader meets the error itself

    def _retry_later(self) -> None:
        pass  # the general reader waits for descriptors itself


def serve_built(
    dec: _fastparse.Decoder, src: Any, count: int, fd_error: bool, resolve: bool,
    own: Any, perm: Any, serve: Any,
) -> None:
    """Build a permission read's events and ``serve(events, errors)`` them.

    Shared by the loop server and the permission thread.  Every event of
    the read is answered or owned on every path: a build that fails
    answers the read's events itself (see :func:`build_events`), and a bug
    in ``serve`` must not leave a process waiting on an event only this
    reader knew about: what is unanswered is answered (ABANDONED, the
    default verdict) and every event closed (closing one already closed
    does nothing), then the error goes on.
    """
    events, errors = build_events(dec, src, count, fd_error, resolve, own, perm)
    try:
        serve(events, errors)
    except BaseException:
        for ev in events:
            if ev._owns & UNANSWERED and ev._responder is None:
                _set_responder(ev, perm)
            ev._release(ABANDONED)
        raise


def build_events(
    dec: _fastparse.Decoder, src: Any, count: int, fd_error: bool, resolve: bool, own: Any,
    perm: PermissionTracker | None = None,
) -> tuple[list[FanotifyData], list[ParseError]]:
    """``dec._build`` of a permission read (fd events, no directory records).

    The C builder is called directly, with the flags of a permission group's
    read worked out once: the general ``_build`` spends as many instructions
    again in Python on a one-event read.  An entry the builder hands back
    (a malformed event, a path the arena had no room for) is decoded by the
    reference parser, as there, and the builder goes on after it.

    If building raises (MemoryError, a bug), no event of the read has been
    handed to anyone: with ``perm``, the events built are released and every
    other permission event of ``src`` is answered with the default verdict
    (:func:`~afanotify._answer.unbuilt`: counted, logged), the read's other
    fds closed, and :class:`~afanotify._answer.BuildFailed` raised from the error.
    """
    events: list[FanotifyData] = []
    try:
        flags = _B_OWNED | (_B_FD_ERROR if fd_error else 0) | (_B_RESOLVE if resolve else 0)
        if dec.untrack:
            flags |= _B_UNTRACK
        out_mv, arena = dec._out_mv, dec._arena_buf
        # The directory tables stay empty: a permission group's events carry
        # no directory records (FID groups are not served here).
        i = _BUILD(out_mv, 0, count, src, arena, events, _NO_DIRS, _NO_BY_RECORD, None, own,
                   flags, _PERM, _DIR_CHANGE, None, None)[0]  # fmt: skip
        if i >= count:
            return events, _NO_ERRORS
        errors: list[ParseError] = []
        mv = memoryview(src).cast("B")
        while i < count:
            entry = dec._out[i]
            i += 1
            extra = dec._fd_path(entry) if resolve and not entry.status else None
            item, _ = parse_event(mv, entry.offset, owned=True, fd_error=fd_error, extra=extra)
            if isinstance(item, ParseError):
                errors.append(item)
            else:
                events.append(item)
            if i < count:
                i = _BUILD(out_mv, i, count, src, arena, events, _NO_DIRS, _NO_BY_RECORD,
                           None, own, flags, _PERM, _DIR_CHANGE, None, None)[0]  # fmt: skip
        return events, errors
    except BaseException as exc:
        if perm is None:
            raise
        _answer.unbuilt(perm, src, events, exc, close_rest=True)
        raise _answer.BuildFailed(exc) from exc


def add_and_dispatch(perm: PermissionTracker, ev: FanotifyData, loop: LoopLike | None) -> None:
    """``perm.add`` then ``perm.dispatch``, in one frame: the loop server's per-event step.

    Only with the compiled core (``_answer.AVAILABLE``): a ``True``/``False``
    from the handler is written and the fd closed in one C call, as
    :func:`~afanotify._answer.answer_and_close` does.
    """
    fd = ev.fd
    entry = _Entry(ev, _monotonic() + perm.timeout)
    lock = perm.lock
    pending = perm._pending
    with lock:
        pending[fd] = entry
    if loop is not None:
        perm._loop = loop
        if perm._timer is None:
            perm._arm(entry.deadline)
    handler = perm.handler
    assert handler is not None
    try:
        result = handler(ev)
    except Exception as exc:
        perm._handler_failed(ev, exc)
        return
    if result is True or result is False:
        err = 0
        with lock:
            owns = ev._owns
            # Still ours and as registered: not answered by the handler,
            # not taken by a consumer task, the group open.
            done = bool(
                owns & UNANSWERED and perm.fd >= 0 and pending.get(fd) is entry
                and entry.task is None and entry.handler_task is None
            )  # fmt: skip
            if done:
                del pending[fd]
                if isinstance(ev, LazyPathEvent):
                    owns = _answer.give_up_fd(ev)  # a path read on another thread
                else:
                    _set_owns(ev, owns & ~(UNANSWERED | OWN_FD))
                if result:
                    perm.allowed += 1
                else:
                    perm.denied += 1
                err = _afp_answer(perm.fd, fd, _ALLOW if result else _DENY, owns & OWN_FD)
        if done:
            if err:
                log.error("could not answer permission event fd=%d: %s", fd, os.strerror(err))
            if owns & OWN_PIDFD:
                ev.close()
            return
        if answer_and_close(perm, ev, result):
            return
    dispatch_result(perm, ev, result)


def eager_path(ev: FanotifyData) -> None:
    """Set ``ev``'s path from its fd now (what the C walk does for a read)."""
    if ev.fd >= 0:
        path, resolved = fd_path(ev.fd)
        _set_path(ev, path)
        _set_path_resolved(ev, resolved)


def read_ahead(group: Fanotify) -> ReadAhead | None:
    """A :class:`ReadAhead` for ``group``, or None where the C read cannot serve it."""
    if not supported(group) or group._pipeline.fast is None:
        return None
    if group.resolve_paths and group._pipeline.fast._fddir < 0:
        return None  # the walk would read the full /proc/self/fd/N paths: leave it
    return ReadAhead(group)
