"""How ``afanotify watch`` writes events: text and JSON lines, and the sink they go to."""

from __future__ import annotations

import functools
import os
import string
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, NamedTuple

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
#: The drain thread's own Q_OVERFLOW record has pid -1 (the kernel's have 0):
#: there the kernel dropped nothing, the command did (its backlog was full).
DRAIN_GAP_PID = -1
_GAP_LINE = _OVERFLOW_LINE.replace(
    "fanotify queue overflow: the kernel dropped events",
    "afanotify backlog full: events it had read were dropped (see --max-backlog)",
)
_GAP_TEXT = "(afanotify dropped events it had read: its backlog was full)"
_KERNEL_TEXT = "(the kernel dropped events)"


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
        return f"{stamp}  {'-':>7}  {'-':<15}  {'Q_OVERFLOW':<26}  {_KERNEL_TEXT}"
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


#: The named fields of ``--format``, with what each holds ("-" when the event has none).
FORMAT_FIELDS: dict[str, str] = {
    "time": "the read time, by --time-format",
    "pid": "the process id",
    "comm": "the process name (/proc/PID/comm, read when the event was read)",
    "exe": "the process's executable",
    "cwd": "the process's working directory",
    "events": "the event names, as CREATE|ONDIR",
    "actions": "the lower-case event names without ondir, comma-separated: create",
    "type": "file or dir",
    "path": "the full path (for a rename, the new one)",
    "dir": "the directory of the path",
    "name": "the file name in that directory",
    "old_path": "a rename's old path",
    "new_path": "a rename's new path",
    "resolved": "yes when the path is the full path, no when it could not be resolved",
}


class Template:
    """A ``--format`` template: one line per event, ``{field}`` for each value.

    Fields are Python format fields (``{pid:>7}`` pads), the values are
    always strings, and a value the event does not have is ``-``.

    :raises ValueError: for an unknown field, an attribute or index in a
        field, a bad format spec, or a newline in the template
    """

    def __init__(self, text: str) -> None:
        if "\n" in text or "\r" in text:
            raise ValueError("--format writes one line per event: leave out newlines")
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(
                f"--format {text!r}: {exc} (write a literal brace as {{{{ or }}}})"
            ) from None
        used = []
        for _lit, field, _spec, _conv in parsed:
            if field is None:
                continue
            if field not in FORMAT_FIELDS:
                what = "an empty field {}" if not field else f"unknown field {{{field}}}"
                raise ValueError(
                    f"--format {text!r}: {what}; the fields are "
                    + ", ".join("{" + f + "}" for f in FORMAT_FIELDS)
                )
            used.append(field)
        self.text = text
        self.used = frozenset(used)
        try:
            text.format_map(dict.fromkeys(FORMAT_FIELDS, "-"))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--format {text!r}: {exc}") from None
        #: The template as steps for the C formatter: (literal, field number
        #: or -1, format spec or None, conversion or None); None when a spec
        #: holds a nested field, which only str.format expands.
        self.steps: list[tuple[str, int, str | None, str | None]] | None = []
        order = list(FORMAT_FIELDS)
        for lit, field, spec, conv in parsed:
            if field is None:
                self.steps.append((lit, -1, None, None))
            elif spec and ("{" in spec or "}" in spec):
                self.steps = None
                break
            else:
                self.steps.append((lit, order.index(field), spec or None, conv))

    def line(self, ev: FanotifyData, stamp: str, proc: Proc) -> str:
        """The template filled from ``ev`` (read at ``stamp``), by ``proc``: (name, exe, cwd)."""
        used = self.used
        mask = ev.ev_types
        path = ev.path
        names = _mask_names(mask)
        v = {
            "time": stamp,
            "pid": str(ev.pid) if ev.pid > 0 else "-",
            "comm": proc[0] or "-",
            "exe": proc[1] or ev.exe or "-",
            "cwd": proc[2] or ev.cwd or "-",
            "events": names.text,
            "actions": ",".join(names.actions) or "-",
            "type": "dir" if mask & _ONDIR else "file",
            "path": path or "-",
            "old_path": ev.old_path or "-",
            "new_path": ev.new_path or "-",
            "resolved": "yes" if ev.path_resolved else "no",
        }
        if "dir" in used or "name" in used:
            d, n = ev.dir_path, ev.name
            if path is not None and ev.path_resolved:
                d = d or os.path.dirname(path)
                n = n or os.path.basename(path)
            v["dir"] = d or "-"
            v["name"] = n or "-"
        return self.text.format_map(v)


_TEXT_OVERFLOW = f"  {'-':>7}  {'-':<15}  {'Q_OVERFLOW':<26}  {_KERNEL_TEXT}"


def _json_mask_parts(mask: int) -> tuple[str, str]:
    if mask & _OVERFLOW:
        return _OVERFLOW_LINE % mask, ""
    event, fan = _json_mask(mask)
    return event + ',"file":{"path":', "," + fan + '"path_resolved":'


