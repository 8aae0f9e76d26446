"""Reading a group in batches, each with the details of its processes.

Two readers give the same :class:`Batch` (the events of one read, decoded by
the group, and ``pid -> (name, exe, cwd)`` for the processes behind them):

- :class:`Drain`, for FID groups on the compiled core: a thread that moves
  the kernel's queue into userspace memory as fast as the kernel fills it
  (``csrc/fastpath_drain.c``: poll and read without the GIL), names each
  read's processes in C right after the read, and wakes the event loop
  through an eventfd.  The kernel's queue (16384 events) overflows when its
  reader falls behind for a fraction of a second; the drain's memory does
  not, up to ``limit`` bytes.  Beyond that the events read are discarded
  and counted exactly (:attr:`DrainStats.dropped`), and the batch after the
  gap starts with a Q_OVERFLOW record, so the group's directory map forgets
  what events it never saw may have changed.
- :class:`PolledReader`, for everything else: fd-mode groups, whose events
  carry open files (a backlog held in memory would be a backlog of
  descriptors; the group's own reader already keeps those within the fd
  budget), and the pure core.  It reads when the caller asks, from the
  loop's readiness callback, and names processes between read and decode.

Both check the details of a pid as :func:`afanotify._proc.batch_processes`
does: against the pidfd of the pid's first event in the read, when the
group reports pidfds.
"""

from __future__ import annotations

import fcntl
import os
import resource
import threading
from typing import Any, NamedTuple

from . import _ffi
from ._proc import NO_PROCESS, Proc, batch_processes, raw_pids, read_processes
from .events import FanotifyData
from .exceptions import ClosedResourceError, WouldBlock
from .flags import InitFlag
from .group import Fanotify

__all__ = ["Batch", "Drain", "DrainStats", "ExitLog", "exit_log_available", "PolledReader",
           "DEFAULT_LIMIT", "available"]

#: Bytes of events a :class:`Drain` holds at most by default (256 MiB: about
#: three million FID events with names).
DEFAULT_LIMIT = 256 << 20
#: Bytes per read of the drain thread.
READ_SIZE = 256 << 10
#: Bytes of reads one batch gathers at most: while the loop is busy, the
#: thread appends its reads to the newest batch not yet taken (so a burst is
#: decoded in large batches, not in many reads of a few events each).  256
#: KiB (about 3,500 FID events): 1 MiB held twice the memory at the peak and
#: saved no CPU measurably, and a batch that held a whole burst's renames,
#: deletes and rmdirs left renames unresolved (their directories were gone
#: when the batch was decoded; test_cli_capture's burst test failed 2-4 of
#: 10 runs once the drain read in fewer, larger reads).
CHUNK_SIZE = 256 << 10

#: :class:`Drain`'s default ``settle``: 10 ms.  In bench_cli.py's burst the
#: lines per CPU-second of ``watch`` grew with it up to about 2 ms (0.1 ms:
#: 1.19 x fatrace for JSON, 1.16 x text; 1 ms: 1.40, 1.48; 2 ms: 1.45, 1.75;
#: 4 ms: 1.48, 1.66; none: 0.80, 0.85); a burst keeps the queue full, so the
#: wait does not apply there.  A steady writer is where it counts: with files
#: created, renamed and deleted at 300, 1,000 and 3,000 a second, 10 ms
#: against 2 ms cut the watcher's CPU by 22%, 20% and 10% (text; JSON at 300
#: and 3,000: 22%, 24%).  Every short-lived process of the naming scripts
#: was still named (the exit log names them).  With the main loop's round at
#: most every ``PACE_S`` (50 ms, _cli_watch.py), a line waits 60 ms at most.
SETTLE = 0.01
#: :class:`Drain`'s default ``slow_settle``: 100 ms, the wait instead of
#: ``settle`` while events come slowly (under 6,400 a second at the last
#: read's rate: ``afd_settle_for`` in fastpath_drain.c).  Each read costs
#: about the same whatever it brings, and each one wakes the loop for a
#: round (see ``PACE_S`` in _cli_watch.py); at 300 files a second
#: (bench_cli.py --rate) 10 ms made ~100 reads a second, 40 ms ~25 and
#: 100 ms ~10.  10 ms -> 40 ms cut the drain thread's CPU from 0.04-0.05 s
#: to 0.02 s in a 6 s run; 40 ms -> 100 ms cut the whole watch's from 0.177
#: to 0.140 s (JSON, medians of 3; the loop's pacing alone at 100 ms: 0.155,
#: both: 0.145).  A line then waits 150 ms at most (with ``PACE_S``); a
#: writer of 3,000 files a second, or a burst, keeps ``settle``.
SLOW_SETTLE = 0.1
#: The most ``settle`` may be (it delays events by up to that much).
MAX_SETTLE = 0.5

