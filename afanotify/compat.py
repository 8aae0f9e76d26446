"""pyfanotify's API on afanotify: change one import line and legacy code runs.

``import afanotify.compat as pyfanotify`` gives the names pyfanotify's
documentation promises -- :class:`Fanotify`, :class:`FanoRule`,
:class:`FanotifyClient`, :class:`FanotifyData`, :func:`evt_to_str` and the
``FAN_*`` constants -- with the same parameters, defaults and exceptions.

How it differs inside.  pyfanotify forks a worker process that sends every
event to the client as a unix datagram; a client socket holds 10 of them,
and when it is full the worker sleeps 250 ms, retries three times, then drops
the event without a word.  Here :meth:`Fanotify.start` runs the native engine
(an :class:`afanotify.Fanotify` group) on a background thread with its own
event loop.  Each compat client is a native :class:`afanotify.FanotifyClient`
(which does the rule matching and fan-out) plus a pump task that moves its
events into a bounded, thread-safe mailbox; the client's ``sock`` is one end
of a socket pair that is readable while events wait, so ``select.poll()``
loops written for pyfanotify keep working.  When a mailbox is full the pump
waits, the native client's queue fills, the group stops reading, and the
backlog waits in the kernel's queue (the group is made with
FAN_UNLIMITED_QUEUE, as pyfanotify's is): nothing is dropped unless a client
asks for a drop policy, and then every drop is counted and logged.

As in pyfanotify, events caused by this process or its descendants are not
delivered, and ``mark()`` logs a failure instead of raising.

Where behaviour differs from pyfanotify on purpose:

* Events that arrive while no client (or client-less rule) is connected stay
  in the kernel's queue and go to the first one that connects; pyfanotify's
  worker read and discarded them.  (pyfanotify also flushed the inode and
  mount marks when its last rule disconnected; this layer keeps the marks.)
* ``FanotifyData.path`` is a str as documented (pyfanotify 0.3 made it a
  tuple); a rename carries both sides in ``old_path`` and ``new_path``.
* With ``init_fid=True`` events carry no fd, even for ``pass_fd`` rules.
* ``get_events()`` never loses an event: one the loop did not reach (it broke
  out early) stays queued.
"""

from __future__ import annotations

import array
import asyncio
import atexit
import hashlib
import logging
import os
import signal
import socket
import struct
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import FrozenInstanceError
from typing import Any, NamedTuple, Union

from . import _ffi
from . import flags as _flags
from ._resource import ClosingContext, WarnsUnclosed, warn_and_close
from .client import DispatchStatistics
from .client import FanotifyClient as _NativeClient
from .events import OWN_FD
from .events import FanotifyData as _NativeData
from .exceptions import ClosedResourceError, WouldBlock
from .flags import Event, InitFlag
from .group import Fanotify as _Group
from .group import GroupStatistics, MarkKind
from .rules import FanoRule as FanoRule

__all__ = [
    "Fanotify",
    "FanoRule",
    "FanotifyClient",
    "FanotifyData",
    "CompatStatistics",
    "ClientStatistics",
    "evt_to_str",
]

log = logging.getLogger(__name__)

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# -- constants ----------------------------------------------------------------
#
# pyfanotify exports the kernel's FAN_* names plus three composites of its own.
# Its FAN_ALL_EVENTS is wider than the kernel header's old one: it includes
# OPEN_EXEC, ONDIR and EVENT_ON_CHILD, so a directory marked with the default
# mask reports its children too.  Legacy code relies on that, so it is kept.

FAN_ACCESS = _flags.FAN_ACCESS
FAN_MODIFY = _flags.FAN_MODIFY
FAN_ATTRIB = _flags.FAN_ATTRIB
FAN_CLOSE_WRITE = _flags.FAN_CLOSE_WRITE
FAN_CLOSE_NOWRITE = _flags.FAN_CLOSE_NOWRITE
FAN_OPEN = _flags.FAN_OPEN
FAN_MOVED_FROM = _flags.FAN_MOVED_FROM
FAN_MOVED_TO = _flags.FAN_MOVED_TO
FAN_CREATE = _flags.FAN_CREATE
FAN_DELETE = _flags.FAN_DELETE
FAN_DELETE_SELF = _flags.FAN_DELETE_SELF
FAN_MOVE_SELF = _flags.FAN_MOVE_SELF
FAN_OPEN_EXEC = _flags.FAN_OPEN_EXEC
FAN_Q_OVERFLOW = _flags.FAN_Q_OVERFLOW
FAN_FS_ERROR = _flags.FAN_FS_ERROR
FAN_OPEN_PERM = _flags.FAN_OPEN_PERM
FAN_ACCESS_PERM = _flags.FAN_ACCESS_PERM
FAN_OPEN_EXEC_PERM = _flags.FAN_OPEN_EXEC_PERM
FAN_PRE_ACCESS = _flags.FAN_PRE_ACCESS
FAN_RENAME = _flags.FAN_RENAME
FAN_ONDIR = _flags.FAN_ONDIR
FAN_EVENT_ON_CHILD = _flags.FAN_EVENT_ON_CHILD
FAN_CLOSE = _flags.FAN_CLOSE
FAN_MOVE = _flags.FAN_MOVE
FAN_ALL_EVENTS = (
    FAN_ACCESS | FAN_MODIFY | FAN_OPEN | FAN_OPEN_EXEC | FAN_CLOSE | FAN_ONDIR
    | FAN_EVENT_ON_CHILD
)
FAN_ALL_PERM_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM
FAN_ALL_FID_EVENTS = (
    FAN_ATTRIB | FAN_MOVE | FAN_CREATE | FAN_DELETE | FAN_DELETE_SELF | FAN_MOVE_SELF
    | FAN_RENAME | FAN_ONDIR | FAN_EVENT_ON_CHILD
)

