"""A FID group's reader with a read-ahead thread: the kernel's copy overlaps the build.

Draining a FID group's backlog costs two things of about the same size: the
kernel copying its events out in ``read(2)`` (system time), and building
them into :class:`~afanotify.FanotifyData` (the event loop's thread, under
the GIL).  The loop's own reader (:class:`afanotify._reader.Reader`) does
one after the other.  :class:`ThreadedReader` reads as it does, except that
when a read comes back full (a backlog is there: the plain reader would read
again at once), a thread (``csrc/fastpath_thread.c``) goes on reading, without
the GIL, into a ring of three buffers of ``buffer_size`` bytes, for as long
as its reads come back full, while the loop builds each read as it arrives.
On two cores a backlog then drains in about the longer of the two times
instead of their sum (bench/run.py's ``fid_drain`` and ``fid_batches``).

What stays as it was:

- The reads.  The thread reads only where the plain reader would have read
  next (after a full read, at once) and stops after a read that is not
  full, so the same events share a read: each list of ``batches()`` is
  still the events of one read, handed on whole, in the order read.
- Flow control.  A paused group takes nothing: at most two reads wait here,
  whole, and the rest of the backlog waits in the kernel's queue (and
  overflows there, reported by a Q_OVERFLOW event).  Nothing read is
  discarded.
- Registration.  The loop (asyncio, or trio through :mod:`afanotify._loop`)
  watches the group fd as before, or, while a read asked for is not done,
  an eventfd the thread writes when it is.  pause, resume and idle
  unregister and register as the plain reader does.
- Errors: a read the thread made fails the group (or is counted and retried)
  exactly as the same read made by the loop would.

Only FID groups without REPORT_PIDFD, on the compiled core, on a machine
with more than one CPU, get it (:func:`make_reader`): their events carry no
descriptors, so a read made ahead opens nothing in this process and the fd
budget has nothing to govern.  ``AFANOTIFY_READ_THREAD=0`` turns it off.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
from collections.abc import Callable
from typing import Any

from . import _ffi
from ._fdlimit import FdGuard
from ._pipeline import Counters
from ._reader import _READS_PER_WAKEUP, Reader
from .flags import CLASS_BITS, FID_INIT_FLAGS, InitFlag

__all__ = ["ThreadedReader", "eligible", "make_reader"]

ffi: Any = _ffi.ffi
lib: Any = _ffi.lib

_EMPTY = (-_errno.EAGAIN, -_errno.EINTR)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def eligible(flags: int) -> bool:
    """Whether a group with these flags reads through a :class:`ThreadedReader`."""
    return (
        bool(flags & FID_INIT_FLAGS) and not flags & InitFlag.REPORT_PIDFD
        and not flags & CLASS_BITS and hasattr(lib, "aft_run")
        and os.environ.get("AFANOTIFY_READ_THREAD", "1") != "0"
        and not os.environ.get("AFANOTIFY_PURE_PARSER") and _cpus() > 1
    )  # fmt: skip


def make_reader(
    fd: int, flags: int, bufsize: int, counters: Counters, *, capacity: int,
    queued: Callable[[], int], on_batch: Callable[[memoryview], None],
    on_fail: Callable[[OSError], None], on_retry: Callable[[], None], guard: FdGuard,
) -> Reader:
    """The group's reader: threaded where :func:`eligible`, else the loop's own."""
    cls = ThreadedReader if eligible(flags) else Reader
    return cls(
        fd, flags, bufsize, counters, capacity=capacity, queued=queued, on_batch=on_batch,
        on_fail=on_fail, on_retry=on_retry, guard=guard,
    )  # fmt: skip


class ThreadedReader(Reader):
    """:class:`~afanotify._reader.Reader` with a read-ahead thread (see the module docstring).

    The thread starts with the first :meth:`start` and ends with
    :meth:`close`, which waits for it (at once: a read of the nonblocking
    group fd never waits, and the thread otherwise waits only for a request).
    """

    def __init__(self, fd: int, flags: int, bufsize: int, counters: Counters,
                 **kw: Any) -> None:
        super().__init__(fd, flags, bufsize, counters, **kw)
        self._r: Any = None
        self._wake = -1
        self._thread: threading.Thread | None = None
        self._result = ffi.new("int64_t *")
        #: The thread reads on, or holds reads not yet taken.
        self._asked = False
        #: Registered on the eventfd (waiting for the thread), not the group fd.
        self._on_wake = False
        #: A read is being handed on (close must not free its buffer under it).
        self._in_batch = False

    @property
    def thread(self) -> threading.Thread | None:
        """The read-ahead thread (None before the first :meth:`start`)."""
        return self._thread

    def _setup(self) -> None:
        wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        r = ffi.new("struct aft_reader *")
        r.fd, r.wake_fd, r.slot_size = self._fd, wake, len(self._buf)
        if lib.aft_init(r) != 0:
            os.close(wake)
            raise OSError(r.error, f"cannot set up the read-ahead thread: {os.strerror(r.error)}")
        self._r, self._wake = r, wake
        self._thread = threading.Thread(
            target=lib.aft_run, args=(r,), name="afanotify-read", daemon=True
        )
        self._thread.start()

    # -- registration ------------------------------------------------------

    def _watch(self, wake: bool) -> None:
        """Register the eventfd (``wake``) or the group fd, in place of the other."""
        loop = self.loop
        if loop is None or (self.reading and self._on_wake == wake):
            return
        if self.reading:
            loop.remove_reader(self._wake if self._on_wake else self._fd)
        if wake:
            loop.add_reader(self._wake, self._wake_up)
        else:
            loop.add_reader(self._fd, self._on_readable)
        self._on_wake = wake
        self.reading = True

    def start(self) -> bool:
        if self.reading or self.paused or self.closed or self.loop is None:
            return False
        if self.delegate is not None and self.delegate(self.loop):
            return False
        if self._r is None:
            self._setup()
        self._watch(self._asked)
        if self._asked:
            os.eventfd_write(self._wake, 1)  # it may be done already: look at once
        return True

    def idle(self) -> None:
        if self.reading and self.loop is not None:
            self.loop.remove_reader(self._wake if self._on_wake else self._fd)
            self.reading = False

    def close(self) -> None:
        """Unregister, stop the thread and wait for it; the group fd is closed next."""
        was_reading, self.reading = self.reading, False
        self.closed = True
        loop = self.loop
        if loop is not None:
            try:
                notify = getattr(loop, "notify_closing", None)
                if notify is not None:  # trio: wake and drop any waiter before the close
                    notify(self._fd)
                    if self._wake >= 0:
                        notify(self._wake)
                elif was_reading:
                    loop.remove_reader(self._wake if self._on_wake else self._fd)
            except Exception:  # the loop may already be closed
                pass
        if self._r is not None:
            lib.aft_stop(self._r)
            assert self._thread is not None
            self._thread.join()
            if not self._in_batch:
                self._free()

    def _free(self) -> None:
        if self._r is not None:
            lib.aft_destroy(self._r)
            self._r = None
            os.close(self._wake)
            self._wake = -1

    def disown(self) -> None:
        # A forked child has no copy of the thread, and its eventfd is the
        # parent's: never written, waited on or unregistered here; only the
        # child's copy of the descriptor is closed.
        super().disown()
        self._r = None
        if self._wake >= 0:
            os.close(self._wake)  # the child's copy only: the parent's stays open
            self._wake = -1

    # -- reading -----------------------------------------------------------

    def _wake_up(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        self._on_readable()

    def _on_readable(self) -> None:
        r = self._r
        buf = self._buf
        full = len(buf) // 2
        for _ in range(_READS_PER_WAKEUP):
            if self.closed or self.paused:
                return
            if self._asked:
                p = lib.aft_take(r, self._result)
                if p == ffi.NULL:
                    self._watch(True)  # not done: the thread writes the eventfd when it is
                    return
                n = self._result[0]
                # The thread reads on after a full read, as this loop would.
                self._asked = n >= full
                if n < 0:
                    if n in _EMPTY:
                        self._watch(False)
                        return
                    exc = OSError(-n, f"reading the fanotify group failed: {os.strerror(-n)}")
                    if not self._guard.read_failed(exc):
                        self._on_fail(exc)
                        return
                    continue  # that event is gone (counted); the rest are still queued
                view = memoryview(ffi.buffer(p, n))
            else:
                try:
                    n = self._guard.read(self._fd, memoryview(buf))
                except BlockingIOError:
                    self._watch(False)
                    return
                except OSError as exc:
                    if not self._guard.read_failed(exc):
                        self._on_fail(exc)
                        return
                    continue
                if n <= 0:
                    return
                view = memoryview(buf)[:n]
                # A full read: the next ones are made while this one is built.
                if n >= full and lib.aft_request(r) == 0:
                    self._asked = True
            self._counters.reads += 1
            self._counters.bytes_read += n
            more = n >= full
            self._in_batch = True
            try:
                self._on_batch(view)
            finally:
                self._in_batch = False
                if self.closed:
                    self._free()  # closed while the read was handed on
            if not more:
                if self.reading:
                    self._watch(False)
                return
        if self.reading and self._asked:
            # The loop's turn now; back here once the read asked for is done.
            self._watch(True)
            os.eventfd_write(self._wake, 1)

    def read_once(self) -> memoryview:
        """As :meth:`Reader.read_once`; a read asked of the thread comes first."""
        r = self._r
        if r is None or not self._asked:
            return super().read_once()
        lib.aft_wait(r)
        p = lib.aft_take(r, self._result)
        if p == ffi.NULL:  # the thread stopped reading meanwhile
            self._asked = False
            return super().read_once()
        n = self._result[0]
        self._asked = n >= len(self._buf) // 2
        if n in _EMPTY:
            raise BlockingIOError(-n, os.strerror(-n))
        if n < 0:
            exc = OSError(-n, f"reading the fanotify group failed: {os.strerror(-n)}")
            self._guard.read_failed(exc)  # counted, logged once per episode
            raise exc
        self._buf[:n] = ffi.buffer(p, n)
        self._counters.reads += 1
        self._counters.bytes_read += n
        return memoryview(self._buf)[:n]
