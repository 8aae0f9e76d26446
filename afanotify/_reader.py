"""The group's reader: the one place the group fd meets the event loop.

Only this module registers and unregisters the fd (``add_reader`` /
``remove_reader``), on an asyncio loop as it is or on trio through
:mod:`afanotify._loop` (the same methods; see there).  The reader can be
paused (a consumer has no room: the backlog stays in the kernel's queue),
resumed, or left idle (nobody takes events; the next consumer starts it
again).  Each readiness callback reads a bounded number of batches and
hands each to the group.
"""

from __future__ import annotations

import errno as _errno
import logging
import resource
from collections.abc import Callable
from typing import Protocol

from . import _ffi
from ._fdlimit import FdGuard
from ._loop import LoopLike, running_loop
from ._pipeline import Counters
from .flags import CLASS_BITS, FID_INIT_FLAGS, InitFlag

__all__ = ["FlowControl", "Reader", "fd_budget", "max_event_len"]

log = logging.getLogger(__name__)

#: Reads per readiness callback, so one busy group cannot starve the loop.
_READS_PER_WAKEUP = 8
#: fd mode: at most this many events per readiness callback.  Each one is an
#: open file until the consumer moves past it; a small batch, consumed while
#: it is still hot in the caches, drains a backlog faster than a large one
#: (about a fifth faster at 512 than at 8192 in bench/run.py's fd_drain).
_FD_EVENTS_PER_WAKEUP = 512
#: The smallest event: metadata only.
_MIN_EVENT_LEN: int = _ffi.lib.FAN_EVENT_METADATA_LEN
#: Seconds to wait before reading again after the kernel ran out of fds for us.
_FD_RETRY_DELAY = 0.05


class FlowControl(Protocol):
    """How a consumer of the group's events stops and restarts its reading."""

    def pause(self) -> None:
        """Stop reading until :meth:`resume`; the backlog waits in the kernel."""

    def resume(self) -> None:
        """Read again, if nothing else still needs the reader paused."""

    def idle(self) -> None:
        """Stop reading until someone receives again (nobody takes events now)."""


