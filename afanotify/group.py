"""``Fanotify``: the group.  Owns the fd and holds its parts together.

Close order (as in trio's epoll backend): remove the marks (so a copy of the
fd in a forked child cannot keep processes waiting), stop the watchdog thread, answer
every pending permission event and what is still in the kernel's queue (the
fd is still open), mark the group closed, wake the waiters and end the
clients, unregister the reader, release the queued events' descriptors, and
only then ``os.close`` the group fd.  Closing the group fd also makes the
kernel allow every permission event still in its queue, so nothing waits on
us after close.  In a forked child, ``close()`` only closes the child's
copies (see :mod:`afanotify._fork`).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from typing import Literal, NamedTuple

from . import _answer, _batches, _dispatch, _fork, _permthread, _static, _tree
from . import client as _client
from ._batches import BatchSink
from ._consume import OwnQueue, events_iter
from ._dirmap import DEFAULT_SIZE as DEFAULT_DIRS
from ._dispatch import DispatchStatistics
from ._loop import LoopLike
from ._marks import (
    MarkKind,
    PathArg,
    check_events,
    check_int,
    do_mark,
    kind_flag,
    mark_flags,
    unresolvable_reason,
)
from ._open import open_group
from ._pipeline import Counters, Pipeline
from ._queue import EventQueue
from ._resource import AsyncClosingContext
from ._threaded import make_reader
from ._watchdog import Watchdog
from .client import FanotifyClient
from .events import UNANSWERED, FanotifyData
from .exceptions import ClosedResourceError, WouldBlock
from .flags import (
    CLASS_BITS,
    FID_INIT_FLAGS,
    MARK_TYPE_BITS,
    PERM_EVENTS,
    Event,
    InitFlag,
    MarkFlag,
    Response,
)
from .permission import (
    AT_CLOSE,
    PermissionHandler,
    PermissionStatistics,
    PermissionTracker,
    check_timeout,
)
from .rules import FanoRule

__all__ = ["Fanotify", "GroupStatistics", "MarkKind"]

log = logging.getLogger(__name__)

_ALL_INIT = 0
for _f in InitFlag:
    _ALL_INIT |= _f.value
_PERM = int(PERM_EVENTS)
_ALLOW = int(Response.ALLOW)
_DEFAULT_EVENT_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_LARGEFILE", 0)


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
    #: process (EMFILE/ENFILE: the open-file limit was reached, or the open
    #: failed) and destroyed, without FAN_REPORT_FD_ERROR (see docs/reliability.md).
    lost: int = 0
    #: Events that arrived without their fd, because the kernel could not open
    #: it (FAN_REPORT_FD_ERROR: ``event.fd_error`` is the errno).
    fd_errors: int = 0
    #: read(2) calls that failed and were retried (each error is logged once
    #: per episode; the group keeps reading).
    read_errors: int = 0


def _check_init(
    flags: int, event_flags: int, maxsize: int, buffer_size: int, handle_cache_size: int,
    default_response: int,
) -> tuple[int, int, int, int, int, int]:
    """The integer arguments of :class:`Fanotify`, checked (the errors it documents)."""
    if isinstance(flags, (Event, MarkFlag)):
        raise TypeError(
            f"flags must be InitFlag bits, not {type(flags).__name__}.{flags!r}: "
            "events go to mark()"
        )
    flags = check_int("flags", flags, bits=32)
    event_flags = check_int("event_flags", event_flags, bits=32)
    maxsize = check_int("maxsize", maxsize)
    buffer_size = check_int("buffer_size", buffer_size)
    handle_cache_size = check_int("handle_cache_size", handle_cache_size)
    default_response = check_int("default_response", default_response)
    if flags & ~_ALL_INIT:
        raise ValueError(f"flags has bits no InitFlag names: {flags & ~_ALL_INIT:#x}")
    if flags & CLASS_BITS == CLASS_BITS:
        raise ValueError("flags sets both CLASS_CONTENT and CLASS_PRE_CONTENT: choose one class")
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
    return flags, event_flags, maxsize, buffer_size, handle_cache_size, default_response


def _keep_mount(pipeline: Pipeline, path: PathArg, dirfd: int | None, dont_follow: bool) -> None:
    """Let the FID path map open handles on a new mark's filesystem; warn where it cannot."""
    full = os.fspath(path)
    if dirfd is not None and not os.path.isabs(full):
        full = os.path.join(f"/proc/self/fd/{dirfd}", os.fsdecode(full))
    try:
        pipeline.resolver.add_mount(full, dont_follow=dont_follow)
    except OSError as exc:
        log.warning("cannot keep a mount fd for %r; its paths stay unresolved: %s", full, exc)
        return
    reason = unresolvable_reason(full)
    if reason is not None:
        log.warning(
            "paths of events under %r cannot be resolved (%s): events carry file handles "
            "and names only (overlayfs needs nfs_export=on; or use a group without FID "
            "flags)", full, reason,
        )


