#!/usr/bin/env python3
"""Print mounts as they are attached to and detached from a mount namespace.

Usage::

    sudo python examples/watch_mounts.py [--pid PID] [--count N]

Watches the mount namespace of PID (default: this process's own), with a
``REPORT_MNT`` group and a ``mntns`` mark (Linux 6.15), and prints one line
per event::

    ATTACH 0x1000001a2 /mnt/usb vfat
    DETACH 0x1000001a2 /mnt/usb vfat

The kernel reports a mount by its 64-bit unique mount id.  To name it, the
program keeps a table of the namespace's mounts (``/proc/PID/mountinfo``,
each mount point asked for its unique id with ``statx(STATX_MNT_ID_UNIQUE)``
through ``/proc/PID/root``), read at start and again at each attach; a
detached mount is named from the table, since it is gone by then.  A mount
that came and went between two reads is printed with ``?``.  A move
(``mount --move``) is one event with both bits.  ``--count N`` stops after N
events; otherwise Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import sys

from afanotify import Event, Fanotify, FanotifyData, InitFlag

# statx(2): the unique mount id is the u64 at offset 144 of struct statx
# (Linux 6.8); the struct is 256 bytes.
_STATX_MNT_ID_UNIQUE = 0x4000
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_NO_AUTOMOUNT = 0x800
_STX_MNT_ID_OFFSET = 144
_libc = ctypes.CDLL(None, use_errno=True)


def unique_mount_id(path: str) -> int | None:
    """The unique id of the mount ``path`` is on, or None."""
    buf = ctypes.create_string_buffer(256)
    flags = _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT
    if _libc.statx(_AT_FDCWD, os.fsencode(path), flags, _STATX_MNT_ID_UNIQUE, buf) != 0:
        return None
    if not int.from_bytes(buf.raw[0:4], "little") & _STATX_MNT_ID_UNIQUE:
        return None  # a kernel without unique mount ids
    return int.from_bytes(buf.raw[_STX_MNT_ID_OFFSET:_STX_MNT_ID_OFFSET + 8], sys.byteorder)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo.
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def read_mounts(pid: str) -> dict[int, tuple[str, str]]:
    """``{unique id: (mount point, filesystem type)}`` of pid's namespace."""
    table: dict[int, tuple[str, str]] = {}
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return table
    for line in lines:
        fields = line.split()
        point = _unescape(fields[4])
        fstype = fields[fields.index("-") + 1]
        mid = unique_mount_id(f"/proc/{pid}/root{point}")
        if mid is not None:
            table[mid] = (point, fstype)
    return table


def describe(event: FanotifyData, mounts: dict[int, tuple[str, str]], pid: str) -> str:
    mid = event.mnt_id if event.mnt_id is not None else -1
    if event.ev_types & Event.MNT_ATTACH:
        mounts.update(read_mounts(pid))
    point, fstype = mounts.get(mid, ("?", "?"))
    if event.ev_types & Event.MNT_DETACH and not event.ev_types & Event.MNT_ATTACH:
        mounts.pop(mid, None)
    kind = {Event.MNT_ATTACH: "ATTACH", Event.MNT_DETACH: "DETACH"}.get(
        Event(event.ev_types & (Event.MNT_ATTACH | Event.MNT_DETACH)), "MOVE"
    )
    return f"{kind} {mid:#x} {point} {fstype}"


async def watch(pid: str, count: int | None) -> None:
    async with Fanotify(InitFlag.REPORT_MNT) as fan:
        fan.mark(f"/proc/{pid}/ns/mnt", Event.MNT_ATTACH | Event.MNT_DETACH, "mntns")
        mounts = read_mounts(pid)  # after the mark: a mount made now is reported
        print(f"watching the mount namespace of pid {pid} ({len(mounts)} mounts)",
              file=sys.stderr, flush=True)
        seen = 0
        async for event in fan:
            if event.ev_types & Event.Q_OVERFLOW:
                print("Q_OVERFLOW: the kernel dropped events", flush=True)
                continue
            print(describe(event, mounts, pid), flush=True)
            seen += 1
            if count is not None and seen >= count:
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print mount attach and detach events.")
    parser.add_argument("--pid", default="self", help="watch this process's mount namespace")
    parser.add_argument("--count", type=int, help="stop after this many events")
    args = parser.parse_args(argv)
    if not os.path.exists(f"/proc/{args.pid}/ns/mnt"):
        parser.error(f"no process {args.pid}")
    try:
        asyncio.run(watch(args.pid, args.count))
    except KeyboardInterrupt:
        pass
    except (PermissionError, ValueError, OSError) as exc:
        print(f"watch_mounts: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
