"""fanotify flags as ``enum.IntFlag`` classes, plus the plain ``FAN_*`` integers.

Member names follow the man pages without the ``FAN_`` / ``FAN_MARK_`` prefix,
so ``FAN_CLOSE_WRITE`` is ``Event.CLOSE_WRITE`` and ``FAN_MARK_ONLYDIR`` is
``MarkFlag.ONLYDIR``.  Every value comes from the compiled core, which takes it
from the C headers (or from the build's own definitions for constants newer
than the headers).
"""

from __future__ import annotations

import enum
import errno as _errno  # deny_errno()'s parameter is called errno

from ._ffi import lib


class Event(enum.IntFlag):
    """Event bits for ``fanotify_mark`` masks and ``FanotifyData.ev_types``."""

    #: A file was read.
    ACCESS = lib.FAN_ACCESS
    #: A file was written.
    MODIFY = lib.FAN_MODIFY
    #: Metadata changed (FID groups only).
    ATTRIB = lib.FAN_ATTRIB
    #: A file opened for writing was closed.
    CLOSE_WRITE = lib.FAN_CLOSE_WRITE
    #: A file opened read-only was closed.
    CLOSE_NOWRITE = lib.FAN_CLOSE_NOWRITE
    #: A file or directory was opened.
    OPEN = lib.FAN_OPEN
    #: An entry was moved out of a watched directory (FID groups).
    MOVED_FROM = lib.FAN_MOVED_FROM
    #: An entry was moved into a watched directory (FID groups).
    MOVED_TO = lib.FAN_MOVED_TO
    #: An entry was created in a watched directory (FID groups).
    CREATE = lib.FAN_CREATE
    #: An entry was deleted from a watched directory (FID groups).
    DELETE = lib.FAN_DELETE
    #: A watched object was deleted (FID groups).
    DELETE_SELF = lib.FAN_DELETE_SELF
    #: A watched object was moved (FID groups).
    MOVE_SELF = lib.FAN_MOVE_SELF
    #: A file was opened for execution (Linux 5.0).
    OPEN_EXEC = lib.FAN_OPEN_EXEC
    #: The event queue overflowed; the event carries no fd.
    Q_OVERFLOW = lib.FAN_Q_OVERFLOW
    #: A filesystem error was reported (Linux 5.16, FID group, filesystem mark).
    FS_ERROR = lib.FAN_FS_ERROR
    #: Permission to open a file is asked (CONTENT class or higher).
    OPEN_PERM = lib.FAN_OPEN_PERM
    #: Permission to read a file is asked (CONTENT class or higher).
    ACCESS_PERM = lib.FAN_ACCESS_PERM
    #: Permission to open a file for execution is asked (CONTENT class or higher).
    OPEN_EXEC_PERM = lib.FAN_OPEN_EXEC_PERM
    #: Permission to access a file range is asked, before its content is read
    #: (Linux 6.14, PRE_CONTENT class; the event carries a RANGE record).
    PRE_ACCESS = lib.FAN_PRE_ACCESS
    #: A mount was attached to a watched mount namespace (Linux 6.15).
    MNT_ATTACH = lib.FAN_MNT_ATTACH
    #: A mount was detached from a watched mount namespace (Linux 6.15).
    MNT_DETACH = lib.FAN_MNT_DETACH
    #: Mark flag: also report events on the children of a marked directory.
    EVENT_ON_CHILD = lib.FAN_EVENT_ON_CHILD
    #: An entry was renamed; reports old and new names (Linux 5.17).
    RENAME = lib.FAN_RENAME
    #: The event concerns a directory.
    ONDIR = lib.FAN_ONDIR

    #: CLOSE_WRITE | CLOSE_NOWRITE.
    CLOSE = lib.FAN_CLOSE
    #: MOVED_FROM | MOVED_TO.
    MOVE = lib.FAN_MOVE


#: The permission events: each must be answered.
PERM_EVENTS = Event.OPEN_PERM | Event.ACCESS_PERM | Event.OPEN_EXEC_PERM | Event.PRE_ACCESS

#: Events that need a FID group (FAN_REPORT_FID or FAN_REPORT_DIR_FID).
FID_EVENTS = (
    Event.ATTRIB
    | Event.MOVED_FROM
    | Event.MOVED_TO
    | Event.CREATE
    | Event.DELETE
    | Event.DELETE_SELF
    | Event.MOVE_SELF
    | Event.RENAME
    | Event.FS_ERROR
)

