"""Event descriptors and failed reads: a reserve of fds, and counting what the kernel dropped.

In fd mode every event read is a new descriptor in this process.  When the
kernel cannot install one (the process is at RLIMIT_NOFILE: EMFILE; the
system is out of files: ENFILE; or the open itself fails, e.g. EROFS for an
``event_flags`` asking for write access on a read-only mount), what happens
depends on the group (probed on Linux 6.18, see docs/reliability.md):

* with FAN_REPORT_FD_ERROR (Linux 6.13; groups enable it by default where the
  kernel has it) the event is read with ``fd = -errno``: nothing is lost;
* without it, the read fails with the errno when that event comes first,
  and stops short of it otherwise; either way the kernel destroys the event,
  and nobody is told;
* a permission event whose fd cannot be installed is *denied* by the kernel
  itself, with or without FAN_REPORT_FD_ERROR.

So the reader keeps a small reserve of descriptors, released just before
each read and taken again after it: the kernel always has that many slots
for the events of a read, however many the application holds.  Reads are
also sized to the free descriptors this process appears to have.  Whatever
still fails is counted (``stats.lost``, ``stats.fd_errors``,
``permission_stats.denied_by_kernel``) and logged once per episode.
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import resource
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._pipeline import Counters
    from .permission import PermissionTracker

__all__ = ["FdGuard", "RESERVE", "retryable"]

log = logging.getLogger(__name__)

#: Descriptors held back for the kernel's event fds.
RESERVE = 8
#: Seconds after a failed open during which the reader counts open fds
#: exactly, and without a failure before an episode counts as over.
_EPISODE = 2.0
#: At most one "still failing" line per this many seconds of an episode.
_REPEAT_LOG = 30.0
#: With more free descriptors than this (by the cheap estimate) a read cannot
#: run out: no exact count, and the reserve stays put during the read.
_ROOMY = 4096
#: read(2) errors after which the group may not read again: a bad fd or buffer.
_FATAL = frozenset((_errno.EBADF, _errno.EINVAL, _errno.EFAULT))
_OUT_OF_FDS = frozenset((_errno.EMFILE, _errno.ENFILE))
_FIX = (
    "raise the open-file limit (ulimit -n / RLIMIT_NOFILE), close events sooner, or "
    "lower maxsize"
)


def retryable(exc: OSError) -> bool:
    """True if reading may go on after ``exc`` (the kernel destroyed one event at most)."""
    return exc.errno not in _FATAL


class FdGuard:
    """The reserve and the fault counts of one group (shared by its reader and watchdog).

    :param fd: the group fd (the reserve holds duplicates of it: a ``dup``
        costs no path lookup and keeps nothing else open)
    :param fd_mode: events carry descriptors (the reserve is kept only then)
    :param perm_class: a CONTENT or PRE_CONTENT group (failed events are denied)
    :param fd_error: the group reports failed opens (FAN_REPORT_FD_ERROR)
    """

    def __init__(
        self, fd: int, *, fd_mode: bool, perm_class: bool, fd_error: bool,
        counters: Counters, perm: PermissionTracker,
    ) -> None:
        self._fd = fd
        self._counters = counters
        self._perm = perm
        self._perm_class = perm_class
        self._reserve: list[int] = []
        self._size = RESERVE if fd_mode else 0
        self._exact = fd_mode and not fd_error
        #: The watchdog thread reads too: one reader releases the reserve at a time.
        self._lock = threading.Lock()
        #: The last free_fds() found plenty: reads skip the reserve's round trip.
        self._roomy = False
        #: Inside an episode of failed opens (logged when it starts and ends).
        self._short = False
        self._short_count = 0
        self._last_failure = self._last_log = 0.0
        self._take()

    # -- the reserve -------------------------------------------------------

    def _take(self) -> None:
        reserve = self._reserve
        while len(reserve) < self._size:
            try:
                reserve.append(os.dup(self._fd))
            except OSError:
                return  # the table is full: fewer this time, the rest after the next read

    def _release(self) -> None:
        for fd in self._reserve:
            os.close(fd)
        self._reserve.clear()

    def read(self, fd: int, view: memoryview) -> int:
        """``readv`` into ``view``, with the reserve released for the read's event fds.

        :raises OSError: as ``readv`` does
        """
        if not self._size or self._roomy:
            return os.readv(fd, (view,))
        with self._lock:
            self._release()
            try:
                return os.readv(fd, (view,))
            finally:
                self._take()

    def free_fds(self) -> int:
        """How many descriptors a read may create (at least the reserve).

        The estimate: the kernel installs the lowest free numbers, so the
        reserve, taken right after a read, sits on the lowest free ones, and
        what lies above it up to the limit is free unless the application
        holds high numbers.  Far from the limit (more than _ROOMY) that is
        all.  Closer, without FAN_REPORT_FD_ERROR an event the kernel cannot
        open is lost unseen, so the open descriptors are counted
        (``/proc/self/fd``, once per read); with it, a failure is only an
        event without its fd, and the estimate does (counted exactly for a
        while after a failure).
        """
        reserve = self._reserve
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if not self._size or soft == resource.RLIM_INFINITY:
            return 1 << 20  # FID mode: a pidfd that fails is reported in its record
        if len(reserve) < self._size:
            with self._lock:
                self._take()  # the consumer may have closed some since the last read
        estimate = soft - 1 - max(reserve) + len(reserve) if reserve else 0
        self._roomy = estimate > _ROOMY and not self._short
        if self._roomy:
            return estimate
        if self._exact or (self._short and time.monotonic() - self._last_failure < _EPISODE):
            try:
                # the listing's own fd is in it, and is closed again after
                open_now = len(os.listdir("/proc/self/fd")) - 1
            except OSError:
                return len(reserve)
            return max(len(reserve), soft - open_now + len(reserve))
        return max(len(reserve), estimate)

    def close(self) -> None:
        """Give the reserve back (before the group fd is closed)."""
        with self._lock:
            self._release()
            self._size = 0

    # -- what failed ---------------------------------------------------------

    def read_failed(self, exc: OSError) -> bool:
        """Count a failed read; True if reading may go on.

        A retryable errno means the kernel could not open the first event's
        fd and destroyed that event (denied it, in a permission group).
        """
        if not retryable(exc):
            return False
        self._counters.read_errors += 1
        if exc.errno in (_errno.EINTR, _errno.EAGAIN):
            return True  # nothing was taken from the queue
        self._event_failed(exc.errno or 0, 1)
        return True

    def fd_error(self, code: int, permission: bool) -> None:
        """An event read with FAN_REPORT_FD_ERROR whose fd could not be opened (errno ``code``).

        A permission event among them was denied by the kernel.
        """
        self._counters.fd_errors += 1
        self._event_failed(code, 1, delivered=True, denied=permission)

    def recovered(self) -> None:
        """A read installed every fd it asked for: an episode of failures may be over."""
        if self._short and time.monotonic() - self._last_failure >= _EPISODE:
            self._short = False
            log.warning(
                "fanotify events get their descriptors again (%d failed in this episode)",
                self._short_count,
            )
            self._short_count = 0

    def _event_failed(
        self, code: int, n: int, *, delivered: bool = False, denied: bool | None = None
    ) -> None:
        if denied is None:
            denied = self._perm_class
        if denied:
            self._perm.count_kernel_denied(n)
        if not delivered:
            self._counters.lost += n
        self._short_count += n
        now = self._last_failure = time.monotonic()
        if self._short:
            if now - self._last_log >= _REPEAT_LOG:
                self._last_log = now
                log.warning(
                    "fanotify events still fail to get descriptors: %d in this episode",
                    self._short_count,
                )
            return
        self._short = True
        self._last_log = now
        what = os.strerror(code) if code else "unknown error"
        if code in _OUT_OF_FDS:
            fix = _FIX
        else:
            fix = "check event_flags against the marked filesystem (e.g. read-only mounts)"
        if denied:
            log.error(
                "the kernel could not open a descriptor for fanotify permission events (%s), "
                "so it DENIED the opens itself, whatever the verdict would have been "
                "(counted in permission_stats.denied_by_kernel); %s",
                what, fix,
            )
        elif delivered:
            log.warning(
                "fanotify events arrive without a descriptor (%s; counted in "
                "stats.fd_errors, event.fd_error says why); %s", what, fix,
            )
        else:
            log.warning(
                "the kernel dropped fanotify events: it could not open their descriptor "
                "(%s; counted in stats.lost); %s", what, fix,
            )
