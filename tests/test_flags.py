"""Flags, ``evt_to_str``, ``deny_errno``, and who closes an event's descriptors.

No kernel: the descriptors are pipe ends, handed to events through the parser
exactly as a group hands it the fds it read.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Callable

import _buffers as B
import pytest
from helpers import is_open

from afanotify import _parser, flags
from afanotify.events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData
from afanotify.flags import Event, InfoType, InitFlag, MarkFlag, Response, deny_errno, evt_to_str

# -- members and names -------------------------------------------------------

EVENT_MEMBERS = {
    "ACCESS": 0x1,
    "MODIFY": 0x2,
    "ATTRIB": 0x4,
    "CLOSE_WRITE": 0x8,
    "CLOSE_NOWRITE": 0x10,
    "OPEN": 0x20,
    "MOVED_FROM": 0x40,
    "MOVED_TO": 0x80,
    "CREATE": 0x100,
    "DELETE": 0x200,
    "DELETE_SELF": 0x400,
    "MOVE_SELF": 0x800,
    "OPEN_EXEC": 0x1000,
    "Q_OVERFLOW": 0x4000,
    "FS_ERROR": 0x8000,
    "OPEN_PERM": 0x10000,
    "ACCESS_PERM": 0x20000,
    "OPEN_EXEC_PERM": 0x40000,
    "PRE_ACCESS": 0x100000,
    "MNT_ATTACH": 0x1000000,
    "MNT_DETACH": 0x2000000,
    "EVENT_ON_CHILD": 0x8000000,
    "RENAME": 0x10000000,
    "ONDIR": 0x40000000,
    "CLOSE": 0x18,
    "MOVE": 0xC0,
}

INIT_MEMBERS = {
    "CLOEXEC": 0x1,
    "NONBLOCK": 0x2,
    "CLASS_NOTIF": 0x0,
    "CLASS_CONTENT": 0x4,
    "CLASS_PRE_CONTENT": 0x8,
    "UNLIMITED_QUEUE": 0x10,
    "UNLIMITED_MARKS": 0x20,
    "ENABLE_AUDIT": 0x40,
    "REPORT_PIDFD": 0x80,
    "REPORT_TID": 0x100,
    "REPORT_FID": 0x200,
    "REPORT_DIR_FID": 0x400,
    "REPORT_NAME": 0x800,
    "REPORT_TARGET_FID": 0x1000,
    "REPORT_FD_ERROR": 0x2000,
    "REPORT_MNT": 0x4000,
    "REPORT_DFID_NAME": 0xC00,
    "REPORT_DFID_NAME_TARGET": 0x1E00,
}

MARK_MEMBERS = {
    "ADD": 0x1,
    "REMOVE": 0x2,
    "DONT_FOLLOW": 0x4,
    "ONLYDIR": 0x8,
    "IGNORED_MASK": 0x20,
    "IGNORED_SURV_MODIFY": 0x40,
    "FLUSH": 0x80,
    "EVICTABLE": 0x200,
    "IGNORE": 0x400,
    "INODE": 0x0,
    "MOUNT": 0x10,
    "FILESYSTEM": 0x100,
    "MNTNS": 0x110,
    "IGNORE_SURV": 0x440,
}

RESPONSE_MEMBERS = {"ALLOW": 0x1, "DENY": 0x2, "AUDIT": 0x10, "INFO": 0x20}

INFO_MEMBERS = {
    "FID": 1,
    "DFID_NAME": 2,
    "DFID": 3,
    "PIDFD": 4,
    "ERROR": 5,
    "RANGE": 6,
    "MNT": 7,
    "OLD_DFID_NAME": 10,
    "NEW_DFID_NAME": 12,
}

# (enum class, its members, the C prefix of the matching FAN_* integers)
ENUMS = [
    pytest.param(Event, EVENT_MEMBERS, "FAN_", id="Event"),
    pytest.param(InitFlag, INIT_MEMBERS, "FAN_", id="InitFlag"),
    pytest.param(MarkFlag, MARK_MEMBERS, "FAN_MARK_", id="MarkFlag"),
    pytest.param(Response, RESPONSE_MEMBERS, "FAN_", id="Response"),
    pytest.param(InfoType, INFO_MEMBERS, "FAN_EVENT_INFO_TYPE_", id="InfoType"),
]


@pytest.mark.parametrize(("cls", "members", "prefix"), ENUMS)
def test_members(cls: type[enum.Enum], members: dict[str, int], prefix: str) -> None:
    assert set(cls.__members__) == set(members)
    for name, value in members.items():
        member = cls[name]
        assert member.value == value, name
        assert member.name == name
        assert isinstance(member, int)
        # The man page's name finds the member, and the FAN_* integer matches.
        assert getattr(flags, prefix + name) == value, prefix + name
        assert cls(value) == member


@pytest.mark.parametrize(("cls", "members", "prefix"), ENUMS)
def test_lookup_by_value_gives_the_name(
    cls: type[enum.Enum], members: dict[str, int], prefix: str
) -> None:
    for name, value in members.items():
        # MNTNS is MOUNT|FILESYSTEM and INODE/CLASS_NOTIF are 0: each still has its own name.
        assert cls(value).name == name


def test_composites() -> None:
    assert Event.CLOSE == Event.CLOSE_WRITE | Event.CLOSE_NOWRITE
    assert Event.MOVE == Event.MOVED_FROM | Event.MOVED_TO
    assert Event.CLOSE_WRITE in Event.CLOSE
    assert Event.MOVED_TO in Event.MOVE
    assert Event.OPEN not in Event.CLOSE
    assert Event.CLOSE_WRITE | Event.CLOSE_NOWRITE is Event.CLOSE
    assert InitFlag.REPORT_DFID_NAME == InitFlag.REPORT_DIR_FID | InitFlag.REPORT_NAME
    assert (
        InitFlag.REPORT_DFID_NAME_TARGET
        == InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID | InitFlag.REPORT_TARGET_FID
    )
    assert MarkFlag.IGNORE_SURV == MarkFlag.IGNORE | MarkFlag.IGNORED_SURV_MODIFY
    assert MarkFlag.MNTNS == MarkFlag.MOUNT | MarkFlag.FILESYSTEM


def test_groupings() -> None:
    assert flags.PERM_EVENTS == (
        Event.OPEN_PERM | Event.ACCESS_PERM | Event.OPEN_EXEC_PERM | Event.PRE_ACCESS
    )
    assert flags.MNT_EVENTS == Event.MNT_ATTACH | Event.MNT_DETACH
    assert flags.ALL_EVENTS == 0x3B
    assert flags.FAN_ALL_EVENTS == 0x3B
    assert flags.FAN_ALL_PERM_EVENTS == 0x30000
    assert flags.CLASS_BITS == 0xC
    assert flags.MARK_TYPE_BITS == 0x110
    assert flags.FID_EVENTS == 0x10008FC4
    assert flags.FID_INIT_FLAGS == 0xE00


def test_flags_combine_and_stay_ints() -> None:
    mask = Event.OPEN | Event.CLOSE_WRITE | Event.ONDIR
    assert isinstance(mask, Event)
    assert mask == 0x40000028
    assert Event(0x40000028) == mask
    # Bits this library does not know survive a round trip (the kernel may be newer).
    assert int(Event(0x80000001)) == 0x80000001


# -- evt_to_str ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        (0, ""),
        (Event.OPEN, "OPEN"),
        (Event.OPEN | Event.CLOSE_WRITE, "CLOSE_WRITE|OPEN"),
        (Event.CLOSE, "CLOSE_WRITE|CLOSE_NOWRITE"),
        (Event.MOVE | Event.ONDIR, "MOVED_FROM|MOVED_TO|ONDIR"),
        (Event.CREATE | Event.ONDIR | Event.EVENT_ON_CHILD, "CREATE|EVENT_ON_CHILD|ONDIR"),
        (Event.PRE_ACCESS, "PRE_ACCESS"),
        (Event.MNT_ATTACH | Event.MNT_DETACH, "MNT_ATTACH|MNT_DETACH"),
        (0x2000, "0x2000"),
        (Event.OPEN | 0x80000000, "OPEN|0x80000000"),
        (Event.ACCESS | 0x2000 | 1 << 40, "ACCESS|0x10000002000"),
        (0x3B, "ACCESS|MODIFY|CLOSE_WRITE|CLOSE_NOWRITE|OPEN"),
    ],
)
def test_evt_to_str(mask: int, text: str) -> None:
    assert evt_to_str(mask) == text
    assert evt_to_str(int(mask)) == text


def test_evt_to_str_names_every_single_bit() -> None:
    for name, value in EVENT_MEMBERS.items():
        if value & (value - 1) == 0:
            assert evt_to_str(value) == name


# -- deny_errno ----------------------------------------------------------------

DENY_ERRNOS = [
    errno.EPERM,
    errno.EIO,
    errno.EBUSY,
    errno.ETXTBSY,
    errno.EAGAIN,
    errno.ENOSPC,
    errno.EDQUOT,
]


@pytest.mark.parametrize("code", DENY_ERRNOS, ids=[errno.errorcode[e] for e in DENY_ERRNOS])
def test_deny_errno_accepted(code: int) -> None:
    response = deny_errno(code)
    assert type(response) is int
    assert response == flags.FAN_DENY | (code << 24)
    assert response & 0xFF == Response.DENY
    assert response >> 24 == code


def test_deny_errno_alias() -> None:
    assert deny_errno(errno.EWOULDBLOCK) == deny_errno(errno.EAGAIN)


REFUSED = [
    *sorted(set(errno.errorcode) - set(DENY_ERRNOS)),
    0,
    -errno.EIO,
    errno.EIO + 256,  # same low byte as EIO: must not slip through the mask
    4096,
]


@pytest.mark.parametrize("code", REFUSED)
def test_deny_errno_refused(code: int) -> None:
    with pytest.raises(ValueError, match=f"errno {code} cannot be returned"):
        deny_errno(code)


# -- FanotifyData ownership --------------------------------------------------


@pytest.fixture
def closes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every os.close() that afanotify.events makes, in order (and still done)."""
    calls: list[int] = []
    real = os.close

    def spy(fd: int) -> None:
        calls.append(fd)
        real(fd)

    class _Os:
        close = staticmethod(spy)

        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

    # Only afanotify.events sees the spy: the test's own os.close() calls do not count.
    monkeypatch.setattr("afanotify.events.os", _Os())
    return calls


