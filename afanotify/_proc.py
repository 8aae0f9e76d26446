"""Process and path enrichment: /proc links and file handles.

Everything here is a blocking syscall on procfs or a handle open, each short;
none of it touches the event loop.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from ._dirmap import DirMap
from .events import FanotifyData

__all__ = [
    "fd_path", "process_info", "pidfd_pid", "batch_processes", "read_processes", "raw_pids",
    "HandleResolver",
]

_DELETED = " (deleted)"


def fd_path(fd: int) -> tuple[str | None, bool]:
    """The path of our own descriptor ``fd``; ``(path, resolved)``.

    A deleted file keeps its last name with " (deleted)" appended by the
    kernel; that suffix is stripped and the path reported as unresolved.
    """
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None, False
    if path.endswith(_DELETED):
        return path[: -len(_DELETED)], False
    return path, True


def pidfd_pid(pidfd: int) -> int | None:
    """The pid a pidfd refers to, or None if the process has exited (or on error).

    Read from the ``Pid:`` line of /proc/self/fdinfo; the kernel prints -1
    there once the process is gone, so a pid that was reused by a different
    process can be told apart from the one that caused the event.
    """
    data = _read_small(f"/proc/self/fdinfo/{pidfd}", 4096)
    if data is None:
        return None
    for line in data.split(b"\n"):
        if line.startswith(b"Pid:"):
            try:
                pid = int(line.split()[1])
            except (ValueError, IndexError):
                return None
            return pid if pid > 0 else None
    return None


def process_info(
    pid: int, pidfd: int = -1, *, pidfd_reported: bool = False
) -> tuple[str | None, str | None]:
    """``(exe, cwd)`` of ``pid`` from /proc; ``None`` for what cannot be read.

    With a pidfd, the /proc entries are trusted only if the pidfd still
    refers to ``pid`` after they were read: if the process exited (and its
    pid may have been reused) both fields are ``None``.

    ``pidfd_reported`` says the group asked for pidfds (FAN_REPORT_PIDFD).
    Then a negative ``pidfd`` (FAN_NOPIDFD: the process was already gone
    when the event was read; FAN_EPIDFD: error) means /proc/<pid> cannot be
    trusted, since the pid may already belong to another process: both
    fields are ``None`` without reading /proc.

    Why the check after the reads is enough: a pid is reused only after its
    process has exited *and been reaped*, and from that moment the pidfd's
    fdinfo shows ``Pid: -1``.  So if the pidfd still names ``pid`` after both
    readlinks, the process was never reaped while they ran, and they read
    that process's entries (a zombie has no exe or cwd, so those fail and
    give ``None``).
    """
    if pid <= 0:
        return None, None
    if pidfd_reported and pidfd < 0:
        return None, None
    try:
        exe: str | None = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    try:
        cwd: str | None = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = None
    if pidfd >= 0 and pidfd_pid(pidfd) != pid:
        return None, None
    return exe, cwd


#: What :func:`batch_processes` gives for a process it cannot name: (name, exe, cwd).
NO_PROCESS: tuple[None, None, None] = (None, None, None)


def _read_small(path: str, size: int) -> bytes | None:
    """Up to ``size`` bytes of a /proc file in one read, or None if it cannot be read.

    os.open/os.read, not open(): a short-lived process may be reaped within
    the microseconds a buffered file object takes to set up.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _comm(pid: int) -> str | None:
    data = _read_small(f"/proc/{pid}/comm", 64)
    if data is None:
        return None
    return data.rstrip(b"\n").decode("utf-8", "surrogateescape")


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


Proc = tuple["str | None", "str | None", "str | None"]

#: The kernel's ``struct fanotify_event_metadata``: event_len at 0, pid at 20.
_META = struct.Struct("=I16xi")


def raw_pids(buf: memoryview | bytes, skip: int = -1) -> list[int]:
    """The distinct pids of a buffer read from a fanotify group, in order, before decoding.

    Only the fixed metadata of each event is looked at (``event_len`` and
    ``pid``); the walk stops at the first event too short to be one.  For
    :func:`read_processes` right after the read, ahead of everything else.
    """
    seen: dict[int, None] = {}
    off = 0
    end = len(buf) - _META.size
    unpack = _META.unpack_from
    while off <= end:
        length, pid = unpack(buf, off)
        if length < _META.size:
            break
        if pid > 0 and pid != skip:
            seen[pid] = None
        off += length
    return list(seen)


def read_processes(pids: Iterable[int], *, paths: bool = True) -> dict[int, Proc]:
    """``(name, exe, cwd)`` of each pid from /proc, unchecked (see :func:`batch_processes`)."""
    # Every name first (what a process that is about to go loses first),
    # then the links.
    names = [(pid, _comm(pid)) for pid in pids]
    out: dict[int, Proc] = {}
    for pid, name in names:
        exe = cwd = None
        if paths and name is not None:
            exe = _link(f"/proc/{pid}/exe")
            cwd = _link(f"/proc/{pid}/cwd")
        out[pid] = (name, exe, cwd)
    return out


def batch_processes(
    events: Iterable[FanotifyData], *, pidfd_reported: bool, paths: bool = True,
    early: dict[int, Proc] | None = None,
) -> dict[int, Proc]:
    """``(name, exe, cwd)`` of each process in one batch of events, read once per pid.

    Meant to run as soon as the batch is read, so that a short-lived process
    is still there (a zombie keeps its name, not its exe or cwd).  ``early``
    holds what :func:`read_processes` read for the batch's pids right after
    the read, before the events were decoded (sooner still); a pid it lacks
    is read here.  The details of a pid are trusted as :func:`process_info`
    trusts them: only if the pid's first event in the batch has a pidfd that
    still names the pid after the reads.  Then the pid was never free
    between that event and the reads, so every later event of the batch
    with the same pid came from the same process.  With REPORT_PIDFD and no
    pidfd on the first event (the process was gone), the pid gives nothing.
    ``paths=False`` reads the name alone.
    """
    out: dict[int, Proc] = {}
    for ev in events:
        pid = ev.pid
        if pid in out or pid <= 0:
            continue
        pidfd = ev.pidfd
        if pidfd_reported and pidfd < 0:
            out[pid] = NO_PROCESS
            continue
        got = early.get(pid) if early is not None else None
        if got is None:
            got = read_processes((pid,), paths=paths)[pid]
        if pidfd >= 0 and pidfd_pid(pidfd) != pid:
            out[pid] = NO_PROCESS
        else:
            out[pid] = got
    return out


# The resolver of handles to paths is the group's directory map now.
HandleResolver = DirMap
