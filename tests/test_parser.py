"""The pure parser on hand-built buffers: bytes in, exact ``FanotifyData`` out.

No kernel is involved.  Buffers come from ``tests/_buffers.py``, which writes the
kernel's layouts out independently of ``afanotify._parser``.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

import _buffers as B
import pytest
from helpers import is_open

from afanotify import _parser
from afanotify.events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData, FileHandle
from afanotify.exceptions import MetadataVersionError, ParseError, TruncatedEventError
from afanotify.flags import Event, Response, deny_errno

H1 = b"\x01\x02\x03\x04\x05\x06\x07\x08"
H2 = b"\xaa\xbb\xcc\xdd\xee\xff\x00\x11\x22\x33\x44\x55"
FSID = (0xDEADBEEF, 0x0BADF00D)


def fh(handle: bytes, fsid: tuple[int, int] = FSID, handle_type: int = 1) -> FileHandle:
    return FileHandle(fsid, handle_type, handle)


# -- well-formed buffers -----------------------------------------------------

# (id, the info records of an ATTRIB event from pid 7, the fields they decode to)
RECORD_CASES: list[tuple[str, bytes, dict[str, object]]] = [
    ("no-records", b"", {}),
    ("fid", B.fid(H1, fsid=FSID, handle_type=0x81), {"fid": fh(H1, handle_type=0x81)}),
    (
        "fid-negative-handle-type-empty-handle",
        B.fid(b"", fsid=(0, 0), handle_type=-3),
        {"fid": FileHandle((0, 0), -3, b"")},
    ),
    ("dfid", B.dfid(H2, fsid=FSID), {"dfid": fh(H2)}),
    ("dfid-name", B.dfid_name(b"hello.txt", H1, fsid=FSID), {"dfid": fh(H1), "name": "hello.txt"}),
    (
        "dfid-name-dot-unaligned",
        B.dfid_name(b".", H2, fsid=FSID, align=False),
        {"dfid": fh(H2), "name": "."},
    ),
    ("dfid-name-empty", B.dfid_name(b"", H1, fsid=FSID), {"dfid": fh(H1), "name": ""}),
    (
        "dfid-name-not-utf8",
        B.dfid_name(b"caf\xe9", H1, fsid=FSID),
        {"dfid": fh(H1), "name": "caf\udce9"},
    ),
    (
        "dfid-name-and-fid",
        B.dfid_name(b"new", H1, fsid=FSID) + B.fid(H2, fsid=FSID, handle_type=2),
        {"dfid": fh(H1), "name": "new", "fid": fh(H2, handle_type=2)},
    ),
    ("pidfd", B.pidfd(17), {"pidfd": 17}),
    ("pidfd-nopidfd", B.pidfd(-1), {"pidfd": -1}),
    ("pidfd-epidfd", B.pidfd(-2), {"pidfd": -2}),
    (
        "error",
        B.error(-errno.EIO, 3) + B.fid(H1, fsid=FSID),
        {"error": -errno.EIO, "error_count": 3, "fid": fh(H1)},
    ),
    (
        "range",
        B.range_(4096, 2**63 + 5),
        {"range_offset": 4096, "range_count": 2**63 + 5},
    ),
    ("mnt", B.mnt(0x1_0000_0002), {"mnt_id": 0x1_0000_0002}),
    (
        "unknown-record-kept-and-skipped",
        B.record(99, b"abcdefgh", pad=5) + B.dfid_name(b"x", H1, fsid=FSID),
        {"unknown_records": ((99, b"abcdefgh"),), "dfid": fh(H1), "name": "x"},
    ),
    (
        "unknown-records-empty-body-and-between",
        B.record(200, b"")
        + B.pidfd(-1)
        + B.record(8, b"\x00\x01\x02")
        + B.record(255, b"\xff" * 12),
        {
            "pidfd": -1,
            "unknown_records": ((200, b""), (8, b"\x00\x01\x02"), (255, b"\xff" * 12)),
        },
    ),
]

# (id, a whole buffer, parse() keywords, the events it decodes to)
GOOD_CASES: list[tuple[str, bytes, dict[str, bool], list[FanotifyData]]] = [
    (
        f"record-{name}",
        B.event(Event.ATTRIB, records, pid=7),
        {},
        [FanotifyData(pid=7, ev_types=Event.ATTRIB, **fields)],  # type: ignore[arg-type]
    )
    for name, records, fields in RECORD_CASES
]

GOOD_CASES += [
    (
        "bare-event-with-fd",
        B.event(Event.OPEN, fd=5, pid=42),
        {},
        [FanotifyData(fd=5, pid=42, ev_types=Event.OPEN)],
    ),
    (
        "overflow-nofd",
        B.event(Event.Q_OVERFLOW, fd=-1, pid=0),
        {},
        [FanotifyData(fd=-1, pid=0, ev_types=Event.Q_OVERFLOW)],
    ),
    (
        "rename",
        B.event(
            Event.RENAME | Event.ONDIR,
            B.old_dfid_name(b"old-name", H1, fsid=FSID),
            B.new_dfid_name(b"new-name", H2, fsid=(1, 2), handle_type=7),
            B.fid(b"\x42" * 6, fsid=FSID),
            pid=99,
        ),
        {},
        [
            FanotifyData(
                pid=99,
                ev_types=Event.RENAME | Event.ONDIR,
                old_dfid=fh(H1),
                old_name="old-name",
                new_dfid=FileHandle((1, 2), 7, H2),
                new_name="new-name",
                fid=fh(b"\x42" * 6),
            )
        ],
    ),
    (
        "permission-event-with-range",
        B.event(Event.PRE_ACCESS, B.range_(0, 65536), fd=12, pid=300),
        {},
        [
            FanotifyData(
                fd=12, pid=300, ev_types=Event.PRE_ACCESS, range_offset=0, range_count=65536
            )
        ],
    ),
    (
        "mount-attach",
        B.event(Event.MNT_ATTACH | Event.MNT_DETACH, B.mnt(77)),
        {},
        [FanotifyData(ev_types=Event.MNT_ATTACH | Event.MNT_DETACH, mnt_id=77)],
    ),
    (
        "several-events",
        B.event(Event.OPEN, fd=3, pid=1)
        + B.event(Event.CREATE | Event.ONDIR, B.dfid_name(b"d", H1, fsid=FSID), pid=2)
        + B.event(Event.CLOSE_WRITE, B.pidfd(-2), fd=4, pid=3)
        + B.event(Event.Q_OVERFLOW),
        {},
        [
            FanotifyData(fd=3, pid=1, ev_types=Event.OPEN),
            FanotifyData(pid=2, ev_types=Event.CREATE | Event.ONDIR, dfid=fh(H1), name="d"),
            FanotifyData(fd=4, pid=3, ev_types=Event.CLOSE_WRITE, pidfd=-2),
            FanotifyData(ev_types=Event.Q_OVERFLOW),
        ],
    ),
    (
        "longer-metadata-from-a-newer-kernel",
        B.event(
            Event.ATTRIB,
            B.fid(H1, fsid=FSID),
            metadata_len=32,
            meta_extra=b"\xee" * 8,
            pid=5,
        ),
        {},
        [FanotifyData(pid=5, ev_types=Event.ATTRIB, fid=fh(H1))],
    ),
    (
        "event-len-covers-only-metadata",
        B.event(Event.MODIFY, fd=8, pid=8),
        {},
        [FanotifyData(fd=8, pid=8, ev_types=Event.MODIFY)],
    ),
    (
        "empty-buffer",
        b"",
        {},
        [],
    ),
    (
        "pid-is-tid",
        B.event(Event.OPEN, fd=3, pid=1234) + B.event(Event.ATTRIB, B.fid(H1), pid=1235),
        {"pid_is_tid": True},
        [
            FanotifyData(fd=3, pid=1234, ev_types=Event.OPEN, pid_is_tid=True),
            FanotifyData(
                pid=1235,
                ev_types=Event.ATTRIB,
                pid_is_tid=True,
                fid=FileHandle((0x1234, 0x5678), 1, H1),
            ),
        ],
    ),
    (
        "fd-error-negative-fd",
        B.event(Event.OPEN, fd=-errno.EACCES, pid=10),
        {"fd_error": True},
        [FanotifyData(fd=-1, pid=10, ev_types=Event.OPEN, fd_error=errno.EACCES)],
    ),
    (
        "fd-error-nofd-is-no-error",
        B.event(Event.Q_OVERFLOW, fd=-1),
        {"fd_error": True},
        [FanotifyData(fd=-1, ev_types=Event.Q_OVERFLOW, fd_error=None)],
    ),
    (
        "fd-error-good-fd",
        B.event(Event.OPEN, fd=6, pid=10),
        {"fd_error": True},
        [FanotifyData(fd=6, pid=10, ev_types=Event.OPEN, fd_error=None)],
    ),
    (
        "negative-fd-without-fd-error-stays",
        B.event(Event.OPEN, fd=-errno.EACCES, pid=10),
        {},
        [FanotifyData(fd=-errno.EACCES, pid=10, ev_types=Event.OPEN, fd_error=None)],
    ),
]


@pytest.mark.parametrize(
    ("buf", "kw", "expected"),
    [pytest.param(buf, kw, exp, id=name) for name, buf, kw, exp in GOOD_CASES],
)
def test_good_buffer(buf: bytes, kw: dict[str, bool], expected: list[FanotifyData]) -> None:
    events = _parser.parse(buf, **kw)
    assert events == expected
    # Field by field too: dataclass equality skips nothing public, but a
    # failure here names the field.
    for got, want in zip(events, expected, strict=True):
        for name in FanotifyData.__dataclass_fields__:
            if not name.startswith("_"):
                assert getattr(got, name) == getattr(want, name), name
        assert got._owns == 0  # owned=False by default: synthetic numbers are not ours
        assert got.closed
        assert got.answered
    assert _parser.parse_lenient(buf, **kw) == (expected, [])


def test_event_mask_kept_whole() -> None:
    (ev,) = _parser.parse(B.event(Event.OPEN | Event.ONDIR | 0x80000000, fd=3))
    assert ev.ev_types == 0xC0000020
    assert ev.events == Event.OPEN | Event.ONDIR | 0x80000000


# -- malformed buffers -------------------------------------------------------

GOOD_BEFORE = B.event(Event.OPEN, fd=3, pid=1)
GOOD_AFTER = B.event(Event.CREATE, B.dfid_name(b"after", H1, fsid=FSID), pid=2)
EXPECT_BEFORE = FanotifyData(fd=3, pid=1, ev_types=Event.OPEN)
EXPECT_AFTER = FanotifyData(pid=2, ev_types=Event.CREATE, dfid=fh(H1), name="after")

BAD_MASK = int(Event.CREATE)
BAD_FD = 9
BAD_PID = 66


def bad(*records: bytes, **kw: Any) -> bytes:
    kw.setdefault("fd", BAD_FD)
    kw.setdefault("pid", BAD_PID)
    return B.event(BAD_MASK, *records, **kw)


# (id, bad event bytes, exception type, whether its event_len can be trusted)
BAD_CASES: list[tuple[str, bytes, type[ParseError], bool]] = [
    ("version-2", bad(vers=2), MetadataVersionError, True),
    ("version-4-with-records", bad(B.fid(H1), vers=4), MetadataVersionError, True),
    ("metadata-len-too-small", bad(metadata_len=16), ParseError, True),
    ("metadata-len-past-event", bad(B.pidfd(3), metadata_len=40), ParseError, True),
    ("record-len-below-header", bad(B.record(B.FID, b"\0" * 12, length=3)), ParseError, True),
    ("record-len-zero", bad(B.record(99, b"\0" * 4, length=0)), ParseError, True),
    ("record-past-event-end", bad(B.record(99, b"\0" * 4, length=12)), TruncatedEventError, True),
    ("fid-past-event-end", bad(B.fid(H1, length=200)), TruncatedEventError, True),
    ("stray-bytes-after-records", bad(B.pidfd(3), extra=b"\0\0"), TruncatedEventError, True),
    (
        "fid-shorter-than-fixed-part",
        bad(B.record(B.FID, b"\0" * 12)),
        TruncatedEventError,
        True,
    ),
    (
        "dfid-name-shorter-than-fixed-part",
        bad(B.record(B.DFID_NAME, b"\0" * 8)),
        TruncatedEventError,
        True,
    ),
    (
        "handle-bytes-past-record",
        bad(B.fid(H1, handle_bytes=9)),
        TruncatedEventError,
        True,
    ),
    (
        "handle-bytes-huge",
        bad(B.dfid_name(b"n", H1, handle_bytes=0xFFFFFFFF)),
        TruncatedEventError,
        True,
    ),
    (
        "name-without-nul",
        bad(B.dfid_name(b"abcd", H1, nul=False, align=False)),
        ParseError,
        True,
    ),
    (
        "old-name-without-nul",
        bad(B.old_dfid_name(b"abc", nul=False, align=False), B.new_dfid_name(b"b")),
        ParseError,
        True,
    ),
    ("pidfd-record-too-short", bad(B.record(B.PIDFD, b"")), TruncatedEventError, True),
    ("error-record-too-short", bad(B.record(B.ERROR, b"\0" * 4)), TruncatedEventError, True),
    ("range-record-too-short", bad(B.record(B.RANGE, b"\0" * 16)), TruncatedEventError, True),
    ("mnt-record-too-short", bad(B.record(B.MNT, b"\0" * 8)), TruncatedEventError, True),
    # The event's own length is wrong: nothing after it can be found.
    ("event-len-too-small", bad(event_len=8), TruncatedEventError, False),
    ("event-len-zero", bad(event_len=0), TruncatedEventError, False),
    ("event-len-too-big", bad(event_len=100_000), TruncatedEventError, False),
]


@pytest.mark.parametrize(
    ("bad_event", "exc_type", "trusted"),
    [pytest.param(b, e, t, id=name) for name, b, e, t in BAD_CASES],
)
def test_malformed_event(bad_event: bytes, exc_type: type[ParseError], trusted: bool) -> None:
    with pytest.raises(exc_type) as info:
        _parser.parse(bad_event)
    assert type(info.value) is exc_type
    assert isinstance(info.value, ValueError)
    assert info.value.offset == 0
    assert (info.value.fd, info.value.pid, info.value.mask) == (BAD_FD, BAD_PID, BAD_MASK)

    buf = GOOD_BEFORE + bad_event + GOOD_AFTER
    with pytest.raises(exc_type):
        _parser.parse(buf)
    events, errors = _parser.parse_lenient(buf)
    assert events == ([EXPECT_BEFORE, EXPECT_AFTER] if trusted else [EXPECT_BEFORE])
    assert len(errors) == 1
    (err,) = errors
    assert type(err) is exc_type
    assert err.offset == len(GOOD_BEFORE)
    assert f"(event at offset {len(GOOD_BEFORE)})" in str(err)
    # The metadata could be read, so a reader can still close the fd or answer.
    assert (err.fd, err.pid, err.mask) == (BAD_FD, BAD_PID, BAD_MASK)
    if not trusted:
        assert "abandoned" in str(err)


def test_truncated_metadata() -> None:
    whole = GOOD_AFTER
    for cut in (1, 4, 10, 23):
        with pytest.raises(TruncatedEventError) as info:
            _parser.parse(whole[:cut])
        assert info.value.offset == 0
        assert (info.value.fd, info.value.pid, info.value.mask) == (-1, 0, 0)

        events, errors = _parser.parse_lenient(GOOD_BEFORE + whole[:cut])
        assert events == [EXPECT_BEFORE]
        assert [type(e) for e in errors] == [TruncatedEventError]
        assert errors[0].offset == len(GOOD_BEFORE)
        assert f"{cut} bytes left" in str(errors[0])


def test_truncated_records_abandon_the_rest() -> None:
    # A buffer cut inside an event's records: its event_len now exceeds the buffer.
    cut = len(GOOD_BEFORE) + len(GOOD_AFTER) - 3
    events, errors = _parser.parse_lenient((GOOD_BEFORE + GOOD_AFTER)[:cut])
    assert events == [EXPECT_BEFORE]
    assert [type(e) for e in errors] == [TruncatedEventError]
    assert (errors[0].fd, errors[0].pid, errors[0].mask) == (-1, 2, int(Event.CREATE))


def test_several_bad_events_each_reported() -> None:
    buf = (
        GOOD_BEFORE
        + bad(vers=1)
        + GOOD_AFTER
        + bad(B.record(B.PIDFD, b""))
        + bad(B.dfid_name(b"zz", nul=False, align=False))
        + GOOD_BEFORE
        + bad(event_len=4)
        + GOOD_AFTER
    )
    events, errors = _parser.parse_lenient(buf)
    assert events == [EXPECT_BEFORE, EXPECT_AFTER, EXPECT_BEFORE]
    assert [type(e) for e in errors] == [
        MetadataVersionError,
        TruncatedEventError,
        ParseError,
        TruncatedEventError,
    ]
    offsets = [e.offset for e in errors]
    assert offsets == sorted(offsets)
    with pytest.raises(MetadataVersionError):
        _parser.parse(buf)


def test_version_mismatch_then_good_events() -> None:
    buf = bad(vers=2) + GOOD_BEFORE + bad(vers=255) + GOOD_AFTER
    events, errors = _parser.parse_lenient(buf)
    assert events == [EXPECT_BEFORE, EXPECT_AFTER]
    assert [type(e) for e in errors] == [MetadataVersionError, MetadataVersionError]
    assert "metadata version 2, expected 3" in str(errors[0])
    assert errors[1].offset == len(bad(vers=2)) + len(GOOD_BEFORE)


def test_error_hierarchy() -> None:
    assert issubclass(MetadataVersionError, ParseError)
    assert issubclass(TruncatedEventError, ParseError)
    assert issubclass(ParseError, ValueError)


# -- ownership (owned=True) --------------------------------------------------


OWNERSHIP_CASES = [
    # (id, mask, event carries a real fd, PIDFD record: "absent", "real" (a real
    #  descriptor) or the value written, the ownership bits expected)
    ("notif-fd", Event.OPEN, True, "absent", OWN_FD),
    ("notif-nofd", Event.Q_OVERFLOW, False, "absent", 0),
    ("perm-fd", Event.OPEN_PERM, True, "absent", OWN_FD | UNANSWERED),
    ("pre-access-fd", Event.PRE_ACCESS, True, "absent", OWN_FD | UNANSWERED),
    ("access-perm-fd-pidfd", Event.ACCESS_PERM, True, "real", OWN_FD | UNANSWERED | OWN_PIDFD),
    ("fid-pidfd", Event.CREATE, False, "real", OWN_PIDFD),
    ("fid-nopidfd", Event.CREATE, False, -1, 0),
    ("fid-epidfd", Event.CREATE, False, -2, 0),
    ("notif-fd-epidfd", Event.CLOSE_WRITE, True, -2, OWN_FD),
    ("perm-nofd", Event.OPEN_PERM, False, "absent", 0),
]


@pytest.mark.parametrize(
    ("mask", "with_fd", "pidfd", "bits"),
    [pytest.param(m, f, p, b, id=name) for name, m, f, p, b in OWNERSHIP_CASES],
)
def test_owned_bits(
    pipe_fds: list[int], mask: int, with_fd: bool, pidfd: object, bits: int
) -> None:
    fd = pipe_fds[0] if with_fd else -1
    records = []
    if pidfd == "real":
        records.append(B.pidfd(pipe_fds[2]))
    elif isinstance(pidfd, int):
        records.append(B.pidfd(pidfd))
    buf = B.event(mask, *records, fd=fd, pid=5)

    (ev,) = _parser.parse(buf, owned=True)
    assert ev._owns == bits
    assert ev.answered == (not bits & UNANSWERED)
    assert ev.closed == (bits == 0)
    (unowned,) = _parser.parse(buf)
    assert unowned._owns == 0
    assert unowned == ev

    ev.close()  # no group: nothing to answer, descriptors closed once
    assert ev.closed
    assert is_open(pipe_fds[0]) == (not bits & OWN_FD)
    assert is_open(pipe_fds[2]) == (not bits & OWN_PIDFD)
    ev.close()


def test_owned_pidfd_follows_the_last_pidfd_record(pipe_fds: list[int]) -> None:
    # The kernel sends one PIDFD record; with a stray second one, the event must
    # own exactly the pidfd it reports (never "own" -1 or -2).
    (ev,) = _parser.parse(B.event(Event.CREATE, B.pidfd(pipe_fds[2]), B.pidfd(-2)), owned=True)
    assert (ev.pidfd, ev._owns) == (-2, 0)
    ev.close()
    assert is_open(pipe_fds[2])

    (ev,) = _parser.parse(B.event(Event.CREATE, B.pidfd(-1), B.pidfd(pipe_fds[2])), owned=True)
    assert (ev.pidfd, ev._owns) == (pipe_fds[2], OWN_PIDFD)
    ev.close()
    assert not is_open(pipe_fds[2])


def test_owned_fd_error_owns_nothing() -> None:
    (ev,) = _parser.parse(B.event(Event.OPEN_PERM, fd=-errno.ENOENT), owned=True, fd_error=True)
    assert ev.fd == -1
    assert ev.fd_error == errno.ENOENT
    assert ev._owns == 0


def test_owned_malformed_event_hands_its_fd_to_the_error(pipe_fds: list[int]) -> None:
    # The event is dropped, so the error is the only place the reader learns of
    # the fd it must close (and answer, for a permission event).
    buf = B.event(Event.OPEN, fd=pipe_fds[0]) + bad(vers=2, fd=pipe_fds[1], pid=4)
    buf += B.event(Event.OPEN_PERM, B.record(B.PIDFD, b""), fd=pipe_fds[3], pid=4)
    events, errors = _parser.parse_lenient(buf, owned=True)
    assert [e.fd for e in events] == [pipe_fds[0]]
    assert [(type(e), e.fd, e.mask) for e in errors] == [
        (MetadataVersionError, pipe_fds[1], BAD_MASK),
        (TruncatedEventError, pipe_fds[3], int(Event.OPEN_PERM)),
    ]
    events[0].close()
    assert [is_open(fd) for fd in pipe_fds] == [False, True, True, True]


def test_owned_several_events(pipe_fds: list[int]) -> None:
    buf = B.event(Event.OPEN, fd=pipe_fds[0]) + B.event(Event.OPEN_PERM, fd=pipe_fds[1])
    ev1, ev2 = _parser.parse(buf, owned=True)
    assert (ev1._owns, ev2._owns) == (OWN_FD, OWN_FD | UNANSWERED)
    with ev1, ev2:
        pass
    assert not is_open(pipe_fds[0])
    assert not is_open(pipe_fds[1])


# -- buffer types ------------------------------------------------------------

MIXED = (
    B.event(Event.OPEN, fd=3, pid=1)
    + B.event(Event.RENAME, B.old_dfid_name(b"a"), B.new_dfid_name(b"bb"), pid=2)
    + B.event(Event.FS_ERROR, B.error(-5, 1), B.fid(H2))
)


def _mixed_expected() -> list[FanotifyData]:
    return _parser.parse(bytes(MIXED))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(bytes, id="bytes"),
        pytest.param(bytearray, id="bytearray"),
        pytest.param(memoryview, id="memoryview"),
        pytest.param(lambda b: memoryview(bytearray(b)), id="memoryview-of-bytearray"),
        pytest.param(lambda b: memoryview(b).cast("I"), id="memoryview-cast-u32"),
        pytest.param(
            lambda b: memoryview(b"\xff" * 13 + b + b"\xee" * 7)[13:-7], id="memoryview-slice"
        ),
    ],
)
def test_buffer_types(make: object) -> None:
    assert len(MIXED) % 4 == 0
    events = _parser.parse(make(MIXED))  # type: ignore[operator]
    assert events == _mixed_expected()
    assert [e.ev_types for e in events] == [Event.OPEN, Event.RENAME, Event.FS_ERROR]
    assert (events[1].old_name, events[1].new_name) == ("a", "bb")
    assert (events[2].error, events[2].error_count, events[2].fid) == (
        -5,
        1,
        FileHandle((0x1234, 0x5678), 1, H2),
    )


def test_results_do_not_alias_a_mutable_buffer() -> None:
    buf = bytearray(MIXED)
    events = _parser.parse(buf)
    buf[:] = b"\0" * len(buf)
    assert events == _mixed_expected()
    assert isinstance(events[2].fid.handle, bytes)  # type: ignore[union-attr]


def test_buffer_can_be_resized_after_parse_errors() -> None:
    # A reader that reuses one bytearray for readinto() must be able to resize it
    # even while it keeps the errors of the last batch.
    buf = bytearray(GOOD_BEFORE + bad(B.record(99, b"", length=2)) + bad(vers=9))
    events, errors = _parser.parse_lenient(buf)
    assert events == [EXPECT_BEFORE]
    assert len(errors) == 2
    buf.extend(b"\0" * 8)
    del buf[-8:]
    try:
        _parser.parse(buf)
    except ParseError as exc:
        kept = exc
    buf.extend(b"\0" * 8)
    assert kept.offset == len(GOOD_BEFORE)


# -- responses ---------------------------------------------------------------

RESPONSE_CASES = [
    ("allow", 7, Response.ALLOW, None, struct.pack("=iI", 7, 0x1)),
    ("deny", 12, Response.DENY, None, struct.pack("=iI", 12, 0x2)),
    ("allow-audit", 3, Response.ALLOW | Response.AUDIT, None, struct.pack("=iI", 3, 0x11)),
    (
        "deny-errno-eio",
        5,
        deny_errno(errno.EIO),
        None,
        struct.pack("=iI", 5, 0x2 | (errno.EIO << 24)),
    ),
    (
        "deny-audit-rule",
        9,
        Response.DENY | Response.AUDIT,
        (42, 1, 0),
        struct.pack("=iI", 9, 0x2 | 0x10 | 0x20) + struct.pack("=BBHIII", 1, 0, 16, 42, 1, 0),
    ),
    (
        "allow-audit-rule-max",
        2**31 - 1,
        Response.ALLOW,
        (2**32 - 1, 2**32 - 1, 7),
        struct.pack("=iI", 2**31 - 1, 0x1 | 0x20)
        + struct.pack("=BBHIII", 1, 0, 16, 2**32 - 1, 2**32 - 1, 7),
    ),
]


@pytest.mark.parametrize(
    ("fd", "response", "audit", "expected"),
    [pytest.param(f, r, a, e, id=name) for name, f, r, a, e in RESPONSE_CASES],
)
def test_encode_response(
    fd: int, response: int, audit: tuple[int, int, int] | None, expected: bytes
) -> None:
    out = _parser.encode_response(fd, response, audit)
    assert isinstance(out, bytes)
    assert out == expected
    assert len(out) == (8 if audit is None else 24)
    assert _parser.RESPONSE.unpack_from(out) == struct.unpack_from("=iI", expected)


def test_encode_response_little_endian_bytes() -> None:
    # The machines are x86_64; spell one response out byte by byte.
    assert _parser.encode_response(7, Response.ALLOW) == b"\x07\0\0\0\x01\0\0\0"
    assert _parser.encode_response(7, Response.DENY, (3, 0, 0)) == (
        b"\x07\0\0\0\x22\0\0\0" + b"\x01\x00\x10\x00" + b"\x03\0\0\0" + b"\0" * 8
    )