#: With ONDIR, these events mean a directory moved or went away: paths
#: cached for directory handles may be stale from then on.
DIR_CHANGE_EVENTS = (
    Event.MOVED_FROM | Event.MOVED_TO | Event.RENAME | Event.DELETE_SELF | Event.MOVE_SELF
    | Event.DELETE
)

#: The mount events, reported by FAN_REPORT_MNT groups.
MNT_EVENTS = Event.MNT_ATTACH | Event.MNT_DETACH

#: The classic notification events pyfanotify calls FAN_ALL_EVENTS.
ALL_EVENTS = Event.ACCESS | Event.MODIFY | Event.CLOSE | Event.OPEN


class InitFlag(enum.IntFlag):
    """Flags for ``fanotify_init``: notification class and reporting mode."""

    #: Set close-on-exec on the group fd.
    CLOEXEC = lib.FAN_CLOEXEC
    #: Make the group fd non-blocking.
    NONBLOCK = lib.FAN_NONBLOCK
    #: Notification only (the default class, value 0).
    CLASS_NOTIF = lib.FAN_CLASS_NOTIF
    #: Permission events, after the file content is final.
    CLASS_CONTENT = lib.FAN_CLASS_CONTENT
    #: Permission events before the content is final (HSM, PRE_ACCESS).
    CLASS_PRE_CONTENT = lib.FAN_CLASS_PRE_CONTENT
    #: Lift the 16384-event queue limit.
    UNLIMITED_QUEUE = lib.FAN_UNLIMITED_QUEUE
    #: Lift the per-user mark limit.
    UNLIMITED_MARKS = lib.FAN_UNLIMITED_MARKS
    #: Allow FAN_AUDIT in permission responses (Linux 4.15).
    ENABLE_AUDIT = lib.FAN_ENABLE_AUDIT
    #: Report a pidfd for the event's process (Linux 5.15).
    REPORT_PIDFD = lib.FAN_REPORT_PIDFD
    #: Report the thread id instead of the process id (Linux 4.20).
    REPORT_TID = lib.FAN_REPORT_TID
    #: Report file handles instead of fds (Linux 5.1).
    REPORT_FID = lib.FAN_REPORT_FID
    #: Report the parent directory's handle (Linux 5.9).
    REPORT_DIR_FID = lib.FAN_REPORT_DIR_FID
    #: Report the entry name with the directory handle (Linux 5.9).
    REPORT_NAME = lib.FAN_REPORT_NAME
    #: Report the child's handle for directory entry events (Linux 5.17).
    REPORT_TARGET_FID = lib.FAN_REPORT_TARGET_FID
    #: Report ``-errno`` in ``fd`` when opening the event fd failed (Linux 6.13).
    REPORT_FD_ERROR = lib.FAN_REPORT_FD_ERROR
    #: Report mount ids for mount events (Linux 6.15).
    REPORT_MNT = lib.FAN_REPORT_MNT

    #: REPORT_DIR_FID | REPORT_NAME.
    REPORT_DFID_NAME = lib.FAN_REPORT_DFID_NAME
    #: REPORT_DFID_NAME | REPORT_FID | REPORT_TARGET_FID.
    REPORT_DFID_NAME_TARGET = lib.FAN_REPORT_DFID_NAME_TARGET


#: The class bits of InitFlag (one of NOTIF, CONTENT, PRE_CONTENT).
CLASS_BITS = InitFlag.CLASS_CONTENT | InitFlag.CLASS_PRE_CONTENT

#: Any of these makes a FID group: events carry handles and no fd.
FID_INIT_FLAGS = InitFlag.REPORT_FID | InitFlag.REPORT_DIR_FID | InitFlag.REPORT_NAME


