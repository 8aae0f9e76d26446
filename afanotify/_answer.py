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

import errno
import logging
import os
import struct
from collections.abc import Container, Iterable
from typing import TYPE_CHECKING, Any

from . import _ffi, events
from ._ffi import lib
from .events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData, LazyPathEvent
from .flags import FAN_EVENT_INFO_TYPE_PIDFD, PERM_EVENTS, Response

if TYPE_CHECKING:
    from .group import Fanotify
    from .permission import PermissionTracker

__all__ = [
    "AVAILABLE", "BUILD_FAILED", "BuildFailed", "answer_and_close", "answer_and_close_or_false",
    "answer_unbuilt", "decode_or_fail", "unbuilt", "write_plain",
]

log = logging.getLogger("afanotify.permission")

_ALLOW = int(Response.ALLOW)
_DENY = int(Response.DENY)
_set_owns = FanotifyData.__dict__["_owns"].__set__
_set_responder = FanotifyData.__dict__["_responder"].__set__
_respond = lib.afn_respond
#: The reason (a ``permission_stats`` field) of the events :func:`unbuilt` answers.
BUILD_FAILED = "build_failed"
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
    fd = ev.fd
    with perm.lock:
        owns = ev._owns
        if owns & UNANSWERED and perm.fd >= 0:
            # _forget, inline: this runs for every allow_nowait().
            pending = perm._pending
            entry = pending.get(fd)
            if entry is None or entry.handler_task is None:  # (else write() cancels it)
                if entry is not None:
                    del pending[fd]
                    if entry.task is not None:
                        fds = perm._watched_tasks.get(entry.task)
                        if fds is not None:
                            fds.discard(fd)
                _set_owns(ev, owns & ~UNANSWERED)
                if allowed:
                    perm.allowed += 1
                else:
                    perm.denied += 1
                if _respond(perm.fd, fd, response) < 0:
                    raise _ffi._err("writing the permission response failed")
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
        if isinstance(ev, LazyPathEvent):
            owns = give_up_fd(ev)
        else:
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


def give_up_fd(ev: FanotifyData) -> int:
    """Clear ``ev``'s UNANSWERED and OWN_FD for a close in C; returns its bits before.

    Under the lock a lazy path read holds while it reads the fd
    (:meth:`LazyPathEvent._read_path`, on any thread): the read either ends
    before the fd is closed or finds it given up, never reads a number that
    another file took meanwhile.
    """
    with events._RELEASE_LOCK:  # the module's: made anew in a forked child
        owns: int = ev._owns
        _set_owns(ev, owns & ~(UNANSWERED | OWN_FD))
    return owns


def _not_in_c(perm: PermissionTracker, ev: FanotifyData, allowed: bool) -> bool:
    return False


#: :func:`answer_and_close` with the compiled core, else always False (the general way).
answer_and_close_or_false = answer_and_close if AVAILABLE else _not_in_c


# -- a read whose events could not be built ---------------------------------

#: struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid.
_META = struct.Struct("=IBBHQii")
#: struct fanotify_event_info_header: info_type, pad, len; a PIDFD record's s32 after it.
_INFO = struct.Struct("=BBH")
_S32 = struct.Struct("=i")
_PERM = int(PERM_EVENTS)


def _pidfd(mv: memoryview, start: int, end: int) -> int:
    """The pidfd of the event whose info records are ``mv[start:end]`` (-1: none)."""
    pos = start
    while pos + _INFO.size <= end:
        info_type, _, rlen = _INFO.unpack_from(mv, pos)
        if rlen < _INFO.size or pos + rlen > end:
            break  # malformed: the parser reports it where the event is built
        if info_type == FAN_EVENT_INFO_TYPE_PIDFD and rlen >= _INFO.size + _S32.size:
            pidfd: int = _S32.unpack_from(mv, pos + _INFO.size)[0]
            return pidfd  # FAN_NOPIDFD and FAN_EPIDFD are negative
        pos += rlen
    return -1


