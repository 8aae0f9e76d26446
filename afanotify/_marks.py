"""Mark arguments: kinds, flags and event masks checked before ``fanotify_mark(2)``."""

from __future__ import annotations

import os
from typing import Literal, Union

from . import _ffi
from ._errors import mark_error
from .flags import (
    CLASS_BITS,
    FID_EVENTS,
    MARK_TYPE_BITS,
    MNT_EVENTS,
    PERM_EVENTS,
    Event,
    InitFlag,
    MarkFlag,
)

__all__ = [
    "MarkKind", "PathArg", "check_events", "check_int", "check_path", "do_mark", "fs_top",
    "kind_flag", "mark_flags",
]

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
MarkKind = Literal["inode", "mount", "filesystem", "mntns"]

_KINDS: dict[str, MarkFlag] = {
    "inode": MarkFlag.INODE,
    "mount": MarkFlag.MOUNT,
    "filesystem": MarkFlag.FILESYSTEM,
    "mntns": MarkFlag.MNTNS,
}
_ALL_EVENTS = 0
for _e in Event:
    _ALL_EVENTS |= _e.value
_PERM = int(PERM_EVENTS)
#: Directory-entry and inode events, which a mount mark cannot carry.
_INODE_ONLY = int(
    Event.CREATE | Event.DELETE | Event.MOVED_FROM | Event.MOVED_TO | Event.RENAME
    | Event.ATTRIB | Event.DELETE_SELF | Event.MOVE_SELF
)


def check_int(name: str, value: object, bits: int | None = None) -> int:
    """``value`` as an int; bools and other types are refused.

    :param bits: if given, ``value`` must fit in that many bits, unsigned
        (the width the kernel's argument has)
    :raises TypeError: naming the argument
    :raises ValueError: if ``value`` does not fit
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or flag, not {type(value).__name__}")
    if bits is not None and not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be a non-negative {bits}-bit value, got {value}")
    return int(value)


def check_path(path: object) -> str | bytes:
    """``path`` as ``os.fspath`` gives it, checked before any system call.

    :raises TypeError: for a path of the wrong type (``None`` included)
    :raises ValueError: for a path with a NUL byte (the kernel would see
        only what comes before it, and mark another file)
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be str, bytes or os.PathLike, not {type(path).__name__}")
    fspath = os.fspath(path)
    if not isinstance(fspath, (str, bytes)):
        raise TypeError(f"path's __fspath__ returned {type(fspath).__name__}, not str or bytes")
    if (isinstance(fspath, str) and "\0" in fspath) or (
        isinstance(fspath, bytes) and b"\0" in fspath
    ):
        raise ValueError(f"path contains a NUL byte: {fspath!r}")
    if not fspath:
        raise ValueError("path is empty: name a file or directory")
    return fspath


def kind_flag(kind: MarkKind | MarkFlag) -> MarkFlag:
    """The mark-type flag for ``kind``.

    :raises TypeError, ValueError: if ``kind`` is not a mark type
    """
    if isinstance(kind, str):
        try:
            return _KINDS[kind]
        except KeyError:
            raise ValueError(
                f"kind {kind!r} is not one of {', '.join(map(repr, _KINDS))}"
            ) from None
    if isinstance(kind, int) and not isinstance(kind, bool):
        if kind & ~MARK_TYPE_BITS or kind not in (m.value for m in _KINDS.values()):
            raise ValueError(
                f"kind {kind!r} is not a mark type: use INODE, MOUNT, FILESYSTEM or MNTNS"
            )
        return MarkFlag(kind)
    raise TypeError(f"kind must be a str or MarkFlag, not {type(kind).__name__}")


def mark_flags(
    kind: MarkKind | MarkFlag,
    ignore: bool,
    ignore_style: str,
    survive_modify: bool,
    evictable: bool,
    onlydir: bool,
    dont_follow: bool,
) -> MarkFlag:
    """The ``fanotify_mark`` flags for one call, besides ADD/REMOVE/FLUSH.

    :raises TypeError, ValueError: for impossible combinations, naming the argument
    """
    flags = kind_flag(kind)
    if ignore:
        if ignore_style == "new":
            flags |= MarkFlag.IGNORE
        elif ignore_style == "old":
            flags |= MarkFlag.IGNORED_MASK
        else:
            raise ValueError(f"ignore_style must be 'new' or 'old', not {ignore_style!r}")
    if survive_modify:
        if not ignore:
            raise ValueError("survive_modify applies to ignore marks: pass ignore=True too")
        flags |= MarkFlag.IGNORED_SURV_MODIFY
    if evictable:
        if flags & MARK_TYPE_BITS:
            raise ValueError("evictable applies only to inode marks (kind='inode')")
        flags |= MarkFlag.EVICTABLE
    if onlydir:
        flags |= MarkFlag.ONLYDIR
    if dont_follow:
        flags |= MarkFlag.DONT_FOLLOW
    return flags


