"""Where ``afanotify watch`` writes its lines: large writes, exact counts, bounded waiting.

A reader of standard output can be slower than the events (``| jq`` on a
busy filesystem).  If the command blocked in ``write(2)`` until such a
reader caught up, it would stop reading its fanotify group, the kernel's
queue would overflow, and the events would be lost without a count (a
Q_OVERFLOW record carries none) and named late (a short-lived process is
gone by then).  So a pipe or socket is written without blocking: what it
does not take waits here, written as the reader makes room, up to
:data:`PENDING_MAX` bytes; the lines of a batch that would go beyond that
are dropped and counted, and the summary says how many.  A regular file or
a terminal is written with plain blocking writes.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

#: How many bytes of lines the sink gathers before it writes them.
WRITE_AT = 1 << 20
#: How many bytes may wait for a slow reader of a pipe before lines are dropped.
PENDING_MAX = 64 << 20
#: How long the last lines may wait for a slow reader at exit.
CLOSE_WAIT_S = 5.0


class WriterLoop(Protocol):
    """What the sink uses of a loop: an asyncio loop, or ``watch``'s own (_cli_loop.py)."""

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None: ...

    def remove_writer(self, fd: int) -> bool: ...


class Sink:
    """Event lines out: one ``write(2)`` per flush (or per MiB), counted line by line.

    ``written`` counts the event lines that reached the file or pipe completely,
    so the summary stays exact when a reader closes the pipe in the middle
    of a write.  ``dropped`` counts the lines a slow reader of a pipe left
    no room for (see the module docstring), and ``unwritten`` the lines
    still waiting when the command stopped (a closed pipe, or a reader that
    took nothing for :data:`CLOSE_WAIT_S`).  A closed pipe is remembered
    (``broken``) instead of raised.  :meth:`reopen` opens ``--output`` again
    (after logrotate moved it).

    The lines that mark a Q_OVERFLOW (:meth:`add` with ``marker``) are
    written in their place but counted in none of these, as the summary's
    ``shown`` does not count them: the losses are said in words instead.
    """

    def __init__(self, path: str | None, *, pending_max: int = PENDING_MAX) -> None:
        self.broken = False
        self.written = 0
        self.dropped = 0
        self.unwritten = 0
        #: The ``--output`` file, or None for standard output.
        self.path = path
        self._path = path
        self._parts: list[bytes] = []
        self._size = 0
        self._lines = 0
        #: Where each marker line queued ends, in bytes from the first part.
        self._marks: list[int] = []
        #: (data, event lines, ends of its marker lines) waiting for the reader
        self._pending: deque[tuple[memoryview, int, list[int]]] = deque()
        self._pending_bytes = 0
        self._pending_max = pending_max
        self._loop: WriterLoop | None = None
        self._writer = False
        self._fd = self._open() if path is not None else sys.stdout.fileno()
        self._restore_blocking = False
        self._set_mode()

    def _open(self) -> int:
        assert self._path is not None
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def _set_mode(self) -> None:
        try:
            mode = os.fstat(self._fd).st_mode
        except OSError:
            return
        if (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) and os.get_blocking(self._fd):
            os.set_blocking(self._fd, False)
            self._restore_blocking = True

    @property
    def pending(self) -> int:
        """Bytes waiting for a slow reader."""
        return self._pending_bytes

    def attach(self, loop: WriterLoop) -> None:
        """Write what waits whenever the output can take more, from ``loop``."""
        self._loop = loop

    def detach(self) -> None:
        if self._writer and self._loop is not None:
            self._loop.remove_writer(self._fd)
        self._writer = False
        self._loop = None

    def write(self, line: str) -> None:
        """Queue one line (without its newline)."""
        self.add((line + "\n").encode("utf-8", "surrogateescape"), 1)

    def extend(self, lines: list[str], size: int = 0) -> None:
        """Queue lines (without their newlines); ``size`` is no longer used."""
        if lines:
            self.add(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"), len(lines))

    def add(self, data: bytes, lines: int, *, marker: bool = False) -> None:
        """Queue ``lines`` whole lines, each ending in a newline, as ``data``.

        Text lines carry file names as the kernel gave them: undecodable
        bytes go out as the same bytes (JSON lines are ASCII already).  With
        ``marker``, ``data`` is one line that marks a Q_OVERFLOW, counted
        in no count (see the class docstring); ``lines`` is then 0.
        """
        if marker:
            self._marks.append(self._size + len(data))
        elif not lines:
            return
        self._parts.append(data)
        self._lines += lines
        self._size += len(data)
        if self._size >= WRITE_AT:
            self.flush()

    def flush(self) -> None:
        """Write what is queued (what a pipe does not take waits); may set :attr:`broken`."""
        parts = self._parts
        if not parts:
            return
        lines = self._lines
        marks = self._marks
        self._parts = []
        self._size = 0
        self._lines = 0
        self._marks = []
        if self.broken:
            self.unwritten += lines
            return
        # One write(2) for everything queued since the last flush.
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._pending and self._pending_bytes + len(data) > self._pending_max:
            self.dropped += lines
            return
        self._pending.append((memoryview(data), lines, marks))
        self._pending_bytes += len(data)
        self._drain()

    def _drain(self) -> None:
        """Write waiting data until it is all out or the pipe is full."""
        pending = self._pending
        try:
            while pending:
                view, lines, marks = pending[0]
                try:
                    n = os.write(self._fd, view)
                except InterruptedError:
                    continue
                except BlockingIOError:
                    break
                self._pending_bytes -= n
                if n == len(view):
                    pending.popleft()
                    self.written += lines
                    continue
                done = view[:n].tobytes().count(b"\n") - sum(1 for e in marks if e <= n)
                self.written += done
                pending[0] = (view[n:], lines - done, [e - n for e in marks if e > n])
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            self.broken = True
            self.unwritten += sum(lines for _, lines, _ in pending)
            pending.clear()
            self._pending_bytes = 0
        self._want_writable(bool(pending))

    def _want_writable(self, want: bool) -> None:
        loop = self._loop
        if loop is None or want == self._writer:
            return
        if want:
            loop.add_writer(self._fd, self._drain)
        else:
            loop.remove_writer(self._fd)
        self._writer = want

    def finish(self, wait: float = CLOSE_WAIT_S) -> None:
        """Flush, and give a slow reader up to ``wait`` seconds for what still waits."""
        self.flush()
        self.detach()
        deadline = time.monotonic() + wait
        while self._pending and not self.broken:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                select.select([], [self._fd], [], left)
            except InterruptedError:
                continue
            self._drain()
        if self._pending:
            self.unwritten += sum(lines for _, lines, _ in self._pending)
            self._pending.clear()
            self._pending_bytes = 0

    def reopen(self) -> None:
        """Flush, then open ``--output`` by its name again (SIGHUP after a log rotation)."""
        self.flush()
        if self._path is None:
            return
        fd = self._open()
        old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        """:meth:`finish`, then close ``--output`` (standard output stays open)."""
        self.finish()
        if self._restore_blocking:
            try:
                os.set_blocking(self._fd, True)
            except OSError:
                pass
            self._restore_blocking = False
        if self._path is not None:
            os.close(self._fd)
            self._path = None
        else:
            # What print() wrote to stdout before (features) goes out first.
            try:
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):
                pass