def owned_event(mask: int, fd: int, pidfd: int | None = None) -> FanotifyData:
    records = [] if pidfd is None else [B.pidfd(pidfd)]
    (ev,) = _parser.parse(B.event(mask, *records, fd=fd, pid=os.getpid()), owned=True)
    return ev


def test_close_closes_once(pipe_fds: list[int], closes: list[int]) -> None:
    fd = pipe_fds[0]
    ev = owned_event(Event.OPEN, fd)
    assert not ev.closed
    ev.close()
    assert ev.closed
    assert not is_open(fd)
    # The number is free again; a later close() must not hit whoever gets it next.
    r, w = os.pipe()
    try:
        assert fd in (r, w)
        ev.close()
        ev.close()
        assert is_open(r)
        assert is_open(w)
    finally:
        os.close(r)
        os.close(w)
    assert closes == [fd]
    assert ev.fd == fd  # the number stays readable after close


def test_close_closes_fd_and_pidfd(pipe_fds: list[int], closes: list[int]) -> None:
    fd, pidfd = pipe_fds[0], pipe_fds[2]
    ev = owned_event(Event.CLOSE_WRITE, fd, pidfd)
    assert ev._owns == OWN_FD | OWN_PIDFD
    ev.close()
    assert sorted(closes) == sorted([fd, pidfd])
    assert not is_open(fd)
    assert not is_open(pidfd)
    assert is_open(pipe_fds[1])
    assert is_open(pipe_fds[3])


