"""The ``afanotify`` command: ``watch``, ``guard`` and ``features``.

Installed as a console script and runnable as ``python -m afanotify``.
Everything here is built on the public library: the :class:`Fanotify` group
for events, and :func:`features` for probing.  Exit codes: 0 done, 1 runtime
error, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import IO, Any, NamedTuple

from . import __version__, _ffi
from ._features import features
from ._proc import pidfd_pid
from .events import FanotifyData
from .exceptions import AfanotifyError, UnsupportedFlagError
from .flags import FID_EVENTS, Event, InitFlag, Response, evt_to_str
from .group import Fanotify
from .permission import ALLOW, DENY, Verdict
from .rules import FanoRule

__all__ = ["main"]

PROG = "afanotify"

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
_NEEDS_CAP = (
    "needs CAP_SYS_ADMIN, which this process lacks: run it as root (or grant the "
    "capability)."
)
_UNPRIVILEGED_HINT = (
    " Without it, a user can still watch files they can read with inode marks in FID "
    "mode: afanotify watch --inode --fid PATH"
)
_HINTS = {
    "watch": _UNPRIVILEGED_HINT,
    "features": _UNPRIVILEGED_HINT,
    "guard": " Permission events always need it.",
}

#: ECS ``event.type`` for each event bit (the ``file`` category's types).
_ECS_TYPES: tuple[tuple[Event, str], ...] = (
    (Event.ACCESS | Event.OPEN | Event.OPEN_EXEC | Event.CLOSE_NOWRITE, "access"),
    (Event.MODIFY | Event.CLOSE_WRITE | Event.ATTRIB | Event.MOVE_SELF | Event.RENAME, "change"),
    (Event.CREATE | Event.MOVED_TO, "creation"),
    (Event.DELETE | Event.DELETE_SELF | Event.MOVED_FROM, "deletion"),
    (Event.FS_ERROR, "error"),
)
_SINGLE = tuple(
    e for e in Event if e.value and not e.value & (e.value - 1) and e not in (Event.ONDIR,)
)
_OVERFLOW = int(Event.Q_OVERFLOW)
_ONDIR = int(Event.ONDIR)


class _MaskNames(NamedTuple):
    #: ``event.action``: lower-case names, ONDIR left out.
    actions: tuple[str, ...]
    #: ``fanotify.events``: the names of every bit.
    events: tuple[str, ...]
    #: ``event.type``: the ECS types.
    ecs_types: tuple[str, ...]
    #: For the human format: ``CREATE|ONDIR``.
    text: str


@functools.lru_cache(maxsize=1024)
def _mask_names(mask: int) -> _MaskNames:
    # Enum arithmetic is slow per event; masks repeat, so name each once.
    text = evt_to_str(mask)
    return _MaskNames(
        tuple((e.name or "").lower() for e in _SINGLE if mask & e.value),
        tuple(text.split("|")),
        tuple(t for bits, t in _ECS_TYPES if mask & bits),
        text,
    )
ECS_VERSION = "8.11.0"

WATCH_EPILOG = """\
examples:
  afanotify watch /tmp/watched
      every event on /tmp/watched and the entries directly in it
  afanotify watch --events modify,close_write --filesystem --path '/srv/*' /srv
      every write anywhere on the filesystem holding /srv, under /srv
  afanotify watch --json --output /var/log/files.json --filesystem /srv
      one JSON object per line (Elastic Common Schema names) for a log shipper
  afanotify watch --events open --pid 1234 --count 10 /etc/passwd
      the next ten opens of /etc/passwd by process 1234
  afanotify watch --json --exclude-self /var/log | tee /var/log/watch.json
      without the pipeline's own writes (tee is in our process group)

An inode mark (the default) covers the path itself and, for a directory, the
entries directly in it; --mount and --filesystem cover everything on the
mount or filesystem, narrowed with --path.  Patterns are fnmatch(3)
patterns with extended syntax (@(a|b), !(x), +(...)); '*' also matches '/'.
The events mode follows from --events: any of attrib, create, delete,
moved_from, moved_to, move, delete_self, move_self, rename, fs_error selects
FID mode (events carry file handles, resolved to paths); otherwise events
carry file descriptors.  --fid forces FID mode.  Mount marks cannot report
the FID-only events: with --mount, the default leaves them out.