#: Bytes of the smallest event a pidfd-reporting FID group reads (metadata,
#: an FID record with a short handle, a pidfd record): a read of N bytes
#: brings at most N // 48 new pidfds.
_MIN_PIDFD_EVENT = 48

ffi: Any = _ffi.ffi
lib: Any = _ffi.lib


def _grow_fd_table(fd: int, read_size: int) -> None:
    """Make the kernel's fd table big enough for one read's pidfds, now.

    Each event of a pidfd group installs a descriptor, so one read can take
    thousands of new numbers.  The table grows on demand by doubling, and in
    a multithreaded process each growth waits for an RCU grace period
    (``expand_fdtable``) inside the drain thread's ``read(2)``: 1.6% of the
    watcher's CPU samples in a watch burst, 0.03% with the table grown first.
    A duplicate of ``fd`` at a high number (F_DUPFD takes the lowest free
    one at or above it, so no descriptor is replaced), closed at once, grows
    the table in one step before the thread starts; it never shrinks.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = read_size // _MIN_PIDFD_EVENT + 64
    if soft != resource.RLIM_INFINITY:  # (-1: min() would give no table at all)
        top = min(top, soft - 1)
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top)
    except OSError:
        return  # only an optimisation: a table that grows while reading works too
    os.close(high)


def available() -> bool:
    """True when this core has the drain thread (a core built from this source has)."""
    return hasattr(lib, "afd_run")


def exit_log_available() -> bool:
    """Whether a :class:`Drain` made now would get the exit log (see ``exit_names``).

    (It registers with the kernel for a moment, and forks a child that
    exits at once, to hear that the records arrive.)
    """
    return available() and bool(lib.afd_exit_probe())


class Batch(NamedTuple):
    """The events of one read and ``pid -> (name, exe, cwd)`` of their processes.

    A pid missing from ``processes`` (or mapped to ``(None, None, None)``)
    could not be named for sure.  The caller owns the events.
    """

    events: list[FanotifyData]
    processes: dict[int, Proc]


class DrainStats(NamedTuple):
    """A :class:`Drain`'s counts."""

    #: Reads of the group fd, and bytes and events read.
    reads: int
    bytes_read: int
    events_read: int
    #: Events read and discarded because ``limit`` bytes were held.
    dropped: int
    #: The reads those came in.
    dropped_reads: int
    #: Q_OVERFLOW records put in after such discards (one per gap).
    gaps: int
    #: Bytes held now, and the most held at once.
    held: int
    peak: int
    #: Reads held now (waiting to be taken).
    waiting: int
    #: Processes named (per read), and not (gone, or not theirs to be sure of).
    named: int
    unnamed: int


class ExitLog(NamedTuple):
    """What a :class:`Drain`'s exit log did."""

    #: The kernel took the registration (root, initial namespaces, taskstats).
    on: bool
    #: Processes (per read) named from it: reaped before /proc could name them.
    named: int
    #: Times its socket overflowed; records from before are not used again.
    overflows: int


