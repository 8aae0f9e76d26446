"""The permission thread: a plain ``on_permission`` handler served off the event loop.

``fan.on_permission(handler, thread=True)`` moves the group's reading from
the event loop to one thread of its own.  That thread spends its waiting
time in C without the GIL (``afp_read_walk`` in ``csrc/fastpath_rules.c``:
poll, read, and the C walk with the fd paths), then, holding the GIL, builds
the events with the C builder, calls ``handler(event)`` for each permission
event, writes the verdict and closes the event's fd, and waits again.  No
loop iteration, no ready-queue hop, no timer per event: in
``bench/bench_permission.py`` that is what separates the two modes.

What stays the same as on the loop (the guarantees of docs/permissions.md):

* every event is registered with the group's
  :class:`~afanotify.permission.PermissionTracker` before the handler sees
  it, so a verdict is written exactly once, under the tracker's lock, and
  counted the same way; a handler that raises or returns a non-verdict gets
  the default verdict, and the group's close answers what is pending;
* the deadline: the group's :class:`~afanotify._watchdog.Watchdog` answers an
  event whose handler is still running at its deadline (it wakes for the
  oldest pending deadline while this thread serves), and it reads for a
  thread that stopped reading, as it does for a stalled loop;
* the group's own events are allowed and dropped, malformed ones are
  allowed and logged, and the events that are not permission events (or
  were answered already) are handed to the loop
  (``call_soon_threadsafe``), where ``receive()`` and ``async for`` get them.

What changes: the handler runs on this thread, not on the loop's.  It may
block (up to the deadline) without stalling the loop, and it must not touch
objects that belong to the loop (use ``loop.call_soon_threadsafe``).  An
``async`` handler needs the loop: ``thread=True`` refuses one.

The thread stops (and is joined) when the handler is removed or replaced,
when static rules take over (``decide_statically``), and first thing when
the group closes; a forked child has no copy of it.
"""

from __future__ import annotations

import errno as _errno
import inspect
import logging
import os
import threading
import time
import weakref
from typing import Any

from . import _answer, _fastparse, _permloop
from ._answer import answer_and_close
from ._ffi import ffi, lib
from ._loop import LoopLike
from ._proc import process_info
from .events import UNANSWERED, FanotifyData, LazyPathEvent
from .exceptions import ParseError
from .flags import FID_INIT_FLAGS, Event, InitFlag, Response
from .permission import AT_CLOSE, DROPPED, PermissionHandler, PermissionTracker, _Entry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .group import Fanotify

__all__ = ["PermissionThread", "use"]

log = logging.getLogger(__name__)

#: Bytes per read: at most 170 event fds at once, like the guard's thread.
_READ = 4096
#: Milliseconds a wait lasts before the thread looks at its stop flag again.
_WAIT_MS = 100
#: Seconds ``stop`` waits for a thread (a handler still running is not waited for).
_STOP_WAIT = 1.0
#: Reads between two looks at the descriptor budget (_fdlimit.FdGuard).
_BUDGET_EVERY = 64
_OVERFLOW = int(Event.Q_OVERFLOW)
_ALLOW = int(Response.ALLOW)
_DENY = int(Response.DENY)
_set_responder = FanotifyData.__dict__["_responder"].__set__
_set_owns = FanotifyData.__dict__["_owns"].__set__
_set_exe = FanotifyData.__dict__["exe"].__set__
_set_cwd = FanotifyData.__dict__["cwd"].__set__
_set_class = object.__setattr__


def supported(group: Fanotify) -> str | None:
    """Why ``group`` cannot serve its handler on a thread, or None if it can."""
    if group._pipeline.fast is None:
        return "this core has no C decoder (the pure core, or AFANOTIFY_PURE_PARSER)"
    if group.flags & FID_INIT_FLAGS:
        return "a FID group resolves paths through its directory map, on the loop"
    if group.flags & InitFlag.REPORT_TID:
        return "REPORT_TID needs the loop's own-thread checks"
    return None