A line "afanotify: watching ..." on stderr says the marks are in place.  On
exit (--count, --timeout, Ctrl-C, SIGTERM, or a closed output pipe) a summary
goes to stderr: events seen, shown, filtered out, dropped, queue overflows.
"""

FEATURES_EPILOG = """\
examples:
  afanotify features
  afanotify features --json | jq .events

Every answer comes from a probe of the running kernel (needs root for a full
answer), not from its version number.
"""

GUARD_EPILOG = """\
examples:
  afanotify guard --deny '*.key' /srv/secrets
      refuse every open of a .key file directly in /srv/secrets
  afanotify guard --default deny --allow-exe '/usr/bin/@(cat|less)' /srv/secrets
      only cat and less may open files there
  afanotify guard --filesystem --deny-exe '*/curl' --log-denials /srv
      curl may open nothing on /srv's filesystem; each refusal is logged

Rules are checked in order: --allow-exe, then --deny-exe, then --deny; the
first that matches decides, else --default.  Patterns are fnmatch(3)
patterns with extended syntax; '*' also matches '/'.  Only opens of files
are guarded (not of directories).

A process opening a guarded file waits until the guard answers.  The guard
answers every open: by the rules, or with the --default verdict when it is not
decided within --deadline, and for what is pending or still queued when it
stops (--timeout, SIGTERM, Ctrl-C).  If the guard is killed (SIGKILL), its fd
closes and the kernel allows what was waiting.
A line "afanotify: guarding ..." on stderr says the marks are in place.
"""


class _Usage(Exception):
    """A usage error found after argument parsing (exit code 2)."""


# -- argument types ----------------------------------------------------------


def _events_arg(text: str) -> int:
    mask = 0
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            mask |= ALL_WATCH_EVENTS
            continue
        ev = WATCH_EVENTS.get(name)
        if ev is None:
            valid = ", ".join(["all", *WATCH_EVENTS])
            raise argparse.ArgumentTypeError(f"unknown event {raw.strip()!r}; valid: {valid}")
        mask |= ev
    if not mask:
        raise argparse.ArgumentTypeError("no event named; valid: all, " + ", ".join(WATCH_EVENTS))
    return mask


def _pids_arg(text: str) -> list[int]:
    pids = []
    for part in text.split(","):
        try:
            pid = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a process id") from None
        if pid <= 0:
            raise argparse.ArgumentTypeError(f"{pid} is not a process id (must be > 0)")
        pids.append(pid)
    return pids


def _count_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _seconds_arg(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not s > 0 or s == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return s


def _pattern_arg(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the pattern is empty")
    return text


# -- the parser --------------------------------------------------------------


def _add_scope(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--inode", dest="scope", action="store_const", const="inode",
        help="mark each PATH itself (and a directory's direct entries); the default",
    )
    g.add_argument(
        "--mount", dest="scope", action="store_const", const="mount",
        help="mark the mount holding each PATH",
    )
    g.add_argument(
        "--filesystem", dest="scope", action="store_const", const="filesystem",
        help="mark the whole filesystem holding each PATH",
    )
    p.set_defaults(scope="inode")


def build_parser() -> argparse.ArgumentParser:
    """The ``afanotify`` argument parser."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Linux fanotify from the command line: watch file events, guard opens, "
        "and list what the kernel supports.",
        epilog="Run 'afanotify COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    w = sub.add_parser(
        "watch", help="stream file events", formatter_class=fmt, epilog=WATCH_EPILOG,
        description="Stream fanotify events on PATHs, one line each.",
    )
    w.add_argument("paths", nargs="+", metavar="PATH", help="what to mark")
    _add_scope(w)
    w.add_argument(
        "--events", type=_events_arg, default=None, metavar="LIST",
        help="comma-separated events (default: all): all, " + ", ".join(WATCH_EVENTS),
    )
    w.add_argument(
        "--fid", action="store_true",
        help="use FID mode (file handles) even for open/access/modify/close events; "
        "works without root for inode marks on files you can read",
    )
    w.add_argument(
        "--pid", type=_pids_arg, action="append", default=[], metavar="PID[,PID...]",
        help="only events caused by these processes (repeatable)",
    )
    w.add_argument("--exe", type=_pattern_arg, metavar="PATTERN",
                   help="only events by processes whose executable matches")
    w.add_argument("--cwd", type=_pattern_arg, metavar="PATTERN",
                   help="only events by processes whose working directory matches")
    w.add_argument("--path", type=_pattern_arg, metavar="PATTERN",
                   help="only events whose path matches")
    w.add_argument(
        "--exclude-self", action="store_true",
        help="also drop events caused by processes in this command's process group "
        "(its pipeline, e.g. '| tee FILE'); the command's own events are always dropped",
    )
    w.add_argument("--json", action="store_true",
                     help="one JSON object per line (Elastic Common Schema names)")
    w.add_argument("--output", "-o", metavar="FILE",
                   help="append events to FILE instead of standard output")
    w.add_argument("--count", type=_count_arg, metavar="N", help="stop after N events shown")
    w.add_argument("--timeout", type=_seconds_arg, metavar="S", help="stop after S seconds")

    f = sub.add_parser(
        "features", help="list what the running kernel supports", formatter_class=fmt,
        epilog=FEATURES_EPILOG,
        description="Probe the running kernel's fanotify: init flags, mark types and "
        "flags, events.",
    )
    f.add_argument("--json", action="store_true", help="print one JSON object")

    g = sub.add_parser(
        "guard", help="allow or deny opens (a permission agent)", formatter_class=fmt,
        epilog=GUARD_EPILOG,
        description="Answer open permission requests on PATHs by rules.",
    )
    g.add_argument("paths", nargs="+", metavar="PATH", help="what to guard")
    _add_scope(g)
    g.add_argument("--deny", type=_pattern_arg, action="append", default=[], metavar="PATTERN",
                   help="deny opens of paths matching PATTERN (repeatable)")
    g.add_argument("--deny-exe", type=_pattern_arg, action="append", default=[],
                   metavar="PATTERN",
                   help="deny opens by processes whose executable matches (repeatable)")
    g.add_argument("--allow-exe", type=_pattern_arg, action="append", default=[],
                   metavar="PATTERN",
                   help="always allow processes whose executable matches (repeatable); "
                   "checked first")
    g.add_argument("--default", choices=("allow", "deny"), default="allow",
                   help="the verdict when no rule matches (default: allow)")
    g.add_argument("--timeout", type=_seconds_arg, metavar="S", help="stop after S seconds")
    g.add_argument("--deadline", type=_seconds_arg, default=5.0, metavar="S",
                   help="answer an open with the --default verdict if it is not decided "
                   "within S seconds (default: 5)")
    g.add_argument("--log-denials", action="store_true",
                   help="write a line to stderr for every denied open")
    return parser, {"watch": w, "features": f, "guard": g}


