"""Property tests for the parser: whatever the bytes, it decodes or reports, never crashes.

Valid buffers are generated together with the events they must decode to; then
they are damaged (bytes flipped, length fields overwritten, cut, spliced) and the
parser must still keep its contract: ``parse()`` raises only ``ParseError``,
``parse_lenient()`` never raises, accounts for every event, and reads nothing
outside the buffer it was given.
"""

from __future__ import annotations

import struct
from typing import Any

import _buffers as B
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afanotify import _parser
from afanotify.events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData, FileHandle
from afanotify.exceptions import ParseError, TruncatedEventError
from afanotify.flags import PERM_EVENTS

pytestmark = [
    # On a failure hypothesis writes a patch file with libcst, whose old releases
    # warn on import; under filterwarnings=error the report became INTERNALERROR.
    pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"),
    # A pass takes seconds, but shrinking a failure took 45 s once: leave room
    # for the report instead of a timeout.
    pytest.mark.timeout(300),
]

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
s32 = st.integers(-(2**31), 2**31 - 1)
u64 = st.integers(0, 2**64 - 1)
fsids = st.tuples(u32, u32)
handles = st.binary(max_size=40)
names = st.binary(max_size=24).map(lambda b: b.replace(b"\0", b"_"))
UNKNOWN_TYPES = st.sampled_from([0, 8, 9, 11, 13, 99, 255])

Record = tuple[bytes, dict[str, Any]]


def _fid_like(kind: str, info_type: int) -> st.SearchStrategy[Record]:
    def build(handle: bytes, fsid: tuple[int, int], htype: int) -> Record:
        raw = B.fid(handle, fsid=fsid, handle_type=htype, info_type=info_type)
        return raw, {kind: FileHandle(fsid, htype, handle)}

    return st.builds(build, handles, fsids, s32)


def _named(kind: str, name_field: str, info_type: int) -> st.SearchStrategy[Record]:
    def build(name: bytes, handle: bytes, fsid: tuple[int, int], htype: int, al: bool) -> Record:
        raw = B.dfid_name(name, handle, fsid=fsid, handle_type=htype, info_type=info_type, align=al)
        return raw, {kind: FileHandle(fsid, htype, handle), name_field: _decode(name)}

    return st.builds(build, names, handles, fsids, s32, st.booleans())


def _decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


records: st.SearchStrategy[Record] = st.one_of(
    _fid_like("fid", B.FID),
    _fid_like("dfid", B.DFID),
    _named("dfid", "name", B.DFID_NAME),
    _named("old_dfid", "old_name", B.OLD_DFID_NAME),
    _named("new_dfid", "new_name", B.NEW_DFID_NAME),
    st.builds(lambda v: (B.pidfd(v), {"pidfd": v}), s32),
    st.builds(lambda e, n: (B.error(e, n), {"error": e, "error_count": n}), s32, u32),
    st.builds(lambda o, n: (B.range_(o, n), {"range_offset": o, "range_count": n}), u64, u64),
    st.builds(lambda m: (B.mnt(m), {"mnt_id": m}), u64),
    st.builds(
        lambda t, body: (B.record(t, body), {"unknown": (t, body)}),
        UNKNOWN_TYPES,
        st.binary(max_size=16),
    ),
)


@st.composite
def events(draw: st.DrawFn) -> tuple[bytes, FanotifyData]:
    """One valid event and what it decodes to (with owned=False, no flags)."""
    mask = draw(u64)
    fd = draw(s32)
    pid = draw(s32)
    recs = draw(st.lists(records, max_size=4))
    fields: dict[str, Any] = {}
    unknown: list[tuple[int, bytes]] = []
    for _raw, f in recs:
        f = dict(f)
        if "unknown" in f:
            unknown.append(f.pop("unknown"))
        fields.update(f)
    if unknown:
        fields["unknown_records"] = tuple(unknown)
    raw = B.event(mask, *(r for r, _ in recs), fd=fd, pid=pid)
    return raw, FanotifyData(fd=fd, pid=pid, ev_types=mask, **fields)


valid_buffers = st.lists(events(), max_size=6).map(
    lambda evs: (b"".join(r for r, _ in evs), [e for _, e in evs])
)

# Values that make length fields interesting: zero, below and at the header
# and metadata sizes, and huge.
LENGTHS = st.sampled_from([0, 1, 3, 4, 5, 8, 16, 23, 24, 25, 32, 0xFFFF, 0xFFFFFFFF])


@st.composite
def mutated_buffers(draw: st.DrawFn) -> bytes:
    """A valid buffer, damaged by up to four flips, overwrites, cuts and splices."""
    buf = bytearray(draw(valid_buffers)[0])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "u16", "u32", "truncate", "splice", "insert"]))
        n = len(buf)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            buf[i] ^= draw(st.integers(1, 255))
        elif op == "u16" and n >= 2:
            i = draw(st.integers(0, n - 2))
            buf[i : i + 2] = struct.pack("=H", draw(LENGTHS) & 0xFFFF)
        elif op == "u32" and n >= 4:
            i = draw(st.integers(0, n - 4))
            buf[i : i + 4] = struct.pack("=I", draw(LENGTHS))
        elif op == "truncate":
            del buf[draw(st.integers(0, n)) :]
        elif op == "splice":
            other = draw(valid_buffers)[0]
            i = draw(st.integers(0, n))
            j = draw(st.integers(i, n))
            k = draw(st.integers(0, len(other)))
            buf[i:j] = other[k : draw(st.integers(k, len(other)))]
        elif op == "insert":
            i = draw(st.integers(0, n))
            buf[i:i] = draw(st.binary(max_size=32))
    return bytes(buf)