def fd_budget(flags: int) -> int | None:
    """How many events carrying fds a group may hold at once (None: no fds)."""
    fd_mode = not flags & FID_INIT_FLAGS
    per_event = int(fd_mode) + int(bool(flags & InitFlag.REPORT_PIDFD))
    if not per_event:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    # Half the limit, so the application keeps the other half.
    return max(16, soft // 2 // per_event)


def max_event_len(flags: int) -> int:
    """The largest single event a group can read (the least a read may ask for)."""
    if flags & FID_INIT_FLAGS:
        return 4096  # handles and names: two FID+name records fit easily
    # metadata, then a PIDFD record (8 bytes), a RANGE record (24, PRE_ACCESS)
    size: int = _MIN_EVENT_LEN + _ffi.ffi.sizeof("struct fanotify_event_info_range")
    if flags & InitFlag.REPORT_PIDFD:
        size += _ffi.ffi.sizeof("struct fanotify_event_info_pidfd")
    return size


class Reader:
    """Reads the group fd from the event loop and hands each batch on.

    :param on_batch: called with each batch read (a view of the buffer,
        valid during the call)
    :param on_fail: called with a read error that ends reading
    :param on_retry: called a little after the kernel ran out of fds for us
        (the group resumes through its own checks: a consumer may still
        have no room)
    :param queued: what the group holds now (its queue and held events), for
        sizing reads in fd mode; ``capacity`` is the most it may hold
    :param guard: the group's descriptor reserve and fault counts (reads go
        through it; see ``_fdlimit.py``)
    """

    def __init__(
        self,
        fd: int,
        flags: int,
        bufsize: int,
        counters: Counters,
        *,
        capacity: int,
        queued: Callable[[], int],
        on_batch: Callable[[memoryview], None],
        on_fail: Callable[[OSError], None],
        on_retry: Callable[[], None],
        guard: FdGuard,
    ) -> None:
        self._fd = fd
        self._guard = guard
        self._buf = bytearray(bufsize)
        self._counters = counters
        self._capacity = capacity
        self._queued = queued
        self._on_batch = on_batch
        self._on_fail = on_fail
        self._on_retry = on_retry
        self._fd_budget = fd_budget(flags)
        self._fds_per_event = int(not flags & FID_INIT_FLAGS) + int(
            bool(flags & InitFlag.REPORT_PIDFD)
        ) or 1
        self._max_event_len = max_event_len(flags)
        #: The most events the smallest read may return (it must fit the largest one).
        self._min_read_events = -(-self._max_event_len // _MIN_EVENT_LEN)
        #: The last read_size found too few free descriptors to read at all.
        self.starved = False
        #: A CONTENT or PRE_CONTENT group never stops reading: a permission
        #: event left in the kernel's queue would have no deadline.
        self._perm_class = bool(flags & CLASS_BITS)
        self.loop: LoopLike | None = None
        #: Another reader of the fd (``_permthread``): ``start`` hands over to
        #: it, and it returns True while it reads instead of the loop.
        self.delegate: Callable[[LoopLike | None], bool] | None = None
        self.reading = False
        self.paused = False
        self.closed = False

    @property
    def buffer(self) -> bytearray:
        """The read buffer (the close drain reuses it once reading has stopped)."""
        return self._buf

    # -- registration ------------------------------------------------------

    def bind(self) -> LoopLike:
        """The running loop (asyncio's, or trio's adapter), bound to from the first call.

        :raises RuntimeError: outside a running loop, or on another loop
        """
        loop = running_loop()
        if self.loop is None:
            self.loop = loop
        elif self.loop is not loop:
            raise RuntimeError("a Fanotify group is bound to the event loop that first read it")
        return loop

    def start(self) -> bool:
        """Register the fd unless it is registered or paused; True if it was registered now."""
        if self.reading or self.paused or self.closed or self.loop is None:
            return False
        if self.delegate is not None and self.delegate(self.loop):
            return False
        self.loop.add_reader(self._fd, self._on_readable)
        self.reading = True
        return True

    def pause(self) -> None:
        """Unregister until :meth:`resume`."""
        self.idle()
        self.paused = True

    def resume(self) -> None:
        """Clear a pause and register again (once the loop is known)."""
        self.paused = False
        self.start()

    def idle(self) -> None:
        """Unregister without pausing: the next :meth:`start` registers again."""
        if self.reading and self.loop is not None:
            self.loop.remove_reader(self._fd)
            self.reading = False

    def close(self) -> None:
        """Unregister for good (the loop may already be closed); the fd is closed next."""
        self.closed = True
        loop = self.loop
        if loop is not None:
            try:
                notify = getattr(loop, "notify_closing", None)
                if notify is not None:
                    notify(self._fd)  # trio: wake and drop any waiter before the close
                elif self.reading:
                    loop.remove_reader(self._fd)
            except Exception:  # the loop may already be closed
                pass
        self.reading = False

    def disown(self) -> None:
        """In a forked child: never touch the registration again.

        The child's copy of the loop shares the parent's epoll instance, so
        unregistering here would unregister the parent's reader.
        """
        self.closed = True
        self.reading = False

    # -- reading -----------------------------------------------------------

    def _on_readable(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            if self.closed or self.paused:
                return
            size = self.read_size()
            if size == 0:
                if self.starved:
                    self._out_of_fds()  # nothing read: the events wait in the kernel
                else:
                    self.pause()  # the consumer holds enough fds; its refill resumes
                return
            try:
                n = self._guard.read(self._fd, memoryview(self._buf)[:size])
            except BlockingIOError:
                return
            except OSError as exc:
                if not self._guard.read_failed(exc):
                    self._on_fail(exc)
                    return
                if exc.errno in (_errno.EMFILE, _errno.ENFILE):
                    self._out_of_fds()
                    return
                continue  # that event is gone (counted); the rest are still queued
            if n <= 0:
                return
            self._counters.reads += 1
            self._counters.bytes_read += n
            self._on_batch(memoryview(self._buf)[:n])
            if n < size // 2 or self._fd_budget is not None:
                return

    def read_once(self) -> memoryview:
        """One read for a synchronous caller; returns the bytes read (a view of the buffer).

        :raises BlockingIOError: if the kernel has no events
        :raises OSError: EMFILE/ENFILE when the kernel could not open an event's
            fd (it dropped that event; counted in ``lost``), or another errno
            after which reading may go on (counted in ``read_errors``)
        """
        size = self.read_size() or self._max_event_len  # see read_size
        try:
            n = self._guard.read(self._fd, memoryview(self._buf)[:size])
        except BlockingIOError:
            raise
        except OSError as exc:
            self._guard.read_failed(exc)  # counted, logged once per episode
            raise
        self._counters.reads += 1
        self._counters.bytes_read += n
        return memoryview(self._buf)[:n]

    def read_size(self) -> int:
        """How many bytes the next read may ask for.

        Every event read in fd mode is a new descriptor in this process (two
        with REPORT_PIDFD), and the kernel *drops* an event whose fd it cannot
        install (EMFILE; a permission event is denied), silently when it is
        not the first of the read.  So fd-carrying reads ask for no more
        events than there is room for in the queue and in an fd budget
        derived from RLIMIT_NOFILE (24 bytes is the smallest event), but at
        least for the largest single event (else the kernel fails with EINVAL).
        They also ask for at most _FD_EVENTS_PER_WAKEUP events, one read per
        readiness callback (see _on_readable).
        """
        full = len(self._buf)
        if self._fd_budget is None:
            return full
        # No more events than this process has descriptors for (see
        # _fdlimit): none at all while even the smallest read could not get
        # its fds; that waits for the consumer to close some (_out_of_fds).
        fits = self._guard.free_fds() // self._fds_per_event
        self.starved = fits < self._min_read_events
        if self.starved:
            return 0
        room = min(self._capacity, self._fd_budget) - self._queued()
        if room <= 0:
            # A permission group never stops reading (a process waits on each
            # event): one event at a time, answered at once if it does not fit.
            return self._max_event_len if self._perm_class else 0
        room = min(room, _FD_EVENTS_PER_WAKEUP, fits)
        return min(full, max(self._max_event_len, room * _MIN_EVENT_LEN))

    def _out_of_fds(self) -> None:
        # No descriptors for the next events (or the kernel destroyed the one
        # it could not open an fd for: counted and logged by the guard); the
        # rest stay queued in the kernel.  Read again once the consumer has
        # released an event or after a pause.  A permission group waits too:
        # its next event would be denied by the kernel, and the watchdog
        # answers for the loop if this lasts.
        self.pause()
        if self.loop is not None:
            self.loop.call_later(_FD_RETRY_DELAY, self._on_retry)
