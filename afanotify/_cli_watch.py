"""``afanotify watch``: mark paths, stream their events as lines."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import time
from collections.abc import Sequence
from dataclasses import replace

from . import _ffi
from ._cli_output import _OVERFLOW, _action_names, _err, _Sink, format_human, format_json
from ._cli_run import _check_paths, _run_until_stopped
from ._proc import pidfd_pid
from .events import FanotifyData
from .exceptions import UnsupportedFlagError
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
#: RENAME (a move already shows as MOVED_FROM + MOVED_TO) and FS_ERROR (which
#: needs a filesystem mark on a filesystem that reports errors).
ALL_WATCH_EVENTS = (
    Event.ACCESS | Event.MODIFY | Event.ATTRIB | Event.CLOSE | Event.OPEN | Event.OPEN_EXEC
    | Event.MOVE | Event.CREATE | Event.DELETE | Event.DELETE_SELF | Event.MOVE_SELF
)

#: Events only a FID group reports; asking for any of them selects FID mode.
FID_ONLY = FID_EVENTS
#: Linux 6.5's AT_HANDLE_FID: a handle to identify an object by, as fanotify
#: reports for filesystems that cannot decode handles (overlayfs).
_AT_HANDLE_FID = _ffi.lib.AT_HANDLE_FID

_FID_FLAGS = InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID


def _comm(pid: int, pidfd: int) -> str | None:
    """The process name from /proc (trusted only while ``pidfd`` still names ``pid``)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            name = f.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return None
    if pidfd >= 0 and pidfd_pid(pidfd) != pid:
        return None
    return name


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
    __slots__ = ("seen", "shown", "filtered")

    def __init__(self) -> None:
        self.seen = self.shown = self.filtered = 0


def _open_group(fid: bool) -> Fanotify:
    """A notification group; with a pidfd per event when the kernel and caps allow."""
    base = _FID_FLAGS if fid else InitFlag.CLASS_NOTIF
    try:
        return Fanotify(base | InitFlag.REPORT_PIDFD, proc_info=True)
    except (UnsupportedFlagError, PermissionError):
        # REPORT_PIDFD is Linux 5.15+ and needs CAP_SYS_ADMIN; do without.
        return Fanotify(base, proc_info=True)


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
        if scope == "inode" and os.path.isdir(p):
            m |= Event.EVENT_ON_CHILD
        fan.mark(p, m, scope)  # type: ignore[arg-type]


def _setup_watch(
    args: argparse.Namespace, parser: argparse.ArgumentParser, known: MarkedPaths
) -> tuple[Fanotify, str]:
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
    fan = _open_group(fid)
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
        fan = _open_group(False)
        try:
            _mark_all(fan, args.paths, mask, scope, known)
        except BaseException:
            fan.close()
            raise
    mode = "FID" if fid else "fd"
    return fan, f"{scope} marks, {mode} mode, events {','.join(_action_names(mask))}"


async def _watch_loop(
    fan: Fanotify,
    args: argparse.Namespace,
    sink: _Sink,
    counts: _Counts,
    rule: FanoRule | None,
    known: MarkedPaths,
) -> None:
    fmt = format_json if args.json else format_human
    my_pgrp = os.getpgrp() if args.exclude_self else -1
    limit: int | None = args.count
    while True:
        received = await fan.receive()
        with received:
            now = time.time()
            ev = received
            if not ev.ev_types & _OVERFLOW:
                ev = known.complete(received)
                counts.seen += 1
                if my_pgrp >= 0 and _in_pgrp(ev.pid, my_pgrp):
                    counts.filtered += 1
                    continue
                if rule is not None and not rule.matches(ev):
                    counts.filtered += 1
                    continue
                counts.shown += 1
            sink.write(fmt(ev, now, _comm(ev.pid, ev.pidfd)))
        if sink.broken:
            return
        if not fan.stats.queued:
            sink.flush()
            if sink.broken:
                return
        if limit is not None and counts.shown >= limit:
            return


def _in_pgrp(pid: int, pgrp: int) -> bool:
    if pid <= 0:
        return False
    try:
        return os.getpgid(pid) == pgrp
    except OSError:
        return False  # the process is gone: nothing tells where it belonged


def _cmd_watch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_paths(parser, args.paths)
    rule = _rule(args)
    try:
        sink = _Sink(args.output)
    except OSError as exc:
        parser.error(f"argument --output: cannot open {args.output!r}: {exc.strerror}")
    counts = _Counts()
    known = MarkedPaths()
    fan: Fanotify | None = None
    try:
        fan, desc = _setup_watch(args, parser, known)
        group = fan

        async def run() -> str:
            return await _run_until_stopped(
                lambda: _watch_loop(group, args, sink, counts, rule, known), args.timeout,
                lambda: _err(f"watching {len(args.paths)} path(s): {desc}"),
            )

        asyncio.run(run())
    finally:
        if fan is not None:
            stats = fan.stats
            fan.close()
            _err(
                f"{counts.seen} events seen, {counts.shown} shown, {counts.filtered} "
                f"filtered out, {stats.parse_errors} dropped, {stats.overflows} overflows"
            )
        sink.close()
    return 0