def check(group: Fanotify, handler: PermissionHandler) -> None:
    """Refuse what ``thread=True`` cannot serve (before anything changes).

    :raises TypeError: for an async handler
    :raises ValueError: where the group cannot serve on a thread
    """
    if inspect.iscoroutinefunction(handler):
        raise TypeError(
            "on_permission(thread=True) needs a plain function: an async handler runs "
            "on the event loop (pass thread=False)"
        )
    why = supported(group)
    if why is not None:
        raise ValueError(f"on_permission(thread=True) is not available here: {why}")


def install(group: Fanotify, handler: PermissionHandler | None, thread: bool) -> None:
    """:meth:`Fanotify.on_permission`: check ``handler``, then make it the group's.

    :raises TypeError: if ``handler`` is not callable, or is async with ``thread``
    :raises ValueError: if ``thread`` is not available for this group
    """
    if handler is not None and not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")
    if thread and handler is not None:
        check(group, handler)
    group._perm.handler = handler
    use(group, handler, thread)


def use(group: Fanotify, handler: PermissionHandler | None, thread: bool) -> None:
    """Serve ``handler`` on a thread (``thread``) or on the loop; switch a running group."""
    reader = group._reader
    old: PermissionThread | _permloop.LoopServer | None = group._perm.thread
    if old is not None:
        old.stop()
        group._perm.thread = None
        if isinstance(old, _permloop.LoopServer) and old._inflight is not None:
            # Replaced by its own handler: it serves the rest of its read (to
            # the new handler or the consumer), and a close meanwhile must
            # answer that read's events as it answers the current server's.
            group._perm.retired = old
    if handler is None or (not thread and not _permloop.supported(group)):
        if reader.delegate is not None:
            reader.delegate = None
            if old is not None and old.started:
                reader.start()  # the loop reads again
        return
    server: PermissionThread | _permloop.LoopServer
    if thread:
        server = PermissionThread(group)
    else:
        server = _permloop.LoopServer(group)
    group._perm.thread = server
    reader.delegate = server.start
    if reader.reading:
        reader.idle()  # the loop was reading: the new server takes over now
        reader.start()
    elif old is not None and old.started:
        reader.start()  # the old server was reading: the new one takes over