def _decode_without_gc(pipeline: Pipeline, view: memoryview, loop: LoopLike | None
                       ) -> list[FanotifyData]:
    # A batch is thousands of new objects that all live until consumed,
    # so the cyclic GC would run several young collections over them
    # mid-batch (and, counting those, older ones over everything) only to
    # find nothing to free.  It is paused for the decode alone (library
    # code, no user callbacks; other threads only have a collection
    # deferred) and its previous state restored; the next allocation
    # after that collects as usual.
    if not gc.isenabled():
        return pipeline.decode(view, loop)
    gc.disable()
    try:
        return pipeline.decode(view, loop)
    finally:
        gc.enable()


class Fanotify(OwnQueue, _fork.ForkGuard, AsyncClosingContext):
    """A fanotify group, used from asyncio or trio.

    Its parts, each in its own module: the reader (``_reader.py``) registers
    the fd with the loop and reads batches; the pipeline (``_pipeline.py``)
    decodes and fills in every event; the permission tracker
    (``permission.py``) answers permission events; the dispatcher
    (``_dispatch.py``) fans events out to clients.  This class holds them
    together, keeps the public API, and closes them in order (see the
    module docstring).

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
    :param handle_cache_size: directories the FID path map keeps at most
        (default 65,536; see docs/group.md, "Paths in FID mode").
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
        handle_cache_size: int = DEFAULT_DIRS,
        default_response: Response | int = Response.ALLOW,
        permission_timeout: float = 5.0,
        watchdog: bool = True,
    ) -> None:
        self._fd = -1
        self._closed = True
        flags, event_flags, maxsize, buffer_size, handle_cache_size, default_response = (
            _check_init(flags, event_flags, maxsize, buffer_size, handle_cache_size,
                        default_response)
        )  # fmt: skip
        permission_timeout = check_timeout(permission_timeout)
        self.flags = InitFlag(flags)
        self.event_flags = event_flags
        self.ignore_own = bool(ignore_own)
        self.proc_info = bool(proc_info)
        self.resolve_paths = bool(resolve_paths)
        self.default_response = Response(default_response)
        self._fid_mode = bool(flags & FID_INIT_FLAGS)
        self._fd, opened = open_group(flags | InitFlag.NONBLOCK | InitFlag.CLOEXEC, event_flags)
        flags |= opened & InitFlag.REPORT_FD_ERROR  # added where the kernel has it
        self.flags = InitFlag(flags)
        self._closed = False
        #: The process that made the group; in any other (a forked child) it is inherited.
        self._pid = os.getpid()
        self._inherited = False
        self._counters = Counters()
        #: Permission events read and not yet answered, their deadlines and verdicts.
        self._perm = PermissionTracker(flags, permission_timeout, self.default_response)
        self._perm.fd = self._fd
        self._pipeline = Pipeline(
            self._fd, flags, ignore_own=self.ignore_own, proc_info=self.proc_info,
            resolve_paths=self.resolve_paths, handle_cache_size=handle_cache_size,
            bufsize=buffer_size, perm=self._perm, counters=self._counters,
        )  # fmt: skip
        self._queue = EventQueue(maxsize, "block", on_space=self._resume)
        #: Events read while the queue was full, in order (block policy).
        self._held: list[FanotifyData] = []
        self._reader = make_reader(
            self._fd, flags, buffer_size, self._counters, capacity=maxsize,
            queued=self._queued, on_batch=self._handle_batch, on_fail=self._fail,
            on_retry=self._resume, guard=self._pipeline.fdguard,
        )  # fmt: skip
        self._events_iter = events_iter(self)  # holds the last event of async for
        self._batch_sink: BatchSink | None = None
        #: A CONTENT or PRE_CONTENT group never stops reading: a permission
        #: event left in the kernel's queue would have no deadline.
        self._perm_class = bool(flags & CLASS_BITS)
        self._use_watchdog = bool(watchdog)
        self._watchdog: Watchdog | None = None
        self._error: BaseException | None = None
        #: True once someone received from the group itself: with clients
        #: connected, its own queue then takes events too (see client.py).
        self._consuming = False
        self._clients = _dispatch.Dispatcher(
            _GroupPort(self), flags, fill_process=self._pipeline.fill_process
        )
        _fork.track(self)

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
        """True once :meth:`close` has run."""
        return self._closed

    @property
    def fid_mode(self) -> bool:
        """True when events carry file handles instead of fds."""
        return self._fid_mode

    @property
    def stats(self) -> GroupStatistics:
        """A snapshot of the group's counters (:class:`GroupStatistics`)."""
        c = self._counters
        return GroupStatistics(
            c.events_read, c.events_delivered, c.overflows, c.parse_errors, c.own_events,
            c.reads, c.bytes_read, self._perm.defaulted, len(self._queue), c.lost,
            c.fd_errors, c.read_errors,
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
        mflags = MarkFlag.ADD | mark_flags(
            kind, ignore, ignore_style, survive_modify, evictable, onlydir, dont_follow
        )
        mask = self._check_events(events, mflags, ignore)
        self._do_mark(mflags, mask, path, dirfd)
        if (
            mask & _PERM and not ignore and self._use_watchdog and self._watchdog is None
            and not self._inherited  # a child's watchdog would read the parent's events
        ):
            self._watchdog = Watchdog(
                self._fd, self._perm, self._pipeline, self._counters,
                tick=min(0.25, self._perm.timeout / 4),
            )  # fmt: skip
        if self._fid_mode and self.resolve_paths and not mflags & MARK_TYPE_BITS == MarkFlag.MNTNS:
            _keep_mount(self._pipeline, path, dirfd, dont_follow)

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
        mflags = MarkFlag.REMOVE | mark_flags(
            kind, ignore, ignore_style, False, False, onlydir, dont_follow
        )
        mask = self._check_events(events, mflags, ignore)
        self._do_mark(mflags, mask, path, dirfd)

    def flush(self, kind: MarkKind | MarkFlag = "inode") -> None:
        """Remove every mark of one kind (``inode`` marks, ``mount`` marks, ...).

        :raises ClosedResourceError: if the group is closed
        :raises ValueError, TypeError: if ``kind`` is not a mark type
        :raises UnsupportedFlagError: if the kernel rejects the mark type
        """
        self._do_mark(MarkFlag.FLUSH | kind_flag(kind), 0, None, None)

    def _check_events(self, events: int, mflags: int, ignore: bool) -> int:
        return check_events(
            events, group_flags=self.flags, fid_mode=self._fid_mode, kind_flags=mflags,
            ignore=ignore,
        )  # fmt: skip

    def _do_mark(self, mflags: int, mask: int, path: PathArg | None, dirfd: int | None) -> None:
        if self._closed:
            raise ClosedResourceError("the fanotify group is closed")
        do_mark(self._fd, mflags, mask, path, dirfd)
        ign = bool(mflags & (MarkFlag.IGNORE | MarkFlag.IGNORED_MASK))
        self._pipeline.dirmap.note_mark(mflags, mask, ign)

    # -- reading ---------------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._closed:
            raise ClosedResourceError("the fanotify group is closed")
        if self._inherited or (not self._reader.reading and self._forked()):
            raise self._inherited_error("read from")
        loop = self._reader.bind()
        if self._reader.start() and len(self._perm):
            self._perm.ensure_timer(loop)

    def _queued(self) -> int:
        return len(self._queue) + len(self._held)

    def _pause(self) -> None:
        self._reader.pause()

    def _resume(self) -> None:
        if self._closed or self._error is not None:
            return  # a closed or failed group never reads again
        if self._held or self._clients.holds_reader:
            return  # a consumer still has no room (or async dispatch runs)
        self._reader.resume()

    def read_batch(
        self, on_read: Callable[[memoryview], object] | None = None
    ) -> list[FanotifyData]:
        """Read once from the kernel and return the events (resolved), without queueing.

        For synchronous callers; the caller owns the events.  ``on_read``
        gets the bytes read before they are decoded (valid for the call).

        :raises ClosedResourceError: if the group is closed
        :raises WouldBlock: if the kernel has no events
        :raises OSError: EMFILE/ENFILE when the kernel could not open an event's
            fd (it dropped that event; counted in ``stats.lost``)
        """
        if self._closed:
            raise ClosedResourceError("the fanotify group is closed")
        if self._forked():
            raise self._inherited_error("read from")
        try:
            view = self._reader.read_once()
        except BlockingIOError:
            raise WouldBlock from None
        if on_read is not None:
            on_read(view)
        return self._pipeline.decode(view, self._reader.loop)

    def _handle_batch(self, view: memoryview) -> None:
        events = _answer.decode_or_fail(self, view, _decode_without_gc)
        if events:
            self._deliver(events)

    def _fail(self, exc: OSError) -> None:
        log.error("reading the fanotify group failed: %s", exc)
        self._error = exc
        self._pause()
        # Events already read are still delivered; the consumer gets the
        # error once they are gone (see _refill).
        if not len(self._queue) and not self._held:
            self._queue.close()
        if self._batch_sink is not None:
            self._batch_sink.wake()
        self._clients.fail(exc)

    batches = _batches.batches
    watch_tree = _tree.watch_tree
    tree_stats = property(_tree.tree_stats)

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
        CLASS_CONTENT/PRE_CONTENT group, which never stops reading). See
        :mod:`afanotify.client` for fan-out, descriptors and overflow.

        :raises ClosedResourceError: if the group is closed
        :raises TypeError, ValueError: for bad arguments
        """
        return _client.connect(self, rule, maxsize=maxsize, overflow=overflow)

    def disconnect(self, rule_or_client: FanoRule | FanotifyClient) -> int:
        """Stop delivery to a client, or to every client with an equal rule, at once.

        Returns how many clients were closed (0 if none was connected).

        :raises ValueError: if the client belongs to another group
        :raises TypeError: if given neither a FanoRule nor a FanotifyClient
        """
        return _client.disconnect(self, rule_or_client)

    @property
    def dispatch_stats(self) -> DispatchStatistics:
        """Counters of the fan-out to clients."""
        return self._clients.stats()

    # -- permission responses -------------------------------------------

    def on_permission(
        self, handler: PermissionHandler | None, *, thread: bool = False
    ) -> PermissionHandler | None:
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

        ``thread=True`` (a plain function, fd mode, the C core) serves it on a
        thread of the group's instead, reading without the event loop: a few
        times faster per event, and it may block up to the deadline; it must
        then not touch the loop's objects (see :mod:`afanotify._permthread`).

        :raises TypeError: if ``handler`` is not callable, or is async with ``thread=True``
        :raises ValueError: if ``thread=True`` is not available for this group
        """
        _permthread.install(self, handler, thread)
        return handler

    decide_statically = _static.decide_statically
    serve_statically = _static.serve_statically

    def answer_overdue(self) -> int:
        """Answer permission events past their deadline; returns how many.

        The event loop does this by itself.  Synchronous readers
        (:meth:`read_batch` without a running loop) call it from their loop.
        """
        return self._perm.expire()

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Close the group.  Idempotent.

        The marks are removed, pending permission events are answered with
        the default verdict, the iterators end, queued events are released,
        then the fd is closed.  In a forked child it only closes the child's
        copies: the parent's marks, events and registration stay as they are.
        """
        if self._closed:
            return
        if self._forked():
            self._close_inherited()
            return
        # 0. no new events: a forked child's copy of the fd keeps the group
        #    alive after ours is closed, and with its marks the kernel would
        #    queue permission events that nobody reads
        self._flush_all()
        #    the watchdog thread must be gone before the fd number is freed
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        # 1. answer what is pending, and what is still in the kernel's queue,
        #    while the fd is still open
        self._perm.close()
        if self._perm_class:
            self._drain_kernel_queue()
        self._closed = self._perm.closed = True
        left = self._queue.close() + self._held  # 2. wake the waiters
        left += self._clients.close_all()
        if self._batch_sink is not None:
            left += self._batch_sink.close()
        self._held = []
        self._reader.close()  # 3. unregister
        try:
            for ev in left:
                ev.close()
            self._release_last()
        finally:
            fd, self._fd = self._fd, -1
            self._perm.fd = -1
            self._pipeline.close()
            os.close(fd)  # 4. the kernel allows whatever is still queued

    def _drain_kernel_queue(self) -> None:
        # Read what the kernel still queues and give its permission events the
        # default verdict.  (Closing the fd would allow them regardless of
        # default_response.)  Bounded: the kernel's queue is.
        pipeline = self._pipeline
        for ev in pipeline.leftovers(self._fd, self._reader.buffer):
            if ev._owns & UNANSWERED:
                self._perm.add(ev, None)
                if pipeline.ignore_own and pipeline.is_own(ev.pid):
                    self._perm.write(ev, _ALLOW)  # our own: let it through
                else:
                    self._perm.release(ev, AT_CLOSE)
            ev.close()



class _GroupPort:
    """The group as the dispatcher sees it: its own queue as a sink, and its reader.

    (:class:`afanotify._dispatch.GroupSink` and :class:`afanotify._reader.FlowControl`.)
    """

    __slots__ = ("_g",)

    def __init__(self, group: Fanotify) -> None:
        self._g = group

    @property
    def consuming(self) -> bool:
        g = self._g
        return g._consuming and not g._closed

    @property
    def maxsize(self) -> int:
        return self._g._queue.maxsize

    def offer(self, ev: FanotifyData) -> bool:
        g = self._g
        if g._held or not g._queue.put(ev):
            return False
        return True

    def hold(self, ev: FanotifyData) -> None:
        self._g._held.append(ev)
        self._g._pause()

    def delivered(self) -> None:
        self._g._counters.events_delivered += 1

    def pause(self) -> None:
        self._g._pause()

    def resume(self) -> None:
        if not self._g._closed:
            self._g._resume()

    def idle(self) -> None:
        g = self._g
        if not g._consuming:
            g._reader.idle()
