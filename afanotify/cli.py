"""The ``afanotify`` command: ``watch``, ``guard`` and ``features``.

Installed as a console script and runnable as ``python -m afanotify``.
Everything here is built on the public library: the :class:`Fanotify` group
for events, and :func:`features` for probing.  Exit codes: 0 done, 1 runtime
error, 2 usage error.

This module holds :func:`main` and the argument parsers, and runs ``features``
itself; ``watch`` lives in :mod:`afanotify._cli_watch`, ``guard`` in
:mod:`afanotify._cli_guard`, and the event lines they write in
:mod:`afanotify._cli_output`.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from ._cli_output import ECS_VERSION as ECS_VERSION
from ._cli_output import FORMAT_FIELDS, Template, _err
from ._cli_output import PROG as PROG
from ._cli_output import format_human as format_human
from ._cli_output import format_json as format_json
from ._cli_sink import Sink as _Sink
from ._cli_watch import ALL_WATCH_EVENTS as ALL_WATCH_EVENTS
from ._cli_watch import FID_ONLY as FID_ONLY
from ._cli_watch import WATCH_EVENTS as WATCH_EVENTS
from ._cli_watch import MarkedPaths as MarkedPaths
from ._cli_watch import _cmd_watch
from ._patterns import PatternError, check_pattern
from .exceptions import AfanotifyError

if TYPE_CHECKING:
    from ._cli_guard import GuardPolicy as GuardPolicy

__all__ = ["main"]


if not TYPE_CHECKING:  # (as in afanotify/__init__.py)

    def __getattr__(name: str) -> Any:
        # ``guard`` is imported when it runs (or its policy is asked for): ``watch``
        # and ``features`` do not pay for its modules.
        if name == "GuardPolicy":
            from ._cli_guard import GuardPolicy

            return GuardPolicy
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

Text lines (the default): time (--time-format), pid, process name, events,
path ("old -> new" for a rename; "(unresolved)" after a path that is only a
name).  --format writes a line of your own instead, with named fields, for
example --format '{time} {pid} {comm} {events} {path}' (a value the event
does not have is "-"; {pid:>7} pads, as in Python's str.format):
""" + "".join(f"  {{{k}}}{' ' * (11 - len(k))}{v}\n" for k, v in FORMAT_FIELDS.items()) + """
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
  afanotify guard --rules /etc/afanotify/guard.rules --log /var/log/g.json --json /srv
      rules from a file, one ECS JSON line per decision; SIGHUP reloads both

Rules are checked in order: --allow-exe, then --deny-exe, then --deny, then
the --rules file's lines; the first that matches decides, else --default.
Patterns are fnmatch(3) patterns with extended syntax; '*' also matches '/'.
A malformed pattern (an unclosed '[' or '@(') is refused (exit 2): glibc
would match it as literal text.  Rules are decided in C as events are read.
Only opens of files are guarded (not of directories), unless a rule names
other events (event=access, exec) or --pre-access is given.

A process opening a guarded file waits until the guard answers.  The guard
answers every open: by the rules, or with the --default verdict when it is not
decided within --deadline, and for what is pending or still queued when it
stops (--timeout, SIGTERM, Ctrl-C).  If the guard is killed (SIGKILL), its fd
closes and the kernel allows what was waiting: a dead guard fails open, so
run it under a supervisor that restarts it (examples/afanotify-guard.service).
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
            raise argparse.ArgumentTypeError(
                f"empty event name in {text!r} (a stray comma?); valid: all, "
                + ", ".join(WATCH_EVENTS)
            )
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


def _positive(unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number above 0 of ``unit``, named in its errors."""
    def parse(text: str) -> float:
        try:
            n = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        if not n > 0 or n == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number of {unit}, got {text}")
        return n

    return parse


_seconds_arg = _positive("seconds")
_mib_arg = _positive("MiB")


