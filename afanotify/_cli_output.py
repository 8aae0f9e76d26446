"""How ``afanotify watch`` writes events: text and JSON lines, and the sink they go to."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any, NamedTuple

from .events import FanotifyData
from .flags import Event, evt_to_str

PROG = "afanotify"

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


def _err(msg: str) -> None:
    try:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass


def _action_names(mask: int) -> list[str]:
    return list(_mask_names(mask).actions)


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