def check_events(
    events: int, *, group_flags: int, fid_mode: bool, kind_flags: int, ignore: bool
) -> int:
    """The event mask for a mark of ``kind_flags`` in a group made with ``group_flags``.

    :raises TypeError, ValueError: naming what the mask or the group lacks
    """
    if isinstance(events, (InitFlag, MarkFlag)):
        raise TypeError(
            f"events must be Event bits, not {type(events).__name__}.{events!r}: "
            "InitFlag bits go to Fanotify(), MarkFlag bits to kind="
        )
    mask = check_int("events", events)
    if not mask:
        raise ValueError("events must name at least one Event")
    if mask & ~_ALL_EVENTS:
        raise ValueError(f"events has bits no Event names: {mask & ~_ALL_EVENTS:#x}")
    kind = kind_flags & MARK_TYPE_BITS
    fid_only = mask & FID_EVENTS & ~Event.FS_ERROR if not ignore else 0
    if fid_only and not fid_mode:
        raise ValueError(
            f"events {Event(fid_only)!r} need a FID group: create it with "
            "InitFlag.REPORT_FID or InitFlag.REPORT_DFID_NAME"
        )
    perm = mask & _PERM
    if perm and not ignore and not group_flags & CLASS_BITS:
        raise ValueError(
            f"permission events {Event(perm)!r} need InitFlag.CLASS_CONTENT or "
            "CLASS_PRE_CONTENT"
        )
    if mask & Event.PRE_ACCESS and not group_flags & InitFlag.CLASS_PRE_CONTENT:
        raise ValueError("Event.PRE_ACCESS needs InitFlag.CLASS_PRE_CONTENT")
    inode_only = mask & _INODE_ONLY if not ignore else 0
    if inode_only and kind == MarkFlag.MOUNT:
        # The kernel refuses these on mount marks (EINVAL, which looks like an old kernel).
        raise ValueError(
            f"events {Event(inode_only)!r} cannot be watched through a mount mark: use "
            "kind='filesystem' (FID group) or inode marks"
        )
    if mask & MNT_EVENTS and kind != MarkFlag.MNTNS:
        raise ValueError("mount events need kind='mntns' and InitFlag.REPORT_MNT")
    if mask & Event.RENAME and not group_flags & InitFlag.REPORT_NAME:
        raise ValueError("Event.RENAME needs InitFlag.REPORT_DFID_NAME")
    return mask


def do_mark(fd: int, mflags: int, mask: int, path: PathArg | None, dirfd: int | None) -> None:
    """``fanotify_mark(2)`` on the group ``fd``.

    :raises TypeError: for a path or dirfd of the wrong type
    :raises OSError: with a message that says what to do (see ``_errors.mark_error``)
    """
    if dirfd is None:
        dirfd = _ffi.lib.AT_FDCWD
    else:
        dirfd = check_int("dirfd", dirfd)
        if dirfd < 0:
            raise ValueError(f"dirfd must be an open directory fd, got {dirfd}")
    fspath = None if path is None and mflags & MarkFlag.FLUSH else check_path(path)
    try:
        _ffi.fanotify_mark(fd, mflags, mask, dirfd, fspath)
    except OSError as exc:
        shown = None if fspath is None else os.fsdecode(fspath)
        raise mark_error(exc, shown, mflags, mask) from None


def unresolvable_reason(path: str | bytes) -> str | None:
    """Why a FID group could not turn the handles of ``path``'s filesystem into
    paths (its type, and what failed), or None if it can.

    overlayfs, for one, reports handles to fanotify that ``open_by_handle_at``
    cannot open unless it is mounted with ``nfs_export=on``.
    """
    fstype = _fstype(path)
    try:
        htype, handle, _mnt_id = _ffi.name_to_handle(_ffi.lib.AT_FDCWD, path)
        top = path if os.path.isdir(path) else os.path.dirname(os.fsdecode(path)) or "."
        mount_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(_ffi.open_by_handle(mount_fd, handle, htype, os.O_PATH | os.O_CLOEXEC))
        finally:
            os.close(mount_fd)
    except OSError as exc:
        return f"{fstype}: {exc.strerror}"
    return None


def _fstype(path: str | bytes) -> str:
    """The type of the filesystem holding ``path`` (from /proc/self/mountinfo), or "?"."""
    try:
        dev = os.stat(path).st_dev
        want = f"{os.major(dev)}:{os.minor(dev)}"
        found = "?"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if left.split(" ")[2] == want:
                    found = right.split(" ", 1)[0]  # the last one mounted there wins
        return found
    except (OSError, IndexError):
        return "?"


def fs_top(path: str | bytes, dont_follow: bool) -> str:
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