# -- small helpers -----------------------------------------------------------


def _err(msg: str) -> None:
    try:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass


def _check_paths(parser: argparse.ArgumentParser, paths: Sequence[str]) -> None:
    for p in paths:
        try:
            os.stat(p)
        except FileNotFoundError:
            parser.error(f"argument PATH: no such file or directory: {p!r}")
        except NotADirectoryError:
            parser.error(f"argument PATH: a component is not a directory: {p!r}")
        except PermissionError:
            parser.error(f"argument PATH: permission denied: {p!r}")


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


def _action_names(mask: int) -> list[str]:
    return list(_mask_names(mask).actions)


# -- output -------------------------------------------------------------------


class _Sink:
    """Where event lines go; remembers a closed pipe instead of raising."""

    def __init__(self, path: str | None) -> None:
        self.broken = False
        self._own = path is not None
        self._f: IO[str] = (
            open(path, "a", encoding="utf-8") if path is not None else sys.stdout
        )

    def write(self, line: str) -> None:
        if self.broken:
            return
        try:
            self._f.write(line)
            self._f.write("\n")
        except BrokenPipeError:
            self._broke()

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self._f.flush()
        except BrokenPipeError:
            self._broke()

    def _broke(self) -> None:
        self.broken = True
        # Python would try to flush stdout again at exit and complain; point
        # the descriptor at /dev/null so that last flush goes nowhere quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._f.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.flush()
        if self._own:
            self._f.close()


