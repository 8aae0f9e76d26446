"""How ``afanotify watch`` writes events: text and JSON lines, and the sink they go to."""

from __future__ import annotations

import errno
import functools
import os
import sys
import time
from json.encoder import encode_basestring_ascii as _json_str
from typing import NamedTuple

from .events import FanotifyData
from .flags import Event, evt_to_str

PROG = "afanotify"

#: ECS ``event.type`` for each event bit (the ``file`` category's types).
_ECS_TYPES: tuple[tuple[Event, str], ...] = (
    (Event.ACCESS | Event.OPEN | Event.OPEN_EXEC | Event.CLOSE_NOWRITE, "access"),
    (Event.MODIFY | Event.CLOSE_WRITE | Event.ATTRIB | Event.MOVE_SELF | Event.RENAME, "change"),
    (Event.CREATE | Event.MOVED_TO, "creation"),
    (Event.DELETE | Event.DELETE_SELF | Event.MOVED_FROM, "deletion"),
    # ECS 8.11 expects no "error" type with the file category: a filesystem
    # error is information about the file system (its kind stays "event").
    (Event.FS_ERROR, "info"),
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


def _err(msg: str) -> None:
    try:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass


def _action_names(mask: int) -> list[str]:
    return list(_mask_names(mask).actions)


#: How many bytes of lines the sink gathers before it writes them.
_WRITE_AT = 1 << 20


class _Sink:
    """Where event lines go: large buffered writes, counted line by line.

    Lines are gathered and written with one ``write(2)`` per batch (or per
    MiB), not one per line.  ``written`` counts the lines that reached the
    file or pipe completely, so the summary stays exact when a reader closes
    the pipe in the middle of a write.  A closed pipe is remembered instead
    of raised.  :meth:`reopen` opens ``--output`` again (after logrotate
    moved it).
    """

    def __init__(self, path: str | None) -> None:
        self.broken = False
        self.written = 0
        self._path = path
        #: The ``--output`` file, or None for standard output.
        self.path = path
        self._parts: list[str] = []
        self._size = 0
        self._fd = self._open() if path is not None else sys.stdout.fileno()

    def _open(self) -> int:
        assert self._path is not None
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def write(self, line: str) -> None:
        """Queue one line (without its newline)."""
        self._parts.append(line)
        self._size += len(line)
        if self._size >= _WRITE_AT:
            self.flush()

    def extend(self, lines: list[str], size: int) -> None:
        """Queue lines whose lengths add up to about ``size``."""
        self._parts.extend(lines)
        self._size += size
        if self._size >= _WRITE_AT:
            self.flush()

    def flush(self) -> None:
        """Write what is queued; a closed pipe sets :attr:`broken`."""
        parts = self._parts
        if not parts:
            return
        self._parts = []
        self._size = 0
        if self.broken:
            return
        parts.append("")
        # Text lines carry file names as the kernel gave them: undecodable
        # bytes go out as the same bytes (JSON lines are ASCII already).
        data = "\n".join(parts).encode("utf-8", "surrogateescape")
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                try:
                    done += os.write(self._fd, view[done:])
                except InterruptedError:
                    continue
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            self.broken = True
            self.written += data.count(b"\n", 0, done)
            return
        self.written += len(parts) - 1

    def reopen(self) -> None:
        """Flush, then open ``--output`` by its name again (SIGHUP after a log rotation)."""
        self.flush()
        if self._path is None:
            return
        fd = self._open()
        old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        self.flush()
        if self._path is not None:
            os.close(self._fd)
            self._path = None
        else:
            # What print() wrote to stdout before (features) goes out first.
            try:
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):
                pass


def clean(text: str) -> str:
    """``text`` with every byte that was not UTF-8 as the four characters ``\\xNN``.

    Names from the kernel are bytes; Python keeps undecodable ones as lone
    surrogates, which are not Unicode and which strict JSON parsers refuse.
    This is the one way the JSON lines write such a name (README, "File
    names that are not UTF-8").
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")


def _js(text: str | None) -> str:
    if text is None:
        return "null"
    if not text.isascii():
        text = clean(text)
    return _json_str(text)


def json_stamp(now: float) -> str:
    """``now`` as ECS's ``@timestamp`` (UTC, microseconds)."""
    t = time.gmtime(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(now % 1 * 1e6):06d}Z"


#: The default text timestamp: local time of day with milliseconds.
DEFAULT_TIME_FORMAT = "%H:%M:%S.%f"