def _text_mask_parts(mask: int) -> tuple[str]:
    if mask & _OVERFLOW:
        return (_TEXT_OVERFLOW,)
    return (f"{_mask_names(mask).text:<26}",)


def _template_mask_parts(mask: int) -> tuple[str, str]:
    names = _mask_names(mask)
    return names.text, ",".join(names.actions) or "-"


@functools.cache
def _c_format_batch() -> Callable[..., bytes] | None:
    """The C formatter (afanotify/csrc/fastpath_format.c), or None on the pure core."""
    from . import _ffi

    if _ffi.CORE != "c":
        return None
    install = getattr(_ffi.lib, "aff_install_formatter", None)
    if install is None or install() != 0:
        return None
    core: Any = _ffi._core
    if tuple(core._format_fields()) != tuple(FORMAT_FIELDS):
        return None  # the two lists of --format fields disagree: keep to Python
    fn: Callable[..., bytes] = core._format_batch
    return fn


class BatchFormatter:
    """The lines of one batch as one buffer of bytes, in C where the core has it.

    One of the JSON lines, the text format (``time_format``) or a
    ``--format`` template.  The C formatter writes the same bytes as the
    Python functions above (``tests/test_cli_format_differential.py``);
    ``use_c=False`` (and the pure core) keeps to Python.
    """

    def __init__(
        self, *, json: bool = False, template: Template | None = None,
        time_format: str = DEFAULT_TIME_FORMAT, use_c: bool = True,
    ) -> None:
        self.json = json
        self.template = template
        self.time_format = time_format
        self._masks: dict[int, tuple[str, ...]] = {}
        c = _c_format_batch() if use_c else None
        parts: Callable[[int], tuple[str, ...]]
        if json:
            mode, parts = 0, _json_mask_parts
        elif template is None:
            mode, parts = 1, _text_mask_parts
        else:
            mode, parts = 2, _template_mask_parts
            if template.steps is None:
                c = None
        self._mode = mode
        self._mask_parts: Callable[[int], tuple[str, ...]] = parts
        self._c = c
        #: True when the lines are made in C.
        self.in_c = c is not None

    def format(
        self, events: list[FanotifyData], procs: dict[int, Proc], now: float
    ) -> bytes:
        """The lines of ``events`` (read at ``now``), each ending in a newline.

        ``procs`` holds ``(name, exe, cwd)`` by pid.  Text keeps undecodable
        bytes of names as those bytes; JSON lines are ASCII.  A Q_OVERFLOW
        event among them is written as the kernel's (:meth:`marker` tells the
        drain's gaps apart).
        """
        if not events:
            return b""
        stamp = json_head(now) if self.json else text_stamp(now, self.time_format)
        c = self._c
        if c is not None:
            if len(self._masks) > 4096:
                self._masks.clear()  # (masks repeat: only odd input gets here)
            return c(
                self._mode, events, procs, stamp, self._masks, self._mask_parts,
                lambda pid: json_process(pid, procs.get(pid, _NO_PROC)), clean,
                self.template.steps if self.template is not None else None,
            )
        return ("\n".join(self.lines(events, procs, stamp)) + "\n").encode(
            "utf-8", "surrogateescape"
        )

    def marker(self, ev: FanotifyData, now: float) -> bytes:
        """The line of a Q_OVERFLOW event: the kernel's, or a gap of the drain (pid -1).

        :meth:`format` writes every Q_OVERFLOW as the kernel's; only here
        does a gap of the drain get words of its own (the kernel dropped
        nothing there).
        """
        gap = ev.pid == DRAIN_GAP_PID
        if self.json:
            head = json_head(now)
            line = head + _GAP_LINE % ev.ev_types if gap else json_line(ev, head, "")
        elif self.template is not None:
            line = self.template.line(ev, text_stamp(now, self.time_format), _NO_PROC)
        else:
            line = text_line(ev, text_stamp(now, self.time_format), _NO_PROC)
            if gap:
                line = line[: -len(_KERNEL_TEXT)] + _GAP_TEXT
        return (line + "\n").encode("utf-8", "surrogateescape")

    def lines(self, events: list[FanotifyData], procs: dict[int, Proc], stamp: str) -> list[str]:
        """The Python formatter: one str per event, by ``stamp`` (a JSON line's head)."""
        if self.json:
            parts: dict[int, str] = {}
            out = []
            for ev in events:
                pid = ev.pid
                part = parts.get(pid)
                if part is None:
                    part = parts[pid] = json_process(pid, procs.get(pid, _NO_PROC))
                out.append(json_line(ev, stamp, part))
            return out
        template = self.template
        if template is not None:
            return [template.line(ev, stamp, procs.get(ev.pid, _NO_PROC)) for ev in events]
        return [text_line(ev, stamp, procs.get(ev.pid, _NO_PROC)) for ev in events]