class PermissionThread:
    """The thread that reads the group and runs its handler (see the module docstring)."""

    def __init__(self, group: Fanotify) -> None:
        self._fd = group._fd
        self._perm = group._perm
        self._pipeline = group._pipeline
        self._counters = group._counters
        self._fdguard = group._pipeline.fdguard
        # The group only through a weak reference: an unreferenced group is
        # still collected (and closed, which stops this thread).
        self._group = weakref.ref(group)
        self._min_read = group._reader._max_event_len
        self._lazy = group.resolve_paths and _permloop.LAZY_PATHS  # see LoopServer
        self._resolve = group.resolve_paths and not _permloop.LAZY_PATHS
        self._proc_info = group.proc_info
        self._pidfd_reported = bool(group.flags & InitFlag.REPORT_PIDFD)
        self._fd_error = bool(group.flags & InitFlag.REPORT_FD_ERROR)
        self._own = group._pipeline.own_tids if group.ignore_own else frozenset()
        self._loop: LoopLike | None = None
        self._stopping = False
        self.started = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        #: Guards the pipe's numbers: whoever closes it sets them to -1.
        self._pipe_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"afanotify-permission-fd{self._fd}", daemon=True
        )

    def start(self, loop: LoopLike | None) -> bool:
        """Start serving (once; the reader's delegate); True: the loop must not read."""
        if self._stopping:
            return False
        if not self.started:
            self._loop = loop
            self.started = True
            self._perm.threaded = True
            self._thread.start()
        return True

    def stop(self) -> None:
        """Stop the thread; wait for it unless it is inside a slow handler.

        A thread woken in its wait ends at once.  One still inside the
        handler is left to finish: the caller (the group's close) answers
        its event meanwhile, and the thread, back from the handler, finds
        the event answered (counted ``late``) and the stop flag set.  It
        never reads again: it closes its wake pipe itself as it ends, and
        until then the pipe is readable, so its wait returns before any read
        of a descriptor number that may have been reused.
        """
        with self._perm.lock:  # see _register
            self._stopping = True
        self._perm.threaded = False
        with self._pipe_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass  # already woken: the pipe is full
        if not self.started:
            self._close_pipe()
            return
        if self._thread is not threading.current_thread():
            self._thread.join(_STOP_WAIT)
            if self._thread.is_alive():
                log.warning(
                    "the permission handler is still running as its group stops; "
                    "its event gets the default verdict now"
                )

    def _close_pipe(self) -> None:
        with self._pipe_lock:
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        failed: OSError | None = None
        try:
            self._serve()
        except _answer.BuildFailed as exc:
            # Its events are answered and it is logged (build_events): the
            # group fails with it, on the loop, as a failed read would.
            failed = exc
        except BaseException:
            log.exception(
                "the permission handler thread failed: the event loop reads (and runs "
                "the handler) from now on"
            )
        finally:
            self._close_pipe()
            if not self._stopping:
                self._give_back(failed)

    def _give_back(self, failed: OSError | None = None) -> None:
        """After a failure: let the loop read again (its reader calls the handler
        there), or fail the group with ``failed``."""
        self._perm.threaded = False
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(lambda: self._loop_reads(failed))
            except RuntimeError:
                pass  # the loop closed meanwhile; the group's close answers the rest

    def _loop_reads(self, failed: OSError | None) -> None:
        group = self._group()
        if group is None or group._closed or group._perm.thread is not self:
            return
        group._perm.thread = None
        group._reader.delegate = None
        if failed is not None:
            group._fail(failed)
        else:
            group._reader.start()

    def _serve(self) -> None:
        dec = _fastparse.Decoder(_READ)
        buf: Any = ffi.new("unsigned char[]", _READ)
        nread: Any = ffi.new("long *")
        flags = lib.AFN_RESOLVE_FD_PATHS if self._resolve else 0
        fddir = dec.open_fd_dir() if self._resolve else -1
        guard = self._fdguard
        counters = self._counters
        size = _READ
        budget_in = 0
        views: dict[int, Any] = {}
        try:
            while not self._stopping:
                if budget_in <= 0:
                    # The kernel drops an event whose fd it cannot install:
                    # never read more events than there are descriptors for.
                    fits = guard.free_fds()
                    budget_in = _BUDGET_EVERY if fits > 4 * (_READ // 24) else 1
                    size = min(_READ, max(self._min_read, fits * 24))
                budget_in -= 1
                count = lib.afp_read_walk(
                    self._fd, self._wake_r, _WAIT_MS, buf, size, nread, dec._out, dec._cap,
                    flags, dec._arena, dec._arena_size, dec._arena_used, dec._stop, fddir,
                )  # fmt: skip
                n = int(nread[0])
                if count == lib.AFR_WOKEN or (count == 0 and n == 0):
                    continue  # stop, or a look at the stop flag
                if count < 0 and n == 0:
                    if not self._failed(-count):
                        return
                    continue
                counters.reads += 1
                counters.bytes_read += n
                src = views.get(n)
                if src is None:
                    # A view per read size, made once: most reads are the same
                    # few sizes (one event, two...).
                    if len(views) > 64:
                        views.clear()
                    src = views[n] = ffi.buffer(buf, n)
                self._batch(dec, src, count)
        finally:
            dec.close()

    def _failed(self, err: int) -> bool:
        exc = OSError(err, f"reading the fanotify group failed: {os.strerror(err)}")
        if not self._fdguard.read_failed(exc):
            log.error("the permission handler thread stops: %s", exc)
            return False
        if err in (_errno.EMFILE, _errno.ENFILE):
            time.sleep(0.05)  # no descriptors: wait for the application to close some
        return True

    def _batch(self, dec: _fastparse.Decoder, src: Any, count: int) -> None:
        _permloop.serve_built(dec, src, count, self._fd_error, self._resolve, self._own,
                              self._perm, self._serve_batch)  # fmt: skip

    def _serve_batch(self, events: list[FanotifyData], errors: list[ParseError]) -> None:
        pipeline = self._pipeline
        failed = bool(errors)
        for err in errors:
            pipeline.bad_event(err)
        c = self._counters
        c.events_read += len(events)
        perm = self._perm
        own = self._own
        lazy = self._lazy
        kept: list[FanotifyData] = []
        for ev in events:
            if ev.pid in own:
                pipeline._drop_own(ev)
                continue
            if ev.ev_types & _OVERFLOW:
                c.overflows += 1
                log.warning("fanotify queue overflowed: the kernel dropped events")
            elif ev.fd < 0 and self._fd_error and ev.fd_error is not None:
                self._fdguard.fd_error(ev.fd_error, ev.is_permission)
                failed = True
            if self._proc_info:
                exe, cwd = process_info(ev.pid, ev.pidfd, pidfd_reported=self._pidfd_reported)
                _set_exe(ev, exe)
                _set_cwd(ev, cwd)
            kept.append(ev)
        if not failed:
            self._fdguard.recovered()
        if not self._register(kept):
            return
        rest: list[FanotifyData] = []
        for ev in kept:
            handler = perm.handler
            if self._stopping:
                if perm.closed:
                    # The group closed (its handler closed it, or the loop
                    # did): the close answered what was pending, this too.
                    ev._release(AT_CLOSE)
                    continue
                handler = None  # the handler was taken away: the loop's consumer answers
            if ev._owns & UNANSWERED and handler is not None:
                if lazy:
                    _set_class(ev, "__class__", LazyPathEvent)
                c.events_delivered += 1
                self._dispatch(ev, handler)
            else:
                if lazy:
                    _permloop.eager_path(ev)  # for the loop's consumer
                rest.append(ev)
        if rest:
            self._hand_on(rest)

    def _register(self, events: list[FanotifyData]) -> bool:
        """Start the clock of every permission event of a read, before the handler sees one.

        So a close while the read is served (by the handler itself, or from
        the loop) finds them all pending and answers them with the default
        verdict while the group fd is still open; none is left for the
        kernel to allow when the fd closes.  False if the group closed while
        the server was stopping (under the tracker's lock, as :meth:`stop`
        sets it): the events are answered (AT_CLOSE) and closed here then.
        A server stopped because its handler was removed or replaced
        registers them as usual: the caller hands them to the loop.
        """
        perm = self._perm
        deadline = time.monotonic() + perm.timeout
        with perm.lock:
            if not (self._stopping and perm.closed):
                pending = perm._pending
                for ev in events:
                    if ev._owns & UNANSWERED:
                        _set_responder(ev, perm)
                        pending[ev.fd] = _Entry(ev, deadline)
                return True
            for ev in events:
                if ev._owns & UNANSWERED:
                    _set_responder(ev, perm)
                ev._release(AT_CLOSE)
        return False

    def _dispatch(self, ev: FanotifyData, handler: PermissionHandler) -> None:
        perm = self._perm
        try:
            result = handler(ev)
        except Exception as exc:
            perm._handler_failed(ev, exc)
            return
        if result is True or result is False:
            if answer_and_close(perm, ev, result):
                return
        elif inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            err = TypeError(
                "the permission handler returned an awaitable: with on_permission(thread=True) "
                "it runs on a thread and must return its verdict (pass thread=False for "
                "async handlers)"
            )
            perm._handler_failed(ev, err)
            return
        perm._apply(ev, result)

    def _hand_on(self, events: list[FanotifyData]) -> None:
        """Give the loop what the handler does not take (it may have closed meanwhile)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(lambda: self._on_loop(events))
                return
            except RuntimeError:
                pass  # the loop closed meanwhile
        _release(events, self._perm)

    def _on_loop(self, events: list[FanotifyData]) -> None:
        group = self._group()
        if group is None or group._closed:
            _release(events, self._perm)
            return
        group._deliver(events)


def _release(events: list[FanotifyData], perm: PermissionTracker) -> None:
    for ev in events:
        if ev._owns & UNANSWERED:
            perm.release(ev, DROPPED)
        ev.close()
