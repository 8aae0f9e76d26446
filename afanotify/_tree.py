"""``Fanotify.watch_tree()``: one directory tree, through one filesystem mark.

A filesystem mark sees every change on the filesystem in one call, where an
inotify tool needs a watch per directory.  ``watch_tree`` marks the
filesystem that holds the tree and keeps only the events under its root.
The decision is taken per directory, in the C walk, before any event object
is made: the group's directory map (``afanotify/_dirmap.py``) names each
directory of a batch once, and the events of directories outside the root
are dropped there.  Events after a directory move in the same batch, or of
shapes the C builder leaves, are filtered in Python after they are resolved
(a moved directory's decision is taken again from its new path).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from . import _dirmap, _ffi
from ._marks import PathArg
from .events import FanotifyData
from .flags import Event, InitFlag

if TYPE_CHECKING:
    from .group import Fanotify

__all__ = ["watch_tree", "MAP_EVENTS", "learn_tree"]

#: What the group adds to the mark so that its directory map follows the tree.
MAP_EVENTS = Event.CREATE | Event.DELETE | Event.MOVED_FROM | Event.MOVED_TO | Event.ONDIR


def learn_tree(dm: _dirmap.DirMap, root: str) -> int:
    """Teach ``dm`` every directory under ``root`` (same filesystem); returns how many."""
    fd = os.open(root, os.O_PATH | os.O_CLOEXEC)
    try:
        fsid = _ffi.fsid_of_fd(fd)
        dev = os.fstat(fd).st_dev
    finally:
        os.close(fd)
    h = _dirmap._handle_at(fsid, root)
    if h is None or not dm.size:
        return 0
    dm._link(h, root)
    stack = [(h, root)]
    n = 0
    while stack:
        h, p = stack.pop()
        try:
            entries = list(os.scandir(p))
        except OSError:
            continue  # gone or unreadable: learned later, or not at all
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False) or entry.stat(
                    follow_symlinks=False
                ).st_dev != dev:
                    continue
            except OSError:
                continue
            ch = _dirmap._handle_at(fsid, entry.path)
            if ch is not None:
                dm._put(ch, h, entry.name)
                stack.append((ch, entry.path))
                n += 1
    return n

def watch_tree(
    group: Fanotify, path: PathArg, events: int, *, scan: bool = False
) -> AsyncIterator[FanotifyData]:
    """Watch the directory tree at ``path``: ``async for ev in fan.watch_tree(path, events)``.

    Marks the filesystem holding ``path`` with ``events`` (plus the
    directory events the group's path map needs, which are not delivered
    unless asked for) and yields only events under ``path``, with full
    paths.  An event whose directory cannot be named (``path_resolved``
    False) is delivered too, since it may be inside.  ``scan=True`` first
    walks the tree and learns every directory in it (one
    ``name_to_handle_at`` each, up to ``handle_cache_size`` directories), so
    that even a directory never touched while watched gets full paths, for
    instance when it is deleted before the group reads.  Without ONDIR in
    ``events``, events on directories themselves are not delivered, as
    fanotify would not report them.

    Returns the group itself (its ``async for``); one tree per group.

    :raises ValueError: if the group does not report names
        (``InitFlag.REPORT_DFID_NAME``), does not resolve paths, or already
        watches a tree
    :raises NotADirectoryError: if ``path`` is not a directory
    """
    if not group.flags & InitFlag.REPORT_NAME or not group.resolve_paths:
        raise ValueError(
            "watch_tree needs a group that reports names and resolves paths: "
            "Fanotify(InitFlag.REPORT_DFID_NAME) (or REPORT_DFID_NAME_TARGET)"
        )
    pipeline = group._pipeline
    if pipeline.tree is not None:
        raise ValueError(
            f"this group already watches the tree {pipeline.tree[0]!r}: use one group per tree"
        )
    root = os.path.realpath(os.fsdecode(os.fspath(path)))
    if not os.path.isdir(root):
        raise NotADirectoryError(f"watch_tree: {root!r} is not a directory")
    group.mark(root, int(events) | MAP_EVENTS, "filesystem")
    parent, name = os.path.split(root)
    pipeline.tree = (root, parent, name, int(events))
    if scan:
        learn_tree(pipeline.dirmap, root)
    return group
