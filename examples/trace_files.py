#!/usr/bin/env python3
"""Trace the files one process opens, reads, writes and executes.

Usage::

    sudo python examples/trace_files.py [--filesystem] PATH -- COMMAND [ARG...]
    sudo python examples/trace_files.py [--filesystem] PATH --pid PID

Marks the mount holding PATH (with ``--filesystem``: the whole filesystem,
through any of its mounts), then runs COMMAND, or follows the running
process PID, and prints one line per event caused by that process (any of
its threads)::

    4242 cat OPEN|ACCESS|CLOSE_NOWRITE /srv/data/notes.txt

The kernel merges events on one file into one record while it waits in the
queue, so one line can carry several events.  Only the process itself is
traced: a child it starts has a pid of its own, and its events are not shown.

The command's events are all in the kernel's queue by the time it exits
(fanotify queues them synchronously), so when it exits the tracer empties the
group's queue and the kernel's, prints what was left, and stops with the
command's exit status.  With ``--pid`` it runs until Ctrl-C.  A summary goes to
stderr: files read, written and executed, and whether the kernel's queue
overflowed.  Needs CAP_SYS_ADMIN (fd-mode events and mount marks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from afanotify import Event, Fanotify, FanotifyData, WouldBlock, evt_to_str

EVENTS = Event.OPEN | Event.OPEN_EXEC | Event.ACCESS | Event.MODIFY | Event.CLOSE


class Tracer:
    """Prints the events of one pid and tallies the files by what was done to them."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.read: set[str] = set()
        self.written: set[str] = set()
        self.executed: set[str] = set()
        self.overflows = 0
        self._comm = "?"

    def handle(self, event: FanotifyData) -> None:
        with event:  # closes the event's fd
            if event.ev_types & Event.Q_OVERFLOW:
                self.overflows += 1
                print("Q_OVERFLOW: the kernel dropped events", flush=True)
                return
            if event.pid != self.pid or event.path is None:
                return
            if self._comm == "?":
                self._comm = _comm(self.pid)
            print(f"{event.pid} {self._comm} {evt_to_str(event.ev_types)} {event.path}",
                  flush=True)
            if event.ev_types & Event.ACCESS:
                self.read.add(event.path)
            if event.ev_types & (Event.MODIFY | Event.CLOSE_WRITE):
                self.written.add(event.path)
            if event.ev_types & Event.OPEN_EXEC:
                self.executed.add(event.path)

    def summary(self) -> str:
        lost = f", {self.overflows} queue overflow(s): events were lost" if self.overflows else ""
        return (f"trace_files: pid {self.pid}: {len(self.read)} files read, "
                f"{len(self.written)} written, {len(self.executed)} executed{lost}")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


async def consume(fan: Fanotify, tracer: Tracer) -> None:
    async for event in fan:
        tracer.handle(event)


def drain(fan: Fanotify, tracer: Tracer) -> None:
    """Handle everything already queued: in the group's queue, then in the kernel's."""
    while True:
        try:
            tracer.handle(fan.receive_nowait())
        except WouldBlock:
            break
    while True:
        try:
            batch = fan.read_batch()
        except WouldBlock:
            return
        for event in batch:
            tracer.handle(event)


async def trace(path: str, kind: str, command: list[str], pid: int | None) -> int:
    async with Fanotify() as fan:
        # The mark first, then the command: nothing it does is missed.
        fan.mark(path, EVENTS, kind)
        if pid is None:
            proc = await asyncio.create_subprocess_exec(*command)
            pid = proc.pid
        else:
            proc = None
        tracer = Tracer(pid)
        print(f"trace_files: tracing pid {pid} on the {kind} of {path}", file=sys.stderr,
              flush=True)
        consumer = asyncio.create_task(consume(fan, tracer))
        status = 0
        try:
            if proc is not None:
                status = await proc.wait()
            else:
                await asyncio.Event().wait()  # until Ctrl-C
        finally:
            consumer.cancel()
            try:
                await consumer
            except asyncio.CancelledError:
                pass
            drain(fan, tracer)
            print(tracer.summary(), file=sys.stderr, flush=True)
        return status


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, command = args[:at], args[at + 1:]
    parser = argparse.ArgumentParser(description="Trace the files one process touches.")
    parser.add_argument("path", help="a path on the mount (or filesystem) to watch")
    parser.add_argument("--filesystem", action="store_true",
                        help="mark the whole filesystem instead of the mount")
    parser.add_argument("--pid", type=int, help="follow this running process instead")
    opts = parser.parse_args(args)
    if bool(command) == (opts.pid is not None):
        parser.error("give either -- COMMAND [ARG...] or --pid PID")
    if not os.path.exists(opts.path):
        parser.error(f"{opts.path!r} does not exist")
    kind = "filesystem" if opts.filesystem else "mount"
    try:
        return asyncio.run(trace(opts.path, kind, command, opts.pid))
    except KeyboardInterrupt:
        return 0
    except PermissionError as exc:
        print(f"trace_files: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
