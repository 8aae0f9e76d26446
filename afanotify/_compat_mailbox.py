"""Where afanotify.compat's engine puts events: client mailboxes and pyfanotify's datagrams."""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from ._compat_data import FanotifyData
from .events import FanotifyData as _NativeData

# Compat's records keep the public module's logger name.
log = logging.getLogger("afanotify.compat")


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
        self._items: deque[FanotifyData] = deque()
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

    def put_many(self, events: list[FanotifyData], notify: Callable[[], None]) -> int:
        """Take what fits; returns how many were taken (all of them unless "block" and full)."""
        dropped: list[FanotifyData] = []
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

    def take(self, limit: int) -> list[FanotifyData]:
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

    def unget(self, events: list[FanotifyData]) -> None:
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
            fd = _take_fd(ev)
            try:
                msg = self.encode(ev)
                fds = [fd] if fd >= 0 else []
                while not await self._send_one(loop, msg, fds):
                    if stopping():
                        for rest in events[i + 1:]:
                            rest.close()
                        return
            finally:
                # The receiver got its own copy of the fd.
                if fd >= 0:
                    os.close(fd)
                ev.close()

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


def _take_fd(ev: _NativeData) -> int:
    """The event's fd, now the caller's to close; -1 if the event owns none."""
    if ev.fd < 0:
        return -1
    try:
        return ev.detach_fd()
    except ValueError:  # it was released already
        return -1
