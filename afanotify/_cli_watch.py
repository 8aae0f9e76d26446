"""``afanotify watch``: mark paths, stream their events as lines."""

from __future__ import annotations

import argparse
import errno
import fcntl
import gc
import os
import signal
import sys
import termios
import time
from collections.abc import Sequence
from dataclasses import replace

from . import _ffi
from ._cli_loop import Handle, WatchLoop, run_watch
from ._cli_output import (
    _OVERFLOW,
    DEFAULT_TIME_FORMAT,
    BatchFormatter,
    Template,
    _action_names,
    _err,
)
from ._cli_run import _check_paths
from ._cli_sink import PENDING_MAX
from ._cli_sink import Sink as _Sink
from ._drain import DEFAULT_LIMIT, Drain, PolledReader
from ._drain import available as _drain_available
from ._proc import Proc
from .events import FanotifyData
from .exceptions import ClosedResourceError, UnsupportedFlagError, WouldBlock
from .flags import FID_EVENTS, Event, InitFlag
from .group import Fanotify
from .rules import FanoRule

#: ``--events`` names for ``watch``: the notification events, plus composites.
WATCH_EVENTS: dict[str, Event] = {
    "access": Event.ACCESS,
    "modify": Event.MODIFY,
    "attrib": Event.ATTRIB,
    "close_write": Event.CLOSE_WRITE,
    "close_nowrite": Event.CLOSE_NOWRITE,
    "close": Event.CLOSE,
    "open": Event.OPEN,
    "open_exec": Event.OPEN_EXEC,
    "moved_from": Event.MOVED_FROM,
    "moved_to": Event.MOVED_TO,
    "move": Event.MOVE,
    "create": Event.CREATE,
    "delete": Event.DELETE,
    "delete_self": Event.DELETE_SELF,
    "move_self": Event.MOVE_SELF,
    "rename": Event.RENAME,
    "fs_error": Event.FS_ERROR,
}

#: What ``--events all`` (the default) means: every notification event except
#: MOVED_FROM and MOVED_TO (RENAME already shows a move as one line with both
#: paths) and FS_ERROR (which needs a filesystem mark on a filesystem that
#: reports errors).
ALL_WATCH_EVENTS = (
    Event.ACCESS | Event.MODIFY | Event.ATTRIB | Event.CLOSE | Event.OPEN | Event.OPEN_EXEC
    | Event.RENAME | Event.CREATE | Event.DELETE | Event.DELETE_SELF | Event.MOVE_SELF
)

#: Events only a FID group reports; asking for any of them selects FID mode.
FID_ONLY = FID_EVENTS
#: Linux 6.5's AT_HANDLE_FID: a handle to identify an object by, as fanotify
#: reports for filesystems that cannot decode handles (overlayfs).
_AT_HANDLE_FID = _ffi.lib.AT_HANDLE_FID

_FID_FLAGS = InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID
# Not REPORT_DFID_NAME_TARGET: with the child's handle on a CREATE, the
# kernel merges the CREATE with the file's OPEN and CLOSE_WRITE that follow
# while it is queued (their records are then alike), so one line would say
# CLOSE_WRITE|OPEN|CREATE where three lines said what happened in order.


def _rule(args: argparse.Namespace) -> FanoRule | None:
    """The ``--pid/--exe/--cwd/--path`` filters as one rule (None: keep everything)."""
    pids = [p for group in args.pid for p in group]
    if not (pids or args.exe or args.cwd or args.path):
        return None
    return FanoRule(
        "afanotify-watch", pids=pids, exe_pattern=args.exe, cwd_pattern=args.cwd,
        path_pattern=args.path,
    )


class _Counts:
    __slots__ = ("seen", "shown", "filtered", "overflows", "unshown", "drain")

    def __init__(self) -> None:
        self.seen = self.shown = self.filtered = self.overflows = 0
        #: Events read but never shown: the command stopped first.
        self.unshown = 0
        #: The drain thread, when one reads (its counts go into the summary).
        self.drain: Drain | None = None


