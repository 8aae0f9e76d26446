"""``Fanotify``: the group.  Owns the fd; reads, parses, resolves, dispatches.

Close order (as in trio's epoll backend): mark the group closed, answer every
pending permission event, wake the waiters, unregister the reader, close the
queued events' descriptors, and only then ``os.close`` the group fd.  Closing
the group fd also makes the kernel allow every permission event still in its
queue, so nothing waits on us after close.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import gc
import logging
import os
import resource
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal, NamedTuple, Union

from . import _ffi
from . import client as _client
from ._errors import init_error, mark_error
from ._parser import parse_lenient
from ._proc import HandleResolver, fd_path, process_info
from ._queue import EventQueue
from ._resource import AsyncClosingContext, WarnsUnclosed
from .client import DispatchStatistics, FanotifyClient
from .events import OWN_FD, UNANSWERED, FanotifyData
from .exceptions import ClosedResourceError, ParseError, WouldBlock
from .flags import (
    CLASS_BITS,
    DIR_CHANGE_EVENTS,
    FID_EVENTS,
    FID_INIT_FLAGS,
    MARK_TYPE_BITS,
    MNT_EVENTS,
    PERM_EVENTS,
    Event,
    InitFlag,
    MarkFlag,
    Response,
)
from .permission import (
    AT_CLOSE,
    DROPPED,
    RELEASED,
    AuditRule,
    PermissionHandler,
    PermissionStatistics,
    PermissionTracker,
    Verdict,
    Watchdog,
    check_timeout,
)
from .rules import FanoRule

__all__ = ["Fanotify", "GroupStatistics", "MarkKind"]

log = logging.getLogger(__name__)

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
MarkKind = Literal["inode", "mount", "filesystem", "mntns"]

_KINDS: dict[str, MarkFlag] = {
    "inode": MarkFlag.INODE,
    "mount": MarkFlag.MOUNT,
    "filesystem": MarkFlag.FILESYSTEM,
    "mntns": MarkFlag.MNTNS,
}
_ALL_INIT = 0
for _f in InitFlag:
    _ALL_INIT |= _f.value
_ALL_EVENTS = 0
for _e in Event:
    _ALL_EVENTS |= _e.value
_PERM = int(PERM_EVENTS)
_ALLOW = int(Response.ALLOW)
_DENY = int(Response.DENY)
_OVERFLOW = int(Event.Q_OVERFLOW)
_DIR_CHANGE = int(DIR_CHANGE_EVENTS)
_ONDIR = int(Event.ONDIR)
_DEFAULT_EVENT_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_LARGEFILE", 0)
#: Reads per readiness callback, so one busy group cannot starve the loop.
_READS_PER_WAKEUP = 8
#: fd mode: at most this many events per readiness callback.  Each one is an
#: open file until the consumer moves past it; a small batch, consumed while
#: it is still hot in the caches, drains a backlog faster than a large one
#: (about a fifth faster at 512 than at 8192 in bench/run.py's fd_drain).
_FD_EVENTS_PER_WAKEUP = 512
#: The smallest event: metadata only.
_MIN_EVENT_LEN = _ffi.lib.FAN_EVENT_METADATA_LEN
#: Seconds to wait before reading again after the kernel ran out of fds for us.
_FD_RETRY_DELAY = 0.05


class GroupStatistics(NamedTuple):
    """A snapshot of a group's counters."""

    #: Events decoded from the kernel.
    events_read: int
    #: Events handed to consumers (the group's iterator and its clients).
    events_delivered: int
    #: Q_OVERFLOW events received: the kernel dropped events before them.
    overflows: int
    #: Malformed events (each logged; fds closed, permission events allowed).
    parse_errors: int
    #: Events caused by this process and skipped (permission ones allowed).
    own_events: int
    #: read(2) calls that returned data.
    reads: int
    #: Bytes read.
    bytes_read: int
    #: Permission events answered with the default verdict (deadline, error, close);
    #: :attr:`Fanotify.permission_stats` breaks this down.
    defaulted: int
    #: Events waiting in the group's own queue.
    queued: int
    #: Events the kernel dropped because it could not open their fd in this
    #: process (EMFILE/ENFILE: the open-file limit was reached).
    lost: int = 0


class _Counters:
    __slots__ = (
        "events_read", "events_delivered", "overflows", "parse_errors", "own_events", "reads",
        "bytes_read", "lost",
    )

    def __init__(self) -> None:
        self.events_read = self.events_delivered = self.overflows = 0
        self.parse_errors = self.own_events = self.reads = self.bytes_read = 0
        self.lost = 0


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or flag, not {type(value).__name__}")
    return int(value)


