#!/usr/bin/env python3
"""Watch a whole directory tree, renames included, with one filesystem mark.

Usage::

    sudo python examples/watch_tree.py /srv/data            # from now on
    sudo python examples/watch_tree.py --scan /srv/data     # learn the existing tree first

Prints one line per event under the tree, flushed at once::

    CREATE /srv/data/a/new.txt
    RENAME /srv/data/a/new.txt -> /srv/data/b/old.txt
    DELETE /srv/data/b/old.txt

inotify needs a watch per directory (and a walk to place them); here the
whole tree costs one ``fanotify_mark(2)`` on the filesystem that holds it,
however deep it is, and events elsewhere on that filesystem are dropped in C
before Python sees them (a busy directory elsewhere is pruned: the kernel
stops queueing its events).  A ``LOST`` line says where events may be
missing: after a queue overflow, or under a pruned directory moved into the
tree.  A path printed is the one the object had when the
event happened; ``?`` marks a path the group could not name (a directory it
never saw, removed before the read: ``--scan`` learns the existing tree so
that those, too, get full paths).

Needs CAP_SYS_ADMIN (filesystem marks).  Ctrl-C ends it with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from afanotify import Event, Fanotify, FanotifyData, InitFlag, evt_to_str

EVENTS = Event.CREATE | Event.DELETE | Event.RENAME | Event.CLOSE_WRITE | Event.ONDIR


def describe(ev: FanotifyData) -> str:
    """``KIND PATH`` (``KIND OLD -> NEW`` for a rename), ``?`` after an unnamed path."""
    if ev.ev_types & Event.Q_OVERFLOW:
        # The kernel's (no path: the whole tree), or a pruned directory that
        # moved in (its path): events there may be missing.
        return f"LOST events under {ev.path or 'the tree'}: rescan it"
    kind = evt_to_str(ev.ev_types & ~Event.ONDIR)
    mark = "" if ev.path_resolved else " ?"
    if ev.ev_types & Event.RENAME:
        return f"{kind} {ev.old_path} -> {ev.new_path}{mark}"
    return f"{kind} {ev.path}{mark}"


async def watch(root: str, scan: bool) -> None:
    # DFID_NAME_TARGET also reports the handle of a created or removed
    # directory, so that a tree removed within one read keeps its paths.
    async with Fanotify(InitFlag.REPORT_DFID_NAME_TARGET) as fan:
        events = fan.watch_tree(root, EVENTS, scan=scan)
        print(f"watching the tree {root}", flush=True)
        async for ev in events:
            print(describe(ev), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the events of a directory tree.")
    parser.add_argument("directory", help="the root of the tree")
    parser.add_argument("--scan", action="store_true", help="learn the existing tree first")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.directory):
        print(f"watch_tree: {args.directory!r} is not a directory", file=sys.stderr)
        return 2
    try:
        asyncio.run(watch(args.directory, args.scan))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # no privilege, unsupported flag: the message says what to do
        print(f"watch_tree: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
