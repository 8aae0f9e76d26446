"""``FanotifyData``, the one event type, and the file handles it carries."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .flags import PERM_EVENTS, Event

if TYPE_CHECKING:
    from .permission import AuditRule, Verdict

__all__ = [
    "FileHandle", "FanotifyData", "LazyPathEvent", "OWN_FD", "OWN_PIDFD", "UNANSWERED", "Responder",
]

# Bits of FanotifyData._owns: what the event still holds.
OWN_FD = 1
OWN_PIDFD = 2
UNANSWERED = 4

_PERM_BITS = int(PERM_EVENTS)

# Serialises every read-modify-write of ``_owns`` (release and detach): a
# handler on the group's thread and the loop's close can release one event at
# once, and two readers of the same bits would both close the fd (the second
# close could hit a descriptor the process reopened under that number
# meanwhile).  Reentrant, because a signal handler or a finaliser run by the
# collector inside the locked lines may close an event on the same thread;
# made anew in a forked child, where a thread of the parent may have held it.
_RELEASE_LOCK = threading.RLock()


def _new_release_lock() -> None:
    global _RELEASE_LOCK
    _RELEASE_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_new_release_lock)


class Responder(Protocol):
    """What answers a permission event: its group's verdict writer.

    The decode pipeline (``afanotify/_pipeline.py``) gives every unanswered
    permission event its responder before anyone sees the event; the event
    then answers through it, never through the group itself.  The group's
    :class:`~afanotify.permission.PermissionTracker` is the one implementation.
    """

    def answer(
        self, ev: FanotifyData, allowed: bool, errno: int | None, audit: bool,
        audit_rule: AuditRule | None,
    ) -> None:
        """Write allow or deny for ``ev``; raises as :meth:`FanotifyData.allow_nowait`."""

    def respond(self, ev: FanotifyData, verdict: Verdict) -> None:
        """Write ``verdict`` for ``ev``; raises as :meth:`FanotifyData.allow_nowait`."""

    def release(self, ev: FanotifyData, reason: str) -> None:
        """Answer ``ev`` with the default verdict if it is still unanswered; never raises.

        ``reason`` names the counter of ``permission_stats`` it is counted in
        (``"released"``, ``"dropped"``, ...).
        """


@dataclass(frozen=True, slots=True)
class FileHandle:
    """A file handle as fanotify reports it: filesystem id plus ``struct file_handle``."""

    #: ``statfs().f_fsid`` of the object's filesystem, as two 32-bit words.
    fsid: tuple[int, int]
    #: ``handle_type`` from ``struct file_handle``.
    handle_type: int
    #: The opaque handle bytes (``f_handle``).
    handle: bytes

    @property
    def fsid_int(self) -> int:
        """The fsid as one 64-bit integer (word 0 in the low half)."""
        return self.fsid[0] | (self.fsid[1] << 32)


@dataclass(frozen=True, slots=True)
class FanotifyData:
    """One fanotify event.

    The first six fields are pyfanotify's documented ones.  The rest carry
    everything the kernel reports; a field stays ``None`` when its record was
    not in the event.  An event read from the kernel owns its ``fd`` and
    ``pidfd``: release them with :meth:`close` (or ``with event:``), or take
    them with :meth:`detach_fd` / :meth:`detach_pidfd`.  The group closes what
    is still owned once the consumer moves past the event.
    """

    #: The event's open file descriptor, or -1 (FAN_NOFD).
    fd: int = -1
    #: The process (or thread, with FAN_REPORT_TID) that caused the event.
    pid: int = 0
    #: The event mask: a combination of :class:`~afanotify.Event` bits.
    ev_types: int = 0
    #: The causing process's executable, when read from /proc.
    exe: str | None = None
    #: The causing process's working directory, when read from /proc.
    cwd: str | None = None
    #: The object's path (for a rename: the new path).
    path: str | None = None

    #: True when ``pid`` is a thread id (FAN_REPORT_TID).
    pid_is_tid: bool = False
    #: A pidfd for the causing process (FAN_REPORT_PIDFD), FAN_NOPIDFD (-1) if
    #: the process was gone, FAN_EPIDFD (-2) on error.
    pidfd: int = -1
    #: The object's own handle (FID record).
    fid: FileHandle | None = None
    #: The parent directory's handle (DFID or DFID_NAME record).
    dfid: FileHandle | None = None
    #: The entry name in ``dfid`` (DFID_NAME record).
    name: str | None = None
    #: The source directory of a rename (OLD_DFID_NAME record).
    old_dfid: FileHandle | None = None
    #: The source name of a rename.
    old_name: str | None = None
    #: The target directory of a rename (NEW_DFID_NAME record).
    new_dfid: FileHandle | None = None
    #: The target name of a rename.
    new_name: str | None = None
    #: The resolved path of the directory in ``dfid``.
    dir_path: str | None = None
    #: The resolved source path of a rename.
    old_path: str | None = None
    #: The resolved target path of a rename.
    new_path: str | None = None
    #: False when ``path`` (or ``old_path``/``new_path``) could not be fully
    #: resolved, e.g. the object was deleted; the name is still reported.
    path_resolved: bool = False
    #: The errno of a FS_ERROR event (ERROR record).
    error: int | None = None
    #: How many errors the filesystem reported since the last FS_ERROR event.
    error_count: int | None = None
    #: Start of the accessed range of a PRE_ACCESS event (RANGE record).
    range_offset: int | None = None
    #: Length of the accessed range (RANGE record).
    range_count: int | None = None
    #: The mount id of a mount event (MNT record).
    mnt_id: int | None = None
    #: With FAN_REPORT_FD_ERROR: the errno that kept the kernel from opening ``fd``.
    fd_error: int | None = None
    #: Records of types this library does not know: ``(info_type, body)``.
    unknown_records: tuple[tuple[int, bytes], ...] = ()

    _owns: int = field(default=0, compare=False, repr=False, hash=False)
    _responder: Responder | None = field(default=None, compare=False, repr=False, hash=False)

    # -- views -----------------------------------------------------------

    @property
    def events(self) -> Event:
        """``ev_types`` as an :class:`~afanotify.Event` flag."""
        return Event(self.ev_types)

    @property
    def is_permission(self) -> bool:
        """True for events that must be answered (OPEN_PERM, PRE_ACCESS, ...)."""
        return bool(self.ev_types & _PERM_BITS)

    @property
    def closed(self) -> bool:
        """True once the event holds no descriptor and owes no answer."""
        return not self._owns

    @property
    def answered(self) -> bool:
        """True unless this is a permission event still waiting for a verdict."""
        return not self._owns & UNANSWERED

    # -- permission verdicts (docs/permissions.md) -------------------------
    #
    # The write is a non-blocking write(2) to the group fd, so the ``*_nowait``
    # forms do all the work and the async forms exist for symmetry.  The logic
    # lives in afanotify/permission.py.

    def allow_nowait(self, *, audit: bool = False, audit_rule: AuditRule | None = None) -> None:
        """Let the operation proceed (FAN_ALLOW); call on the group's loop thread.

        :param audit: also write an audit record (needs InitFlag.ENABLE_AUDIT).
        :param audit_rule: an :class:`~afanotify.AuditRule` sent with FAN_INFO.
        :raises ValueError: if this is not a permission event, or the group
            cannot send this verdict (nothing is written then)
        :raises AlreadyAnsweredError: if the event was answered before
        :raises ClosedResourceError: if the group closed (it answered the event then)
        """
        responder = self._responder
        if responder is not None and self.ev_types & _PERM_BITS:
            responder.answer(self, True, None, audit, audit_rule)
            return
        self._responder_for_answer().answer(self, True, None, audit, audit_rule)  # raises

    def deny_nowait(
        self, errno: int | None = None, *, audit: bool = False,
        audit_rule: AuditRule | None = None,
    ) -> None:
        """Refuse the operation: the process gets EPERM, or ``errno``.

        :param errno: FAN_DENY_ERRNO (PRE_CONTENT groups, Linux 6.14): one of
            EPERM, EIO, EBUSY, ETXTBSY, EAGAIN, ENOSPC, EDQUOT.
        :raises: as :meth:`allow_nowait`
        """
        self._responder_for_answer().answer(self, False, errno, audit, audit_rule)

    def respond_nowait(self, verdict: Verdict) -> None:
        """Write a :class:`~afanotify.Verdict`.

        :raises: as :meth:`allow_nowait`
        """
        self._responder_for_answer().respond(self, verdict)

    async def allow(self, *, audit: bool = False, audit_rule: AuditRule | None = None) -> None:
        """``await event.allow()``: see :meth:`allow_nowait`.

        :raises: as :meth:`allow_nowait`
        """
        self.allow_nowait(audit=audit, audit_rule=audit_rule)

    async def deny(
        self, errno: int | None = None, *, audit: bool = False,
        audit_rule: AuditRule | None = None,
    ) -> None:
        """``await event.deny(errno=None, audit=False)``: see :meth:`deny_nowait`.

        :raises: as :meth:`allow_nowait`
        """
        self.deny_nowait(errno, audit=audit, audit_rule=audit_rule)

    async def respond(self, verdict: Verdict) -> None:
        """``await event.respond(verdict)``: see :meth:`respond_nowait`.

        :raises: as :meth:`allow_nowait`
        """
        self.respond_nowait(verdict)

    def _responder_for_answer(self) -> Responder:
        if not self.ev_types & _PERM_BITS:
            raise ValueError(
                f"{self.events!r} is not a permission event: there is nothing to answer"
            )
        responder = self._responder
        if responder is None:
            raise ValueError(
                "this event was not read by a Fanotify group (or was answered at once as the "
                "group's own): there is nothing to answer"
            )
        return responder

    # -- ownership -------------------------------------------------------

    def detach_fd(self) -> int:
        """Take the event's fd: the caller now owns it and must close it.

        For a permission event, answer it first: the kernel needs the fd
        number to match the response.

        :raises ValueError: if the event has no fd or it was already released,
            or is a permission event not answered yet
        """
        with _RELEASE_LOCK:
            owns = self._owns
            if not owns & OWN_FD:
                raise ValueError(
                    "the event owns no fd: it had none, or it was closed or detached"
                )
            if owns & UNANSWERED:
                raise ValueError(
                    "answer a permission event before taking its fd: the response is matched "
                    "to the event by the fd number"
                )
            object.__setattr__(self, "_owns", owns & ~OWN_FD)
        return self.fd

    def detach_pidfd(self) -> int:
        """Take the event's pidfd: the caller now owns it and must close it.

        :raises ValueError: if the event has no pidfd or it was already released
        """
        with _RELEASE_LOCK:
            owns = self._owns
            if not owns & OWN_PIDFD:
                raise ValueError(
                    "the event owns no pidfd: it had none, or it was closed or detached"
                )
            object.__setattr__(self, "_owns", owns & ~OWN_PIDFD)
        return self.pidfd

    def close(self) -> None:
        """Release what the event owns.  Idempotent.

        An unanswered permission event is first answered with its group's
        default verdict: the response must reach the kernel before the fd goes.
        """
        self._release("released")

    def _moved_past(self) -> None:
        """What ``async for`` does to the event it moves past: :meth:`close`."""
        self.close()

    def _release(self, reason: str) -> None:
        """:meth:`close`, counting a pending answer under ``reason`` (see :class:`Responder`)."""
        owns = self._owns
        if not owns:
            return
        if owns & UNANSWERED and self._responder is not None:
            self._responder.release(self, reason)
        with _RELEASE_LOCK:
            owns = self._owns
            object.__setattr__(self, "_owns", 0)
        # Ownership is already given up, so a failing first close must not leak
        # the second descriptor: it would never be closed by anyone.
        try:
            if owns & OWN_FD:
                os.close(self.fd)
        finally:
            if owns & OWN_PIDFD:
                os.close(self.pidfd)

    def __enter__(self) -> FanotifyData:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- a path read when first asked -------------------------------------------

_PATH_SLOT = FanotifyData.__dict__["path"]
_RESOLVED_SLOT = FanotifyData.__dict__["path_resolved"]
_set_class = object.__setattr__
_DELETED = " (deleted)"


class LazyPathEvent(FanotifyData):
    """A :class:`FanotifyData` whose ``path`` is read from its fd when first asked.

    The permission readers (``_permloop.py``, ``_permthread.py``) make their
    events of this class in a group with ``resolve_paths``: most handlers
    decide without the path, and reading it (``readlink`` of
    ``/proc/self/fd/N``) was the largest single cost of an event.  The first
    read of ``path`` or ``path_resolved`` sets both, exactly as the eager
    read does (a deleted file: its last name, ``path_resolved`` False), and
    makes the event a plain :class:`FanotifyData` again.  What lazy means:

    * the path is the file's path *when first asked*, not when the event was
      read: a file renamed in between gives its new path, one deleted in
      between its last name with ``path_resolved`` False.  An async handler's
      event is read as the handler returns its coroutine, before the body
      runs (``dispatch_result``): after an ``await`` the file may be anywhere;
    * it can be read only while the event holds its fd: asked first after
      the event was closed (``close()``, its verdict written and released,
      ``async for`` moving on), ``path`` is None and ``path_resolved`` False.
      :meth:`detach_fd` reads it first (the fd is the caller's afterwards).
    """

    __slots__ = ()

    def _read_path(self) -> None:
        path: str | None = None
        resolved = False
        with _RELEASE_LOCK:  # the fd cannot be closed meanwhile
            if not isinstance(self, LazyPathEvent):
                return  # read meanwhile by another thread: keep what it read
            if self._owns & OWN_FD:
                try:
                    path = os.readlink(f"/proc/self/fd/{self.fd}")
                except OSError:
                    pass
                else:
                    resolved = not path.endswith(_DELETED)
                    if not resolved:
                        path = path[: -len(_DELETED)]
            _PATH_SLOT.__set__(self, path)
            _RESOLVED_SLOT.__set__(self, resolved)
            _set_class(self, "__class__", FanotifyData)

    @property
    def path(self) -> str | None:
        self._read_path()
        return _PATH_SLOT.__get__(self)  # type: ignore[no-any-return]

    @path.setter
    def path(self, value: str | None) -> None:
        # dataclasses.replace(), copy, pickle: the value given is the path.
        _PATH_SLOT.__set__(self, value)
        _set_class(self, "__class__", FanotifyData)

    @property
    def path_resolved(self) -> bool:
        self._read_path()
        return _RESOLVED_SLOT.__get__(self)  # type: ignore[no-any-return]

    @path_resolved.setter
    def path_resolved(self, value: bool) -> None:
        _RESOLVED_SLOT.__set__(self, value)

    # Each of these reads the path first: the event is then a FanotifyData,
    # whose own method answers (equality and pickling name the class).

    def detach_fd(self) -> int:
        self._read_path()
        return self.detach_fd()

    def __eq__(self, other: object) -> bool:
        self._read_path()
        return self == other

    def __hash__(self) -> int:
        self._read_path()
        return hash(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        self._read_path()
        return self.__reduce_ex__(protocol)


LazyPathEvent.__qualname__ = LazyPathEvent.__name__ = "FanotifyData"

#: References to an event that ``async for`` moves past when nobody else
#: holds it: the caller's, the consumer's loop variable, and the frame's
#: ``self`` and getrefcount's argument in :meth:`IterPathEvent._moved_past`.
_MOVED_PAST_REFS = 4


class IterPathEvent(LazyPathEvent):
    """A :class:`LazyPathEvent` that ``async for`` hands out (``_permloop.ReadAhead``).

    Its path is read when first asked, as a handler's event's is, and also
    before it is closed whenever somebody else may still ask: when its fd
    is closed by anyone but ``async for`` moving past it, and when ``async
    for`` moves past it while something besides the loop variable holds it
    (a list, another name).  Only an event nobody can reach afterwards is
    closed without reading its path: what lazy then means for ``async for``
    is the path *when first asked* (or when the loop moved on), and two
    cases of None for a path never asked: the loop variable itself, read
    after the iteration ended with an error; and an event that one name
    holds when the iterator is stepped by hand (``anext(it)`` again), which
    looks the same as the loop variable.
    """

    __slots__ = ()

    def close(self) -> None:
        self._read_path()
        self.close()

    def _release(self, reason: str) -> None:
        self._read_path()
        self._release(reason)

    def _moved_past(self) -> None:
        if sys.getrefcount(self) > _MOVED_PAST_REFS:
            self._read_path()
            self.close()
        elif self._owns == OWN_FD:
            # Nobody can ask for the path any more; FanotifyData.close(),
            # inline, for an event that owns only its fd (as async for does).
            object.__setattr__(self, "_owns", 0)
            os.close(self.fd)
        else:
            FanotifyData._release(self, "released")


IterPathEvent.__qualname__ = IterPathEvent.__name__ = "FanotifyData"