FAN_CLOEXEC = _flags.FAN_CLOEXEC
FAN_NONBLOCK = _flags.FAN_NONBLOCK
FAN_CLASS_NOTIF = _flags.FAN_CLASS_NOTIF
FAN_CLASS_CONTENT = _flags.FAN_CLASS_CONTENT
FAN_CLASS_PRE_CONTENT = _flags.FAN_CLASS_PRE_CONTENT
FAN_UNLIMITED_QUEUE = _flags.FAN_UNLIMITED_QUEUE
FAN_UNLIMITED_MARKS = _flags.FAN_UNLIMITED_MARKS
FAN_ENABLE_AUDIT = _flags.FAN_ENABLE_AUDIT
FAN_REPORT_PIDFD = _flags.FAN_REPORT_PIDFD
FAN_REPORT_TID = _flags.FAN_REPORT_TID
FAN_REPORT_FID = _flags.FAN_REPORT_FID
FAN_REPORT_DIR_FID = _flags.FAN_REPORT_DIR_FID
FAN_REPORT_NAME = _flags.FAN_REPORT_NAME
FAN_REPORT_DFID_NAME = _flags.FAN_REPORT_DFID_NAME

FAN_MARK_ADD = _flags.FAN_MARK_ADD
FAN_MARK_REMOVE = _flags.FAN_MARK_REMOVE
FAN_MARK_DONT_FOLLOW = _flags.FAN_MARK_DONT_FOLLOW
FAN_MARK_ONLYDIR = _flags.FAN_MARK_ONLYDIR
FAN_MARK_IGNORED_MASK = _flags.FAN_MARK_IGNORED_MASK
FAN_MARK_IGNORED_SURV_MODIFY = _flags.FAN_MARK_IGNORED_SURV_MODIFY
FAN_MARK_FLUSH = _flags.FAN_MARK_FLUSH
FAN_MARK_EVICTABLE = _flags.FAN_MARK_EVICTABLE
FAN_MARK_IGNORE = _flags.FAN_MARK_IGNORE
FAN_MARK_INODE = _flags.FAN_MARK_INODE
FAN_MARK_MOUNT = _flags.FAN_MARK_MOUNT
FAN_MARK_FILESYSTEM = _flags.FAN_MARK_FILESYSTEM

FANOTIFY_METADATA_VERSION = _flags.FANOTIFY_METADATA_VERSION
FAN_ALLOW = _flags.FAN_ALLOW
FAN_DENY = _flags.FAN_DENY
FAN_AUDIT = _flags.FAN_AUDIT
FAN_NOFD = _flags.FAN_NOFD
AT_FDCWD: int = _ffi.lib.AT_FDCWD

# pyfanotify opens event fds with these flags; O_NOATIME keeps the watcher's
# own reads from touching access times.
_EVENT_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_LARGEFILE", 0) | os.O_NOATIME
_GROUP_FLAGS = InitFlag.UNLIMITED_QUEUE | InitFlag.UNLIMITED_MARKS
_FID_FLAGS = InitFlag.REPORT_FID | InitFlag.REPORT_DFID_NAME

_IS_TYPES = ("", "mp", "fs", "dir")
#: Events taken from the group per dispatch round.
_BATCH = 512
#: Events a client's get_events() takes from its mailbox per lock round.
_TAKE = 256


# -- event names ---------------------------------------------------------------


# pyfanotify's spelling: lower case, and "on_child" (for EVENT_ON_CHILD) last.
_EVENT_NAMES = (
    *((bit, name.lower()) for bit, name in _flags._EVENT_BITS if bit != Event.EVENT_ON_CHILD),
    (int(Event.EVENT_ON_CHILD), "on_child"),
)


def evt_to_str(mask: int) -> str:
    """The lower-case names of the bits in ``mask`` joined by ``|``, as pyfanotify writes them.

    ``evt_to_str(FAN_OPEN | FAN_CLOSE_NOWRITE) == "close_nowrite|open"``;
    bits no event names are appended in hex.
    """
    return _flags._bit_names(mask, _EVENT_NAMES)


# -- events ----------------------------------------------------------------------

_LEGACY_FIELDS = frozenset({"fd", "pid", "ev_types", "exe", "cwd", "path"})