def text_stamp(now: float, fmt: str = DEFAULT_TIME_FORMAT) -> str:
    """``now`` in local time by the ``strftime`` format ``fmt`` (``%f``: milliseconds)."""
    if "%f" in fmt:
        fmt = fmt.replace("%f", f"{int(now % 1 * 1000):03d}")
    return time.strftime(fmt, time.localtime(now))


Proc = tuple["str | None", "str | None", "str | None"]
_NO_PROC: Proc = (None, None, None)


@functools.lru_cache(maxsize=1024)
def _json_mask(mask: int) -> tuple[str, str]:
    """The event part and the ``fanotify.mask/events`` part of a line, by mask."""
    names = _mask_names(mask)
    types = ",".join(f'"{t}"' for t in names.ecs_types)
    actions = ",".join(f'"{a}"' for a in names.actions)
    event = (
        f'"event":{{"kind":"event","category":["file"],"type":[{types}],'
        f'"action":[{actions}],"module":"fanotify"}}'
    )
    events = ",".join(f'"{e}"' for e in names.events)
    return event, f'"fanotify":{{"mask":{mask},"events":[{events}],'


def json_process(pid: int, proc: Proc) -> str:
    """The ``process`` part of a JSON line."""
    name, exe, cwd = proc
    p = str(pid) if pid > 0 else "null"
    return (
        f'"process":{{"pid":{p},"name":{_js(name)},"executable":{_js(exe)},'
        f'"working_directory":{_js(cwd)}}}'
    )


_HEAD = '{"@timestamp":"%s","ecs":{"version":"' + ECS_VERSION + '"},'
_OVERFLOW_LINE = (
    '"message":"fanotify queue overflow: the kernel dropped events",'
    '"event":{"kind":"pipeline_error","category":["file"],"type":["info"],'
    '"action":["q_overflow"],"module":"fanotify"},'
    '"fanotify":{"mask":%d,"events":["Q_OVERFLOW"]}}'
)


def json_line(ev: FanotifyData, head: str, process: str) -> str:
    """One JSON line; ``head`` from :func:`json_head`, ``process`` from :func:`json_process`."""
    mask = ev.ev_types
    if mask & _OVERFLOW:
        return head + _OVERFLOW_LINE % mask
    path = ev.path
    directory = ev.dir_path
    name = ev.name
    resolved = ev.path_resolved
    if path is not None and resolved:
        if directory is None:
            directory = os.path.dirname(path) or None
        if name is None:
            name = os.path.basename(path) or None
    event, fan = _json_mask(mask)
    return (
        f'{head}{event},"file":{{"path":{_js(path)},"directory":{_js(directory)},'
        f'"name":{_js(name)},"type":"{"dir" if mask & _ONDIR else "file"}"}},{process},'
        f'{fan}"path_resolved":{"true" if resolved else "false"},'
        f'"old_path":{_js(ev.old_path)},"new_path":{_js(ev.new_path)}}}}}'
    )


def json_head(now: float) -> str:
    """The start of every JSON line of a batch read at ``now``."""
    return _HEAD % json_stamp(now)


def text_line(ev: FanotifyData, stamp: str, proc: Proc) -> str:
    """One aligned text line: time, pid, process name, events, path(s)."""
    if ev.ev_types & _OVERFLOW:
        return f"{stamp}  {'-':>7}  {'-':<15}  {'Q_OVERFLOW':<26}  (the kernel dropped events)"
    pid = str(ev.pid) if ev.pid > 0 else "-"
    name = proc[0] or (os.path.basename(ev.exe) if ev.exe else "?")
    old, new = ev.old_path, ev.new_path
    if old is not None and new is not None:
        where = f"{old} -> {new}"
    else:
        where = ev.path if ev.path is not None else "?"
    if ev.path is not None and not ev.path_resolved:
        where += "  (unresolved)"
    return f"{stamp}  {pid:>7}  {name:<15.15}  {_mask_names(ev.ev_types).text:<26}  {where}"


def format_human(ev: FanotifyData, now: float, comm: str | None) -> str:
    """One aligned line: time, pid, process name, events, path(s)."""
    return text_line(ev, text_stamp(now), (comm, ev.exe, ev.cwd))


def format_json(ev: FanotifyData, now: float, comm: str | None) -> str:
    """One JSON object with Elastic Common Schema field names (see the README)."""
    return json_line(ev, json_head(now), json_process(ev.pid, (comm, ev.exe, ev.cwd)))