class Fanotify(AsyncClosingContext, WarnsUnclosed):
    """A fanotify group, used from asyncio.

    ``async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:`` makes the group;
    :meth:`mark` says what to watch; ``async for event in fan`` yields events.

    :param flags: :class:`InitFlag` bits (class and reporting mode).
        NONBLOCK and CLOEXEC are always added.
    :param event_flags: ``open(2)`` flags for event fds (fd mode only).
    :param ignore_own: skip events caused by this process, so the library's
        own opens never come back to it (permission ones are allowed at once).
    :param proc_info: fill ``exe`` and ``cwd`` from /proc for every event.
    :param resolve_paths: fill ``path`` (and ``dir_path``, ``old_path``,
        ``new_path``) for every event.
    :param maxsize: bound of the group's own event queue; when it is full the
        group stops reading, and the backlog waits in the kernel's queue.
    :param buffer_size: bytes per read(2).
    :param handle_cache_size: directory handles kept resolved (FID modes).
    :param default_response: the verdict for permission events nobody answers
        in time, or whose handler fails, or that are pending at close.
    :param permission_timeout: seconds a permission event may wait for its
        verdict; then the group answers ``default_response`` (see docs/permissions.md).
    :param watchdog: in a permission group, run a thread that answers for the
        event loop when it stops reading or answering for ``permission_timeout``
        (a blocked loop cannot keep its own deadlines).
    :raises TypeError: for arguments of the wrong type
    :raises ValueError: for impossible flag combinations
    :raises PermissionError: without CAP_SYS_ADMIN (for non-FID groups)
    :raises UnsupportedFlagError: when the kernel rejects a flag; names the flag
    """

    def __init__(
        self,
        flags: int = InitFlag.CLASS_NOTIF,
        event_flags: int = _DEFAULT_EVENT_FLAGS,
        *,
        ignore_own: bool = True,
        proc_info: bool = False,
        resolve_paths: bool = True,
        maxsize: int = 8192,
        buffer_size: int = 256 * 1024,
        handle_cache_size: int = 4096,
        default_response: Response | int = Response.ALLOW,
        permission_timeout: float = 5.0,
        watchdog: bool = True,
    ) -> None:
        self._fd = -1
        self._closed = True
        flags = _check_int("flags", flags)
        event_flags = _check_int("event_flags", event_flags)
        maxsize = _check_int("maxsize", maxsize)
        buffer_size = _check_int("buffer_size", buffer_size)
        handle_cache_size = _check_int("handle_cache_size", handle_cache_size)
        default_response = _check_int("default_response", default_response)
        permission_timeout = check_timeout(permission_timeout)
        if flags & ~_ALL_INIT:
            raise ValueError(f"flags has bits no InitFlag names: {flags & ~_ALL_INIT:#x}")
        if flags & CLASS_BITS == CLASS_BITS:
            raise ValueError(
                "flags sets both CLASS_CONTENT and CLASS_PRE_CONTENT: choose one class"
            )
        if flags & InitFlag.REPORT_NAME and not flags & InitFlag.REPORT_DIR_FID:
            raise ValueError(
                "flags has REPORT_NAME without REPORT_DIR_FID: use InitFlag.REPORT_DFID_NAME"
            )
        if flags & InitFlag.REPORT_TARGET_FID and (
            flags & InitFlag.REPORT_DFID_NAME_TARGET != InitFlag.REPORT_DFID_NAME_TARGET
        ):
            raise ValueError(
                "flags has REPORT_TARGET_FID without REPORT_FID and REPORT_DFID_NAME: "
                "use InitFlag.REPORT_DFID_NAME_TARGET"
            )
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        if buffer_size < 4096:
            raise ValueError(f"buffer_size must be at least 4096 bytes, got {buffer_size}")
        if handle_cache_size < 0:
            raise ValueError(f"handle_cache_size must be >= 0, got {handle_cache_size}")
        if default_response not in (Response.ALLOW, Response.DENY):
            raise ValueError("default_response must be Response.ALLOW or Response.DENY")
        self.flags = InitFlag(flags)
        self.event_flags = event_flags
        self.ignore_own = bool(ignore_own)
        self.proc_info = bool(proc_info)
        self.resolve_paths = bool(resolve_paths)
        self.default_response = Response(default_response)
        self._fid_mode = bool(flags & FID_INIT_FLAGS)
        self._pid_is_tid = bool(flags & InitFlag.REPORT_TID)
        self._fd_error = bool(flags & InitFlag.REPORT_FD_ERROR)
        self._pidfd_reported = bool(flags & InitFlag.REPORT_PIDFD)
        self._fd = _open_group(flags | InitFlag.NONBLOCK | InitFlag.CLOEXEC, event_flags)
        self._closed = False
        self._pid = os.getpid()
        #: Ids that are always this process (thread ids are checked per event).
        self._own_tids: frozenset[int] = frozenset((self._pid,))
        #: Thread ids seen live in this process (REPORT_TID), see _is_own.
        self._seen_tids: set[int] = set()
        self._buf = bytearray(buffer_size)
        self._fast = _fast_decoder(buffer_size)
        if self._fast is not None:
            # Our events are frozen and hold no cycles (see Decoder.untrack).
            self._fast.untrack = True
        self._fd_budget = _fd_budget(flags)
        self._max_event_len = _max_event_len(flags)
        self._resolver = HandleResolver(handle_cache_size)
        self._counters = _Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._paused = False
        self._queue = EventQueue(maxsize, "block", on_space=self._resume)
        self._iter_last: FanotifyData | None = None
        #: Permission events read and not yet answered, their deadlines and verdicts.
        self._perm = PermissionTracker(self, permission_timeout, self.default_response)
        #: A CONTENT or PRE_CONTENT group never stops reading: a permission
        #: event left in the kernel's queue would have no deadline.
        self._perm_class = bool(flags & CLASS_BITS)
        self._use_watchdog = bool(watchdog)
        self._watchdog: Watchdog | None = None
        #: Events read while the queue was full, in order (block policy).
        self._held: list[FanotifyData] = []
        self._error: BaseException | None = None
        #: True once someone received from the group itself: with clients
        #: connected, its own queue then takes events too (see client.py).
        self._consuming = False
        self._clients = _client._Dispatcher(self)

    # -- properties ------------------------------------------------------

    def fileno(self) -> int:
        """The group fd (still owned by the group).

        :raises ClosedResourceError: if the group is closed
        """
        if self._closed:
            raise ClosedResourceError("the fanotify group is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def fid_mode(self) -> bool:
        """True when events carry file handles instead of fds."""
        return self._fid_mode

    @property
    def stats(self) -> GroupStatistics:
        c = self._counters
        return GroupStatistics(
            c.events_read, c.events_delivered, c.overflows, c.parse_errors, c.own_events,
            c.reads, c.bytes_read, self._perm.defaulted, len(self._queue), c.lost,
        )

    @property
    def permission_stats(self) -> PermissionStatistics:
        """Counters of permission verdicts: answered, defaulted and why, pending."""
        return self._perm.statistics()

    @property
    def permission_timeout(self) -> float:
        """Seconds a permission event may wait before the default verdict is written."""
        return self._perm.timeout

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<Fanotify {state} flags={self.flags!r}>"

    # -- marks -----------------------------------------------------------

    def mark(
        self,
        path: PathArg,
        events: int,
        kind: MarkKind | MarkFlag = "inode",
        *,
        ignore: bool = False,
        ignore_style: Literal["new", "old"] = "new",
        survive_modify: bool = False,
        evictable: bool = False,
        onlydir: bool = False,
        dont_follow: bool = False,
        dirfd: int | None = None,
    ) -> None:
        """Add ``events`` to the mark on ``path`` (or to its ignore mask).

        :param kind: ``"inode"``, ``"mount"``, ``"filesystem"`` or ``"mntns"``
            (a mount namespace file such as /proc/self/ns/mnt), or a MarkFlag.
        :param ignore: add to the ignore mask instead: events in it are not
            reported.  ``ignore_style="new"`` (FAN_MARK_IGNORE, Linux 6.0)
            honours ONDIR and EVENT_ON_CHILD; ``"old"`` is FAN_MARK_IGNORED_MASK.
        :param survive_modify: the ignore mask survives modification of the file.
        :param evictable: the kernel may drop this inode mark with its inode.
        :param onlydir: fail unless ``path`` is a directory.
        :param dont_follow: mark a symbolic link itself.
        :param dirfd: resolve a relative ``path`` against this directory fd.
        :raises FileNotFoundError: if ``path`` does not exist
        :raises PermissionError: if a capability is missing
        :raises UnsupportedFlagError: if the kernel rejects a flag or event
        :raises TypeError, ValueError: for bad arguments, naming the argument
        """
        mflags = MarkFlag.ADD | self._mark_flags(
            kind, ignore, ignore_style, survive_modify, evictable, onlydir, dont_follow
        )
        mask = self._check_events(events, kind_flags=mflags, ignore=ignore)
        self._do_mark(mflags, mask, path, dirfd)
        if mask & _PERM and not ignore and self._use_watchdog and self._watchdog is None:
            self._watchdog = Watchdog(self, tick=min(0.25, self._perm.timeout / 4))
        if self._fid_mode and self.resolve_paths and not mflags & MARK_TYPE_BITS == MarkFlag.MNTNS:
            self._register_mount(path, dirfd, dont_follow)

    def unmark(
        self,
        path: PathArg,
        events: int,
        kind: MarkKind | MarkFlag = "inode",
        *,
        ignore: bool = False,
        ignore_style: Literal["new", "old"] = "new",
        dont_follow: bool = False,
        onlydir: bool = False,
        dirfd: int | None = None,
    ) -> None:
        """Remove ``events`` from the mark on ``path`` (or from its ignore mask).

        :raises FileNotFoundError: if ``path`` does not exist or has no such mark
        :raises TypeError, ValueError: for bad arguments
        """
        mflags = MarkFlag.REMOVE | self._mark_flags(
            kind, ignore, ignore_style, False, False, onlydir, dont_follow
        )
        mask = self._check_events(events, kind_flags=mflags, ignore=ignore)
        self._do_mark(mflags, mask, path, dirfd)

    def flush(self, kind: MarkKind | MarkFlag = "inode") -> None:
        """Remove every mark of one kind (``inode`` marks, ``mount`` marks, ...).

        :raises ClosedResourceError: if the group is closed
        :raises ValueError, TypeError: if ``kind`` is not a mark type
        :raises UnsupportedFlagError: if the kernel rejects the mark type
        """
        mflags = MarkFlag.FLUSH | self._kind(kind)
        self._do_mark(mflags, 0, None, None)

    def _kind(self, kind: MarkKind | MarkFlag) -> MarkFlag:
        if isinstance(kind, str):
            try:
                return _KINDS[kind]
            except KeyError:
                raise ValueError(
                    f"kind {kind!r} is not one of {', '.join(map(repr, _KINDS))}"
                ) from None
        if isinstance(kind, int) and not isinstance(kind, bool):
            if kind & ~MARK_TYPE_BITS or kind not in (m.value for m in _KINDS.values()):
                raise ValueError(
                    f"kind {kind!r} is not a mark type: use INODE, MOUNT, FILESYSTEM or MNTNS"
                )
            return MarkFlag(kind)
        raise TypeError(f"kind must be a str or MarkFlag, not {type(kind).__name__}")

    def _mark_flags(
        self,
        kind: MarkKind | MarkFlag,
        ignore: bool,
        ignore_style: str,
        survive_modify: bool,
        evictable: bool,
        onlydir: bool,
        dont_follow: bool,
    ) -> MarkFlag:
        flags = self._kind(kind)
        if ignore:
            if ignore_style == "new":
                flags |= MarkFlag.IGNORE
            elif ignore_style == "old":
                flags |= MarkFlag.IGNORED_MASK
            else:
                raise ValueError(f"ignore_style must be 'new' or 'old', not {ignore_style!r}")
        if survive_modify:
            if not ignore:
                raise ValueError("survive_modify applies to ignore marks: pass ignore=True too")
            flags |= MarkFlag.IGNORED_SURV_MODIFY
        if evictable:
            if flags & MARK_TYPE_BITS:
                raise ValueError("evictable applies only to inode marks (kind='inode')")
            flags |= MarkFlag.EVICTABLE
        if onlydir:
            flags |= MarkFlag.ONLYDIR
        if dont_follow:
            flags |= MarkFlag.DONT_FOLLOW
        return flags

    def _check_events(self, events: int, *, kind_flags: int, ignore: bool) -> int:
        mask = _check_int("events", events)
        if not mask:
            raise ValueError("events must name at least one Event")
        if mask & ~_ALL_EVENTS:
            raise ValueError(f"events has bits no Event names: {mask & ~_ALL_EVENTS:#x}")
        kind = kind_flags & MARK_TYPE_BITS
        fid_only = mask & FID_EVENTS & ~Event.FS_ERROR if not ignore else 0
        if fid_only and not self._fid_mode:
            raise ValueError(
                f"events {Event(fid_only)!r} need a FID group: create it with "
                "InitFlag.REPORT_FID or InitFlag.REPORT_DFID_NAME"
            )
        perm = mask & _PERM
        if perm and not ignore and not self.flags & CLASS_BITS:
            raise ValueError(
                f"permission events {Event(perm)!r} need InitFlag.CLASS_CONTENT or "
                "CLASS_PRE_CONTENT"
            )
        if mask & Event.PRE_ACCESS and not self.flags & InitFlag.CLASS_PRE_CONTENT:
            raise ValueError("Event.PRE_ACCESS needs InitFlag.CLASS_PRE_CONTENT")
        if mask & MNT_EVENTS and kind != MarkFlag.MNTNS:
            raise ValueError("mount events need kind='mntns' and InitFlag.REPORT_MNT")
        if mask & Event.RENAME and not self.flags & InitFlag.REPORT_NAME:
            raise ValueError("Event.RENAME needs InitFlag.REPORT_DFID_NAME")
        return mask

    def _do_mark(
        self, mflags: int, mask: int, path: PathArg | None, dirfd: int | None
    ) -> None:
        if self._closed:
            raise ClosedResourceError("the fanotify group is closed")
        if dirfd is None:
            dirfd = _ffi.lib.AT_FDCWD
        else:
            dirfd = _check_int("dirfd", dirfd)
        if path is not None and not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"path must be str, bytes or os.PathLike, not {type(path).__name__}")
        fspath = None if path is None else os.fspath(path)
        try:
            _ffi.fanotify_mark(self._fd, mflags, mask, dirfd, fspath)
        except OSError as exc:
            shown = None if fspath is None else os.fsdecode(fspath)
            raise mark_error(exc, shown, mflags, mask) from None

    def _register_mount(self, path: PathArg, dirfd: int | None, dont_follow: bool) -> None:
        full = os.fspath(path)
        if dirfd is not None and not os.path.isabs(full):
            full = os.path.join(f"/proc/self/fd/{dirfd}", os.fsdecode(full))
        try:
            self._resolver.add_mount(full, dont_follow=dont_follow)
        except OSError as exc:
            log.warning("cannot keep a mount fd for %r; its paths stay unresolved: %s", full, exc)

    # -- reading ---------------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._closed:
            raise ClosedResourceError("the fanotify group is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a Fanotify group is bound to the event loop that first read it")
        if not self._reading and not self._paused:
            loop.add_reader(self._fd, self._on_readable)
            self._reading = True
            if len(self._perm):
                self._perm.ensure_timer(loop)

    def _pause(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._reading = False
        self._paused = True

    def _resume(self) -> None:
        if self._error is not None:
            return  # a failed group never reads again
        if self._held or self._clients.holds_reader:
            return  # a consumer still has no room (or async dispatch runs)
        self._paused = False
        if not self._closed and not self._reading and self._loop is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            if self._closed or self._paused:
                return
            size = self._read_size()
            if size == 0:
                self._pause()  # the consumer holds enough fds; _refill resumes
                return
            try:
                n = os.readv(self._fd, (memoryview(self._buf)[:size],))
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (_errno.EMFILE, _errno.ENFILE):
                    self._out_of_fds(exc)
                else:
                    self._fail(exc)
                return
            if n <= 0:
                return
            self._counters.reads += 1
            self._counters.bytes_read += n
            self._handle_batch(memoryview(self._buf)[:n])
            if n < size // 2 or self._fd_budget is not None:
                return

    def _read_size(self) -> int:
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
        room = min(self._queue.maxsize, self._fd_budget) - len(self._queue) - len(self._held)
        if room <= 0:
            # A permission group never stops reading (a process waits on each
            # event): one event at a time, answered at once if it does not fit.
            return self._max_event_len if self._perm_class else 0
        room = min(room, _FD_EVENTS_PER_WAKEUP)
        return min(full, max(self._max_event_len, room * _MIN_EVENT_LEN))

    def _out_of_fds(self, exc: OSError) -> None:
        # The kernel destroyed the event it could not open an fd for; the
        # rest stay queued in the kernel.  Count and log it, and read again
        # once the consumer has released an event or after a pause.
        lost = self._counters.lost = self._counters.lost + 1
        if not lost & (lost - 1):  # 1, 2, 4, 8, ...: logged, but not once per event
            log.warning(
                "the kernel dropped a fanotify event: no descriptor left for it (%s; %d "
                "so far); close events sooner, lower maxsize, or raise the open-file "
                "limit (ulimit -n)",
                exc.strerror, lost,
            )
        self._pause()
        if self._loop is not None:
            self._loop.call_later(_FD_RETRY_DELAY, self._resume)

    def read_batch(self) -> list[FanotifyData]:
        """Read once from the kernel and return the events (resolved), without queueing.

        For synchronous callers; the caller owns the events.

        :raises ClosedResourceError: if the group is closed
        :raises WouldBlock: if the kernel has no events
        :raises OSError: EMFILE/ENFILE when the kernel could not open an event's
            fd (it dropped that event; counted in ``stats.lost``)
        """
        if self._closed:
            raise ClosedResourceError("the fanotify group is closed")
        size = self._read_size() or self._max_event_len  # see _read_size
        try:
            n = os.readv(self._fd, (memoryview(self._buf)[:size],))
        except BlockingIOError:
            raise WouldBlock from None
        except OSError as exc:
            if exc.errno in (_errno.EMFILE, _errno.ENFILE):
                self._counters.lost += 1
            raise
        self._counters.reads += 1
        self._counters.bytes_read += n
        return self._decode(memoryview(self._buf)[:n])

    def _handle_batch(self, view: memoryview) -> None:
        # A batch is thousands of new objects that all live until consumed,
        # so the cyclic GC would run several young collections over them
        # mid-batch (and, counting those, older ones over everything) only to
        # find nothing to free.  It is paused for the decode alone (library
        # code, no user callbacks; other threads only have a collection
        # deferred) and its previous state restored; the next allocation
        # after that collects as usual.
        if gc.isenabled():
            gc.disable()
            try:
                events = self._decode(view)
            finally:
                gc.enable()
        else:
            events = self._decode(view)
        if events:
            self._deliver(events)

    def _decode(self, view: memoryview) -> list[FanotifyData]:
        fast = self._fast
        # The C decoder resolves event fds to paths while it walks the batch
        # (FID groups have no event fds; their paths come from handles below).
        fd_paths_done = fast is not None and self.resolve_paths and not self._fid_mode
        # Events [0, pre) of the plain FID+name shape come with their paths
        # from the C decoder's walk (see Decoder.decode), resolved through the
        # same cache; without a cache (handle_cache_size=0) each event asks
        # the kernel itself, below.
        pre = 0
        if fast is not None:
            dir_path = None
            if self.resolve_paths and self._fid_mode and self._resolver.caching:
                dir_path = self._resolver.resolve
            events, errors = fast.decode(
                view, len(view), owned=True, pid_is_tid=self._pid_is_tid,
                fd_error=self._fd_error, resolve_fd_paths=fd_paths_done,
                dir_path=dir_path, skip_pids=self._own_tids if self.ignore_own else (),
            )  # fmt: skip
            if dir_path is not None:
                pre = fast.resolved_upto
                if fast.resolved_count != pre:
                    pre = -pre  # some of them need the loop: see below
        else:
            events, errors = parse_lenient(
                view, owned=True, pid_is_tid=self._pid_is_tid, fd_error=self._fd_error
            )
        for err in errors:
            self._bad_event(err)
        c = self._counters
        c.events_read += len(events)
        # Per-event work below touches only locals: this loop runs for every
        # event the kernel hands us.
        own = self._own_tids if self.ignore_own else None
        pid_is_tid = self._pid_is_tid
        proc_info = self.proc_info
        if pre > 0 and not proc_info and not (own is not None and pid_is_tid):
            # Every event before the cut is a plain FID event with its paths,
            # from a pid that is not ours: nothing below would change it.
            # (With REPORT_TID an unknown tid may still be one of our threads.)
            if pre == len(events):
                return events  # type: ignore[no-any-return]
            out: list[FanotifyData] = events[:pre]
            events = events[pre:]
            pre = 0
        else:
            out = []
            pre = abs(pre)
        append = out.append
        fd_paths = self.resolve_paths and not fd_paths_done
        fid_paths = self.resolve_paths and self._fid_mode
        pidfd_reported = self._pidfd_reported
        resolve = self._resolver.resolve
        for ev in events:
            pre -= 1
            mask = ev.ev_types
            if mask & _OVERFLOW:
                c.overflows += 1
                log.warning("fanotify queue overflowed: the kernel dropped events")
                append(ev)
                continue
            if own is not None:
                pid = ev.pid
                if pid in own or (pid_is_tid and self._is_own(pid)):
                    c.own_events += 1
                    if ev._owns & UNANSWERED:
                        # Allow at once, so the agent can read the file it judges.
                        object.__setattr__(ev, "_owns", ev._owns & ~UNANSWERED)
                        try:
                            _ffi.respond(self._fd, ev.fd, Response.ALLOW)
                        except OSError as exc:
                            log.error("could not allow own permission event: %s", exc)
                    ev.close()
                    continue
            # Enrich in place: nobody else has seen the event yet, so filling
            # its fields now is the same as having built it with them.
            fd = ev.fd
            if fd >= 0:
                if fd_paths:
                    path, resolved = fd_path(fd)
                    _set_path(ev, path)
                    _set_path_resolved(ev, resolved)
            elif fid_paths:
                dfid = ev.dfid
                if (
                    dfid is None
                    or ev.old_dfid is not None
                    or ev.new_dfid is not None
                    or (mask & _DIR_CHANGE and mask & _ONDIR)
                ):
                    self._resolve_fid(ev)
                elif pre < 0:
                    # The common FID shape (a DFID_NAME record), as in
                    # _resolve_fid, without its calls.
                    d = resolve(dfid)
                    _set_dir_path(ev, d)
                    name = ev.name
                    if d is None:
                        _set_path(ev, name)
                    else:
                        if not name or name == ".":
                            _set_path(ev, d)
                        elif d == "/":
                            _set_path(ev, "/" + name)
                        else:
                            _set_path(ev, d + "/" + name)
                        _set_path_resolved(ev, True)
            if proc_info:
                exe, cwd = process_info(ev.pid, ev.pidfd, pidfd_reported=pidfd_reported)
                _set_exe(ev, exe)
                _set_cwd(ev, cwd)
            if ev._owns & UNANSWERED:
                _set_group(ev, self)
                self._perm.add(ev, self._loop)
            append(ev)
        return out

    def _is_own(self, pid: int) -> bool:
        if pid in self._own_tids:
            return True
        if not self._pid_is_tid:
            return False
        # With REPORT_TID, ``pid`` is a thread id.  A live thread of ours is
        # listed under /proc/self/task.  One that has exited since the event
        # is still ours as long as no other process holds its id; once the id
        # is reused (it shows under /proc again), it is never trusted: that
        # process's permission events must not be allowed unseen.
        if os.path.exists(f"/proc/self/task/{pid}"):
            seen = self._seen_tids
            if len(seen) >= 4096:
                seen.clear()
            seen.add(pid)
            return True
        if pid in self._seen_tids:
            if os.path.exists(f"/proc/{pid}"):
                self._seen_tids.discard(pid)
                return False
            return True
        return False

    def _enrich(self, ev: FanotifyData) -> FanotifyData:
        """Fill paths and process details of a fresh event, in place; returns it."""
        if self.resolve_paths:
            if ev.fd >= 0:
                path, resolved = fd_path(ev.fd)
                _set_path(ev, path)
                _set_path_resolved(ev, resolved)
            elif self._fid_mode:
                self._resolve_fid(ev)
        if self.proc_info:
            exe, cwd = process_info(
                ev.pid, ev.pidfd, pidfd_reported=self._pidfd_reported
            )
            _set_exe(ev, exe)
            _set_cwd(ev, cwd)
        return ev

    def _resolve_fid(self, ev: FanotifyData) -> None:
        """Set the paths of a fresh FID event from its handles (in place)."""
        res = self._resolver
        mask = ev.ev_types
        if mask & _DIR_CHANGE and mask & _ONDIR:
            # A directory moved or went away: cached paths under it may be stale.
            res.invalidate()
        old_dfid = ev.old_dfid
        new_dfid = ev.new_dfid
        if old_dfid is not None or new_dfid is not None:
            resolved = True
            old_path = new_path = None
            if old_dfid is not None:
                d = res.resolve(old_dfid)
                if d is None:
                    resolved = False
                    old_path = ev.old_name
                else:
                    old_path = _join(d, ev.old_name)
                _set_old_path(ev, old_path)
            if new_dfid is not None:
                d = res.resolve(new_dfid)
                if d is None:
                    resolved = False
                    new_path = ev.new_name
                else:
                    new_path = _join(d, ev.new_name)
                _set_new_path(ev, new_path)
            _set_path(ev, new_path or old_path)
            _set_path_resolved(ev, resolved)
            return
        dfid = ev.dfid
        if dfid is not None:
            d = res.resolve(dfid)
            _set_dir_path(ev, d)
            if d is None:
                _set_path(ev, ev.name)
                _set_path_resolved(ev, False)
            else:
                _set_path(ev, _join(d, ev.name))
                _set_path_resolved(ev, True)
            return
        fid = ev.fid
        if fid is not None:
            p = res.resolve(fid, cache=False)
            _set_path(ev, p)
            _set_path_resolved(ev, p is not None)

    def _bad_event(self, err: ParseError) -> None:
        self._counters.parse_errors += 1
        # Answer first, then close: a malformed permission event must not hang
        # the process that caused it.
        if err.fd >= 0:
            if err.mask & _PERM:
                try:
                    _ffi.respond(self._fd, err.fd, Response.ALLOW)
                except OSError:
                    pass
            try:
                os.close(err.fd)
            except OSError:
                pass
        if err.pidfd >= 0:
            try:
                os.close(err.pidfd)
            except OSError:
                pass
        log.error("dropped a malformed fanotify event: %s", err)

    def _deliver(self, events: list[FanotifyData]) -> None:
        if self._perm.handler is not None:
            events = self._dispatch_permission(events)
            if not events:
                return
        if self._clients.active:
            self._clients.dispatch(events)
            return
        taken = self._queue.put_many(events)
        self._counters.events_delivered += taken
        if taken < len(events):
            if self._perm_class:
                self._overflow_drop(events[taken:])
            else:
                # The queue is full: keep the rest for when it drains.
                self._overflow_hold(events[taken:])

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
                self._answer_default(ev, DROPPED)
            ev.close()
        self._perm.queue_dropped += len(rest) - perm
        log.warning(
            "event queue full (maxsize=%d): dropped %d event(s), %d permission event(s) "
            "answered %s", self._queue.maxsize, len(rest), perm, self.default_response.name,
        )

    def _overflow_hold(self, rest: list[FanotifyData]) -> None:
        # Block policy: stop reading; events already read wait here in order.
        self._held.extend(rest)
        self._pause()

    def _fail(self, exc: OSError) -> None:
        log.error("reading the fanotify group failed: %s", exc)
        self._error = exc
        self._pause()
        # Events already read are still delivered; the consumer gets the
        # error once they are gone (see _refill).
        if not len(self._queue) and not self._held:
            self._queue.close()
        self._clients.fail(exc)

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
        return ev

    async def receive(self) -> FanotifyData:
        """The next event; the caller owns it (close it, or use ``with event:``).

        :raises ClosedResourceError: if the group is closed (or closes while waiting)
        """
        self._ensure_reader()
        self._consuming = True
        try:
            ev = await self._queue.get()
        except ClosedResourceError:
            if self._error is not None:
                raise ClosedResourceError(f"the group failed: {self._error}") from self._error
            raise
        if ev._owns & UNANSWERED:
            self._perm.received_by(ev)
        self._refill()
        return ev

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
        elif self._paused:
            self._resume()

    def __aiter__(self) -> AsyncIterator[FanotifyData]:
        return self

    async def __anext__(self) -> FanotifyData:
        # Moving past an event releases what the consumer did not detach.
        last = self._iter_last
        if last is not None:
            self._iter_last = None
            owns = last._owns
            if owns == OWN_FD:
                # FanotifyData.close() for the usual case (only an fd), inline.
                _set_owns(last, 0)
                os.close(last.fd)
            elif owns:
                last.close()
        # The common case, once reading has started: an event is already
        # queued.  Same steps as receive(), without its await and checks.
        # (The loop check is left to receive(), reached whenever the queue is
        # empty: on Python 3.11 asyncio.get_running_loop() costs a getpid()
        # system call, too much to pay per event.)
        if self._consuming and (self._reading or self._paused) and not self._closed:
            try:
                ev = self._queue.get_nowait()
            except (WouldBlock, ClosedResourceError):
                pass
            else:
                if ev._owns & UNANSWERED:
                    self._perm.received_by(ev)
                # _refill() has work only when held events fit (see there), or
                # when nothing is held and reading is to resume (or fail).
                held = self._held
                if (
                    len(self._queue) <= self._queue.maxsize // 2 if held
                    else self._paused or self._error is not None
                ):  # fmt: skip
                    self._refill()
                self._iter_last = ev
                return ev
        try:
            ev = await self.receive()
        except ClosedResourceError:
            if self._error is not None:
                raise  # a failed read ends the iteration loudly, not as if closed
            raise StopAsyncIteration from None
        self._iter_last = ev
        return ev

    # -- clients ---------------------------------------------------------

    def connect(
        self,
        rule: FanoRule,
        *,
        maxsize: int = _client.DEFAULT_MAXSIZE,
        overflow: Literal["block", "drop_oldest", "drop_newest"] | None = None,
    ) -> FanotifyClient:
        """Connect ``rule``; returns a :class:`~afanotify.FanotifyClient` for its events.

        ``overflow`` defaults to ``"block"`` (``"drop_newest"`` in a
        CLASS_CONTENT/PRE_CONTENT group, which never stops reading).

        See :mod:`afanotify.client` for fan-out, descriptors and overflow.

        :raises ClosedResourceError: if the group is closed
        :raises TypeError, ValueError: for bad arguments
        """
        return _client.connect(self, rule, maxsize=maxsize, overflow=overflow)

    def disconnect(self, rule_or_client: FanoRule | FanotifyClient) -> int:
        """Stop delivery to a client, or to every client with an equal rule, at once.

        Returns how many clients were closed (0 if none was connected).
        """
        return _client.disconnect(self, rule_or_client)

    @property
    def dispatch_stats(self) -> DispatchStatistics:
        """Counters of the fan-out to clients."""
        return self._clients.stats()

    # -- permission responses -------------------------------------------

    def on_permission(self, handler: PermissionHandler | None) -> PermissionHandler | None:
        """Decide permission events with ``handler`` instead of the iterator.

        ``handler(event)`` (a plain or ``async`` function) returns the verdict:
        ``True``/``False``, a :class:`~afanotify.Verdict` or a ``Response``.  It
        may instead answer with ``event.allow()``/``event.deny()`` and return
        ``None``.  The group closes the event after the verdict.  If the
        handler raises, returns something else, or is still running at the
        deadline (it is then cancelled), the default verdict is written.
        Other events still go to ``receive()``/``async for``.  A plain function
        runs inside the reader callback: it must not block.  ``None`` removes
        the handler.  Usable as a decorator; returns ``handler``.

        :raises TypeError: if ``handler`` is not callable
        """
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self._perm.handler = handler
        return handler

    def answer_overdue(self) -> int:
        """Answer permission events past their deadline; returns how many.

        The event loop does this by itself.  Synchronous readers
        (:meth:`read_batch` without a running loop) call it from their loop.
        """
        return self._perm.expire()

    def _respond(
        self, ev: FanotifyData, allowed: bool, errno: int | None, audit: bool,
        audit_rule: AuditRule | None,
    ) -> None:
        if errno is None and not audit and audit_rule is None and ev.ev_types & _PERM:
            # Plain allow or deny: valid for every permission group.
            self._perm.write(ev, _ALLOW if allowed else _DENY)
            return
        self._perm.respond(ev, Verdict(allowed, errno, audit, audit_rule))

    def _respond_verdict(self, ev: FanotifyData, verdict: Verdict) -> None:
        self._perm.respond(ev, verdict)

    def _write_response(
        self, ev: FanotifyData, response: int, audit_rule: tuple[int, int, int] | None = None
    ) -> None:
        """Write an encoded verdict for ``ev`` and mark it answered.

        :raises AlreadyAnsweredError: if ``ev`` was answered before
        """
        rule = None if audit_rule is None else AuditRule(*audit_rule)
        self._perm.write(ev, response, rule)

    def _answer_default(self, ev: FanotifyData, reason: str = RELEASED) -> None:
        """Answer ``ev`` with the default verdict (when it is closed or dropped unanswered)."""
        err = self._perm.answer_default(ev, reason)
        if err is not None:
            log.error("could not answer permission event fd=%d: %s", ev.fd, err)

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Close the group.  Idempotent.

        Pending permission events are answered with the default verdict, the
        iterators end, queued events are released, then the fd is closed.
        """
        if self._closed:
            return
        # 0. the watchdog thread must be gone before the fd number is freed
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        # 1. answer what is pending, and what is still in the kernel's queue,
        #    while the fd is still open
        self._perm.close()
        if self._perm_class:
            self._drain_kernel_queue()
        self._closed = True
        left = self._queue.close() + self._held  # 2. wake the waiters
        left += self._clients.close_all()
        self._held = []
        if self._reading and self._loop is not None:  # 3. unregister
            try:
                self._loop.remove_reader(self._fd)
            except Exception:  # the loop may already be closed
                pass
            self._reading = False
        try:
            for ev in left:
                ev.close()
            self._release_last()
        finally:
            fd, self._fd = self._fd, -1
            self._resolver.close()
            os.close(fd)  # 4. the kernel allows whatever is still queued

    def _drain_kernel_queue(self) -> None:
        # Read what the kernel still queues and give its permission events the
        # default verdict.  (Closing the fd would allow them regardless of
        # default_response.)  Bounded: the kernel's queue is.
        for ev in self._read_leftovers(self._fd, self._buf):
            if ev._owns & UNANSWERED:
                object.__setattr__(ev, "_group", self)
                self._perm.add(ev, None)
                if self.ignore_own and self._is_own(ev.pid):
                    self._write_response(ev, Response.ALLOW)
                else:
                    self._answer_default(ev, AT_CLOSE)
            ev.close()

    def _read_leftovers(self, fd: int, buf: bytearray) -> Iterator[FanotifyData]:
        """Events still queued in the kernel, read from ``fd`` into ``buf``.

        For the paths that must answer them outside the normal reader (close,
        the watchdog).  At most 64 reads: the kernel's queue is bounded.
        Malformed events are handled as in a normal read.
        """
        for _ in range(64):
            try:
                n = os.readv(fd, (buf,))
            except OSError:
                return
            if n <= 0:
                return
            events, errors = parse_lenient(
                memoryview(buf)[:n], owned=True, pid_is_tid=self._pid_is_tid,
                fd_error=self._fd_error,
            )
            for err in errors:
                self._bad_event(err)
            yield from events


def _fast_decoder(bufsize: int) -> Any:
    """The C batch decoder, or None when this core lacks it or AFANOTIFY_PURE_PARSER is set.

    The pure parser stays the reference and the fallback: both give the same
    events (tests/test_fastparse_differential.py).
    """
    if os.environ.get("AFANOTIFY_PURE_PARSER"):
        return None
    try:
        from ._fastparse import Decoder
    except (ImportError, AttributeError) as exc:  # a core built before csrc/fastpath.c
        log.debug("C batch decoder unavailable, using the pure parser: %s", exc)
        return None
    return Decoder(bufsize)


def _setter(name: str) -> Any:
    # The slot's own descriptor: sets a field of a frozen event we just decoded
    # without the per-field cost of dataclasses.replace() or object.__setattr__.
    return FanotifyData.__dict__[name].__set__


_set_path = _setter("path")
_set_path_resolved = _setter("path_resolved")
_set_dir_path = _setter("dir_path")
_set_old_path = _setter("old_path")
_set_new_path = _setter("new_path")
_set_exe = _setter("exe")
_set_cwd = _setter("cwd")
_set_group = _setter("_group")
_set_owns = _setter("_owns")
def _fd_budget(flags: int) -> int | None:
    """How many events carrying fds the group may hold at once (None: no fds)."""
    fd_mode = not flags & FID_INIT_FLAGS
    per_event = int(fd_mode) + int(bool(flags & InitFlag.REPORT_PIDFD))
    if not per_event:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    # Half the limit, so the application keeps the other half.
    return max(16, soft // 2 // per_event)


def _max_event_len(flags: int) -> int:
    """The largest single event this group can read (the least a read may ask for)."""
    if flags & FID_INIT_FLAGS:
        return 4096  # handles and names: two FID+name records fit easily
    # metadata, then a PIDFD record (8 bytes), a RANGE record (24, PRE_ACCESS)
    size: int = _MIN_EVENT_LEN + _ffi.ffi.sizeof("struct fanotify_event_info_range")
    if flags & InitFlag.REPORT_PIDFD:
        size += _ffi.ffi.sizeof("struct fanotify_event_info_pidfd")
    return size


def _join(directory: str, name: str | None) -> str:
    if not name or name == ".":
        return directory
    if directory == "/":
        return "/" + name
    return directory + "/" + name


def _open_group(flags: int, event_flags: int) -> int:
    try:
        return _ffi.fanotify_init(flags, event_flags)
    except OSError as exc:
        culprit = None
        if exc.errno == _errno.EINVAL:
            culprit = _find_rejected_init_flag(flags, event_flags)
        raise init_error(exc, flags, culprit) from None


def _find_rejected_init_flag(flags: int, event_flags: int) -> InitFlag | None:
    """Which flag, or pair of flags, makes fanotify_init fail with EINVAL, if any.

    A single flag the kernel rejects on its own (too old a kernel) is returned
    alone; otherwise the first pair the kernel refuses to combine (e.g.
    REPORT_MNT with REPORT_FID) is returned as the two bits together.
    """
    base = flags & (InitFlag.NONBLOCK | InitFlag.CLOEXEC)
    singles = [
        flag for flag in InitFlag
        if flag.value and not flag.value & (flag.value - 1) and flags & flag.value
        and flag not in (InitFlag.NONBLOCK, InitFlag.CLOEXEC)
    ]

    def rejected(probe: int) -> bool:
        # The kernel requires these companions; they are in ``flags`` too.
        if probe & InitFlag.REPORT_NAME:
            probe |= InitFlag.REPORT_DIR_FID
        if probe & InitFlag.REPORT_TARGET_FID:
            probe |= InitFlag.REPORT_DFID_NAME_TARGET
        try:
            fd = _ffi.fanotify_init(base | probe, event_flags)
        except OSError as exc:
            return exc.errno == _errno.EINVAL
        os.close(fd)
        return False

    for flag in singles:
        if rejected(flag.value):
            return flag
    for i, first in enumerate(singles):
        for second in singles[i + 1:]:
            if rejected(first.value | second.value):
                return first | second
    return None
