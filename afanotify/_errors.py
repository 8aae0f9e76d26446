"""Turning kernel errnos into errors that say what to do."""

from __future__ import annotations

import errno
import os

from .exceptions import UnsupportedFlagError
from .flags import Event, InitFlag, MarkFlag

__all__ = ["INIT_FLAG_VERSIONS", "MARK_FLAG_VERSIONS", "EVENT_VERSIONS", "init_error", "mark_error"]

#: The kernel release that added each init flag.
INIT_FLAG_VERSIONS: dict[InitFlag, str] = {
    InitFlag.ENABLE_AUDIT: "4.15",
    InitFlag.REPORT_TID: "4.20",
    InitFlag.REPORT_FID: "5.1",
    InitFlag.REPORT_DIR_FID: "5.9",
    InitFlag.REPORT_NAME: "5.9",
    InitFlag.REPORT_PIDFD: "5.15",
    InitFlag.REPORT_TARGET_FID: "5.17",
    InitFlag.REPORT_FD_ERROR: "6.13",
    InitFlag.REPORT_MNT: "6.15",
}

#: The kernel release that added each mark flag.
MARK_FLAG_VERSIONS: dict[MarkFlag, str] = {
    MarkFlag.FILESYSTEM: "4.20",
    MarkFlag.EVICTABLE: "5.19",
    MarkFlag.IGNORE: "6.0",
    MarkFlag.MNTNS: "6.15",
}

#: The kernel release that added each event bit (older ones: 2.6.37).
EVENT_VERSIONS: dict[Event, str] = {
    Event.OPEN_EXEC: "5.0",
    Event.OPEN_EXEC_PERM: "5.0",
    Event.ATTRIB: "5.1",
    Event.MOVED_FROM: "5.1",
    Event.MOVED_TO: "5.1",
    Event.CREATE: "5.1",
    Event.DELETE: "5.1",
    Event.DELETE_SELF: "5.1",
    Event.MOVE_SELF: "5.1",
    Event.FS_ERROR: "5.16",
    Event.RENAME: "5.17",
    Event.PRE_ACCESS: "6.14",
    Event.MNT_ATTACH: "6.15",
    Event.MNT_DETACH: "6.15",
}

_NEEDS_ROOT = (
    "needs CAP_SYS_ADMIN: run as root (or grant the capability), or use an unprivileged "
    "FID group (InitFlag.REPORT_FID) with inode marks on files you can read"
)


def _newer(flags: int, table: dict[InitFlag, str] | dict[MarkFlag, str] | dict[Event, str]) -> str:
    parts = [
        f"{f.name} (Linux {v})" for f, v in table.items() if f.value and flags & f.value == f.value
    ]
    return ", ".join(parts)


def _running() -> str:
    return os.uname().release


def _single_flags(flags: InitFlag) -> list[InitFlag]:
    return [f for f in InitFlag if f.value and not f.value & (f.value - 1) and flags & f.value]


def _rejected_init_message(culprit: InitFlag) -> str:
    """The message for flags the kernel rejected: one flag, or two it will not combine."""
    parts = []
    for f in _single_flags(culprit):
        ver = INIT_FLAG_VERSIONS.get(f)
        parts.append(f"InitFlag.{f.name}" + (f" (added in Linux {ver})" if ver else ""))
    if len(parts) == 1:
        return (
            f"this kernel (Linux {_running()}) rejects {parts[0]}: upgrade the kernel or "
            "leave the flag out (see afanotify.features())"
        )
    return (
        f"this kernel (Linux {_running()}) rejects {' together with '.join(parts)}: "
        "the kernel does not allow these flags in one group; leave one of them out"
    )