def format_human(ev: FanotifyData, now: float, comm: str | None) -> str:
    """One aligned line: time, pid, process name, events, path(s)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    if ev.ev_types & _OVERFLOW:
        return f"{stamp}  {'-':>7}  {'-':<15}  {'Q_OVERFLOW':<26}  (the kernel dropped events)"
    pid = str(ev.pid) if ev.pid > 0 else "-"
    name = comm or (os.path.basename(ev.exe) if ev.exe else "?")
    if ev.old_path is not None and ev.new_path is not None:
        where = f"{ev.old_path} -> {ev.new_path}"
    else:
        where = ev.path if ev.path is not None else "?"
    if ev.path is not None and not ev.path_resolved:
        where += "  (unresolved)"
    return f"{stamp}  {pid:>7}  {name:<15.15}  {_mask_names(ev.ev_types).text:<26}  {where}"


def format_json(ev: FanotifyData, now: float, comm: str | None) -> str:
    """One JSON object with Elastic Common Schema field names (see the README)."""
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    mask = ev.ev_types
    if mask & _OVERFLOW:
        rec: dict[str, Any] = {
            "@timestamp": stamp,
            "ecs": {"version": ECS_VERSION},
            "message": "fanotify queue overflow: the kernel dropped events",
            "event": {"kind": "pipeline_error", "category": ["file"], "type": ["error"],
                      "action": ["q_overflow"], "module": "fanotify"},
            "fanotify": {"mask": mask, "events": ["Q_OVERFLOW"]},
        }
        return json.dumps(rec, separators=(",", ":"))
    path = ev.path
    directory = ev.dir_path
    name = ev.name
    if path is not None and ev.path_resolved:
        if directory is None:
            directory = os.path.dirname(path) or None
        if name is None:
            name = os.path.basename(path) or None
    names = _mask_names(mask)
    rec = {
        "@timestamp": stamp,
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "event",
            "category": ["file"],
            "type": list(names.ecs_types),
            "action": list(names.actions),
            "module": "fanotify",
        },
        "file": {
            "path": path,
            "directory": directory,
            "name": name,
            "type": "dir" if mask & _ONDIR else "file",
        },
        "process": {
            "pid": ev.pid if ev.pid > 0 else None,
            "name": comm,
            "executable": ev.exe,
            "working_directory": ev.cwd,
        },
        "fanotify": {
            "mask": mask,
            "events": list(names.events),
            "path_resolved": ev.path_resolved,
            "old_path": ev.old_path,
            "new_path": ev.new_path,
        },
    }
    return json.dumps(rec, separators=(",", ":"))


# -- filtering ----------------------------------------------------------------


def _rule(args: argparse.Namespace) -> FanoRule | None:
    """The ``--pid/--exe/--cwd/--path`` filters as one rule (None: keep everything)."""
    pids = [p for group in args.pid for p in group]
    if not (pids or args.exe or args.cwd or args.path):
        return None
    return FanoRule(
        "afanotify-watch", pids=pids, exe_pattern=args.exe, cwd_pattern=args.cwd,
        path_pattern=args.path,
    )


# -- watch --------------------------------------------------------------------


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


class _Terminated(Exception):
    """SIGTERM arrived outside the event loop (while setting up or closing)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


async def _run_until_stopped(
    work: Callable[[], Any], timeout: float | None, announce: Callable[[], None]
) -> str:
    """Run ``work()`` until it returns, the timeout passes, or SIGINT/SIGTERM; says which.

    ``announce()`` runs once the signal handlers are in place, so a signal
    sent after the announcement always gets a clean stop.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    caught: list[str] = []

    def on_signal(name: str) -> None:
        caught.append(name)
        stop.set()

    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in sigs}
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig.name)
    task: asyncio.Task[Any] = asyncio.ensure_future(work())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        announce()
        done, _ = await asyncio.wait(
            {task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig] or signal.SIG_DFL)
        for t in (task, stopper):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    if task in done:
        task.result()  # re-raise a failure
        return "done"
    if caught:
        return caught[0]
    return "timeout"


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


# -- features -----------------------------------------------------------------


def _cmd_features(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    feats = features()
    sink = _Sink(None)
    if args.json:
        sink.write(json.dumps(feats.as_dict(), sort_keys=True))
    elif feats.available:
        d = feats.as_dict()
        for key in ("init_flags", "mark_types", "mark_flags", "events"):
            values = d[key]
            assert isinstance(values, list)
            sink.write(f"{key + ':':<12} {' '.join(values)}")
    sink.close()
    if not feats.available:
        _err(f"features: error: {feats.reason}; fanotify {_NEEDS_CAP}{_HINTS['features']}")
        return 1
    return 0


# -- main ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 done, 1 error, 2 usage)."""
    parser, subparsers = _build()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    subparser = subparsers[args.command]
    commands: dict[str, Callable[[argparse.Namespace, argparse.ArgumentParser], int]] = {
        "watch": _cmd_watch,
        "features": _cmd_features,
        "guard": _cmd_guard,
    }
    # Until the event loop takes over, SIGTERM unwinds like an exception, so
    # the group is still closed and the summary written.
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return commands[args.command](args, subparser)
    except SystemExit as exc:  # parser.error() after parsing
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:  # before the event loop took over SIGINT
        return 128 + signal.SIGINT
    except _Terminated:
        return 128 + signal.SIGTERM
    except PermissionError as exc:
        detail = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        if "CAP_SYS_ADMIN" in detail:
            _err(
                f"{args.command}: error: {args.command}{where} {_NEEDS_CAP}"
                f"{_HINTS[args.command]}"
            )
        else:
            _err(f"{args.command}: error: {detail}{where}")
        return 1
    except OSError as exc:
        _err(f"{args.command}: error: {exc.strerror or exc}")
        return 1
    except AfanotifyError as exc:  # e.g. the group failed while reading
        _err(f"{args.command}: error: {exc}")
        return 1
    except ValueError as exc:  # an argument combination the library refuses
        _err(f"{args.command}: error: {exc}")
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


