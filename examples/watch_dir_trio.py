#!/usr/bin/env python3
"""watch_dir.py under trio: the same group and loop, another event loop library.

Usage::

    sudo python examples/watch_dir_trio.py /some/dir

Prints ``EVENTS PATH (pid N)`` for creations, writes, renames and deletions
in the directory.  Nothing in the afanotify calls differs from asyncio: the
group notices it runs under trio and waits on the fd through anyio.  The
deadline below is trio's own (``trio.move_on_after``), to show the group
cancels like any trio primitive.

Needs trio (``pip install trio``).  Ctrl-C ends it with exit status 0.
"""

from __future__ import annotations

import os
import sys

import trio

from afanotify import Event, Fanotify, InitFlag, evt_to_str

EVENTS = (Event.CREATE | Event.DELETE | Event.MOVE | Event.CLOSE_WRITE
          | Event.EVENT_ON_CHILD | Event.ONDIR)


async def watch(directory: str, seconds: float | None) -> None:
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(directory, EVENTS, onlydir=True)
        print(f"watching {directory} under trio", flush=True)
        with trio.move_on_after(seconds if seconds is not None else float("inf")):
            async for event in fan:
                print(f"{evt_to_str(event.ev_types)} {event.path} (pid {event.pid})", flush=True)
        print("deadline reached", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    seconds = None
    if args[:1] == ["--for"]:
        seconds, args = float(args[1]), args[2:]
    if len(args) != 1 or not os.path.isdir(args[0]):
        print("usage: watch_dir_trio.py [--for SECONDS] DIRECTORY", file=sys.stderr)
        return 2
    try:
        trio.run(watch, args[0], seconds)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"watch_dir_trio: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
