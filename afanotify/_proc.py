"""Process and path enrichment: /proc links and file handles.

Everything here is a blocking syscall on procfs or a handle open, each short;
none of it touches the event loop.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable

from . import _ffi
from .events import FanotifyData, FileHandle

__all__ = ["fd_path", "process_info", "pidfd_pid", "batch_processes", "HandleResolver"]

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
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError, IndexError):
        return None
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


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "surrogateescape")
    except OSError:
        return None


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def batch_processes(
    events: Iterable[FanotifyData], *, pidfd_reported: bool, paths: bool = True
) -> dict[int, tuple[str | None, str | None, str | None]]:
    """``(name, exe, cwd)`` of each process in one batch of events, read once per pid.

    Meant to run as soon as the batch is read, so that a short-lived process
    is still there (a zombie keeps its name, not its exe or cwd).  The
    details of a pid are read for its first event in the batch and trusted
    as :func:`process_info` trusts them: only if that event's pidfd still
    names the pid after the reads.  Then the pid was never free between that
    event and the reads, so every later event of the batch with the same pid
    came from the same process.  With REPORT_PIDFD and no pidfd on the first
    event (the process was gone), the pid gives nothing.  ``paths=False``
    reads the name alone.
    """
    out: dict[int, tuple[str | None, str | None, str | None]] = {}
    for ev in events:
        pid = ev.pid
        if pid in out or pid <= 0:
            continue
        pidfd = ev.pidfd
        if pidfd_reported and pidfd < 0:
            out[pid] = NO_PROCESS
            continue
        name = _comm(pid)
        exe = cwd = None
        if paths and name is not None:
            exe = _link(f"/proc/{pid}/exe")
            cwd = _link(f"/proc/{pid}/cwd")
        if pidfd >= 0 and pidfd_pid(pidfd) != pid:
            out[pid] = NO_PROCESS
        else:
            out[pid] = (name, exe, cwd)
    return out


class HandleResolver:
    """Turns file handles into paths with ``open_by_handle_at``.

    One mount fd is kept per fsid, registered when a mark is added (the
    kernel needs a descriptor on the same filesystem to decode a handle).
    Directory handles are cached in a bounded LRU, because FID+name events
    repeat the same few directories; joining a name costs no syscall.

    A cached directory path goes stale if the directory is renamed; the
    group calls :meth:`invalidate` when it sees a directory move or delete.

    ``open_by_handle_at`` needs CAP_DAC_READ_SEARCH, which an unprivileged
    FID group lacks.  So the handle of every marked object is also recorded
    with its path (``name_to_handle_at`` needs no privilege); such a handle
    resolves to that path as long as the path still has that handle.
    """

    def __init__(self, cache_size: int = 4096) -> None:
        self._mounts: dict[tuple[int, int], int] = {}
        self._cache: OrderedDict[tuple[tuple[int, int], int, bytes], str] = OrderedDict()
        #: Marked objects: handle key -> the path they were marked by.
        self._marked: dict[tuple[tuple[int, int], int, bytes], str] = {}
        self._cache_size = cache_size
        # The last handle resolved through the cache, by identity: the batch
        # decoder hands out one FileHandle object per distinct directory in a
        # batch, so runs of events in one directory skip even the cache lookup.
        self._last: FileHandle | None = None
        self._last_path = ""
        self.hits = 0
        self.misses = 0

    @property
    def caching(self) -> bool:
        """True when resolved directory paths are kept (a cache size above 0)."""
        return self._cache_size > 0

    def add_mount(self, path: str | bytes, *, dont_follow: bool = False) -> None:
        """Record the handle of the marked ``path``, and keep an fd on the top
        directory of its filesystem, keyed by fsid.

        The fd is opened on the highest directory above ``path`` that is still
        on the same device (the mount's root), never on the marked object:
        an open fd on a marked file would keep its inode alive, so its
        DELETE_SELF would never come, and it would make the group open (and
        see) every file it marks.
        """
        p = os.path.abspath(os.fsdecode(path))
        if not dont_follow:
            p = os.path.realpath(p)
        fd = os.open(p, os.O_PATH | os.O_CLOEXEC | (os.O_NOFOLLOW if dont_follow else 0))
        try:
            fsid = _ffi.fsid_of_fd(fd)  # fstatfs works on O_PATH descriptors
        finally:
            os.close(fd)
        try:
            htype, handle, _mnt = _ffi.name_to_handle(_ffi.lib.AT_FDCWD, p)
        except OSError:
            pass  # paths then come from open_by_handle_at alone
        else:
            self._marked[(fsid, htype, handle)] = p
        if fsid in self._mounts:
            return
        # open_by_handle_at() refuses O_PATH descriptors (EBADF), so this is a
        # real read-only open of a directory.
        try:
            mount_fd = os.open(_fs_top(p, dont_follow), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            if fsid in {k[0] for k in self._marked}:
                return  # marked objects still resolve
            raise
        self._mounts[fsid] = mount_fd

    def resolve(self, handle: FileHandle, *, cache: bool = True) -> str | None:
        """The current path of ``handle``'s object, or None if it cannot be opened."""
        if cache and handle is self._last:
            self.hits += 1
            return self._last_path
        key = (handle.fsid, handle.handle_type, handle.handle)
        if cache:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                self._last, self._last_path = handle, hit
                return hit
        self.misses += 1
        path = self._open_path(handle)
        if path is None:
            return self._marked_path(key)
        if cache:
            self._cache[key] = path
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            if self._cache_size:
                self._last, self._last_path = handle, path
        return path

    def _open_path(self, handle: FileHandle) -> str | None:
        mount_fd = self._mounts.get(handle.fsid)
        if mount_fd is None:
            return None
        try:
            fd = _ffi.open_by_handle(mount_fd, handle.handle, handle.handle_type, os.O_PATH)
        except OSError:
            return None
        try:
            path, resolved = fd_path(fd)
        finally:
            os.close(fd)
        return path if resolved else None

    def _marked_path(self, key: tuple[tuple[int, int], int, bytes]) -> str | None:
        """The path a marked object was marked by, if it still names that object."""
        path = self._marked.get(key)
        if path is None:
            return None
        try:
            htype, handle, _mnt = _ffi.name_to_handle(_ffi.lib.AT_FDCWD, path)
        except OSError:
            return None
        return path if (htype, handle) == key[1:] else None

    def invalidate(self) -> None:
        """Forget every cached directory path."""
        self._cache.clear()
        self._last = None

    def close(self) -> None:
        """Close the mount fds.  Idempotent."""
        mounts, self._mounts = self._mounts, {}
        for fd in mounts.values():
            os.close(fd)
        self._marked.clear()
        self._cache.clear()
        self._last = None


def _fs_top(path: str | bytes, dont_follow: bool) -> str:
    """The highest directory above ``path`` on the same device (its mount's root)."""
    p = os.path.abspath(os.fsdecode(path))
    if (dont_follow and os.path.islink(p)) or not os.path.isdir(p):
        p = os.path.dirname(p)
    p = os.path.realpath(p)
    dev = os.stat(p).st_dev
    while p != "/":
        parent = os.path.dirname(p)
        try:
            if os.stat(parent).st_dev != dev:
                break
        except OSError:
            break
        p = parent
    return p
