"""Refuse to open files for writing under a directory; log each refusal.

    sudo python examples/deny_writes.py /srv/protected [--mount] [--timeout 2]

Every open(2) of a file in the directory (with ``--mount``: anywhere under it
on its mount) waits for this agent's verdict (FAN_OPEN_PERM).  Opens for
reading are allowed; opens for writing, appending or truncating get EPERM.

Where the access mode comes from: not from the event's fd.  The kernel opens
that fd with the group's own flags (``event_flags``, O_RDONLY here), so
``fcntl(F_GETFL)`` on it says nothing about the opener.  But the opener is
still inside its ``open``/``openat``/``openat2`` system call while it waits, so
``/proc/<tid>/syscall`` shows the call and its flags argument.  The group
reports thread ids (InitFlag.REPORT_TID) so that this reads the right thread.
When the flags cannot be read (another architecture, io_uring, the thread is
gone), the agent fails closed and denies.

The agent answers first and logs afterwards, so a slow log never holds up a
process; if it ever stalls, the group's deadline (``--timeout``) answers with
the default verdict (allow) and counts it.  Stop it with Ctrl-C: closing the
group answers whatever is pending.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import signal
import struct
import sys

from afanotify import Event, Fanotify, FanotifyData, InitFlag

log = logging.getLogger("deny_writes")

#: System call numbers -> index of the flags argument (or "how" for openat2).
_OPEN_CALLS: dict[str, dict[int, int]] = {
    "x86_64": {2: 1, 257: 2, 304: 2},  # open, openat, open_by_handle_at
    "aarch64": {56: 2, 265: 2},  # openat, open_by_handle_at
}
_OPENAT2 = 437  # same number on every architecture
_CREAT = {"x86_64": 85}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT


def open_flags(tid: int) -> int | None:
    """The ``open`` flags of the system call thread ``tid`` is blocked in, or None."""
    arch = platform.machine()
    try:
        with open(f"/proc/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) < 4 or not fields[0].isdigit():
        return None  # "running" or "-1 ...": not in a system call
    nr, args = int(fields[0]), [int(a, 16) for a in fields[1:7]]
    if nr in _OPEN_CALLS.get(arch, {}):
        return args[_OPEN_CALLS[arch][nr]]
    if nr == _CREAT.get(arch):
        return os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    if nr == _OPENAT2:
        # struct open_how starts with u64 flags; args[2] points at it.
        try:
            with open(f"/proc/{tid}/mem", "rb", buffering=0) as mem:
                mem.seek(args[2])
                return int(struct.unpack("=Q", mem.read(8))[0])
        except (OSError, struct.error):
            return None
    return None


def is_write(flags: int | None) -> bool:
    """True when an open with ``flags`` may change the file (None: unknown, so True)."""
    return flags is None or bool(flags & _WRITE_FLAGS)


class DenyWrites:
    """The policy: a permission handler for files under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.denied = 0

    def __call__(self, ev: FanotifyData) -> bool | None:
        path = ev.path or ""
        if path != self.root and not path.startswith(self.root + "/"):
            return True  # a mount mark also reports files outside root
        flags = open_flags(ev.pid)
        if not is_write(flags):
            return True
        ev.deny_nowait()  # the response goes out first ...
        self.denied += 1  # ... then the bookkeeping and the log line
        log.warning(
            "denied %s open of %s by pid %d (%s)",
            "unknown-mode" if flags is None else "write", path, ev.pid, _comm(ev.pid),
        )
        return None


def _comm(tid: int) -> str:
    try:
        with open(f"/proc/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


async def run(
    root: str,
    *,
    mount: bool = False,
    timeout: float = 2.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> DenyWrites:
    """Run the agent until ``stop`` is set (or the task is cancelled)."""
    policy = DenyWrites(root)
    async with Fanotify(
        InitFlag.CLASS_CONTENT | InitFlag.REPORT_TID, permission_timeout=timeout
    ) as fan:
        if mount:
            fan.mark(policy.root, Event.OPEN_PERM, "mount")
        else:
            fan.mark(policy.root, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
        fan.on_permission(policy)
        log.info("guarding %s against writes (%s mark)", policy.root, "mount" if mount else "inode")
        if ready is not None:
            ready.set()
        drain = asyncio.create_task(_drain(fan))  # keeps the group reading
        try:
            if stop is None:
                await drain
            else:
                await stop.wait()
        finally:
            drain.cancel()
        st = fan.permission_stats
        log.info(
            "stopping: %d allowed, %d denied, %d defaulted (%d timed out)",
            st.allowed, st.denied, st.defaulted, st.timed_out,
        )
    return policy


async def _drain(fan: Fanotify) -> None:
    async for ev in fan:  # only non-permission events arrive here
        ev.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--mount", action="store_true",
                        help="watch the whole mount and guard everything under the directory")
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="seconds before an unanswered open is allowed (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(args.directory, mount=args.mount, timeout=args.timeout, stop=stop)

    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