any_buffers = st.one_of(st.binary(max_size=600), mutated_buffers())


def _err_key(e: ParseError) -> tuple[object, ...]:
    return (type(e), str(e), e.offset, e.fd, e.pid, e.mask)


def _slots(buf: bytes) -> tuple[list[int], bool]:
    """Walk ``buf`` by event_len alone: each event's offset, and whether the walk gave up."""
    offsets: list[int] = []
    off = 0
    while off < len(buf):
        offsets.append(off)
        if len(buf) - off < 24:
            return offsets, True
        (elen,) = struct.unpack_from("=I", buf, off)
        if elen < 24 or elen > len(buf) - off:
            return offsets, True
        off += elen
    return offsets, False


def _check_contract(buf: bytes) -> tuple[list[FanotifyData], list[ParseError]]:
    evs, errs = _parser.parse_lenient(buf)
    assert all(type(e) is FanotifyData for e in evs)
    assert all(isinstance(e, ParseError) for e in errs)

    # Every event slot the lengths describe yields exactly one event or one error.
    offsets, gave_up = _slots(buf)
    assert len(evs) + len(errs) == len(offsets)
    assert [e.offset for e in errs] == sorted({e.offset for e in errs})
    assert {e.offset for e in errs} <= set(offsets)
    if gave_up:
        assert type(errs[-1]) is TruncatedEventError
        assert errs[-1].offset == offsets[-1]
        assert "abandoned" in str(errs[-1])
    assert all("abandoned" not in str(e) for e in errs[: -1 if gave_up else None])

    try:
        strict = _parser.parse(buf)
    except ParseError as exc:
        assert errs
        assert _err_key(exc) == _err_key(errs[0])
    else:
        assert not errs
        assert strict == evs
    return evs, errs


@FUZZ
@given(valid_buffers)
def test_valid_buffers_round_trip(case: tuple[bytes, list[FanotifyData]]) -> None:
    buf, expected = case
    assert _parser.parse(buf) == expected
    assert _parser.parse_lenient(buf) == (expected, [])


@FUZZ
@given(any_buffers)
def test_damaged_buffers_keep_the_contract(buf: bytes) -> None:
    _check_contract(buf)


@FUZZ
@given(any_buffers, st.data())
def test_prefix_parses_to_a_prefix(buf: bytes, data: st.DataObject) -> None:
    evs, errs = _parser.parse_lenient(buf)
    n = data.draw(st.integers(0, len(buf)), label="cut")
    pevs, perrs = _check_contract(buf[:n])
    # Events wholly inside buf[:n] decode the same; only the last error can
    # differ (the cut may have made an event look truncated).
    assert pevs == evs[: len(pevs)]
    kept = max(len(perrs) - 1, 0)
    assert [_err_key(e) for e in perrs[:kept]] == [_err_key(e) for e in errs[:kept]]


@FUZZ
@given(any_buffers, st.binary(max_size=64), st.binary(max_size=64))
def test_reads_nothing_outside_its_view(buf: bytes, before: bytes, after: bytes) -> None:
    want = _parser.parse_lenient(buf)
    backing = bytearray(before + buf + after)
    view = memoryview(backing)[len(before) : len(before) + len(buf)]
    got = _parser.parse_lenient(view)
    assert got[0] == want[0]
    assert [_err_key(e) for e in got[1]] == [_err_key(e) for e in want[1]]
    view.release()
    backing.extend(b"\0")  # nothing from the parse still holds the buffer


@FUZZ
@given(st.one_of(any_buffers, valid_buffers.map(lambda c: c[0])), st.booleans(), st.booleans())
def test_flags_and_ownership_bits(buf: bytes, pid_is_tid: bool, fd_error: bool) -> None:
    evs, errs = _parser.parse_lenient(buf, owned=True, pid_is_tid=pid_is_tid, fd_error=fd_error)
    plain, perrs = _parser.parse_lenient(buf)
    assert len(evs) == len(plain)
    assert [_err_key(e) for e in errs] == [_err_key(e) for e in perrs]
    perm = int(PERM_EVENTS)
    for ev, p in zip(evs, plain, strict=True):
        assert p._owns == 0
        assert ev.pid_is_tid is pid_is_tid
        want = 0
        if ev.fd >= 0:
            want |= OWN_FD
            if ev.ev_types & perm:
                want |= UNANSWERED
        assert ev.pidfd == p.pidfd
        if ev.pidfd >= 0:
            want |= OWN_PIDFD
        assert ev._owns == want
        if fd_error and p.fd < -1:
            assert (ev.fd, ev.fd_error) == (-1, -p.fd)
        else:
            assert (ev.fd, ev.fd_error) == (p.fd, None)
        # These descriptor numbers are made up: make sure nothing ever closes them.
        object.__setattr__(ev, "_owns", 0)


def test_zero_lengths_do_not_loop() -> None:
    assert _parser.parse_lenient(b"\0" * 4096)[0] == []
    evs, errs = _parser.parse_lenient(B.event(1, B.record(99, b"\0" * 64, length=0)) * 100)
    assert evs == []
    assert len(errs) == 100