class FanotifyData(_NativeData):
    """A native :class:`afanotify.FanotifyData` as pyfanotify code expects it.

    pyfanotify's events are dicts: code assigns to them
    (``event.ev_types = evt_to_str(event.ev_types)``) and indexes them
    (``event["path"]``).  This subclass allows both for the six documented
    fields; every other field stays read-only.  It adds no fields: an event
    from the engine only changes class on its way to a client.

    With ``pass_fd=True`` the event's ``fd`` belongs to the receiver: close it
    with ``os.close(event.fd)`` (as pyfanotify code does) or ``event.close()``,
    not both.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _LEGACY_FIELDS:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __getitem__(self, key: str) -> Any:
        if key not in _LEGACY_FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in _LEGACY_FIELDS:
            raise KeyError(key)
        object.__setattr__(self, key, value)

    def keys(self) -> tuple[str, ...]:
        """The pyfanotify field names (events were dicts there)."""
        return ("fd", "pid", "ev_types", "exe", "cwd", "path")


def _as_compat(ev: _NativeData) -> FanotifyData:
    # Same slots, no new fields: a class swap instead of a copy.
    object.__setattr__(ev, "__class__", FanotifyData)
    return ev  # type: ignore[return-value]


_NATIVE_SLOTS = tuple(
    name for cls in _NativeData.__mro__ for name in getattr(cls, "__slots__", ())
    if name != "__weakref__"
)


def _own_copy(ev: _NativeData) -> FanotifyData:
    """A compat copy that takes over what ``ev`` owns.

    The native fan-out hands one immutable object to several clients when it
    owns nothing; compat events are mutable, so each client needs its own.
    """
    new = object.__new__(FanotifyData)
    for name in _NATIVE_SLOTS:
        object.__setattr__(new, name, getattr(ev, name))
    object.__setattr__(ev, "_owns", 0)
    return new


# -- process ancestry ------------------------------------------------------------


class _Ancestry:
    """Is a pid this process or one of its descendants?  Walks /proc/<pid>/stat.

    Answers are cached per pid for ``ttl`` seconds (bounded LRU), so a burst
    from one process costs one walk.  The ttl bounds how long a reused pid
    can be misjudged.  A process that has already exited cannot be traced and
    counts as foreign, as in pyfanotify.
    """

    def __init__(self, root: int, size: int = 4096, ttl: float = 2.0) -> None:
        self.root = root
        self._size = size
        self._ttl = ttl
        self._cache: OrderedDict[int, tuple[bool, float]] = OrderedDict()
        self.walks = 0

    def is_ours(self, pid: int, now: float) -> bool:
        if pid == self.root:
            return True
        cache, ttl = self._cache, self._ttl
        hit = cache.get(pid)
        if hit is not None and now - hit[1] < ttl:
            return hit[0]
        self.walks += 1
        ours = False
        chain = [pid]
        p = pid
        for _ in range(256):  # a bound in case /proc shows a cycle mid-reparenting
            ppid = _ppid(p)
            if ppid is None or ppid <= 1:
                break
            if ppid == self.root:
                ours = True
                break
            # An ancestor answered recently answers for its whole subtree, so
            # a shell's next child costs one read, not a walk to init.
            hit = cache.get(ppid)
            if hit is not None and now - hit[1] < ttl:
                ours = hit[0]
                break
            chain.append(ppid)
            p = ppid
        # Every process on the walked chain has the same answer.
        for q in chain:
            cache[q] = (ours, now)
            cache.move_to_end(q)
        while len(cache) > self._size:
            cache.popitem(last=False)
        return ours


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    tail = data[data.rfind(b")") + 2:].split(None, 2)
    try:
        return int(tail[1])
    except (IndexError, ValueError):
        return None


# -- mailboxes -------------------------------------------------------------------


class ClientStatistics(NamedTuple):
    """A snapshot of one compat client's counters."""

    #: Events waiting in the mailbox.
    queued: int
    #: The mailbox bound.
    maxsize: int
    #: Events put in the mailbox since the client was made.
    delivered: int
    #: Events dropped by a drop policy (always 0 under "block").
    dropped: int
    #: How many times the full mailbox made the engine wait ("block").
    blocked: int
    #: The most events ever waiting at once.
    high_water: int


