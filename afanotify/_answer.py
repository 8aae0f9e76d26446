"""Answer a permission event and close its fd in one C call.

The tracker's ``write`` followed by the event's ``close``, for a plain allow
or deny of an event about to be released: what an ``on_permission`` handler's
``True``/``False`` does, on the loop and on the permission thread.  The C call
(``afp_answer`` in csrc/fastpath_rules.c) writes the response, then closes
the fd; the bookkeeping around it is the tracker's own (pending entry,
counters, the lock the watchdog answers under).  Without the compiled core
(``AFANOTIFY_CORE=pure``) :data:`AVAILABLE` is False and callers take the
general way.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from . import _ffi
from ._ffi import lib
from .events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData
from .flags import Response

if TYPE_CHECKING:
    from .permission import PermissionTracker

__all__ = ["AVAILABLE", "answer_and_close", "answer_and_close_or_false", "write_plain"]

log = logging.getLogger("afanotify.permission")

_ALLOW = int(Response.ALLOW)
_DENY = int(Response.DENY)
_set_owns = FanotifyData.__dict__["_owns"].__set__
#: The compiled core has the C call (the pure one does not).
AVAILABLE = hasattr(lib, "afp_answer")


def _forget(perm: PermissionTracker, fd: int) -> bool:
    """The tracker's ``_forget`` unless an async handler's task is attached (False then)."""
    entry = perm._pending.get(fd)
    if entry is not None:
        if entry.handler_task is not None:
            return False  # write() cancels that task
        del perm._pending[fd]
        if entry.task is not None:
            fds = perm._watched_tasks.get(entry.task)
            if fds is not None:
                fds.discard(fd)
    return True


def write_plain(perm: PermissionTracker, ev: FanotifyData, allowed: bool) -> None:
    """The tracker's ``write`` of a plain allow or deny (``allow_nowait()``), in one step.

    Anything but the common case (an unanswered event, the group open, no
    async handler's task) goes through ``perm.write``, which raises there.

    :raises OSError: if the kernel rejects the response
    """
    response = _ALLOW if allowed else _DENY
    with perm.lock:
        owns = ev._owns
        if owns & UNANSWERED and perm.fd >= 0 and _forget(perm, ev.fd):
            _set_owns(ev, owns & ~UNANSWERED)
            if allowed:
                perm.allowed += 1
            else:
                perm.denied += 1
            _ffi.respond(perm.fd, ev.fd, response)
            return
    perm.write(ev, response)


def answer_and_close(perm: PermissionTracker, ev: FanotifyData, allowed: bool) -> bool:
    """Write allow or deny for an unanswered ``ev``, then release it (fd closed in C).

    False, with nothing done, if ``ev`` was answered meanwhile (a deadline,
    or the handler answered it itself), the group fd is closed, or an async
    handler's task is attached to it: the caller goes the general way
    (``perm._apply``).  A write the kernel refuses is logged, as there.
    """
    with perm.lock:
        owns = ev._owns
        if not owns & UNANSWERED or perm.fd < 0:
            return False
        if not _forget(perm, ev.fd):
            return False
        # The fd is closed by the C call, right after the write.
        _set_owns(ev, owns & ~(UNANSWERED | OWN_FD))
        if allowed:
            perm.allowed += 1
        else:
            perm.denied += 1
        err = lib.afp_answer(perm.fd, ev.fd, _ALLOW if allowed else _DENY, owns & OWN_FD)
    if err:
        log.error("could not answer permission event fd=%d: %s", ev.fd, os.strerror(err))
    if owns & OWN_PIDFD:
        ev.close()
    return True


def _not_in_c(perm: PermissionTracker, ev: FanotifyData, allowed: bool) -> bool:
    return False


#: :func:`answer_and_close` with the compiled core, else always False (the general way).
answer_and_close_or_false = answer_and_close if AVAILABLE else _not_in_c
