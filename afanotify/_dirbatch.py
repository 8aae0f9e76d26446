"""What a batch holds that the directory map needs before resolving it in order.

:func:`scan` walks one batch once, before the group's Python pass names its
events (see :class:`afanotify._dirmap.DirMap`, which takes the result with
``set_batch``): where directories moved to, where each directory was until
it left, and which objects move or go later in the batch.
"""

from __future__ import annotations

from typing import Any

from .events import FanotifyData, FileHandle
from .flags import Event

__all__ = ["Batch", "Blinds", "CHANGES", "MOVES", "scan"]

_ONDIR = int(Event.ONDIR)
_CREATE = int(Event.CREATE)
_DELETE = int(Event.DELETE)
_MOVED_FROM = int(Event.MOVED_FROM)
_MOVED_TO = int(Event.MOVED_TO)
_RENAME = int(Event.RENAME)
_MOVE_SELF = int(Event.MOVE_SELF)
#: An object's own move or deletion: its place now is not its place before.
_SELF = _MOVE_SELF | int(Event.DELETE_SELF)
#: With ONDIR: a directory moved (paths below it change).
MOVES = _MOVED_FROM | _MOVED_TO | _RENAME
#: With ONDIR: the events that change the map.
CHANGES = MOVES | _CREATE | _DELETE


#: Directories moved where the batch does not say: handle (None: not known)
#: -> the index of its last such move.
Blinds = dict["FileHandle | None", int]
Batch = tuple[
    int, dict[tuple[FileHandle, str], int], dict[FileHandle, list[Any]], dict[FileHandle, int],
    Blinds,
]


def scan(events: list[FanotifyData]) -> Batch:
    """What a batch holds that the map needs before it resolves the batch in order.

    The index of the last directory move (-1: none); per place a directory
    was moved to (parent handle, name), the index of the last such move; and per directory
    handle, ``[index, parent handle, name]`` of its first DELETE, MOVED_FROM
    or RENAME with ONDIR and a FID record: where it was until then.  Then,
    per object handle, the index of its last MOVE_SELF or DELETE_SELF (an
    object's own event before it cannot be named by a lookup now); and the
    directory moves whose destination the batch does not say, by the
    directory's handle: a MOVE_SELF with ONDIR that no earlier move of the
    batch explains, or a MOVED_FROM with ONDIR that no MOVED_TO follows (a
    move into an unwatched directory, with inode or mount marks).
    """
    last = -1
    blinds: Blinds = {}
    leaving: FanotifyData | None = None  # a directory's MOVED_FROM, before its MOVED_TO
    at = -1
    targets: dict[tuple[FileHandle, str], int] = {}
    facts: dict[FileHandle, list[Any]] = {}
    selfs: dict[FileHandle, int] = {}
    for i, ev in enumerate(events):
        mask = ev.ev_types
        if mask & _SELF:
            # (a directory's own event names it by its DFID record, name ".")
            fid = ev.fid if ev.fid is not None or not mask & _ONDIR else ev.dfid
            if fid is not None:
                if mask & _MOVE_SELF and mask & _ONDIR and fid not in facts:
                    blinds[fid] = i
                selfs[fid] = i
        if not mask & _ONDIR or not mask & CHANGES:
            continue
        if mask & MOVES:
            last = i
            if mask & _MOVED_TO:
                leaving = None
            elif mask & _MOVED_FROM:
                if leaving is not None:
                    blinds[leaving.fid] = at
                leaving, at = ev, i
            if mask & _RENAME:
                into, name = ev.new_dfid, ev.new_name
            elif mask & _MOVED_TO:
                into, name = ev.dfid, ev.name
            else:
                into = None
            if into is not None and name:
                targets[(into, name)] = i
        fid = ev.fid
        if fid is None or fid in facts or not mask & (_DELETE | _MOVED_FROM | _RENAME):
            continue
        if mask & _RENAME:
            if ev.old_dfid is not None:
                facts[fid] = [i, ev.old_dfid, ev.old_name]
        elif ev.dfid is not None:
            facts[fid] = [i, ev.dfid, ev.name]
    if leaving is not None:
        blinds[leaving.fid] = at
    return last, targets, facts, selfs, blinds
