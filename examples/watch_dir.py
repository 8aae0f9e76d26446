#!/usr/bin/env python3
"""Watch a directory and print its events until Ctrl-C.

Usage::

    sudo python examples/watch_dir.py /some/dir          # fd mode: opens, writes, closes
    sudo python examples/watch_dir.py --fid /some/dir    # FID mode: creates, deletes, renames

Each event is printed on one line as ``EVENTS PATH (pid N)``, flushed at
once, so the output can be piped.  In fd mode the group watches the
directory and its direct children for OPEN, MODIFY and CLOSE; with ``--fid``
it watches them for CREATE, DELETE, MOVE and ATTRIB as well, reported with
file handles and names (``InitFlag.REPORT_DFID_NAME``).

fd mode needs CAP_SYS_ADMIN; FID mode works unprivileged for inode marks on
Linux 5.13 and later.  Ctrl-C (SIGINT) ends the program with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from afanotify import Event, Fanotify, InitFlag, evt_to_str

FD_EVENTS = Event.OPEN | Event.MODIFY | Event.CLOSE
FID_EVENTS = (
    Event.CREATE | Event.DELETE | Event.MOVE | Event.ATTRIB | Event.MODIFY | Event.CLOSE_WRITE
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Print fanotify events for a directory.")
    parser.add_argument("directory", help="the directory to watch")
    parser.add_argument(
        "--fid",
        action="store_true",
        help="report with file handles and names: adds create, delete and rename events",
    )
    return parser.parse_args(argv)


async def watch(directory: str, fid: bool) -> None:
    flags = InitFlag.REPORT_DFID_NAME if fid else InitFlag.CLASS_NOTIF
    events = (FID_EVENTS if fid else FD_EVENTS) | Event.EVENT_ON_CHILD | Event.ONDIR
    async with Fanotify(flags) as fan:
        fan.mark(directory, events, onlydir=True)
        print(f"watching {directory} ({'FID' if fid else 'fd'} mode)", flush=True)
        async for event in fan:
            # The iterator closes each event's fd when it moves to the next one.
            print(f"{evt_to_str(event.ev_types)} {event.path} (pid {event.pid})", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.isdir(args.directory):
        print(f"watch_dir: {args.directory!r} is not a directory", file=sys.stderr)
        return 2
    try:
        asyncio.run(watch(args.directory, args.fid))
    except KeyboardInterrupt:
        # asyncio.run() cancelled the watcher, which closed the group on its way out.
        return 0
    except OSError as exc:  # no privilege, unsupported flag, ...: the message says what to do
        print(f"watch_dir: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