def answer_unbuilt(
    perm: PermissionTracker, view: Any, owned: Container[int], *, close_rest: bool = False
) -> int:
    """Answer, with the default verdict, the permission events of a read nobody owns.

    For a read whose events could not all be built (or served): ``view``
    holds the kernel's records as read.  A permission event is owned when
    its fd is in ``owned`` (the events built, which the caller releases) or
    pending in ``perm`` (its deadline, the watchdog or the group's close
    answer it); every other one is answered here and its fd closed, with
    its pidfd (``REPORT_PIDFD``), which nobody holds either.  The fd
    is closed only if the kernel took the response: it matches a response to
    a pending event by fd number and refuses one (ENOENT) for an event
    answered already (by the static rules in C, or as the group's own),
    whose fd is closed and whose number may name another file by now.  With
    ``close_rest`` (the caller knows that nothing else took any fd of the
    read) the fds (and pidfds) of the other events not in ``owned`` are
    closed too.
    Returns how many events were answered; never raises (failed writes are
    logged).
    """
    mv = memoryview(view).cast("B")
    n = len(mv)
    off = answered = 0
    response = int(perm.default)
    with perm.lock:
        group_fd = perm.fd
        while off + _META.size <= n:
            event_len, _, _, meta_len, mask, fd, _ = _META.unpack_from(mv, off)
            if event_len < _META.size or off + event_len > n:
                break  # malformed: nothing after it can be trusted
            start, off = off, off + event_len
            if fd < 0 or fd in owned:
                continue
            pidfd = _pidfd(mv, start + meta_len, off)
            if not mask & _PERM:
                if close_rest:
                    _close_quietly(fd, pidfd)
                continue
            if fd in perm._pending or group_fd < 0:
                continue  # owned by the tracker; or the kernel allowed it as the group closed
            try:
                _ffi.respond(group_fd, fd, response)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.error("could not answer permission event fd=%d: %s", fd, exc)
                continue
            _close_quietly(fd, pidfd)
            perm.count_unbuilt(response)
            answered += 1
    return answered


def _close_quietly(fd: int, pidfd: int) -> None:
    """Close a read's fd and pidfd (if any) on a failure path, which must not raise."""
    for n in (fd, pidfd):
        if n >= 0:
            try:
                os.close(n)
            except OSError as exc:
                log.error("could not close fd %d of a failed read: %s", n, exc)


class BuildFailed(OSError):
    """Building (or serving) a read's events failed; its permission events got the default verdict.

    An EIO whose ``__cause__`` is the error; the group's consumers get it
    (``Fanotify._fail``), or the consumer whose own read it was.
    """

    def __init__(self, exc: BaseException) -> None:
        super().__init__(
            errno.EIO, f"building the events of a read failed ({exc!r}): its permission "
            "events were answered with the default verdict",
        )


def unbuilt(
    perm: PermissionTracker, view: Any, built: list[FanotifyData], exc: BaseException,
    *, close_rest: bool = False, released: Iterable[int] = (),
) -> int:
    """After building (or serving) a read failed with ``exc``: answer what nobody owns.

    The events in ``built`` are released (an unanswered one gets the
    default verdict), then :func:`answer_unbuilt` answers the rest of
    ``view`` (``released``: fds of it closed already, malformed events
    say); both are counted in ``permission_stats.build_failed`` and
    logged.  Returns how many were answered; never raises.
    """
    n = 0
    for ev in built:
        if ev._owns & UNANSWERED:
            n += 1
            if ev._responder is None:
                _set_responder(ev, perm)
        ev._release(BUILD_FAILED)
    owned = {ev.fd for ev in built}
    owned.update(released)
    n += answer_unbuilt(perm, view, owned, close_rest=close_rest)
    log.error(
        "building the events of a read failed (%r): %d permission event(s) of it answered %s",
        exc, n, perm.default.name, exc_info=exc,
    )
    return n


def decode_or_fail(group: Fanotify, view: memoryview, decode: Any) -> list[FanotifyData]:
    """``decode(pipeline, view, loop)`` of the group's general reader (``Fanotify._handle_batch``).

    A failure leaves nothing of the read behind: the events decode made
    (handed to nobody yet) are released, every other event's fd closed and
    each permission event of the read nobody holds answered with the default
    verdict (:func:`unbuilt`).  Then a permission group fails with
    :class:`BuildFailed`; in another the error goes on (as do a
    KeyboardInterrupt and the like, after the answers).
    """
    pipeline = group._pipeline
    try:
        events: list[FanotifyData] = decode(pipeline, view, group._reader.loop)
    except BaseException as exc:
        seen, built, errors, released = pipeline.take_failed()
        for err in errors:
            pipeline.bad_event(err)  # answered and closed, as in a read that succeeds
        # Only the read as the decoder saw it names each fd once (the static
        # rules take out what they answered, closing it); before that, the
        # other fds may have been closed already.
        unbuilt(group._perm, view if seen is None else seen, built, exc,
                close_rest=seen is not None, released=[*released, *(err.fd for err in errors)])
        if not group._perm_class or not isinstance(exc, Exception):
            raise
        group._fail(BuildFailed(exc))
        return []
    return events