def init_error(exc: OSError, flags: int, culprit: InitFlag | None) -> OSError:
    """Rewrite a fanotify_init failure."""
    code = exc.errno
    if code == errno.EPERM:
        return PermissionError(code, f"fanotify_init {_NEEDS_ROOT}")
    if code == errno.EINVAL:
        if culprit is not None:
            return UnsupportedFlagError(code, _rejected_init_message(culprit))
        newer = _newer(flags, INIT_FLAG_VERSIONS)
        hint = f"; flags newer than 2.6.37 in use: {newer}" if newer else ""
        return OSError(
            code,
            f"fanotify_init rejected the flag combination {flags:#x} on Linux "
            f"{_running()}{hint}",
        )
    if code == errno.EMFILE:
        return OSError(
            code,
            "too many fanotify groups for this user (fs.fanotify.max_user_groups) or "
            "open files: close unused groups",
        )
    if code == errno.ENOSYS:
        return OSError(code, "fanotify is not available: the kernel lacks CONFIG_FANOTIFY")
    return exc


def mark_error(exc: OSError, path: str | None, flags: int, mask: int) -> OSError:
    """Rewrite a fanotify_mark failure, keeping errno and path."""
    code = exc.errno
    where = f" {path!r}" if path is not None else ""
    kind = flags & (MarkFlag.MOUNT | MarkFlag.FILESYSTEM | MarkFlag.MNTNS)
    if code == errno.ENOENT and flags & MarkFlag.REMOVE:
        return FileNotFoundError(
            code,
            f"cannot unmark{where}: the group has no mark of this kind there (or no such "
            "file or directory); unmark with the kind and ignore flags the mark was made with",
            path,
        )
    if code == errno.ENOENT:
        return FileNotFoundError(code, f"cannot mark{where}: no such file or directory", path)
    if code == errno.ENOTDIR:
        return NotADirectoryError(code, f"cannot mark{where}: not a directory (ONLYDIR)", path)
    if code == errno.EPERM or code == errno.EACCES:
        return PermissionError(code, f"marking{where} {_NEEDS_ROOT}", path)
    if code == errno.EXDEV and kind:
        # fanotify_test_fsid(): a mount or filesystem mark of a FID group needs
        # the path's fsid to be its filesystem's (not so on a btrfs subvolume).
        return OSError(
            code,
            f"cannot mark{where} with a {'mount' if kind == MarkFlag.MOUNT else 'filesystem'} "
            "mark in a FID group: its fsid differs from its filesystem's (a btrfs "
            "subvolume, for example); use inode marks (kind='inode') on its directories, "
            "or a group without FID flags",
            path,
        )
    if code == errno.EXDEV:
        return OSError(
            code,
            f"cannot mark{where} in a FID group: the kernel cannot identify its objects by "
            "file handle here (a btrfs subvolume, on kernels before 6.8, or a filesystem "
            "whose fsid another marked one shares); use a group without FID flags",
            path,
        )
    if code == errno.ENODEV:
        return OSError(
            code,
            f"cannot mark{where}: the filesystem has no fsid, so a FID group cannot report "
            "its events; use a group without FID flags",
            path,
        )
    if code in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return OSError(
            code,
            f"cannot mark{where}: the filesystem does not support file handles (FID mode) "
            "or this event type",
            path,
        )
    if code == errno.EISDIR and flags & MarkFlag.IGNORE == MarkFlag.IGNORE:
        return IsADirectoryError(
            code,
            f"cannot add an ignore mask (ignore_style='new') to{where}: on a directory, "
            "mount or filesystem the kernel requires it to survive modification: pass "
            "survive_modify=True (and Event.ONDIR to ignore the directory's own events)",
            path,
        )
    if code == errno.EEXIST:
        return FileExistsError(
            code,
            f"cannot update the mark on{where}: it was made with different flags, and the "
            "kernel refuses to mix an evictable mark with a non-evictable one, or "
            "ignore_style='new' with 'old'; remove the mark first (unmark) or keep its flags",
            path,
        )
    if code == errno.ENOSPC:
        return OSError(
            code, "too many marks for this user (fs.fanotify.max_user_marks)", path
        )
    if code == errno.EINVAL:
        newer = ", ".join(
            p for p in (_newer(flags, MARK_FLAG_VERSIONS), _newer(mask, EVENT_VERSIONS)) if p
        )
        hint = (
            f"; if the kernel is older than these, it rejects them: {newer}" if newer else ""
        )
        return UnsupportedFlagError(
            code,
            f"this kernel (Linux {_running()}) rejected marking{where} with flags "
            f"{flags:#x} and events {mask:#x}{hint}",
            path,
        )
    return exc