# -- guard --------------------------------------------------------------------


class GuardPolicy:
    """The guard's rules, in order: ``--allow-exe``, ``--deny-exe``, ``--deny``, ``--default``."""

    def __init__(
        self,
        deny: Sequence[str] = (),
        deny_exe: Sequence[str] = (),
        allow_exe: Sequence[str] = (),
        default_allow: bool = True,
    ) -> None:
        self.rules: list[tuple[bool, str, FanoRule]] = []
        for p in allow_exe:
            self.rules.append((True, f"--allow-exe {p!r}", FanoRule("allow-exe", exe_pattern=p)))
        for p in deny_exe:
            self.rules.append((False, f"--deny-exe {p!r}", FanoRule("deny-exe", exe_pattern=p)))
        for p in deny:
            self.rules.append((False, f"--deny {p!r}", FanoRule("deny", path_pattern=p)))
        self.default_allow = default_allow
        #: True when a rule looks at the process's executable (/proc must be read).
        self.needs_exe = bool(allow_exe or deny_exe)

    def decide(self, ev: FanotifyData) -> tuple[bool, str]:
        """``(allowed, why)`` for one permission event."""
        for allowed, why, rule in self.rules:
            if rule.matches(ev):
                return allowed, why
        return self.default_allow, "--default " + ("allow" if self.default_allow else "deny")

    def __repr__(self) -> str:
        rules = ", ".join(why for _, why, _ in self.rules)
        return f"GuardPolicy([{rules}], default={'allow' if self.default_allow else 'deny'})"


def _cmd_guard(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_paths(parser, args.paths)
    policy = GuardPolicy(args.deny, args.deny_exe, args.allow_exe, args.default == "allow")
    default = Response.ALLOW if policy.default_allow else Response.DENY
    fan = Fanotify(
        InitFlag.CLASS_CONTENT,
        proc_info=policy.needs_exe or args.log_denials,
        default_response=default,
        permission_timeout=args.deadline,
    )
    try:
        for p in args.paths:
            mask = Event.OPEN_PERM
            if args.scope == "inode" and os.path.isdir(p):
                mask |= Event.EVENT_ON_CHILD
            fan.mark(p, mask, args.scope)

        async def run() -> str:
            loop = asyncio.get_running_loop()

            def log_denial(ev: FanotifyData, why: str) -> None:
                exe = ev.exe or "?"
                _err(f"denied open of {ev.path} by pid {ev.pid} ({exe}): {why}")

            def handler(ev: FanotifyData) -> Verdict:
                allowed, why = policy.decide(ev)
                if not allowed and args.log_denials:
                    # After the verdict is written: logging can wait, the process can't.
                    loop.call_soon(log_denial, ev, why)
                return ALLOW if allowed else DENY

            fan.on_permission(handler)

            async def serve() -> None:
                # Permission events go to the handler; receiving starts the reader.
                while True:
                    (await fan.receive()).close()

            return await _run_until_stopped(
                serve, args.timeout,
                lambda: _err(
                    f"guarding {len(args.paths)} path(s): {args.scope} marks, "
                    f"{len(policy.rules)} rule(s), default {args.default}"
                ),
            )

        asyncio.run(run())
    finally:
        # Closing answers what is pending, and what is still queued in the
        # kernel, with the default verdict (docs/permissions.md).
        fan.close()
        st = fan.permission_stats
        _err(
            f"{st.allowed + st.denied} opens answered: {st.allowed} allowed, {st.denied} "
            f"denied ({st.defaulted} by the default after a deadline, error or stop)"
        )
    return 0