def _format_arg(text: str) -> Template:
    try:
        return Template(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pattern_arg(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the pattern is empty")
    try:
        check_pattern(text)
    except PatternError as exc:
        # Checked before anything is marked: glibc would take it literally.
        raise argparse.ArgumentTypeError(f"{exc}\n{exc.pointer()}") from None
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
    w.add_argument("--format", type=_format_arg, default=None, metavar="TEMPLATE",
                   help="write each event as TEMPLATE, with named fields (like inotifywait's "
                   "--format): " + ", ".join("{" + f + "}" for f in FORMAT_FIELDS)
                   + "; e.g. '{time} {comm} {events} {path}' (see 'watch --help')")
    w.add_argument("--output", "-o", metavar="FILE",
                   help="append events to FILE instead of standard output")
    w.add_argument("--count", type=_count_arg, metavar="N", help="stop after N events shown")
    w.add_argument(
        "--unlimited-queue", action="store_true",
        help="FAN_UNLIMITED_QUEUE: the kernel queues every event instead of dropping "
        "what exceeds 16384 (fanotify has no per-group queue size); memory grows "
        "while the command falls behind",
    )
    w.add_argument("--max-pending", type=_mib_arg, default=None, metavar="MIB",
                   help="how many MiB of lines may wait for a slow reader of a pipe "
                   "(e.g. '| jq') before new lines are dropped and counted (default: 64); "
                   "the command never blocks on its output")
    w.add_argument("--max-backlog", type=_mib_arg, default=None, metavar="MIB",
                   help="FID mode: how many MiB of events read from the kernel may wait to "
                   "be written (default: 256); a thread empties the kernel's queue into "
                   "this memory, and events read beyond it are dropped and counted")
    w.add_argument("--stats-interval", type=_seconds_arg, metavar="S",
                   help="every S seconds, a progress line on stderr: events seen, lines "
                   "written, filtered out, lost, bytes queued in the kernel")
    w.add_argument("--time-format", metavar="FORMAT",
                   help="strftime(3) format of the text lines' local timestamps, %%f for "
                   "milliseconds (default: %%H:%%M:%%S.%%f; with the date: "
                   "'%%Y-%%m-%%d %%H:%%M:%%S.%%f')")
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
    g.add_argument("--rules", metavar="FILE",
                   help="allow/deny rules, one a line, checked after the command line's "
                   "(format: docs/permissions.md); SIGHUP reloads it")
    g.add_argument("--log", metavar="FILE",
                   help="append one line per decision to FILE (SIGHUP reopens it)")
    g.add_argument("--json", action="store_true",
                   help="--log lines as JSON (Elastic Common Schema names)")
    g.add_argument("--audit", action="store_true",
                   help="FAN_ENABLE_AUDIT: every denial (and rules marked 'audit') also goes "
                   "to the kernel's audit log, where kernel auditing is enabled")
    g.add_argument("--pre-content", action="store_true",
                   help="use a pre-content group (FAN_CLASS_PRE_CONTENT), so deny rules may "
                   "carry errno= (FAN_DENY_ERRNO, Linux 6.14)")
    g.add_argument("--pre-access", action="store_true",
                   help="also guard reads and writes by byte range (FAN_PRE_ACCESS, Linux "
                   "6.14; the filesystem must support it, e.g. ext4); implies --pre-content")
    g.add_argument("--stats-interval", type=_seconds_arg, metavar="S",
                   help="every S seconds, a line on stderr: verdicts so far, by rule")
    return parser, {"watch": w, "features": f, "guard": g}


def _guard(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ._cli_guard import _cmd_guard

    return _cmd_guard(args, parser)


class _Terminated(Exception):
    """SIGTERM arrived outside the event loop (while setting up or closing)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


# -- features -----------------------------------------------------------------


def _cmd_features(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from ._features import features

    feats = features()
    sink = _Sink(None)
    if args.json:
        sink.write(json.dumps(feats.as_dict(), sort_keys=True))
    else:
        label = "c (compiled)" if feats.core == "c" else "pure (pure-Python, slower decoding)"
        sink.write(f"{'core:':<12} {label}")
    if not args.json and feats.available:
        d = feats.as_dict()
        for key in ("init_flags", "mark_types", "mark_flags", "events"):
            values = d[key]
            assert isinstance(values, list)
            sink.write(f"{key + ':':<12} {' '.join(values)}")
    sink.close()
    if not feats.available:
        reason = feats.reason or ""
        if "CAP_SYS_ADMIN" in reason or "EPERM" in reason or "[Errno 1]" in reason:
            # Said once: what needs root, and what works without it.
            _err(f"features: error: probing fanotify {_NEEDS_CAP}{_HINTS['features']}")
        else:
            _err(f"features: error: {reason}")
        return 1
    return 0


# -- main ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 done, 1 error, 2 usage)."""
    parser, subparsers = _build()
    try:
        args, extra = parser.parse_known_args(argv)
        subparser = subparsers[args.command]
        if extra:
            # An option the subcommand does not know: its own usage, not the top one.
            subparser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    commands: dict[str, Callable[[argparse.Namespace, argparse.ArgumentParser], int]] = {
        "watch": _cmd_watch,
        "features": _cmd_features,
        "guard": _guard,
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