def test_detach_fd_transfers_ownership(pipe_fds: list[int], closes: list[int]) -> None:
    fd, pidfd = pipe_fds[0], pipe_fds[2]
    ev = owned_event(Event.OPEN, fd, pidfd)
    assert ev.detach_fd() == fd
    assert ev._owns == OWN_PIDFD
    with pytest.raises(ValueError, match="owns no fd"):
        ev.detach_fd()
    ev.close()
    assert closes == [pidfd]
    assert is_open(fd)
    with pytest.raises(ValueError, match="owns no pidfd"):
        ev.detach_pidfd()


def test_detach_pidfd_transfers_ownership(pipe_fds: list[int], closes: list[int]) -> None:
    fd, pidfd = pipe_fds[0], pipe_fds[2]
    ev = owned_event(Event.OPEN, fd, pidfd)
    assert ev.detach_pidfd() == pidfd
    assert ev.detach_fd() == fd
    assert ev.closed
    ev.close()
    assert closes == []
    assert is_open(fd)
    assert is_open(pidfd)


def test_detach_after_close_refused(pipe_fds: list[int]) -> None:
    ev = owned_event(Event.OPEN, pipe_fds[0], pipe_fds[2])
    ev.close()
    with pytest.raises(ValueError):
        ev.detach_fd()
    with pytest.raises(ValueError):
        ev.detach_pidfd()


