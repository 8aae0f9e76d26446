"""Making a group: ``fanotify_init(2)``, and which flag the kernel refused."""

from __future__ import annotations

import errno as _errno
import os

from . import _ffi
from ._errors import init_error
from .flags import FID_INIT_FLAGS, InitFlag

__all__ = ["open_group"]

_FD_ERROR = int(InitFlag.REPORT_FD_ERROR)
#: Groups whose events carry no fd (mount events), like FID groups.
_NO_FDS = int(InitFlag.REPORT_MNT)
#: Whether the running kernel takes FAN_REPORT_FD_ERROR (None: not tried yet).
_fd_error_known: bool | None = None


def _takes_fd_error() -> bool:
    """Whether the kernel takes FAN_REPORT_FD_ERROR at all (it may refuse it with other flags)."""
    try:
        os.close(_ffi.fanotify_init(int(InitFlag.NONBLOCK | InitFlag.CLOEXEC) | _FD_ERROR, 0))
    except OSError as exc:
        return exc.errno != _errno.EINVAL
    return True


def open_group(flags: int, event_flags: int) -> tuple[int, int]:
    """A new group fd, and the flags it was made with.

    An fd-mode group gets FAN_REPORT_FD_ERROR (Linux 6.13) where the kernel
    has it: an event whose fd the kernel cannot open (the process is out of
    descriptors, or the open fails) then arrives with the errno instead of
    being destroyed unseen (see ``_fdlimit.py``).  Whether the kernel takes
    it is found out by the first group and remembered.

    :raises OSError: from ``_errors.init_error``, naming the refused flag
    """
    global _fd_error_known
    if not flags & (FID_INIT_FLAGS | _NO_FDS | _FD_ERROR) and _fd_error_known is not False:
        try:
            return _ffi.fanotify_init(flags | _FD_ERROR, event_flags), flags | _FD_ERROR
        except OSError as exc:
            if exc.errno != _errno.EINVAL:
                return _init(flags, event_flags), flags  # raises the same error, explained
            # EINVAL: this kernel predates the flag, or refuses the rest of ``flags``
        fd = _init(flags, event_flags)
        if not _takes_fd_error():
            _fd_error_known = False
        return fd, flags
    return _init(flags, event_flags), flags


def _init(flags: int, event_flags: int) -> int:
    try:
        return _ffi.fanotify_init(flags, event_flags)
    except OSError as exc:
        culprit = None
        if exc.errno == _errno.EINVAL:
            culprit = find_rejected_init_flag(flags, event_flags)
        raise init_error(exc, flags, culprit) from None


def find_rejected_init_flag(flags: int, event_flags: int) -> InitFlag | None:
    """Which flag, or pair of flags, makes fanotify_init fail with EINVAL, if any.

    A single flag the kernel rejects on its own (too old a kernel) is returned
    alone; otherwise the first pair the kernel refuses to combine (e.g.
    REPORT_MNT with REPORT_FID) is returned as the two bits together.
    """
    base = flags & (InitFlag.NONBLOCK | InitFlag.CLOEXEC)
    singles = [
        flag for flag in InitFlag
        if flag.value and not flag.value & (flag.value - 1) and flags & flag.value
        and flag not in (InitFlag.NONBLOCK, InitFlag.CLOEXEC)
    ]

    def rejected(probe: int) -> bool:
        # The kernel requires these companions; they are in ``flags`` too.
        if probe & InitFlag.REPORT_NAME:
            probe |= InitFlag.REPORT_DIR_FID
        if probe & InitFlag.REPORT_TARGET_FID:
            probe |= InitFlag.REPORT_DFID_NAME_TARGET
        try:
            fd = _ffi.fanotify_init(base | probe, event_flags)
        except OSError as exc:
            return exc.errno == _errno.EINVAL
        os.close(fd)
        return False

    for flag in singles:
        if rejected(flag.value):
            return flag
    for i, first in enumerate(singles):
        for second in singles[i + 1:]:
            if rejected(first.value | second.value):
                return first | second
    return None