class Drain:
    """A thread that drains a FID group into memory; the loop takes :class:`Batch` es.

    Wait for ``fileno()`` to be readable (an eventfd), then call
    :meth:`read_batch` until it raises :class:`WouldBlock`.  The group must
    not be read by anyone else meanwhile.

    :param limit: bytes of events held at most (see the module docstring)
    :param paths: read ``exe`` and ``cwd`` too, not the name alone
    :param latency_hint: ask the scheduler to run the thread soon after it
        wakes (a 0.1 ms slice; nice lowered by 10 where permitted), so that it
        reads a short-lived process's events before the process is reaped
        and can no longer be named (see ``afd_hint`` in ``fastpath_drain.c``
        and :attr:`scheduling`)
    :param exit_names: name a process reaped before the thread could read
        /proc from the record the kernel sends as it exits (taskstats; see
        ``fastpath_deaths.c`` for when such a name is sure, and
        :attr:`exit_log`).  Needs CAP_NET_ADMIN in the initial namespaces;
        elsewhere (another user, pid or network namespace) it is off and
        /proc alone names.  While on, the kernel
        writes an accounting record for every task that exits on the machine
        (a few hundred bytes each), which the thread reads
    :param settle: seconds the thread waits after a read that emptied the
        kernel's queue before it polls again, while the exit log is on (off,
        a process reaped meanwhile could not be named): a busy writer's events
        are then read many at a time, not a wakeup and a read per event or
        two.  The first event after a quiet spell is read at once; later
        ones wait at most this long.  0 turns it off (and ``slow_settle``)
    :param slow_settle: seconds waited instead of ``settle`` while the events
        come slowly (see :data:`SLOW_SETTLE`); at most ``settle`` keeps ``settle``
    :raises ValueError: for an fd-mode group, or a limit below one read
    :raises RuntimeError: on a core without the drain (see :func:`available`)
    """

    def __init__(self, fan: Fanotify, *, limit: int = DEFAULT_LIMIT, paths: bool = True,
                 latency_hint: bool = True, exit_names: bool = True,
                 settle: float = SETTLE, slow_settle: float = SLOW_SETTLE) -> None:
        if not available():
            raise RuntimeError("this core has no drain thread: use PolledReader")
        if not fan.fid_mode:
            raise ValueError("a Drain reads FID groups only (fd-mode events carry descriptors)")
        if not 0 <= settle <= MAX_SETTLE:
            raise ValueError(f"settle must be 0 to {MAX_SETTLE} seconds, got {settle!r}")
        if not 0 <= slow_settle <= MAX_SETTLE:
            raise ValueError(
                f"slow_settle must be 0 to {MAX_SETTLE} seconds, got {slow_settle!r}")
        if limit < 2 * CHUNK_SIZE:
            raise ValueError(f"limit must be at least {2 * CHUNK_SIZE} bytes, got {limit}")
        self._fan = fan
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        d = self._d = ffi.new("struct afd_drain *")
        if lib.afd_init(d) != 0:
            raise OSError(ffi.errno, "cannot set up the drain's lock")
        d.fd = fan.fileno()
        d.wake_fd = self._wake
        d.stop_fd = self._stop
        d.paths = int(paths)
        d.pidfd_reported = int(bool(fan.flags & InitFlag.REPORT_PIDFD))
        d.own_pid = os.getpid()
        d.latency_hint = int(latency_hint)
        d.read_size = READ_SIZE
        if d.pidfd_reported:
            _grow_fd_table(d.fd, READ_SIZE)
        d.chunk_size = CHUNK_SIZE
        d.settle_ns = round(settle * 1e9)  # waited only while the exit log is on
        d.slow_settle_ns = round(slow_settle * 1e9)
        d.limit = limit
        self.limit = limit
        self._counts = ffi.new("uint64_t[11]")
        if exit_names:
            lib.afd_exit_open(d)  # now: a process reaped before the first read is named too
        self._exit_counts = ffi.new("uint64_t[3]")
        self._thread = threading.Thread(target=self._run, name="afanotify-drain", daemon=True)
        self._closed = False
        #: The error that ended the thread's reading, if one did.
        self.error: OSError | None = None

    def fileno(self) -> int:
        """The eventfd that becomes readable when batches wait."""
        return self._wake

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        if lib.afd_run(self._d) != 0:  # returns when stopped (GIL released meanwhile)
            code = self._d.error
            self.error = OSError(code, f"reading the fanotify group failed: {os.strerror(code)}")
            # Only now: the loop, woken, must find the error set.
            os.eventfd_write(self._wake, 1)

    def read_batch(self) -> Batch:
        """The oldest read the thread made, decoded by the group.

        :raises WouldBlock: if no read is waiting
        """
        c = lib.afd_take(self._d)
        if c == ffi.NULL:
            raise WouldBlock
        try:
            procs = _processes(c)
            events = decode_batch(self._fan, ffi.buffer(c.data, c.len))
        finally:
            lib.afd_free(self._d, c)
        return Batch(events, procs)

    def clear_wakeup(self) -> None:
        """Reset the eventfd (before taking the batches it announced)."""
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass

    @property
    def scheduling(self) -> tuple[bool, int | None]:
        """What the thread's latency hint got: (0.1 ms slice set, new nice or None).

        Set by the thread as it starts: read it once the first batch is taken.
        """
        d = self._d
        return bool(d.hint_slice), (int(d.hint_nice) if d.hint_nice_set else None)

    @property
    def exit_log(self) -> ExitLog:
        """Whether the exit log is on, and what it named (see ``exit_names``)."""
        if not self._closed:
            lib.afd_exit_counts(self._d, self._exit_counts)
        on, named, overflows = (int(x) for x in self._exit_counts)
        return ExitLog(bool(on), named, overflows)

    @property
    def stats(self) -> DrainStats:
        if not self._closed:
            lib.afd_counts(self._d, self._counts)
        return DrainStats(*(int(x) for x in self._counts))

    def stop(self) -> None:
        """Stop the thread and wait for it; what it read can still be taken."""
        # (On the thread itself, as when it drops the last reference as it
        # ends, afd_run has returned: nothing to wait for.)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            os.eventfd_write(self._stop, 1)
            self._thread.join()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: nothing more can be taken."""
        return self._closed

    def close(self) -> None:
        """Stop, and free every batch not taken (idempotent)."""
        if self._closed:
            return
        self.stop()
        lib.afd_counts(self._d, self._counts)  # kept for stats
        lib.afd_exit_counts(self._d, self._exit_counts)
        self._closed = True
        lib.afd_destroy(self._d)
        os.close(self._wake)
        os.close(self._stop)

    def __del__(self) -> None:
        # A drain dropped unclosed would keep its exit log registered for
        # every CPU's exits (and its descriptors).  While its thread runs,
        # the thread holds it, so this runs only once the thread is done.
        if not getattr(self, "_closed", True):
            self.close()


def _text(c: Any, off: int, n: int) -> bytes | None:
    return None if n < 0 else bytes(ffi.buffer(c.text + off, n))


def _processes(c: Any) -> dict[int, Proc]:
    out: dict[int, Proc] = {}
    for i in range(c.nprocs):
        p = c.procs[i]
        if not p.trusted:
            out[p.pid] = NO_PROCESS
            continue
        name = _text(c, p.name_off, p.name_len)
        exe = _text(c, p.exe_off, p.exe_len)
        cwd = _text(c, p.cwd_off, p.cwd_len)
        out[p.pid] = (
            None if name is None else name.decode("utf-8", "surrogateescape"),
            None if exe is None else os.fsdecode(exe),
            None if cwd is None else os.fsdecode(cwd),
        )
    return out


class PolledReader:
    """:class:`Batch` es read on request, from the caller's thread (see the module docstring).

    Call :meth:`read_batch` when the group fd is readable, until it raises
    :class:`WouldBlock`.

    :param paths: read ``exe`` and ``cwd`` too, not the name alone
    """

    def __init__(self, fan: Fanotify, *, paths: bool = True) -> None:
        self._fan = fan
        self._paths = paths
        self._pidfds = bool(fan.flags & InitFlag.REPORT_PIDFD)
        self._own = os.getpid()

    def fileno(self) -> int:
        """The group fd."""
        return self._fan.fileno()

    def read_batch(self) -> Batch:
        """One read of the group, decoded, with its processes named.

        A short-lived process is gone soon after its event: its name is read
        from /proc first thing after the read, from the pids in the events'
        fixed headers, before the batch is decoded (which takes longer than
        many such processes live).  The names are trusted once the decoded
        events' pidfds are checked (:func:`batch_processes`).

        :raises WouldBlock: if the kernel has no events
        :raises OSError: as :meth:`Fanotify.read_batch`
        """
        early: dict[int, Proc] = {}

        def name(view: memoryview) -> None:
            early.update(read_processes(raw_pids(view, self._own), paths=self._paths))

        events = self._fan.read_batch(on_read=name)
        procs = batch_processes(
            events, pidfd_reported=self._pidfds, paths=self._paths, early=early
        )
        return Batch(events, procs)


def decode_batch(group: Fanotify, data: memoryview | bytes | bytearray) -> list[FanotifyData]:
    """Decode bytes that were read from ``group``'s fd by a reader of its own.

    For ``afanotify watch``'s drain thread (:class:`Drain`): whole
    reads, in the order made; the events come out as from
    :meth:`Fanotify.read_batch`, through the group's directory map, and own
    the descriptors in ``data``.

    :raises ClosedResourceError: if the group is closed
    """
    if group.closed:
        raise ClosedResourceError("the fanotify group is closed")
    view = data if isinstance(data, memoryview) else memoryview(data)
    group._counters.reads += 1
    group._counters.bytes_read += len(view)
    return group._pipeline.decode(view, group._reader.loop)
