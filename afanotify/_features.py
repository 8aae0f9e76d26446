"""Run-time detection of what the running kernel's fanotify accepts.

Every answer comes from a probe, never from the kernel version string.
Marks are probed on a path that does not exist: the kernel checks flags and
event bits before it looks the path up, so EINVAL means "unsupported" and
ENOENT means "accepted", and no mark is ever added.
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass, field
from typing import Literal

from . import _ffi
from ._errors import init_error
from .flags import Event, InitFlag, MarkFlag

__all__ = ["Features", "features"]


def _core() -> Literal["c", "pure"]:
    return _ffi.CORE


@dataclass(frozen=True)
class Features:
    """What the running kernel accepts, as probed, and which core this install runs on."""

    #: False when fanotify_init itself is unavailable or not permitted.
    available: bool
    #: Why not, when ``available`` is False.
    reason: str | None = None
    #: The ``fanotify_init`` flags the kernel accepts, each probed alone.
    init_flags: frozenset[InitFlag] = field(default_factory=frozenset)
    #: The mark types (``INODE``, ``MOUNT``, ``FILESYSTEM``, ``MNTNS``) it accepts.
    mark_types: frozenset[MarkFlag] = field(default_factory=frozenset)
    #: The mark flags it accepts (``EVICTABLE``, ``IGNORE``, ...).
    mark_flags: frozenset[MarkFlag] = field(default_factory=frozenset)
    #: The single-bit events it accepts in a mark, each in a group that can report it.
    events: frozenset[Event] = field(default_factory=frozenset)
    #: ``"c"`` when this install runs on the compiled core (C decoder and C
    #: event builder), ``"pure"`` on the pure-Python one (same behaviour,
    #: slower decoding; see :attr:`core_hint`).
    core: Literal["c", "pure"] = field(default_factory=_core)

    @property
    def core_hint(self) -> str | None:
        """How to get the compiled core, when this install runs on the pure one; else None."""
        if self.core == "c":
            return None
        return (
            f"the compiled core is not in use ({_ffi.CORE_ERROR}); install a wheel from PyPI, "
            "or reinstall with a C compiler and the Python headers "
            "(apt install gcc python3-dev, or dnf install gcc python3-devel)"
        )

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly form: names of supported flags and events, and the core."""
        return {
            "available": self.available,
            "reason": self.reason,
            "core": self.core,
            "init_flags": sorted(f.name or "" for f in self.init_flags),
            "mark_types": sorted(f.name or "" for f in self.mark_types),
            "mark_flags": sorted(f.name or "" for f in self.mark_flags),
            "events": sorted(e.name or "" for e in self.events),
        }


_BASE = InitFlag.CLOEXEC | InitFlag.NONBLOCK

# Flags a probe must pair with the one tested, because the kernel requires them.
_INIT_COMPANIONS: dict[InitFlag, int] = {
    InitFlag.REPORT_NAME: InitFlag.REPORT_DIR_FID,
    InitFlag.REPORT_TARGET_FID: InitFlag.REPORT_DFID_NAME_TARGET,
}

_SINGLE_INIT = [
    f for f in InitFlag
    if f.value and not f.value & (f.value - 1) and f not in (InitFlag.CLOEXEC, InitFlag.NONBLOCK)
]


def _try_init(flags: int) -> int | None:
    try:
        return _ffi.fanotify_init(flags, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EPERM):
            return None
        raise


def _mark_ok(fan_fd: int, flags: int, mask: int, missing: str) -> bool:
    try:
        _ffi.fanotify_mark(fan_fd, MarkFlag.ADD | flags, mask, _ffi.lib.AT_FDCWD, missing)
    except OSError as exc:
        return exc.errno != errno.EINVAL
    # Should not happen (the path does not exist); undo to leave no mark behind.
    try:
        _ffi.fanotify_mark(fan_fd, MarkFlag.REMOVE | flags, mask, _ffi.lib.AT_FDCWD, missing)
    except OSError:
        pass
    return True