class MarkFlag(enum.IntFlag):
    """Flags for ``fanotify_mark``: action, mark type and modifiers."""

    #: Add events to the mark's mask.
    ADD = lib.FAN_MARK_ADD
    #: Remove events from the mark's mask.
    REMOVE = lib.FAN_MARK_REMOVE
    #: Mark a symbolic link itself, not its target.
    DONT_FOLLOW = lib.FAN_MARK_DONT_FOLLOW
    #: Fail with ENOTDIR unless the path is a directory.
    ONLYDIR = lib.FAN_MARK_ONLYDIR
    #: Old-style ignore mask (ONDIR and EVENT_ON_CHILD not honoured).
    IGNORED_MASK = lib.FAN_MARK_IGNORED_MASK
    #: Keep the ignore mask when the file is modified.
    IGNORED_SURV_MODIFY = lib.FAN_MARK_IGNORED_SURV_MODIFY
    #: Remove all marks of the given type.
    FLUSH = lib.FAN_MARK_FLUSH
    #: The kernel may evict an inode mark with its inode (Linux 5.19).
    EVICTABLE = lib.FAN_MARK_EVICTABLE
    #: New-style ignore mask, honouring ONDIR and EVENT_ON_CHILD (Linux 6.0).
    IGNORE = lib.FAN_MARK_IGNORE
    #: Mark type: the inode (value 0, the default).
    INODE = lib.FAN_MARK_INODE
    #: Mark type: the mount containing the path.
    MOUNT = lib.FAN_MARK_MOUNT
    #: Mark type: the whole filesystem containing the path (Linux 4.20).
    FILESYSTEM = lib.FAN_MARK_FILESYSTEM
    #: Mark type: a mount namespace, named by a /proc/PID/ns/mnt path (Linux 6.15).
    MNTNS = lib.FAN_MARK_MNTNS

    #: IGNORE | IGNORED_SURV_MODIFY.
    IGNORE_SURV = lib.FAN_MARK_IGNORE_SURV


#: The bits that choose a mark's type.
MARK_TYPE_BITS = MarkFlag.MOUNT | MarkFlag.FILESYSTEM | MarkFlag.MNTNS


class Response(enum.IntFlag):
    """Verdicts written back for permission events."""

    #: Let the operation proceed.
    ALLOW = lib.FAN_ALLOW
    #: Refuse the operation (EPERM, or the errno set with ``deny_errno``).
    DENY = lib.FAN_DENY
    #: Also write an audit record (needs InitFlag.ENABLE_AUDIT).
    AUDIT = lib.FAN_AUDIT
    #: An info record follows the response (audit rule, Linux 6.3).
    INFO = lib.FAN_INFO


class InfoType(enum.IntEnum):
    """``info_type`` of the records that follow an event's metadata."""

    FID = lib.FAN_EVENT_INFO_TYPE_FID
    DFID_NAME = lib.FAN_EVENT_INFO_TYPE_DFID_NAME
    DFID = lib.FAN_EVENT_INFO_TYPE_DFID
    PIDFD = lib.FAN_EVENT_INFO_TYPE_PIDFD
    ERROR = lib.FAN_EVENT_INFO_TYPE_ERROR
    RANGE = lib.FAN_EVENT_INFO_TYPE_RANGE
    MNT = lib.FAN_EVENT_INFO_TYPE_MNT
    OLD_DFID_NAME = lib.FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
    NEW_DFID_NAME = lib.FAN_EVENT_INFO_TYPE_NEW_DFID_NAME


#: The errnos a PRE_CONTENT group may return with ``FAN_DENY_ERRNO``.  Taken from
#: the errno module: their numbers differ between architectures (EAGAIN is 11 on
#: x86_64, 35 on Alpha).
DENY_ERRNOS = frozenset(
    {
        _errno.EPERM,
        _errno.EIO,
        _errno.EBUSY,
        _errno.ETXTBSY,
        _errno.EAGAIN,
        _errno.ENOSPC,
        _errno.EDQUOT,
    }
)


def deny_errno(errno: int) -> int:
    """``FAN_DENY_ERRNO(errno)``: a DENY response carrying an errno (PRE_CONTENT only).

    :raises ValueError: if the kernel does not accept this errno in a response
    """
    if errno not in DENY_ERRNOS:
        raise ValueError(
            f"errno {errno} cannot be returned by a permission response; "
            "use one of EPERM, EIO, EBUSY, ETXTBSY, EAGAIN, ENOSPC, EDQUOT"
        )
    return int(lib.FAN_DENY | ((errno & lib.FAN_ERRNO_MASK) << lib.FAN_ERRNO_SHIFT))