@pytest.mark.parametrize("pidfd", [None, flags.FAN_NOPIDFD, flags.FAN_EPIDFD])
def test_nofd_never_closed(closes: list[int], pidfd: int | None) -> None:
    ev = owned_event(Event.Q_OVERFLOW, flags.FAN_NOFD, pidfd)
    assert ev.fd == -1
    assert ev.closed
    with pytest.raises(ValueError):
        ev.detach_fd()
    with pytest.raises(ValueError):
        ev.detach_pidfd()
    ev.close()
    with ev:
        pass
    assert closes == []


def test_plain_fanotify_data_owns_nothing(pipe_fds: list[int], closes: list[int]) -> None:
    ev = FanotifyData(fd=pipe_fds[0], pid=1, ev_types=Event.OPEN, pidfd=pipe_fds[2])
    assert ev.closed
    ev.close()
    assert closes == []


def test_with_event_closes(pipe_fds: list[int], closes: list[int]) -> None:
    fd = pipe_fds[0]
    ev = owned_event(Event.OPEN, fd)
    with ev as entered:
        assert entered is ev
        assert is_open(fd)
    assert closes == [fd]
    assert ev.closed


def test_with_event_closes_on_error(pipe_fds: list[int], closes: list[int]) -> None:
    fd, pidfd = pipe_fds[0], pipe_fds[2]
    ev = owned_event(Event.OPEN, fd, pidfd)
    with pytest.raises(RuntimeError, match="boom"), ev:
        raise RuntimeError("boom")
    assert sorted(closes) == sorted([fd, pidfd])


def test_unowned_events_never_close(pipe_fds: list[int], closes: list[int]) -> None:
    buf = B.event(Event.OPEN, B.pidfd(pipe_fds[2]), fd=pipe_fds[0]) + B.event(
        Event.OPEN_PERM, fd=pipe_fds[1]
    )
    for ev in _parser.parse(buf):  # owned=False
        assert ev._owns == 0
        assert ev.closed
        assert ev.answered
        with ev:
            ev.close()
        with pytest.raises(ValueError):
            ev.detach_fd()
        with pytest.raises(ValueError):
            ev.detach_pidfd()
    assert closes == []
    assert all(is_open(fd) for fd in pipe_fds)


class _Group:
    """Stands in for the group's responder: answers with a default verdict, records the order."""

    def __init__(self, is_open: Callable[[int], bool]) -> None:
        self.answered: list[tuple[int, bool]] = []
        self._is_open = is_open

    def release(self, ev: FanotifyData, reason: str) -> None:
        assert reason == "released"
        self.answered.append((ev.fd, self._is_open(ev.fd)))
        object.__setattr__(ev, "_owns", ev._owns & ~UNANSWERED)


def test_permission_event_answered_before_its_fd_closes(
    pipe_fds: list[int], closes: list[int]
) -> None:
    fd = pipe_fds[0]
    plain = owned_event(Event.OPEN_PERM, fd)
    assert plain.is_permission
    assert not plain.answered
    group = _Group(is_open)
    ev = FanotifyData(
        fd=plain.fd, pid=plain.pid, ev_types=plain.ev_types, _owns=plain._owns,
        _responder=group,  # type: ignore[arg-type]
    )
    object.__setattr__(plain, "_owns", 0)  # ``ev`` holds the fd now
    ev.close()
    assert group.answered == [(fd, True)]  # the verdict went out while the fd was open
    assert closes == [fd]
    assert ev.answered
    assert ev.closed
    ev.close()
    assert group.answered == [(fd, True)]


def test_unanswered_permission_event_keeps_its_fd(pipe_fds: list[int]) -> None:
    # The kernel matches a response to its event by the fd number, so the fd
    # cannot leave the event before the answer (see docs/permissions.md).
    fd = pipe_fds[0]
    ev = owned_event(Event.OPEN_PERM, fd)
    with pytest.raises(ValueError, match="answer a permission event before"):
        ev.detach_fd()
    assert ev._owns == OWN_FD | UNANSWERED
    assert not ev.answered
    assert not ev.closed


def test_close_releases_the_pidfd_even_if_the_fd_close_fails(
    pipe_fds: list[int], closes: list[int]
) -> None:
    fd, pidfd = pipe_fds[0], pipe_fds[2]
    ev = owned_event(Event.OPEN, fd, pidfd)
    os.close(fd)  # someone closed it behind the event's back
    with pytest.raises(OSError) as info:
        ev.close()
    assert info.value.errno == errno.EBADF
    assert not is_open(pidfd)
    assert ev.closed
    assert closes == [fd, pidfd]