def _open_group(fid: bool, *, unlimited: bool = False, proc_info: bool = False) -> Fanotify:
    """A notification group; with a pidfd per event when the kernel and caps allow.

    The group reads ``exe``/``cwd`` per event only for the ``--exe``/``--cwd``
    filters (``proc_info``); the lines take them from the per-batch read.
    """
    extra = InitFlag.UNLIMITED_QUEUE if unlimited else InitFlag(0)
    base = (_FID_FLAGS if fid else InitFlag.CLASS_NOTIF) | extra
    try:
        return Fanotify(base | InitFlag.REPORT_PIDFD, proc_info=proc_info)
    except (UnsupportedFlagError, PermissionError):
        # REPORT_PIDFD is Linux 5.15+ and needs CAP_SYS_ADMIN; do without.
        return Fanotify(base, proc_info=proc_info)


class MarkedPaths:
    """The marked objects' paths, by file handle.

    Turning an event's file handle into a path needs ``open_by_handle_at``,
    which needs CAP_DAC_READ_SEARCH.  Without it (an unprivileged FID watch),
    and on filesystems that cannot decode handles (overlayfs), the handles
    of what was marked still name known directories: events in them get
    their full path from here.
    """

    def __init__(self) -> None:
        self._paths: dict[tuple[tuple[int, int], int, bytes], str] = {}

    def add(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                fsid = _ffi.fsid_of_fd(fd)
            finally:
                os.close(fd)
            try:
                htype, handle, _ = _ffi.name_to_handle(_ffi.lib.AT_FDCWD, path)
            except OSError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                htype, handle, _ = _ffi.name_to_handle(_ffi.lib.AT_FDCWD, path, _AT_HANDLE_FID)
        except OSError:
            return
        self._paths[(fsid, htype, handle)] = os.path.abspath(path)

    def complete(self, ev: FanotifyData) -> FanotifyData:
        """``ev`` with its path filled from a marked directory, if the group could not."""
        if ev.path_resolved or not self._paths or ev.fd >= 0 or ev.pidfd >= 0:
            return ev  # (an event that owns descriptors is never copied)
        handle = ev.dfid if ev.dfid is not None else ev.fid
        if handle is None:
            return ev
        d = self._paths.get((handle.fsid, handle.handle_type, handle.handle))
        if d is None:
            return ev
        if ev.dfid is None or not ev.name or ev.name == ".":
            return replace(ev, path=d, path_resolved=True)
        return replace(ev, path=os.path.join(d, ev.name), dir_path=d, path_resolved=True)


def _mark_all(
    fan: Fanotify, paths: Sequence[str], mask: int, scope: str, known: MarkedPaths
) -> None:
    for p in paths:
        if fan.fid_mode:
            known.add(p)
        m = mask | Event.ONDIR
        if fan.fid_mode and scope == "filesystem":
            m |= _map_events(mask)
        if scope == "inode" and os.path.isdir(p):
            m |= Event.EVENT_ON_CHILD
        fan.mark(p, m, scope)  # type: ignore[arg-type]


def _setup_watch(
    args: argparse.Namespace, parser: argparse.ArgumentParser, known: MarkedPaths
) -> tuple[Fanotify, str, int]:
    explicit = args.events is not None
    mask = args.events if explicit else ALL_WATCH_EVENTS
    scope: str = args.scope
    if scope == "mount":
        # The kernel refuses the FID-only events on mount marks (EINVAL).
        if explicit and mask & FID_ONLY:
            parser.error(
                f"argument --events: mount marks cannot report "
                f"{','.join(_action_names(mask & FID_ONLY))}; use --filesystem"
            )
        mask &= ~FID_ONLY
    if mask & Event.FS_ERROR and scope != "filesystem":
        parser.error("argument --events: fs_error is reported for filesystem marks: "
                     "add --filesystem")
    fid = bool(args.fid or mask & FID_ONLY)
    per_event = bool(args.exe or args.cwd)
    fan = _open_group(fid, unlimited=args.unlimited_queue, proc_info=per_event)
    try:
        _mark_all(fan, args.paths, mask, scope, known)
    except OSError as exc:
        fan.close()
        fallback = (
            fid and not explicit and not args.fid
            and exc.errno in (errno.EXDEV, errno.ENODEV, errno.EOPNOTSUPP)
        )
        if not fallback:
            raise
        # The filesystem cannot report file handles (e.g. some overlayfs
        # setups): with the default event set, watch what fd mode can.
        _err(f"note: {exc.strerror}; watching without FID events (no create/delete/move)")
        mask &= ~FID_ONLY
        fid = False
        fan = _open_group(False, unlimited=args.unlimited_queue, proc_info=per_event)
        try:
            _mark_all(fan, args.paths, mask, scope, known)
        except BaseException:
            fan.close()
            raise
    mode = "FID" if fid else "fd"
    return fan, f"{scope} marks, {mode} mode, events {','.join(_action_names(mask))}", mask


def _map_events(mask: int) -> int:
    """What a filesystem mark adds to ``mask`` so the directory map sees every move.

    The group keeps its map from one read to the next only while it sees
    every directory move (see afanotify/_dirmap.py); otherwise a delete read
    after its directory is gone has no path.  The lines show only ``mask``.
    """
    if mask & Event.RENAME or mask & Event.MOVE == Event.MOVE:
        return 0
    return int(Event.MOVE)


#: The ``--format`` fields read from /proc/PID/exe and /proc/PID/cwd.
_PATH_FIELDS = frozenset(("exe", "cwd"))
#: Reads per readiness callback at most, so signals and timers still run in a burst.
_READS_PER_CALL = 64
#: Seconds between two rounds of taking the drain's batches, at least.  At a
#: steady rate the thread's reads are a few events each; taken as they come,
#: every round pays its fixed costs (wakeup, decode setup, a write) for a
#: handful of lines.  Waiting this long lets the thread gather them into one
#: batch (it reads on meanwhile: nothing waits in the kernel's queue), and
#: delays a line by this much at most.  50 ms: with bench_cli.py --rate
#: (files created, renamed, deleted at a steady rate), 20 ms -> 50 ms cut
#: the watcher's CPU from 0.37 to 0.28 s at 300 files/s and from 0.44 to
#: 0.32 s at 1,000 (text; JSON 0.46 -> 0.39), 6 s runs; 100 ms saved little
#: more (0.27 s at 300).
PACE_S = 0.05


class _Watch:
    """The watch loop: take a batch, filter, format, write.

    A FID group on the compiled core is read by a drain thread
    (:class:`afanotify._drain.Drain`): it empties the kernel's queue as fast
    as the kernel fills it, into memory bounded by ``--max-backlog``, and
    names each read's processes right after the read; the loop formats what
    it read.  An fd-mode group (its events are open files: a backlog would
    be one of descriptors) and the pure core are read from the loop's
    readiness callback (:class:`afanotify._drain.PolledReader`), with the
    processes named per batch between read and decode.  Either way the
    events never wait in the group's queue, and process details are read
    once per process per batch.
    """

    def __init__(
        self, fan: Fanotify, args: argparse.Namespace, sink: _Sink, counts: _Counts,
        rule: FanoRule | None, known: MarkedPaths, wanted: int = ~0,
    ) -> None:
        self.fan = fan
        #: The events the lines show (the marks may add moves for the map).
        self.wanted = int(wanted) & ~int(Event.ONDIR)
        self.sink = sink
        self.counts = counts
        self.rule = rule
        self.known = known
        self.json = bool(args.json)
        self.template: Template | None = getattr(args, "format", None)
        self.time_format: str = getattr(args, "time_format", None) or DEFAULT_TIME_FORMAT
        self.formatter = BatchFormatter(
            json=self.json, template=self.template, time_format=self.time_format
        )
        self.my_pgrp = os.getpgrp() if args.exclude_self else -1
        self.limit: int | None = args.count
        self.own_pid = os.getpid()
        # The lines use exe and cwd in JSON and where the template asks for them.
        paths = self.json or bool(self.template is not None and self.template.used & _PATH_FIELDS)
        mib = getattr(args, "max_backlog", None)
        limit = int(mib * (1 << 20)) if mib else DEFAULT_LIMIT
        self.source: Drain | PolledReader
        if fan.fid_mode and _drain_available() and not getattr(args, "no_drain", False):
            self.source = counts.drain = Drain(fan, limit=limit, paths=paths)
        else:
            self.source = PolledReader(fan, paths=paths)
        #: Whether the events can own descriptors.  A drain's cannot: a FID
        #: notification group's events carry no fd, and the thread closed
        #: their pidfds (FAN_NOPIDFD in the records), so closing each event
        #: would only cost a call per line.
        self.owning = not isinstance(self.source, Drain)
        self.stopped = False
        self.interval: float | None = getattr(args, "stats_interval", None)
        self._timer: Handle | None = None
        #: Set once the watch ended by itself (``--count``, a closed output, a failure).
        self.done = False
        #: What it failed with, raised by :meth:`finish`.
        self.failure: BaseException | None = None
        #: The next round of :meth:`_take` when one is due (see :data:`PACE_S`).
        self._due: Handle | None = None
        self._last_round = float("-inf")
        self._loop: WatchLoop  # set by start()

    def start(self, loop: WatchLoop) -> None:
        """Start reading, on ``loop``; :meth:`finish` ends it (after ``loop.run()``)."""
        self._loop = loop
        source = self.source
        self.sink.attach(loop)
        if isinstance(source, Drain):
            source.start()
        loop.add_reader(source.fileno(), self._on_readable)
        loop.add_signal_handler(signal.SIGHUP, self._reopen)
        if self.interval:
            self._timer = loop.call_later(self.interval, self._tick, loop)

    def read_queued(self) -> None:
        """Take what queued before the loop started (once :meth:`start` returned)."""
        self._on_readable()

    def finish(self) -> None:
        """Stop reading; write what was read.

        :raises Exception: what the watch failed with, if it did
        """
        loop = self._loop
        source = self.source
        loop.remove_reader(source.fileno())
        loop.remove_signal_handler(signal.SIGHUP)
        if self._timer is not None:
            self._timer.cancel()
        if self._due is not None:
            self._due.cancel()
        if isinstance(source, Drain):
            self._finish_drain(source)
        self.sink.detach()
        self.sink.flush()
        if self.failure is not None:
            raise self.failure

    def _finish_drain(self, drain: Drain) -> None:
        """Stop the thread; write what it read, unless the command was told to stop.

        What the thread read has left the kernel: it is written (a signal
        stops the reading, not the writing of what was read), or, after
        ``--count`` or a closed output, counted as read and not shown.
        """
        drain.stop()
        wanted = self.wanted
        try:
            while True:
                try:
                    events, procs = drain.read_batch()
                except WouldBlock:
                    break
                if self.stopped or self.sink.broken:
                    # (events marked only for the directory map are never shown)
                    self.counts.unshown += sum(
                        1 for ev in events
                        if ev.ev_types & wanted and not ev.ev_types & _OVERFLOW
                    )
                    for ev in events:
                        ev.close()
                    continue
                if not self._batch(events, procs):
                    self.stopped = True
        finally:
            drain.close()

    def _reopen(self) -> None:
        try:
            self.sink.reopen()
        except OSError as exc:
            _err(f"watch: cannot reopen {self.sink.path!r}: {exc.strerror}; "
                 "still writing to the file it had open")

    def _tick(self, loop: WatchLoop) -> None:
        _err(_progress(self.counts, self.sink, self.fan))
        if self.interval:
            self._timer = loop.call_later(self.interval, self._tick, loop)

    def _stop(self, exc: BaseException | None = None) -> None:
        self.stopped = True
        if self.done:
            return
        self.done = True
        self.failure = exc
        self._loop.stop()

    def _on_readable(self) -> None:
        source = self.source
        if not isinstance(source, Drain):
            self._take()  # the group fd: readable until read
            return
        # The eventfd is reset now, and every batch it announced is taken by
        # the round that follows (sooner or later): one the thread adds after
        # that round sets it again.
        source.clear_wakeup()
        if self._due is not None:
            return
        wait = self._last_round + PACE_S - self._loop.time()
        if wait > 0:
            self._due = self._loop.call_later(wait, self._take)
        else:
            self._take()

    def _take(self) -> None:
        self._due = None
        if self.done or (isinstance(self.source, Drain) and self.source.closed):
            # Stopped (--count reached, the output closed, a failure), or a
            # round queued (call_soon) before run() closed the drain.
            return
        self._last_round = self._loop.time()
        # Each batch is thousands of new objects without cycles, freed when
        # it is written: the cyclic GC would only walk them (see
        # Fanotify._handle_batch).  It is paused for the callback and left
        # as it was; the next allocation after that collects as usual.
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            self._read_all()
        finally:
            if paused:
                gc.enable()

    def _read_all(self) -> None:
        source = self.source
        drain = source if isinstance(source, Drain) else None
        if drain is not None:
            drain.clear_wakeup()
        try:
            if self.fan.closed:
                raise ClosedResourceError("the fanotify group is closed")
            for _ in range(_READS_PER_CALL):
                try:
                    events, procs = source.read_batch()
                except WouldBlock:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        break  # counted in stats.lost; the rest stays queued
                    raise
                if not self._batch(events, procs):
                    self._stop()
                    break
            else:
                if drain is not None:
                    # More may wait: come back after the loop's other work.
                    self._loop.call_soon(self._take)
            if drain is not None and drain.error is not None:
                raise drain.error
            self.sink.flush()
            if self.sink.broken:
                self._stop()
        except Exception as exc:
            self._stop(exc)

    def _batch(self, events: list[FanotifyData], procs: dict[int, Proc]) -> bool:
        """Write one batch; False once the command should stop."""
        counts = self.counts
        now = time.time()
        wanted = self.wanted
        shown: list[FanotifyData] = []
        append = shown.append
        complete = self.known.complete
        rule = self.rule
        my_pgrp = self.my_pgrp
        limit = self.limit
        # Counted in locals, put back once (the loop runs per event).
        seen = filtered = overflows = 0
        room = None if limit is None else limit - counts.shown
        going = True
        try:
            for ev in events:
                mask = ev.ev_types
                if mask & _OVERFLOW:
                    overflows += 1
                    append(ev)
                    continue
                if not mask & wanted:
                    continue  # marked for the directory map only
                if not ev.path_resolved:
                    ev = complete(ev)
                seen += 1
                if my_pgrp >= 0 and _in_pgrp(ev.pid, my_pgrp):
                    filtered += 1
                    continue
                if rule is not None and not rule.matches(ev):
                    filtered += 1
                    continue
                append(ev)
                if room is not None:
                    room -= 1
                    if room <= 0:
                        going = False
                        break
            if overflows:
                self._write_marked(shown, procs, now)
            else:
                self.sink.add(self.formatter.format(shown, procs, now), len(shown))
        finally:
            counts.seen += seen
            counts.filtered += filtered
            counts.overflows += overflows
            counts.shown += len(shown) - overflows
            if self.owning:
                for ev in events:
                    ev.close()
        return going

    def _write_marked(self, shown: list[FanotifyData], procs: dict[int, Proc],
                      now: float) -> None:
        """Write a batch with Q_OVERFLOW events: their lines are markers, not events."""
        fmt = self.formatter
        sink = self.sink
        run: list[FanotifyData] = []
        for ev in shown:
            if ev.ev_types & _OVERFLOW:
                if run:
                    sink.add(fmt.format(run, procs, now), len(run))
                    run = []
                sink.add(fmt.marker(ev, now), 0, marker=True)
            else:
                run.append(ev)
        if run:
            sink.add(fmt.format(run, procs, now), len(run))


def _in_pgrp(pid: int, pgrp: int) -> bool:
    if pid <= 0:
        return False
    try:
        return os.getpgid(pid) == pgrp
    except OSError:
        return False  # the process is gone: nothing tells where it belonged


def _kernel_queued(fd: int) -> int | None:
    """Bytes of events waiting in the kernel's queue (FIONREAD), or None."""
    try:
        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return None
    return int.from_bytes(buf, sys.byteorder, signed=True)


class _Losses:
    """What a watch lost so far, from its counts and its parts' (see :func:`_loss_words`)."""

    __slots__ = ("overflows", "lost", "dropped", "backlog", "limit")

    def __init__(self, counts: _Counts, sink: _Sink, fan: Fanotify) -> None:
        drain = counts.drain
        st = drain.stats if drain is not None else None
        # The drain marks each of its own gaps with a Q_OVERFLOW record too.
        gaps = st.gaps if st is not None else 0
        self.overflows = max(0, counts.overflows - gaps)
        self.lost = fan.stats.lost
        self.dropped = sink.dropped
        self.backlog = st.dropped if st is not None else 0
        self.limit = drain.limit if drain is not None else 0


def _loss_words(overflows: int, lost: int, dropped: int = 0, backlog: int = 0,
                limit: int = 0) -> str:
    """What was lost, in words: a Q_OVERFLOW record carries no count."""
    if not overflows and not lost and not dropped and not backlog:
        return "nothing lost"
    said = []
    if overflows:
        times = "once" if overflows == 1 else f"{overflows} times"
        said.append(
            f"EVENTS LOST: the kernel's queue overflowed {times} and dropped an unknown "
            "number of events (--unlimited-queue keeps them)"
        )
    if backlog:
        said.append(
            f"EVENTS LOST: {backlog} event(s) read and dropped because {limit >> 20} MiB of "
            "events were waiting to be written (raise --max-backlog)"
        )
    if lost:
        said.append(f"{lost} event(s) lost: no file descriptor left for them (ulimit -n)")
    if dropped:
        said.append(
            f"LINES LOST: {dropped} line(s) dropped because the reader of the output was "
            "too slow (raise --max-pending, or write to a file with --output)"
        )
    return "; ".join(said)


def _summary(counts: _Counts, sink: _Sink, fan: Fanotify) -> str:
    st = fan.stats
    loss = _Losses(counts, sink, fan)
    shown = counts.shown
    tail = ""
    if sink.dropped:
        tail += f", {sink.dropped} dropped for a slow reader"
    if sink.unwritten:
        # Lines are written in batches: count the ones that got out.
        shown = max(0, shown - sink.unwritten)
        why = "the output was closed" if sink.broken else "the reader took nothing more"
        tail += f", {sink.unwritten} not written ({why})"
    if counts.unshown:
        tail += f", {counts.unshown} read but not shown (the command was stopping)"
    text = f"{counts.seen} events seen, {shown} shown, {counts.filtered} filtered out"
    lost = _loss_words(loss.overflows, loss.lost, loss.dropped, loss.backlog, loss.limit)
    if loss.overflows or loss.lost or loss.backlog:
        return f"{text}, {st.parse_errors} malformed, {loss.overflows} overflows{tail}; {lost}"
    return f"{text}, {st.parse_errors} dropped, 0 overflows{tail}; {lost}"


def _progress(counts: _Counts, sink: _Sink, fan: Fanotify) -> str:
    queued = _kernel_queued(fan.fileno())
    q = "?" if queued is None else str(queued)
    loss = _Losses(counts, sink, fan)
    held = ""
    if counts.drain is not None:
        held = f", {counts.drain.stats.held} bytes read and waiting to be written"
    return (
        f"progress: {counts.seen} events seen, {sink.written} lines written, "
        f"{counts.filtered} filtered out, "
        f"{_loss_words(loss.overflows, loss.lost, loss.dropped, loss.backlog, loss.limit)}, "
        f"{q} bytes queued in the kernel{held}, {sink.pending} bytes waiting for the output"
    )


def _cmd_watch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_paths(parser, args.paths)
    if args.json and getattr(args, "format", None) is not None:
        parser.error("argument --format: not allowed with --json (JSON lines have every field)")
    rule = _rule(args)
    try:
        mib = getattr(args, "max_pending", None)
        sink = _Sink(args.output, pending_max=int(mib * (1 << 20)) if mib else PENDING_MAX)
    except OSError as exc:
        parser.error(f"argument --output: cannot open {args.output!r}: {exc.strerror}")
    counts = _Counts()
    known = MarkedPaths()
    fan: Fanotify | None = None
    try:
        fan, desc, wanted = _setup_watch(args, parser, known)
        watch = _Watch(fan, args, sink, counts, rule, known, wanted)

        # What was made so far (modules, classes, the group) lives until
        # exit: frozen, the collections the event loop still triggers
        # between rounds walk none of it (about 4% of the CPU at a steady
        # 1,000 files a second; see _Watch._take for the rounds themselves).
        gc.freeze()
        run_watch(watch, args.timeout,
                   lambda: _err(f"watching {len(args.paths)} path(s): {desc}"))
    finally:
        try:
            sink.finish()
        finally:
            if fan is not None:
                fan.close()
                _err(_summary(counts, sink, fan))
            sink.close()
    return 0