def evt_to_str(mask: int) -> str:
    """Names of the event bits in ``mask`` in bit order, joined by ``|`` (``"CLOSE_WRITE|OPEN"``).

    Composites are spelled out (``CLOSE`` gives ``"CLOSE_WRITE|CLOSE_NOWRITE"``);
    bits without a name end the string as one hex number.
    """
    return _bit_names(mask, _EVENT_BITS)


def _bit_names(mask: int, names: tuple[tuple[int, str], ...]) -> str:
    """The ``names`` of the bits set in ``mask``, in their order, joined by ``|``.

    ``names`` covers the single-bit events (compat spells them its own way);
    bits of no event end the string as one hex number.
    """
    parts = [name for bit, name in names if mask & bit]
    rest = mask & ~_ALL_EVENT_BITS
    if rest:
        parts.append(hex(rest))
    return "|".join(parts)


#: ``(bit, name)`` of every single-bit Event, in bit order.
_EVENT_BITS = tuple((m.value, str(m.name)) for m in Event if m.value & (m.value - 1) == 0)
_ALL_EVENT_BITS = 0
for _bit, _ in _EVENT_BITS:
    _ALL_EVENT_BITS |= _bit

# The FAN_* integers, for code written against the C API or pyfanotify.
FAN_NOFD: int = lib.FAN_NOFD
FAN_NOPIDFD: int = lib.FAN_NOPIDFD
FAN_EPIDFD: int = lib.FAN_EPIDFD
FANOTIFY_METADATA_VERSION: int = lib.FANOTIFY_METADATA_VERSION
FAN_EVENT_METADATA_LEN: int = lib.FAN_EVENT_METADATA_LEN
FAN_ALL_EVENTS: int = int(ALL_EVENTS)
FAN_ALL_PERM_EVENTS: int = int(Event.OPEN_PERM | Event.ACCESS_PERM)
FAN_ACCESS: int = lib.FAN_ACCESS
FAN_MODIFY: int = lib.FAN_MODIFY
FAN_ATTRIB: int = lib.FAN_ATTRIB
FAN_CLOSE_WRITE: int = lib.FAN_CLOSE_WRITE
FAN_CLOSE_NOWRITE: int = lib.FAN_CLOSE_NOWRITE
FAN_OPEN: int = lib.FAN_OPEN
FAN_MOVED_FROM: int = lib.FAN_MOVED_FROM
FAN_MOVED_TO: int = lib.FAN_MOVED_TO
FAN_CREATE: int = lib.FAN_CREATE
FAN_DELETE: int = lib.FAN_DELETE
FAN_DELETE_SELF: int = lib.FAN_DELETE_SELF
FAN_MOVE_SELF: int = lib.FAN_MOVE_SELF
FAN_OPEN_EXEC: int = lib.FAN_OPEN_EXEC
FAN_Q_OVERFLOW: int = lib.FAN_Q_OVERFLOW
FAN_FS_ERROR: int = lib.FAN_FS_ERROR
FAN_OPEN_PERM: int = lib.FAN_OPEN_PERM
FAN_ACCESS_PERM: int = lib.FAN_ACCESS_PERM
FAN_OPEN_EXEC_PERM: int = lib.FAN_OPEN_EXEC_PERM
FAN_PRE_ACCESS: int = lib.FAN_PRE_ACCESS
FAN_MNT_ATTACH: int = lib.FAN_MNT_ATTACH
FAN_MNT_DETACH: int = lib.FAN_MNT_DETACH
FAN_EVENT_ON_CHILD: int = lib.FAN_EVENT_ON_CHILD
FAN_RENAME: int = lib.FAN_RENAME
FAN_ONDIR: int = lib.FAN_ONDIR
FAN_CLOSE: int = lib.FAN_CLOSE
FAN_MOVE: int = lib.FAN_MOVE
FAN_CLOEXEC: int = lib.FAN_CLOEXEC
FAN_NONBLOCK: int = lib.FAN_NONBLOCK
FAN_CLASS_NOTIF: int = lib.FAN_CLASS_NOTIF
FAN_CLASS_CONTENT: int = lib.FAN_CLASS_CONTENT
FAN_CLASS_PRE_CONTENT: int = lib.FAN_CLASS_PRE_CONTENT
FAN_UNLIMITED_QUEUE: int = lib.FAN_UNLIMITED_QUEUE
FAN_UNLIMITED_MARKS: int = lib.FAN_UNLIMITED_MARKS
FAN_ENABLE_AUDIT: int = lib.FAN_ENABLE_AUDIT
FAN_REPORT_PIDFD: int = lib.FAN_REPORT_PIDFD
FAN_REPORT_TID: int = lib.FAN_REPORT_TID
FAN_REPORT_FID: int = lib.FAN_REPORT_FID
FAN_REPORT_DIR_FID: int = lib.FAN_REPORT_DIR_FID
FAN_REPORT_NAME: int = lib.FAN_REPORT_NAME
FAN_REPORT_TARGET_FID: int = lib.FAN_REPORT_TARGET_FID
FAN_REPORT_FD_ERROR: int = lib.FAN_REPORT_FD_ERROR
FAN_REPORT_MNT: int = lib.FAN_REPORT_MNT
FAN_REPORT_DFID_NAME: int = lib.FAN_REPORT_DFID_NAME
FAN_REPORT_DFID_NAME_TARGET: int = lib.FAN_REPORT_DFID_NAME_TARGET
FAN_MARK_ADD: int = lib.FAN_MARK_ADD
FAN_MARK_REMOVE: int = lib.FAN_MARK_REMOVE
FAN_MARK_DONT_FOLLOW: int = lib.FAN_MARK_DONT_FOLLOW
FAN_MARK_ONLYDIR: int = lib.FAN_MARK_ONLYDIR
FAN_MARK_IGNORED_MASK: int = lib.FAN_MARK_IGNORED_MASK
FAN_MARK_IGNORED_SURV_MODIFY: int = lib.FAN_MARK_IGNORED_SURV_MODIFY
FAN_MARK_FLUSH: int = lib.FAN_MARK_FLUSH
FAN_MARK_EVICTABLE: int = lib.FAN_MARK_EVICTABLE
FAN_MARK_IGNORE: int = lib.FAN_MARK_IGNORE
FAN_MARK_INODE: int = lib.FAN_MARK_INODE
FAN_MARK_MOUNT: int = lib.FAN_MARK_MOUNT
FAN_MARK_FILESYSTEM: int = lib.FAN_MARK_FILESYSTEM
FAN_MARK_MNTNS: int = lib.FAN_MARK_MNTNS
FAN_MARK_IGNORE_SURV: int = lib.FAN_MARK_IGNORE_SURV
FAN_EVENT_INFO_TYPE_FID: int = lib.FAN_EVENT_INFO_TYPE_FID
FAN_EVENT_INFO_TYPE_DFID_NAME: int = lib.FAN_EVENT_INFO_TYPE_DFID_NAME
FAN_EVENT_INFO_TYPE_DFID: int = lib.FAN_EVENT_INFO_TYPE_DFID
FAN_EVENT_INFO_TYPE_PIDFD: int = lib.FAN_EVENT_INFO_TYPE_PIDFD
FAN_EVENT_INFO_TYPE_ERROR: int = lib.FAN_EVENT_INFO_TYPE_ERROR
FAN_EVENT_INFO_TYPE_RANGE: int = lib.FAN_EVENT_INFO_TYPE_RANGE
FAN_EVENT_INFO_TYPE_MNT: int = lib.FAN_EVENT_INFO_TYPE_MNT
FAN_EVENT_INFO_TYPE_OLD_DFID_NAME: int = lib.FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
FAN_EVENT_INFO_TYPE_NEW_DFID_NAME: int = lib.FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
FAN_ALLOW: int = lib.FAN_ALLOW
FAN_DENY: int = lib.FAN_DENY
FAN_AUDIT: int = lib.FAN_AUDIT
FAN_INFO: int = lib.FAN_INFO
FAN_RESPONSE_INFO_NONE: int = lib.FAN_RESPONSE_INFO_NONE
FAN_RESPONSE_INFO_AUDIT_RULE: int = lib.FAN_RESPONSE_INFO_AUDIT_RULE
FAN_ERRNO_BITS: int = lib.FAN_ERRNO_BITS
FAN_ERRNO_SHIFT: int = lib.FAN_ERRNO_SHIFT
FAN_ERRNO_MASK: int = lib.FAN_ERRNO_MASK