def features() -> Features:
    """Probe the running kernel: init flags, mark types and flags, and events.

    Needs CAP_SYS_ADMIN for a full answer; without it, ``available`` is False
    and ``reason`` says why.  The answer also says which core this install
    runs on (:attr:`Features.core`).

    :raises OSError: if a probe fails other than by the kernel refusing a flag
        (EINVAL, EPERM), for example EMFILE when no descriptor is left
    """
    try:
        fd = _ffi.fanotify_init(_BASE, os.O_RDONLY)
    except OSError as exc:
        return Features(False, str(init_error(exc, _BASE, None)))
    os.close(fd)

    init_flags = set()
    for flag in _SINGLE_INIT:
        got = _try_init(_BASE | flag | _INIT_COMPANIONS.get(flag, 0))
        if got is not None:
            os.close(got)
            init_flags.add(flag)

    with tempfile.TemporaryDirectory(prefix="afanotify-probe-") as tmp:
        missing = os.path.join(tmp, "does-not-exist")
        mark_types: set[MarkFlag] = set()
        mark_flags: set[MarkFlag] = set()
        events: set[Event] = set()
        groups = {
            "notif": _try_init(_BASE),
            "fid": _try_init(_BASE | InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID),
            "content": _try_init(_BASE | InitFlag.CLASS_CONTENT),
            "pre": _try_init(_BASE | InitFlag.CLASS_PRE_CONTENT),
            "mnt": _try_init(_BASE | InitFlag.REPORT_MNT),
        }
        try:
            notif = groups["notif"]
            if notif is not None:
                for kind in (MarkFlag.INODE, MarkFlag.MOUNT, MarkFlag.FILESYSTEM):
                    if _mark_ok(notif, kind, Event.OPEN, missing):
                        mark_types.add(kind)
                for mflag, mask in (
                    (MarkFlag.DONT_FOLLOW, Event.OPEN),
                    (MarkFlag.ONLYDIR, Event.OPEN),
                    (MarkFlag.EVICTABLE, Event.OPEN),
                    (MarkFlag.IGNORED_MASK, Event.OPEN),
                    (MarkFlag.IGNORED_MASK | MarkFlag.IGNORED_SURV_MODIFY, Event.OPEN),
                    (MarkFlag.IGNORE, Event.OPEN),
                ):
                    if _mark_ok(notif, mflag, mask, missing):
                        mark_flags.add(MarkFlag(mflag & ~MarkFlag.IGNORED_MASK or mflag))
            mnt = groups["mnt"]
            if mnt is not None and _mark_ok(mnt, MarkFlag.MNTNS, Event.MNT_ATTACH, missing):
                mark_types.add(MarkFlag.MNTNS)
            for ev in Event:
                if not ev.value or ev.value & (ev.value - 1) or ev in (
                    Event.ONDIR, Event.EVENT_ON_CHILD, Event.Q_OVERFLOW
                ):
                    continue
                if ev & (Event.MNT_ATTACH | Event.MNT_DETACH):
                    g, kind = groups["mnt"], MarkFlag.MNTNS
                elif ev == Event.PRE_ACCESS:
                    g, kind = groups["pre"], MarkFlag.INODE
                elif ev & (Event.OPEN_PERM | Event.ACCESS_PERM | Event.OPEN_EXEC_PERM):
                    g, kind = groups["content"], MarkFlag.INODE
                elif ev == Event.FS_ERROR:
                    g, kind = groups["fid"], MarkFlag.FILESYSTEM
                else:
                    g, kind = groups["fid"], MarkFlag.INODE
                if g is not None and _mark_ok(g, kind, ev, missing):
                    events.add(ev)
        finally:
            for g in groups.values():
                if g is not None:
                    os.close(g)
    return Features(
        True,
        None,
        frozenset(init_flags),
        frozenset(mark_types),
        frozenset(mark_flags),
        frozenset(events),
    )
