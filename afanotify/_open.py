"""Making a group: ``fanotify_init(2)``, and which flag the kernel refused."""

from __future__ import annotations

import errno as _errno
import os

from . import _ffi
from ._errors import init_error
from .flags import InitFlag

__all__ = ["open_group"]


def open_group(flags: int, event_flags: int) -> int:
    """A new group fd.

    :raises OSError: from ``_errors.init_error``, naming the refused flag
    """
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