class _Mailbox:
    """A bounded, thread-safe event queue whose ``reader`` socket is readable while it holds events.

    The engine thread puts, the client's thread takes.  The wake-up byte is
    written when the queue goes from empty to non-empty and drained (under the
    same lock) when a taker empties it, so readiness never lies for long and a
    wake-up is never lost.
    """

    def __init__(self, maxsize: int, policy: str) -> None:
        self.maxsize = maxsize
        self.policy = policy
        self._lock = threading.Lock()
        self._items: deque[_NativeData] = deque()
        self.reader, self._writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self._signalled = False
        self._closed = False
        self._want_space = False
        self._notify: Callable[[], None] | None = None
        self.delivered = 0
        self.dropped = 0
        self.blocked = 0
        self.high_water = 0

    # engine side

    def put_many(self, events: list[_NativeData], notify: Callable[[], None]) -> int:
        """Take what fits; returns how many were taken (all of them unless "block" and full)."""
        dropped: list[_NativeData] = []
        with self._lock:
            if self._closed:
                dropped = events
                n = len(events)
            else:
                items = self._items
                room = self.maxsize - len(items)
                if room >= len(events):
                    items.extend(events)
                    n = len(events)
                elif self.policy == "block":
                    n = max(room, 0)
                    items.extend(events[:n])
                    self._want_space = True
                    self._notify = notify
                    self.blocked += 1
                elif self.policy == "drop_newest":
                    n = len(events)
                    items.extend(events[:room])
                    dropped = events[room:]
                else:  # drop_oldest
                    n = len(events)
                    items.extend(events)
                    while len(items) > self.maxsize:
                        dropped.append(items.popleft())
                if not self._closed:
                    self.dropped += len(dropped)
                    self.delivered += n - len(dropped)
                    if len(items) > self.high_water:
                        self.high_water = len(items)
                    if items and not self._signalled:
                        self._signalled = True
                        self._poke()
        for ev in dropped:
            ev.close()
        if dropped and not self._closed:
            log.warning(
                "compat client mailbox full (%d): dropped %d events (policy %s)",
                self.maxsize, len(dropped), self.policy,
            )
        return n

    def _poke(self) -> None:
        try:
            self._writer.send(b"\0")
        except BlockingIOError:  # already readable: the byte is only a flag
            pass
        except OSError:
            pass

    # client side

    def take(self, limit: int) -> list[_NativeData]:
        notify = None
        with self._lock:
            items = self._items
            if len(items) <= limit:
                out = list(items)
                items.clear()
            else:
                out = [items.popleft() for _ in range(limit)]
            if not items and self._signalled:
                self._drain()
                self._signalled = False
            if self._want_space and out:
                self._want_space = False
                notify, self._notify = self._notify, None
        if notify is not None:
            notify()
        return out

    def unget(self, events: list[_NativeData]) -> None:
        """Put events the consumer did not reach back at the front, in order."""
        if not events:
            return
        with self._lock:
            if self._closed:
                pass
            else:
                self._items.extendleft(reversed(events))
                if not self._signalled:
                    self._signalled = True
                    self._poke()
                return
        for ev in events:
            ev.close()

    def _drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def wake(self) -> None:
        """Make the reader readable (used when the engine stops)."""
        with self._lock:
            if not self._closed and not self._signalled:
                self._signalled = True
                self._poke()

    def statistics(self) -> ClientStatistics:
        with self._lock:
            return ClientStatistics(
                len(self._items), self.maxsize, self.delivered, self.dropped, self.blocked,
                self.high_water,
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> int:
        """Close; releases queued events.  Returns how many were still queued."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            left = list(self._items)
            self._items.clear()
            notify, self._notify = self._notify, None
            self._want_space = False
        for ev in left:
            ev.close()
        self.reader.close()
        self._writer.close()
        if notify is not None:
            notify()
        return len(left)


# -- the engine ------------------------------------------------------------------


class CompatStatistics(NamedTuple):
    """A snapshot of a compat engine's counters."""

    #: The native group's counters.
    group: GroupStatistics
    #: The native fan-out's counters (matching happens there).
    dispatch: DispatchStatistics
    #: Events caused by descendants of this process, not delivered.
    descendant_events: int
    #: Times the engine waited for a full client mailbox (backpressure).
    waits: int
    #: Events for client-less rules whose socket address nobody had bound.
    datagrams_dropped: int


_DGRAM_HEAD = struct.Struct("=qQ")
_DGRAM_LEN = struct.Struct("=I")


class _DgramSink:
    """pyfanotify's wire format, for a rule connected without a :class:`FanotifyClient`.

    pyfanotify's worker sends each matched event as one datagram to the unix
    socket bound at the abstract address ``"\\0" + rule.name``: ``int64 pid,
    uint64 ev_types``, then ``exe``, ``cwd`` and one path (two for a rename:
    old, new), each as ``uint32 length`` + bytes; with ``pass_fd`` the fd
    rides along as SCM_RIGHTS.  Code that binds such a socket itself keeps
    working.  Unlike pyfanotify, a full socket makes the pump wait (the
    backlog stays in the kernel) instead of dropping the event after 750 ms;
    events for an address nobody bound are counted as dropped and logged.
    """

    def __init__(
        self, name: str | bytes, log: logging.Logger, on_drop: Callable[[], None]
    ) -> None:
        self.addr = b"\0" + os.fsencode(name)
        self._log = log
        self._on_drop = on_drop
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self._connected = False
        self.sent = 0
        self.dropped = 0

    @staticmethod
    def encode(ev: _NativeData) -> bytes:
        if ev.old_path is not None and ev.new_path is not None:
            paths: tuple[str | None, ...] = (ev.old_path, ev.new_path)
        else:
            paths = (ev.path,)
        parts = [_DGRAM_HEAD.pack(ev.pid, ev.ev_types)]
        for text in (ev.exe, ev.cwd, *paths):
            raw = os.fsencode(text) if text else b""
            parts.append(_DGRAM_LEN.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)

    async def send_all(self, events: list[_NativeData], stopping: Callable[[], bool]) -> None:
        """Send every event in order, waiting while the receiver's socket is full."""
        loop = asyncio.get_running_loop()
        for i, ev in enumerate(events):
            try:
                msg = self.encode(ev)
                fds = [ev.fd] if ev.fd >= 0 and ev._owns & OWN_FD else []
                while not await self._send_one(loop, msg, fds):
                    if stopping():
                        for rest in events[i + 1:]:
                            rest.close()
                        return
            finally:
                ev.close()  # the receiver got its own copy of the fd

    async def _send_one(
        self, loop: asyncio.AbstractEventLoop, msg: bytes, fds: list[int]
    ) -> bool:
        """True when sent (or dropped for want of a receiver); False after waiting for room."""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            if not self._connected:
                # Connected, so that writability follows the receiver's queue.
                self.sock.connect(self.addr)
                self._connected = True
            self.sock.sendmsg([msg], anc if fds else [])
            self.sent += 1
            return True
        except BlockingIOError:
            await self._writable(loop)
            return False
        except OSError as exc:
            # ECONNREFUSED / ENOENT: nobody has bound the address (any more).
            self._connected = False
            self.dropped += 1
            self._on_drop()
            if self.dropped == 1 or self.dropped % 1000 == 0:
                self._log.warning(
                    "Fanotify: no receiver at %r (%s): %d events dropped so far",
                    self.addr, exc, self.dropped,
                )
            return True

    async def _writable(self, loop: asyncio.AbstractEventLoop) -> None:
        fut: asyncio.Future[None] = loop.create_future()
        fd = self.sock.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_writer(fd, ready)
        try:
            await asyncio.wait_for(fut, 1.0)  # re-check stopping at least every second
        except asyncio.TimeoutError:
            pass
        finally:
            loop.remove_writer(fd)

    def close(self) -> None:
        self.sock.close()


class _Link:
    """One connected rule: its native client, the mailbox (or socket) it feeds, the pump task."""

    __slots__ = ("rule", "box", "native", "task", "space")

    def __init__(self, rule: FanoRule, box: _Mailbox | _DgramSink) -> None:
        self.rule = rule
        self.box = box
        self.native: _NativeClient | None = None
        self.task: asyncio.Task[None] | None = None
        self.space: asyncio.Event | None = None


_live: weakref.WeakSet[Fanotify] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for fan in list(_live):
        try:
            fan.stop()
        except Exception:  # at exit, one failure must not keep the others running
            log.exception("stopping %r at exit failed", fan)


atexit.register(_stop_all_at_exit)

_ASYNC_SIGNALS = {
    getattr(signal, name) for name in (
        "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD",
        "SIGWINCH",
    ) if hasattr(signal, name)
}

#: Bound of the native client queue behind each mailbox.  Small on purpose:
#: the mailbox is the bound a user sees; this one only smooths the hand-off.
_NATIVE_MAXSIZE = 1024


class Fanotify:
    """pyfanotify's ``Fanotify``: one fanotify group, its marks, and the engine that serves clients.

    The engine runs on a background thread with its own event loop once
    :meth:`start` is called; :meth:`stop` ends it (and runs at interpreter
    exit for every engine still running).

    :param init_fid: report directory-entry events (FAN_CREATE, FAN_DELETE,
        FAN_MOVE, FAN_ATTRIB, FAN_RENAME): a FAN_REPORT_FID |
        FAN_REPORT_DFID_NAME group.  Events then carry paths but no fd.
    :param log: the logger for errors (``mark()`` failures, ``fn`` failures);
        by default this module's logger.  Nothing is written to stdout.
    :param fn: called as ``fn(*fn_args)`` on the engine thread when the engine
        starts and then every ``fn_timeout`` seconds while it runs (every
        second when ``fn_timeout`` is 0).  Exceptions are logged.
    :param fn_args: a tuple of arguments for ``fn``.
    :param fn_timeout: seconds between calls of ``fn``.
    :param maxsize: (afanotify) bound of the group's own event queue.
    :raises OSError: if fanotify is not available (no kernel support, no
        CAP_SYS_ADMIN) or fanotify_init fails otherwise
    :raises TypeError: if ``fn`` is not callable or ``fn_args`` is not a tuple
    :raises ValueError: if ``fn_timeout`` is negative
    """

    def __init__(
        self,
        init_fid: bool = False,
        log: logging.Logger | None = None,
        fn: Callable[..., object] | None = None,
        fn_args: tuple[Any, ...] = (),
        fn_timeout: float = 0,
        *,
        maxsize: int = 8192,
    ) -> None:
        self._state = "stopped"  # until the group exists, nothing to stop
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable or None, not {type(fn).__name__}")
        if not isinstance(fn_args, tuple):
            raise TypeError(
                f"fn_args must be a tuple, not {type(fn_args).__name__}: write (arg,) for one"
            )
        if isinstance(fn_timeout, bool) or not isinstance(fn_timeout, (int, float)):
            raise TypeError(
                f"fn_timeout must be a number of seconds, not {type(fn_timeout).__name__}"
            )
        if fn_timeout < 0:
            raise ValueError(f"fn_timeout must be >= 0 seconds, got {fn_timeout}")
        self._log: logging.Logger = log if log is not None else globals()["log"]
        self._with_fid = bool(init_fid)
        self._fn = fn
        self._fn_args = fn_args
        self._fn_timeout = float(fn_timeout)
        flags = _GROUP_FLAGS | (_FID_FLAGS if init_fid else 0)
        try:
            self._group = _Group(flags, _EVENT_FLAGS, maxsize=maxsize)
            if self._group._pipeline.fast is not None:
                # Legacy events are mutable: a user may store anything in them,
                # so the collector must keep seeing them.
                self._group._pipeline.fast.untrack = False
        except OSError as exc:
            self._log.error("Fanotify: fanotify_init failed: %s", exc)
            raise
        self._state = "ready"
        self._state_lock = threading.Lock()
        self._mark_lock = threading.Lock()
        self._links_lock = threading.Lock()
        self._links: dict[str | bytes, _Link] = {}
        self._boxes: dict[str | bytes, _Mailbox] = {}
        self._ancestry = _Ancestry(os.getpid())
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._descendant_events = 0
        self._waits = 0
        self._datagrams_dropped = 0
        _live.add(self)

    # -- properties ------------------------------------------------------

    @property
    def with_fid(self) -> bool:
        """True when the group reports directory-entry events (``init_fid=True``)."""
        return self._with_fid

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` while the engine thread lives."""
        t = self._thread
        return self._state == "running" and t is not None and t.is_alive()

    @property
    def group(self) -> _Group:
        """The native :class:`afanotify.Fanotify` group underneath."""
        return self._group

    def statistics(self) -> CompatStatistics:
        """The engine's counters (group, fan-out, descendants filtered, backpressure waits)."""
        return CompatStatistics(
            self._group.stats, self._group.dispatch_stats, self._descendant_events, self._waits,
            self._datagrams_dropped,
        )

    def __repr__(self) -> str:
        return f"<afanotify.compat.Fanotify {self._state} with_fid={self._with_fid}>"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the engine on a background thread.  A second call does nothing.

        :raises ClosedResourceError: if :meth:`stop` was called before
        """
        with self._state_lock:
            if self._state == "running":
                return
            if self._state == "stopped":
                raise ClosedResourceError("this Fanotify was stopped: make a new one")
            self._state = "running"
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(ready,), name="afanotify-compat", daemon=True
            )
            self._thread.start()
        ready.wait()

    def stop(self) -> None:
        """Stop the engine, join its thread and close the group.  Idempotent.

        Clients stay open (close them with :meth:`FanotifyClient.close`);
        events already in their mailboxes can still be read.
        """
        with self._state_lock:
            state = self._state
            if state == "stopped":
                return
            self._state = "stopped"
        _live.discard(self)
        thread, loop = self._thread, self._loop
        if state == "running" and thread is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(self._request_stop)
            except RuntimeError:  # the loop already ended (the engine failed)
                pass
            if thread is not threading.current_thread():
                thread.join()
        with self._mark_lock:
            self._group.close()
        with self._links_lock:
            idle = [lk for lk in self._links.values() if lk.task is None]
            for lk in idle:
                del self._links[lk.rule.name]
            boxes = list(self._boxes.values())
        for lk in idle:
            if isinstance(lk.box, _DgramSink):
                lk.box.close()
        for box in boxes:
            box.wake()

    def __enter__(self) -> Fanotify:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:
        if getattr(self, "_state", "stopped") != "stopped":
            warn_and_close(self, self.stop, "unstopped")

    # -- rules -------------------------------------------------------------

    def connect(self, rule: FanoRule) -> None:
        """Deliver events matching ``rule`` to the :class:`FanotifyClient` that made it.

        A rule with the name of a connected rule replaces it.  A rule no
        client made gets pyfanotify's datagrams: one per event, sent to the
        unix socket bound at the abstract address ``"\\0" + rule.name``.

        :raises TypeError: if ``rule`` is not a :class:`FanoRule`
        :raises ClosedResourceError: if the Fanotify was stopped
        """
        if not isinstance(rule, FanoRule):
            raise TypeError(f"connect() takes a FanoRule, not {type(rule).__name__}")
        if self._state == "stopped":
            raise ClosedResourceError("this Fanotify was stopped")
        with self._links_lock:
            box: _Mailbox | _DgramSink | None = self._boxes.get(rule.name)
        if box is None:
            box = _DgramSink(rule.name, self._log, self._count_datagram_drop)
        self._in_loop(self._connect_now, rule, box)

    def disconnect(self, rule: FanoRule) -> None:
        """Stop delivering events for ``rule`` (matched by name).

        :raises TypeError: if ``rule`` is not a :class:`FanoRule`
        """
        if not isinstance(rule, FanoRule):
            raise TypeError(f"disconnect() takes a FanoRule, not {type(rule).__name__}")
        self._in_loop(self._disconnect_now, rule.name)

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        # Clients are created and closed on the engine's thread, the only one
        # that touches the group's dispatcher once the engine runs.
        loop = self._loop
        if (
            self._state != "running" or loop is None or loop.is_closed()
            or threading.current_thread() is self._thread
        ):
            fn(*args)
            return

        async def call() -> None:
            fn(*args)

        try:
            fut = asyncio.run_coroutine_threadsafe(call(), loop)
        except RuntimeError:  # the loop closed meanwhile
            fn(*args)
            return
        fut.result()

    def _connect_now(self, rule: FanoRule, box: _Mailbox | _DgramSink) -> None:
        self._disconnect_now(rule.name)
        if self._group.closed:
            if isinstance(box, _DgramSink):
                box.close()
            return
        link = _Link(rule, box)
        link.native = _NativeClient(self._group, rule, maxsize=_NATIVE_MAXSIZE)
        with self._links_lock:
            self._links[rule.name] = link
        if self._stop_requested is not None and not self._stopping:
            self._start_pump(link)

    def _disconnect_now(self, name: str | bytes) -> None:
        with self._links_lock:
            link = self._links.pop(name, None)
        if link is None:
            return
        if link.native is not None:
            link.native.close()
        if link.space is not None:
            link.space.set()
        if link.task is None and isinstance(link.box, _DgramSink):
            link.box.close()  # no pump to close it

    def _count_datagram_drop(self) -> None:
        self._datagrams_dropped += 1

    def _attach(self, name: str | bytes, box: _Mailbox) -> None:
        with self._links_lock:
            self._boxes[name] = box

    def _detach(self, name: str | bytes) -> None:
        with self._links_lock:
            self._boxes.pop(name, None)

    # -- marks -------------------------------------------------------------

    def mark(
        self,
        path: PathArg | Iterable[PathArg],
        ev_types: int = FAN_ALL_EVENTS,
        is_type: str = "",
        dont_follow: bool = False,
        as_ignore: bool = False,
        remove: bool = False,
        dirfd: int = AT_FDCWD,
    ) -> None:
        """Add ``ev_types`` to (or, with ``remove``, take them from) the mark on ``path``.

        See fanotify_mark(2).  A failure is logged to ``log`` and does not
        raise, as in pyfanotify.

        :param path: a path, or an iterable of paths (each is marked).
        :param ev_types: the event mask; must not be empty.
        :param is_type: ``''`` the inode, ``'mp'`` the mount point, ``'fs'``
            the filesystem, ``'dir'`` the inode, which must be a directory.
        :param dont_follow: mark a symbolic link itself.
        :param as_ignore: add to (or remove from) the ignore mask instead; it
            survives modification, as pyfanotify's does.
        :param remove: remove ``ev_types`` instead of adding them.
        :param dirfd: directory fd for a relative ``path``.
        :raises ValueError: if ``is_type`` is not one of the four values
        :raises NotImplementedError: for permission events (as pyfanotify)
        :raises TypeError: if ``path`` is neither a path nor an iterable of paths
        """
        if is_type not in _IS_TYPES:
            raise ValueError(f"is_type must be one of '', 'mp', 'fs', 'dir'; got {is_type!r}")
        if isinstance(ev_types, bool) or not isinstance(ev_types, int):
            raise TypeError(f"ev_types must be an int mask, not {type(ev_types).__name__}")
        if ev_types & FAN_ALL_PERM_EVENTS:
            self._log.error("Fanotify: mark(): permission events are not supported")
            raise NotImplementedError(
                "permission events are not supported by afanotify.compat (nor by pyfanotify): "
                "use afanotify.Fanotify with InitFlag.CLASS_CONTENT"
            )
        if isinstance(path, (str, bytes, os.PathLike)):
            paths: Iterable[PathArg] = (path,)
        elif isinstance(path, Iterable):
            paths = path
        else:
            raise TypeError(
                f"path must be a path or an iterable of paths, not {type(path).__name__}"
            )
        kind: MarkKind = (
            "mount" if is_type == "mp" else "filesystem" if is_type == "fs" else "inode"
        )
        onlydir = is_type == "dir"
        use_dirfd = None if dirfd == AT_FDCWD else dirfd
        for p in paths:
            try:
                with self._mark_lock:
                    if remove:
                        self._group.unmark(
                            p, ev_types, kind, ignore=as_ignore, ignore_style="old",
                            dont_follow=dont_follow, onlydir=onlydir, dirfd=use_dirfd,
                        )
                    else:
                        self._group.mark(
                            p, ev_types, kind, ignore=as_ignore, ignore_style="old",
                            survive_modify=as_ignore, dont_follow=dont_follow,
                            onlydir=onlydir, dirfd=use_dirfd,
                        )
            except (OSError, ValueError, ClosedResourceError) as exc:
                self._log.error("Fanotify: mark(%r) failed: %s", p, exc)

    def flush(self, do_non_mounts: bool = True, do_mounts: bool = True, do_fs: bool = True) -> None:
        """Remove all inode marks, all mount marks and/or all filesystem marks.

        Failures are logged, as in pyfanotify.
        """
        kinds: tuple[tuple[bool, MarkKind], ...] = (
            (do_non_mounts, "inode"), (do_mounts, "mount"), (do_fs, "filesystem"),
        )
        for wanted, kind in kinds:
            if not wanted:
                continue
            try:
                with self._mark_lock:
                    self._group.flush(kind)
            except (OSError, ClosedResourceError) as exc:
                self._log.error("Fanotify: flush(%s marks) failed: %s", kind, exc)

    # -- the engine thread ---------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        # Leave asynchronous signals to the main thread, where Python runs the
        # handlers: a Ctrl-C must interrupt the legacy poll() loop there.
        signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop, ready))
        except BaseException:
            self._log.exception("Fanotify: the engine failed")
        finally:
            ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        self._stop_requested = stop = asyncio.Event()
        self._loop = loop
        with self._links_lock:
            links = list(self._links.values())
        for link in links:
            self._start_pump(link)
        timer = loop.create_task(self._timer()) if self._fn is not None else None
        ready.set()
        try:
            await stop.wait()
        finally:
            self._stopping = True
            # Closing the group closes every native client, which ends the
            # pumps; it must happen on this thread, whose loop reads the group.
            with self._mark_lock:
                self._group.close()
            with self._links_lock:
                links = list(self._links.values())
                self._links.clear()
            tasks = [t for t in (timer, *(lk.task for lk in links)) if t is not None]
            for lk in links:
                if lk.space is not None:
                    lk.space.set()
            if timer is not None:
                timer.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    def _start_pump(self, link: _Link) -> None:
        link.space = asyncio.Event()
        link.task = asyncio.get_running_loop().create_task(self._pump(link))

    async def _timer(self) -> None:
        fn = self._fn
        assert fn is not None
        period = self._fn_timeout or 1.0
        while True:
            try:
                fn(*self._fn_args)
            except Exception:
                self._log.exception("Fanotify: fn raised; it is called again in %s s", period)
            await asyncio.sleep(period)

    async def _pump(self, link: _Link) -> None:
        """Move one native client's events into its mailbox, minus our descendants'."""
        native, box, space = link.native, link.box, link.space
        assert native is not None and space is not None
        try:
            if isinstance(box, _DgramSink):
                await self._pump_events(native, None, box, space)
            else:
                await self._pump_events(native, box, None, space)
        finally:
            if isinstance(box, _DgramSink):
                box.close()

    async def _pump_events(
        self,
        native: _NativeClient,
        box: _Mailbox | None,
        sink: _DgramSink | None,
        space: asyncio.Event,
    ) -> None:
        ancestry = self._ancestry
        notify = self._notifier(space)
        while not self._stopping:
            try:
                ev = await native.get()
            except ClosedResourceError:
                return
            batch = [ev]
            while len(batch) < _BATCH:
                try:
                    batch.append(native.get_nowait())
                except (WouldBlock, ClosedResourceError):
                    break
            now = time.monotonic()
            # With several rules connected the fan-out may share one object.
            shared = len(self._links) > 1
            out: list[_NativeData] = []
            for ev in batch:
                pid = ev.pid
                # The group already skipped this process's own events.
                if pid > 0 and ancestry.is_ours(pid, now):
                    self._descendant_events += 1
                    ev.close()
                    continue
                if shared:
                    out.append(_own_copy(ev))
                else:
                    out.append(_as_compat(ev) if type(ev) is _NativeData else ev)
            if sink is not None:
                await sink.send_all(out, lambda: self._stopping or native.closed)
                continue
            assert box is not None
            while out:
                space.clear()
                n = box.put_many(out, notify)
                if n == len(out):
                    break
                # Backpressure: the mailbox is full.  While this pump waits,
                # the native client's queue fills and the group stops reading;
                # the kernel keeps the backlog.
                out = out[n:]
                self._waits += 1
                await space.wait()
                if self._stopping or native.closed:
                    for ev in out:
                        ev.close()
                    return

    def _notifier(self, space: asyncio.Event) -> Callable[[], None]:
        loop = asyncio.get_running_loop()

        def notify() -> None:
            # Called on a client's thread when it took events from a full mailbox.
            try:
                loop.call_soon_threadsafe(space.set)
            except RuntimeError:  # the loop is closed: the engine is gone
                pass

        return notify


# -- clients -----------------------------------------------------------------------

_POLICIES = ("block", "drop_oldest", "drop_newest")


class FanotifyClient(ClosingContext, WarnsUnclosed):
    """pyfanotify's ``FanotifyClient``: a rule plus a mailbox of the events it matched.

    ``sock`` has a ``fileno()`` that polls readable while events wait, so
    ``select.poll()`` loops written for pyfanotify work unchanged;
    :meth:`get_events` yields what is waiting without blocking.  Matching
    and fan-out are the native :class:`afanotify.FanotifyClient`'s.

    :param fanotify: the :class:`Fanotify` to receive from.
    :param rkw: keyword arguments for :class:`FanoRule`, except ``name``: the
        rule's name is generated (from ``name`` if given) and kept in ``rname``.
    :param maxsize: (afanotify) bound of the mailbox.
    :param overflow: (afanotify) what a full mailbox does: ``"block"`` (the
        default) makes the engine wait, so the kernel holds the backlog and
        nothing is lost; ``"drop_oldest"`` / ``"drop_newest"`` drop, count
        (``statistics().dropped``) and log.
    :raises TypeError: if ``fanotify`` is not a compat :class:`Fanotify`, or as
        :class:`FanoRule` does (``pids`` not a set, list or tuple)
    :raises ValueError: as :class:`FanoRule` does (no criterion given)
    :raises ClosedResourceError: if ``fanotify`` was stopped
    """

    def __init__(
        self,
        fanotify: Fanotify,
        *,
        maxsize: int = 8192,
        overflow: str = "block",
        **rkw: Any,
    ) -> None:
        self._closed = True
        if not isinstance(fanotify, Fanotify):
            raise TypeError(
                f"fanotify must be an afanotify.compat.Fanotify, not {type(fanotify).__name__}"
            )
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        if overflow not in _POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(_POLICIES)}; got {overflow!r}")
        name = rkw.pop("name", None)
        seed = os.fsencode(name) if isinstance(name, str) else name
        self.fanotify = fanotify
        self.rname: bytes = hashlib.sha256(seed or os.urandom(32)).hexdigest().encode()
        self.rule = FanoRule(self.rname, **rkw)
        box = _Mailbox(maxsize, overflow)
        self._box = box
        self.sock: socket.socket = box.reader
        fanotify._attach(self.rname, box)
        try:
            fanotify.connect(self.rule)
        except BaseException:
            fanotify._detach(self.rname)
            box.close()
            raise
        self._closed = False

    def get_events(self) -> Iterator[FanotifyData]:
        """Yield the events waiting for this client, without blocking; stops when none is left.

        Events the loop did not reach (it broke out early) stay queued for
        the next call.
        """
        box = self._box
        while True:
            batch = box.take(_TAKE)
            if not batch:
                return
            pos = 0
            try:
                while pos < len(batch):
                    ev = batch[pos]
                    pos += 1
                    yield ev  # type: ignore[misc]
            finally:
                if pos < len(batch):
                    box.unget(batch[pos:])

    def statistics(self) -> ClientStatistics:
        """This client's mailbox counters."""
        return self._box.statistics()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Disconnect from the :class:`Fanotify` and release what is still queued.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.fanotify.disconnect(self.rule)
        finally:
            self.fanotify._detach(self.rname)
            left = self._box.close()
            if left:
                log.debug("compat client closed with %d events unread", left)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<afanotify.compat.FanotifyClient {state} rule={self.rule!r}>"
