"""The C decoder against the pure parser: same events, same errors, for any bytes.

Every buffer here goes through ``_parser.parse_lenient`` and through
``_fastparse.Decoder`` (the C walk and the C event builder,
``csrc/fastpath_build.c``, with the reference parser's ``parse_event`` for
the entries the builder leaves).  The events must be equal (ownership bits
included) and the errors of the same class, message, offset and metadata.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CHILD_CWD, REPO, child_env, is_open
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afanotify import _ffi
from afanotify._fastparse import _BUILD, Decoder
from afanotify._ffi import ffi, lib
from afanotify._parser import INFO_HEADER, METADATA, parse_event, parse_lenient
from afanotify.events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData, FileHandle
from afanotify.exceptions import ParseError
from afanotify.flags import (
    DIR_CHANGE_EVENTS,
    FAN_EVENT_INFO_TYPE_DFID,
    FAN_EVENT_INFO_TYPE_DFID_NAME,
    FAN_EVENT_INFO_TYPE_ERROR,
    FAN_EVENT_INFO_TYPE_FID,
    FAN_EVENT_INFO_TYPE_MNT,
    FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
    FAN_EVENT_INFO_TYPE_PIDFD,
    FAN_EVENT_INFO_TYPE_RANGE,
    Event,
    InitFlag,
    MarkFlag,
)

FID, DFID, DFID_NAME = (
    FAN_EVENT_INFO_TYPE_FID,
    FAN_EVENT_INFO_TYPE_DFID,
    FAN_EVENT_INFO_TYPE_DFID_NAME,
)
OLD, NEW = FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
PIDFD, ERROR = FAN_EVENT_INFO_TYPE_PIDFD, FAN_EVENT_INFO_TYPE_ERROR
RANGE, MNT = FAN_EVENT_INFO_TYPE_RANGE, FAN_EVENT_INFO_TYPE_MNT
FID_TYPES = (FID, DFID, DFID_NAME, OLD, NEW)

OPTIONS = [
    {"owned": False, "pid_is_tid": False, "fd_error": False},
    {"owned": True, "pid_is_tid": True, "fd_error": False},
    {"owned": True, "pid_is_tid": False, "fd_error": True},
]


# -- building buffers ---------------------------------------------------------


def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def rec(info_type: int, body: bytes, length: int | None = None) -> bytes:
    """An info record; ``length`` overrides the header's len field."""
    n = len(body) + 4 if length is None else length
    return struct.pack("=BBH", info_type, 0, n) + body


def fid_rec(
    info_type: int,
    handle: bytes = b"\x01\x02\x03\x04\x05\x06\x07\x08",
    name: bytes | None = None,
    fsid: tuple[int, int] = (0x1234, 0x5678),
    htype: int = 1,
    nbytes: int | None = None,
) -> bytes:
    body = struct.pack("=IIIi", *fsid, len(handle) if nbytes is None else nbytes, htype) + handle
    if name is not None:
        body = pad4(body + name + b"\0")
    return rec(info_type, body)


def event(
    *records: bytes,
    mask: int = int(Event.CLOSE_WRITE),
    fd: int = 7,
    pid: int = 4242,
    vers: int = 3,
    meta_len: int = 24,
    event_len: int | None = None,
    meta_pad: bytes = b"",
) -> bytes:
    body = meta_pad + b"".join(records)
    n = 24 + len(body) if event_len is None else event_len
    return METADATA.pack(n, vers, 0, meta_len, mask, fd, pid) + body


def error_key(e: ParseError) -> tuple[Any, ...]:
    return (type(e), str(e), e.offset, e.fd, e.pid, e.mask, e.pidfd)


def event_key(e: FanotifyData) -> tuple[Any, ...]:
    return (e, e._owns)


def decode(buf: Any, nbytes: int, **opts: Any) -> tuple[list[FanotifyData], list[ParseError]]:
    return Decoder().decode(buf, nbytes, **opts)


@pytest.fixture
def make_decoder() -> Any:
    """Makes a Decoder (a fixture, so tests can take it as an argument)."""
    return Decoder


def both(buf: bytes, **opts: bool) -> tuple[list[FanotifyData], list[ParseError]]:
    """Decode with both; assert they agree; return the pure parser's result."""
    ref_events, ref_errors = parse_lenient(buf, **opts)
    events, errors = decode(buf, len(buf), **opts)
    assert [event_key(e) for e in events] == [event_key(e) for e in ref_events]
    assert [error_key(e) for e in errors] == [error_key(e) for e in ref_errors]
    return ref_events, ref_errors


# -- the C layout -------------------------------------------------------------


# -- hand-built buffers, one per record type and per rule ---------------------

GOOD = {
    "fd-mode": event(),
    "nofd": event(fd=-1),
    "fd-error": event(fd=-13),
    "perm": event(mask=int(Event.OPEN_PERM), fd=9),
    "three-fd-events": event(fd=3) + event(fd=4, mask=int(Event.OPEN)) + event(fd=5),
    "overflow": event(mask=int(Event.Q_OVERFLOW), fd=-1, pid=0),
    "fid": event(fid_rec(FID), fd=-1, mask=int(Event.ATTRIB)),
    "dfid": event(fid_rec(DFID), fd=-1),
    "dfid-name": event(fid_rec(DFID_NAME, name=b"hello.txt"), fd=-1, mask=int(Event.CREATE)),
    "dfid-name-empty": event(fid_rec(DFID_NAME, name=b""), fd=-1),
    "dfid-name-not-utf8": event(fid_rec(DFID_NAME, name=b"caf\xe9\xff"), fd=-1),
    "dfid-name-fid": event(fid_rec(DFID_NAME, name=b"a"), fid_rec(FID, handle=b"zz"), fd=-1),
    "dfid-name-then-dfid": event(fid_rec(DFID_NAME, name=b"kept"), fid_rec(DFID, b"x"), fd=-1),
    "rename": event(
        fid_rec(OLD, name=b"from"),
        fid_rec(NEW, name=b"to"),
        fid_rec(FID),
        fd=-1,
        mask=int(Event.RENAME),
    ),
    "empty-handle": event(fid_rec(FID, handle=b""), fd=-1),
    "max-handle": event(fid_rec(DFID, handle=bytes(range(128))), fd=-1),
    "pidfd": event(rec(PIDFD, struct.pack("=i", 11))),
    "pidfd-gone": event(rec(PIDFD, struct.pack("=i", -1))),
    "pidfd-error": event(rec(PIDFD, struct.pack("=i", -2)), fd=-1),
    "pidfd-long": event(rec(PIDFD, struct.pack("=i", 11) + b"\0" * 8)),
    "error": event(rec(ERROR, struct.pack("=iI", 5, 3)), fid_rec(FID), fd=-1),
    "range": event(rec(RANGE, struct.pack("=IQQ", 0, 2**40 + 1, 4096)), mask=0x100000),
    "mnt": event(rec(MNT, struct.pack("=IQ", 0, 2**63 + 5)), fd=-1, mask=0x1000000),
    "unknown": event(rec(99, b"abcd"), rec(0, b""), rec(200, b"\x01\x02\x03"), fd=-1),
    "unknown-and-known": event(rec(8, b"zz"), fid_rec(DFID_NAME, name=b"n"), fd=-1),
    "big-metadata": event(meta_len=32, meta_pad=b"\xff" * 8),
    "big-metadata-records": event(fid_rec(FID), meta_len=28, meta_pad=b"\0" * 4, fd=-1),
    "name-with-junk-after-nul": event(
        rec(DFID_NAME, struct.pack("=IIIi", 1, 2, 0, 1) + b"a\0b"), fd=-1
    ),
    "everything": event(
        fid_rec(FID),
        fid_rec(DFID_NAME, name=b"n"),
        fid_rec(OLD, name=b"o"),
        fid_rec(NEW, name=b"w"),
        rec(PIDFD, struct.pack("=i", 3)),
        rec(ERROR, struct.pack("=iI", -5, 1)),
        rec(RANGE, struct.pack("=IQQ", 0, 1, 2)),
        rec(MNT, struct.pack("=IQ", 0, 9)),
        rec(77, b"new!"),
        fd=-1,
    ),
    "empty-buffer": b"",
}

BAD = {
    "short-tail": event() + b"\x01\x02\x03",
    "only-tail": b"\0" * 23,
    "event-len-too-small": event(event_len=20) + event(),
    "event-len-past-end": event(event_len=100),
    "event-len-zero": event(event_len=0),
    "version": event(vers=2) + event(),
    "meta-len-small": event(meta_len=16) + event(),
    "meta-len-big": event(fid_rec(FID), meta_len=200, fd=-1),
    "stray-bytes": event(b"\x01\x02"),
    "record-len-zero": event(rec(FID, b"", length=0)),
    "record-len-small": event(rec(PIDFD, b"", length=3) + b"\0"),
    "record-past-end": event(rec(PIDFD, struct.pack("=i", 1), length=12)),
    "fid-short": event(rec(FID, b"\0" * 12)),
    "handle-past-end": event(fid_rec(DFID, handle=b"ab", nbytes=3)),
    "handle-huge": event(fid_rec(DFID, handle=b"ab", nbytes=0xFFFFFFFF)),
    "name-no-nul": event(rec(DFID_NAME, struct.pack("=IIIi", 1, 2, 0, 1) + b"abcd")),
    "name-missing": event(rec(OLD, struct.pack("=IIIi", 1, 2, 0, 1))),
    "pidfd-short": event(rec(PIDFD, b"")),
    "error-short": event(rec(ERROR, b"\0" * 4)),
    "range-short": event(rec(RANGE, b"\0" * 16)),
    "mnt-short": event(rec(MNT, b"\0" * 8)),
    "error-then-good": event(rec(MNT, b"\0" * 8), fd=5, pid=6, mask=0x10000) + event(fd=8),
    "pidfd-then-error": event(rec(PIDFD, struct.pack("=i", 3)), b"\0\0"),
}


@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "owned-tid", "owned-fderror"])
@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_buffers_agree(name: str, opts: dict[str, bool]) -> None:
    events, errors = both(GOOD[name], **opts)
    assert not errors
    assert len(events) >= (1 if GOOD[name] else 0)


@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "owned-tid", "owned-fderror"])
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_buffers_agree(name: str, opts: dict[str, bool]) -> None:
    _, errors = both(BAD[name], **opts)
    assert errors


@pytest.mark.parametrize(
    ("buf", "pidfd"),
    [
        (BAD["pidfd-then-error"], 3),
        (event(rec(PIDFD, struct.pack("=i", 8)), rec(MNT, b"\0" * 8)), 8),
        (event(rec(PIDFD, struct.pack("=i", -1)), rec(MNT, b"\0" * 8)), -1),
        (event(rec(MNT, b"\0" * 8), rec(PIDFD, struct.pack("=i", 8))), -1),  # never read
    ],
    ids=["stray-bytes", "short-record", "no-process", "after-the-error"],
)
def test_malformed_event_reports_the_pidfd_it_holds(buf: bytes, pidfd: int) -> None:
    _, (err,) = both(buf, owned=True, pid_is_tid=False, fd_error=False)
    assert err.pidfd == pidfd


def test_repeated_pidfd_owns_only_the_last() -> None:
    buf = event(rec(PIDFD, struct.pack("=i", 5)), rec(PIDFD, struct.pack("=i", -1)), fd=-1)
    (ev,), _ = both(buf, owned=True, pid_is_tid=False, fd_error=False)
    assert ev.pidfd == -1
    assert ev.closed


def test_buffer_types_and_nbytes() -> None:
    buf = GOOD["three-fd-events"] + GOOD["rename"]
    want, _ = parse_lenient(buf)
    opts: dict[str, Any] = {"owned": False, "pid_is_tid": False, "fd_error": False}
    for b in (buf, bytearray(buf), memoryview(buf), ffi.from_buffer("unsigned char[]", buf)):
        assert decode(b, len(buf), **opts) == (want, [])
    cbuf = ffi.new("unsigned char[]", len(buf) + 100)
    ffi.memmove(cbuf, buf, len(buf))
    assert decode(cbuf, len(buf), **opts) == (want, [])
    assert decode(buf + b"\xff" * 50, len(buf), **opts) == (want, [])
    assert decode(buf, 48, **opts) == (want[:2], [])
    with pytest.raises(ValueError, match="nbytes"):
        decode(buf, len(buf) + 1, **opts)


def test_decoder_grows_for_a_bigger_buffer(make_decoder: Any) -> None:
    dec = make_decoder(bufsize=64)
    buf = event() * 1000
    events, errors = dec.decode(buf, len(buf))
    assert len(events) == 1000 and not errors


# -- random and mutated buffers -----------------------------------------------

u32 = st.integers(0, 2**32 - 1)
s32 = st.integers(-(2**31), 2**31 - 1)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["fid", "pidfd", "error", "range", "mnt", "unknown", "raw"]))
    if kind == "fid":
        t = draw(st.sampled_from(FID_TYPES))
        handle = draw(st.binary(max_size=40))
        name = draw(st.binary(max_size=20).map(lambda b: b.replace(b"\0", b"")))
        return fid_rec(
            t,
            handle,
            name if t in (DFID_NAME, OLD, NEW) else None,
            (draw(u32), draw(u32)),
            draw(s32),
        )
    if kind == "pidfd":
        return rec(PIDFD, struct.pack("=i", draw(st.sampled_from([-2, -1, 0, 3, 1000]))))
    if kind == "error":
        return rec(ERROR, struct.pack("=iI", draw(s32), draw(u32)))
    if kind == "range":
        return rec(RANGE, struct.pack("=IQQ", 0, draw(st.integers(0, 2**64 - 1)), draw(u32)))
    if kind == "mnt":
        return rec(MNT, struct.pack("=IQ", 0, draw(st.integers(0, 2**64 - 1))))
    if kind == "unknown":
        return rec(draw(st.integers(8, 255)), draw(st.binary(max_size=12)))
    # A header of any type and length, then any bytes.
    body = draw(st.binary(max_size=40))
    return rec(draw(st.integers(0, 255)), body, draw(st.integers(0, 70)))


@st.composite
def events(draw: st.DrawFn) -> bytes:
    recs = draw(st.lists(records(), max_size=4))
    return event(
        *recs,
        mask=draw(
            st.sampled_from([1, 8, 0x100, 0x10000, 0x100000, 0x4000]) | st.integers(0, 2**64 - 1)
        ),
        fd=draw(st.sampled_from([-1, -2, -13, 0, 3, 2**31 - 1]) | s32),
        pid=draw(s32),
    )


buffers = st.lists(events(), max_size=6).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(buffers))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, len(buf)))
        if op == "set" and at < len(buf):
            buf[at] = draw(
                st.sampled_from([0, 1, 2, 3, 4, 23, 24, 0x7F, 0xFF]) | st.integers(0, 255)
            )
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[at : at + draw(st.integers(1, 8))]
    return bytes(buf)


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(buf=buffers, opts=st.sampled_from(OPTIONS))
def test_random_buffers_agree(buf: bytes, opts: dict[str, bool]) -> None:
    both(buf, **opts)


@SETTINGS
@given(buf=mutated(), opts=st.sampled_from(OPTIONS))
def test_mutated_buffers_agree(buf: bytes, opts: dict[str, bool]) -> None:
    both(buf, **opts)


@SETTINGS
@given(buf=st.binary(max_size=300), opts=st.sampled_from(OPTIONS))
def test_noise_agrees(buf: bytes, opts: dict[str, bool]) -> None:
    both(buf, **opts)


def asan_corpus() -> list[bytes]:
    """The hand-built buffers, every prefix of the good ones, and seeded mutations."""
    rnd = random.Random(0)
    bufs = [*GOOD.values(), *BAD.values()]
    bufs += [b[:i] for b in GOOD.values() for i in range(len(b))]
    whole = b"".join(GOOD.values())
    for _ in range(3000):
        start = rnd.randrange(len(whole))
        buf = bytearray(whole[start : start + rnd.randrange(400)])
        for _ in range(rnd.randrange(1, 5)):
            if buf:
                buf[rnd.randrange(len(buf))] = rnd.choice([0, 1, 2, 4, 23, 24, 255])
        bufs.append(bytes(buf))
    bufs += [rnd.randbytes(rnd.randrange(200)) for _ in range(1000)]
    return bufs


@pytest.mark.timeout(120)
def test_c_decoder_reads_nothing_past_the_buffer(tmp_path: Path) -> None:
    """The C walk under AddressSanitizer and UBSan, one exact-size allocation per buffer."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc with AddressSanitizer")
    root = REPO
    # build_ffi.py's C prelude, taken without importing the build script.
    tree = ast.parse((root / "build_ffi.py").read_text())
    source = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "_PRELUDE"
    )
    prelude = tmp_path / "prelude.h"
    prelude.write_text(ast.literal_eval(source))
    exe = tmp_path / "harness"
    build = subprocess.run(
        [
            gcc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-Wall", "-Wno-unused-function", f'-DPRELUDE="{prelude}"',
            f'-DFASTPATH="{root / "afanotify" / "csrc" / "fastpath.c"}"',
            str(Path(__file__).with_name("asan_harness.c")), "-o", str(exe),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if build.returncode != 0 and "asan" in build.stderr:
        pytest.skip(f"gcc cannot build with AddressSanitizer: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr
    corpus = asan_corpus()
    stdin = b"".join(struct.pack("=I", len(b)) + b for b in corpus)
    run = subprocess.run(
        [str(exe)], input=stdin, capture_output=True, check=False, timeout=100,
        env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
    assert run.stdout == f"{len(corpus)} buffers\n".encode()


# -- fds: path resolution and closing, on fds this process opened -------------


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """Three open files in tmp_path (the third unlinked); closed afterwards if still open."""
    fds = []
    for name in ("a.txt", "b.txt", "gone.txt"):
        (tmp_path / name).write_text(name)
        fds.append(os.open(tmp_path / name, os.O_RDONLY))
    os.unlink(tmp_path / "gone.txt")
    yield tmp_path, fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.mark.parametrize("arena_size", [None, 1, 0])
def test_resolve_fd_paths(
    files: tuple[Path, list[int]], arena_size: int | None, make_decoder: Any
) -> None:
    tmp, (a, b, gone) = files
    buf = event(fd=a) + event(fd=b, mask=int(Event.OPEN_PERM)) + event(fd=gone) + event(fd=-1)
    dec = make_decoder(arena_size=arena_size)
    evs, errors = dec.decode(buf, len(buf), owned=True, resolve_fd_paths=True)
    assert not errors
    assert [(e.fd, e.path, e.path_resolved) for e in evs] == [
        (a, str(tmp / "a.txt"), True),
        (b, str(tmp / "b.txt"), True),
        (gone, str(tmp / "gone.txt"), False),
        (-1, None, False),
    ]
    assert [e._owns for e in evs] == [OWN_FD, OWN_FD | UNANSWERED, OWN_FD, 0]
    # Apart from the path, the events are the pure parser's.
    ref, _ = parse_lenient(buf, owned=True)
    assert [e.fd for e in ref] == [e.fd for e in evs]
    assert all(is_open(fd) for fd in (a, b, gone))


# -- the kernel -----------------------------------------------------------------

CHILD = """
import os, sys
d = sys.argv[1]
for i in range(5):
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write("x")
os.rename(os.path.join(d, "f0.txt"), os.path.join(d, "moved.txt"))
os.unlink(os.path.join(d, "f1.txt"))
os.makedirs(os.path.join(d, "sub"), exist_ok=True)
"""


def run_child(d: Path) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(d)], check=True, timeout=30,
                   env=child_env(), cwd=CHILD_CWD)


def read_all(group: int) -> bytes:
    chunks = []
    while True:
        try:
            chunks.append(os.read(group, 65536))
        except BlockingIOError:
            return b"".join(chunks)


@pytest.mark.kernel
def test_kernel_fd_mode(tmpfs: Path, make_decoder: Any) -> None:
    group = _ffi.fanotify_init(InitFlag.CLOEXEC | InitFlag.NONBLOCK, os.O_RDONLY)
    try:
        mask = Event.OPEN | Event.CLOSE_WRITE | Event.MODIFY | Event.EVENT_ON_CHILD
        _ffi.fanotify_mark(group, MarkFlag.ADD, mask, lib.AT_FDCWD, str(tmpfs))
        run_child(tmpfs)
        raw = read_all(group)
        assert raw
        opts: dict[str, bool] = {"owned": False, "pid_is_tid": False, "fd_error": False}
        ref, ref_errors = both(raw, **opts)
        assert not ref_errors
        # OPEN, MODIFY and CLOSE_WRITE of one file by one process merge into one event.
        assert len(ref) >= 5
        resolved, _ = decode(raw, len(raw), resolve_fd_paths=True, **opts)
        for e in ref:
            os.close(e.fd)
        # The fds outlive the child's rename and unlink: a path is where the file is now.
        want = {(str(tmpfs / name), name != "f1.txt") for name in ("moved.txt", "f1.txt")}
        want |= {(str(tmpfs / f"f{i}.txt"), True) for i in range(2, 5)}
        assert {(e.path, e.path_resolved) for e in resolved} == want

    finally:
        os.close(group)


@pytest.mark.kernel
def test_kernel_dfid_name_mode(tmpfs: Path) -> None:
    flags = InitFlag.CLOEXEC | InitFlag.NONBLOCK | InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID
    group = _ffi.fanotify_init(flags, os.O_RDONLY)
    try:
        mask = Event.CREATE | Event.DELETE | Event.MOVE | Event.ONDIR | Event.EVENT_ON_CHILD
        _ffi.fanotify_mark(group, MarkFlag.ADD, mask, lib.AT_FDCWD, str(tmpfs))
        run_child(tmpfs)
        raw = read_all(group)
        ref, errors = both(raw, owned=True, pid_is_tid=False, fd_error=False)
        assert not errors
        names = [e.name for e in ref]
        assert names[:5] == [f"f{i}.txt" for i in range(5)]
        assert {"f0.txt", "moved.txt", "f1.txt", "sub"} <= set(names)
        assert all(e.dfid is not None and e.fd == -1 for e in ref)
    finally:
        os.close(group)


# -- paths filled while decoding (the group's FID fast path) -------------------


def _dir_events(*names: bytes, mask: int = int(Event.CREATE), pid: int = 4242) -> bytes:
    return b"".join(
        event(fid_rec(DFID_NAME, name=n), fd=-1, mask=mask, pid=pid) for n in names
    )


def test_dir_path_fills_paths_once_per_directory(make_decoder: Any) -> None:
    asked: list[Any] = []

    def dir_path(h: Any) -> str | None:
        asked.append(h)
        return "/d" if len(asked) > 1 else None  # the first answer: unresolvable

    other = event(fid_rec(DFID_NAME, handle=b"other123", name=b"z"), fd=-1, mask=int(Event.CREATE))
    buf = _dir_events(b"a", b"b", b".") + other + _dir_events(b"", b"c", pid=99)
    dec = make_decoder()
    events, errors = dec.decode(buf, len(buf), dir_path=dir_path, skip_pids={99})
    plain, _ = dec.decode(buf, len(buf))
    assert not errors and dec.resolved_upto == len(events) == 6
    got = [(e.dir_path, e.path, e.path_resolved) for e in events]
    assert got == [
        (None, "a", False),  # None is asked again
        ("/d", "/d/b", True),
        ("/d", "/d", True),
        ("/d", "/d/z", True),
        (None, None, False),  # a skipped pid: left to the caller
        (None, None, False),
    ]
    assert len(asked) == 3  # a, b (then cached for ".") and the other directory
    for e, p in zip(events, plain, strict=True):  # every other field as decoded plainly
        assert dataclasses.replace(e, dir_path=None, path=None, path_resolved=False) == p


@pytest.mark.parametrize(
    ("middle", "upto"),
    [
        (event(fid_rec(DFID_NAME, name=b"sub"), fd=-1, mask=int(Event.DELETE | Event.ONDIR)), 1),
        (event(fid_rec(FID), fd=-1, mask=int(Event.DELETE_SELF | Event.ONDIR)), 1),
        (
            event(fid_rec(OLD, name=b"x"), fid_rec(NEW, name=b"y"), fd=-1,
                  mask=int(Event.RENAME | Event.ONDIR)),
            1,
        ),
        # Left to the caller, but no reason to stop: a file renamed, a file's own event.
        (event(fid_rec(OLD, name=b"x"), fid_rec(NEW, name=b"y"), fd=-1, mask=int(Event.RENAME)), 3),
        (event(fid_rec(FID), fd=-1, mask=int(Event.DELETE_SELF)), 3),
    ],
    ids=["dir-deleted", "dir-self-deleted", "dir-renamed", "file-renamed", "fid"],
)
def test_dir_path_stops_where_the_caller_must_take_over(
    middle: bytes, upto: int, make_decoder: Any
) -> None:
    buf = _dir_events(b"a") + middle + _dir_events(b"b")
    dec = make_decoder()
    events, _ = dec.decode(buf, len(buf), dir_path=lambda h: "/d")
    assert dec.resolved_upto == upto
    assert events[0].path == "/d/a" and events[1].path is None
    assert events[2].path == ("/d/b" if upto == 3 else None)


@pytest.mark.parametrize(
    "names", [[b"a", b"b"], [b"caf\xe9", b"\xff", b"plain"]], ids=["ascii", "not-utf8"]
)
def test_dir_path_numbers_directories_past_the_c_table(
    names: list[bytes], make_decoder: Any
) -> None:
    # More distinct directories than the C walk numbers (64), each seen twice.
    handles = [b"dir%05d" % i for i in range(70)]
    buf = b"".join(
        event(fid_rec(DFID_NAME, handle=h, name=names[i % len(names)]), fd=-1)
        for _ in range(2)
        for i, h in enumerate(handles)
    )
    dec = make_decoder()
    events, errors = dec.decode(buf, len(buf), dir_path=lambda h: "/" + h.handle.decode())
    plain, _ = dec.decode(buf, len(buf))
    assert not errors and len(events) == 140
    for i, (e, p) in enumerate(zip(events, plain, strict=True)):
        assert e.path == f"/{handles[i % 70].decode()}/{p.name}" and e.path_resolved
        assert dataclasses.replace(e, dir_path=None, path=None, path_resolved=False) == p
    # One FileHandle object per directory, numbered or not.
    assert all(events[i].dfid is events[i + 70].dfid for i in range(70))


def test_dir_path_joins_names_under_the_root(make_decoder: Any) -> None:
    buf = _dir_events(b"a", b"", b".", b"b")
    events, _ = make_decoder().decode(buf, len(buf), dir_path=lambda h: "/")
    assert [e.path for e in events] == ["/a", "/", "/", "/b"]


# -- the C event builder ---------------------------------


def test_c_builder_is_built_and_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core built here has the C builder, and a uniform batch takes one call."""
    assert _BUILD is not None
    calls: list[tuple[int, int]] = []

    def spy(*args: Any) -> tuple[int, int, int]:
        calls.append((args[1], args[2]))
        return _BUILD(*args)  # type: ignore[misc]

    monkeypatch.setattr("afanotify._fastparse._BUILD", spy)
    buf = _dir_events(*[b"f%d" % i for i in range(500)])
    events, _ = Decoder().decode(buf, len(buf), dir_path=lambda h: "/d")
    assert calls == [(0, 500)]
    assert [e.path for e in events] == [f"/d/f{i}" for i in range(500)]


def _spy_build(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Record each call of the C builder as (start, count, stop)."""
    calls: list[tuple[int, int, int]] = []

    def spy(*args: Any) -> tuple[int, int, int]:
        result: tuple[int, int, int] = _BUILD(*args)  # type: ignore[misc]
        calls.append((args[1], args[2], result[0]))
        return result

    monkeypatch.setattr("afanotify._fastparse._BUILD", spy)
    return calls


_PIDFD_11 = rec(PIDFD, struct.pack("=i", 11))
_RANGE_REC = rec(RANGE, struct.pack("=IQQ", 0, 2**40 + 1, 4096))
#: Shapes the C builder takes itself, records of every known type among them.
C_BUILT = {
    "fd-mode": event(),
    "perm": event(mask=int(Event.OPEN_PERM), fd=9),
    "pidfd-fd-mode": event(_PIDFD_11, fd=7),
    "pidfd-fd-mode-perm": event(_PIDFD_11, fd=7, mask=int(Event.OPEN_PERM)),
    "pidfd-gone": event(rec(PIDFD, struct.pack("=i", -1)), fd=7),
    "pidfd-error": event(rec(PIDFD, struct.pack("=i", -2)), fd=-1),
    "pidfd-repeated": event(_PIDFD_11, rec(PIDFD, struct.pack("=i", -1)), fd=-1),
    "pidfd-fid": event(fid_rec(DFID_NAME, name=b"n"), _PIDFD_11, fd=-1),
    "range": event(_RANGE_REC, mask=int(Event.PRE_ACCESS), fd=8),
    "range-pidfd": event(_RANGE_REC, _PIDFD_11, mask=int(Event.PRE_ACCESS), fd=8),
    "error": GOOD["error"],
    "error-negative": event(rec(ERROR, struct.pack("=iI", -(2**31), 2**32 - 1)), fd=-1),
    "mnt": GOOD["mnt"],
    "rename": GOOD["rename"],
    "rename-not-utf8": event(
        fid_rec(OLD, name=b"caf\xe9"), fid_rec(NEW, name=b"\xff"), fd=-1, mask=int(Event.RENAME)
    ),
    "fd-error": event(fd=-13),
    "fd-error-min": event(fd=-(2**31)),
    "fd-error-pidfd": event(_PIDFD_11, fd=-24),
    "dfid-name-then-dfid": GOOD["dfid-name-then-dfid"],
    "every-known-record": event(
        fid_rec(FID),
        fid_rec(DFID_NAME, name=b"n"),
        fid_rec(OLD, name=b"o"),
        fid_rec(NEW, name=b"w"),
        rec(PIDFD, struct.pack("=i", 3)),
        rec(ERROR, struct.pack("=iI", -5, 1)),
        rec(RANGE, struct.pack("=IQQ", 0, 1, 2)),
        rec(MNT, struct.pack("=IQ", 0, 9)),
        fd=-1,
    ),
    "big-metadata-records": GOOD["big-metadata-records"],
}


@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "owned-tid", "owned-fderror"])
@pytest.mark.parametrize("name", sorted(C_BUILT))
def test_c_builder_builds_every_known_shape(
    name: str, opts: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three events of each shape: one call of the C builder, none handed back,
    and the reference parser's events, ownership bits included."""
    buf = C_BUILT[name] * 3
    calls = _spy_build(monkeypatch)
    events, errors = Decoder().decode(buf, len(buf), **opts)
    ref, ref_errors = parse_lenient(buf, **opts)
    assert calls == [(0, 3, 3)]
    assert not errors and not ref_errors
    assert [event_key(e) for e in events] == [event_key(e) for e in ref]


def test_c_builder_builds_fd_paths_with_records(
    files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, (a, b, gone) = files
    buf = (
        event(_PIDFD_11, fd=a)
        + event(rec(PIDFD, struct.pack("=i", -1)), fd=gone, mask=int(Event.OPEN_PERM))
        + event(_RANGE_REC, fd=b, mask=int(Event.PRE_ACCESS))
    )
    calls = _spy_build(monkeypatch)
    events, errors = Decoder().decode(buf, len(buf), owned=True, resolve_fd_paths=True)
    assert calls == [(0, 3, 3)] and not errors
    assert [(e.fd, e.path, e.path_resolved) for e in events] == [
        (a, str(tmp / "a.txt"), True),
        (gone, str(tmp / "gone.txt"), False),  # " (deleted)" taken off
        (b, str(tmp / "b.txt"), True),
    ]
    # PRE_ACCESS is a permission event too.
    assert [e._owns for e in events] == [OWN_FD | OWN_PIDFD] + [OWN_FD | UNANSWERED] * 2
    ref, _ = parse_lenient(buf, owned=True)
    unresolved = [dataclasses.replace(e, path=None, path_resolved=False) for e in events]
    assert unresolved == ref


@pytest.mark.parametrize(
    ("buf", "calls"),
    [
        (event() + event(rec(99, b"abcd"), fd=-1) + event(), [(0, 3, 1), (2, 3, 3)]),
        (event() + event(fid_rec(FID), rec(8, b""), fd=-1), [(0, 2, 1)]),
        (event() + BAD["mnt-short"] + event(), [(0, 3, 1), (2, 3, 3)]),
        (BAD["version"], [(0, 2, 0), (1, 2, 2)]),
        (BAD["short-tail"], [(0, 2, 1)]),
    ],
    ids=["unknown-record", "unknown-after-known", "malformed", "bad-version", "short-tail"],
)
def test_c_builder_hands_back_only_what_it_cannot_build(
    buf: bytes, calls: list[tuple[int, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    got = _spy_build(monkeypatch)
    events, errors = Decoder().decode(buf, len(buf))
    assert got == calls
    ref_events, ref_errors = parse_lenient(buf)
    assert events == ref_events
    assert [error_key(e) for e in errors] == [error_key(e) for e in ref_errors]


def test_c_builder_hands_back_paths_past_the_arena(
    files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, (a, b, _) = files
    buf = event(fd=a) + event(fd=b, mask=int(Event.OPEN_PERM))
    calls = _spy_build(monkeypatch)
    events, _ = Decoder(arena_size=0).decode(buf, len(buf), owned=True, resolve_fd_paths=True)
    assert calls == [(0, 2, 0), (1, 2, 1)]  # AFN_PATH_RETRY: Python reads the links
    assert [e.path for e in events] == [str(tmp / "a.txt"), str(tmp / "b.txt")]


def _setup_args() -> tuple[Any, ...]:
    names = tuple(FanotifyData.__slots__)  # type: ignore[attr-defined]
    defaults = tuple(getattr(FanotifyData(), n) for n in names)
    return names, defaults, ("fsid", "handle_type", "handle")


#: _builder_setup's last three arguments: the bits of FanotifyData._owns.
OWNS = (OWN_FD, OWN_PIDFD, UNANSWERED)


def test_builder_setup_refuses_other_classes_and_keeps_working() -> None:
    from afanotify import _fanotify

    @dataclasses.dataclass(frozen=True)
    class WithDict:
        fd: int = -1

    names, defaults, handle_slots = _setup_args()
    with pytest.raises(TypeError, match="not a plain slotted class"):
        _fanotify._builder_setup(WithDict, FileHandle, names, defaults, handle_slots, *OWNS)
    with pytest.raises(TypeError, match="slots not listed"):
        _fanotify._builder_setup(
            FanotifyData, FileHandle, names[:-1], defaults[:-1], handle_slots, *OWNS
        )
    with pytest.raises(TypeError, match="no slot"):
        _fanotify._builder_setup(FanotifyData, FileHandle, names, defaults, ("a", "b", "c"), *OWNS)
    # A refused setup leaves the working one in place.
    buf = _dir_events(b"x")
    (ev,), _ = Decoder().decode(buf, len(buf), dir_path=lambda h: "/d")
    assert ev.path == "/d/x" and type(ev) is FanotifyData


def test_c_builder_passes_dir_path_errors_on() -> None:
    def broken(h: Any) -> str:
        raise LookupError("resolver failed")

    buf = _dir_events(b"a", b"b")
    with pytest.raises(LookupError, match="resolver failed"):
        Decoder().decode(buf, len(buf), dir_path=broken)


def test_untrack_leaves_only_permission_events_to_the_collector(
    files: tuple[Path, list[int]]
) -> None:
    import gc

    _, (a, b, _) = files
    buf = (
        event(fd=a) + event(fd=b, mask=int(Event.OPEN_PERM))
        + _dir_events(b"x") + event(fid_rec(FID), fd=-1)
    )  # fmt: skip
    dec = Decoder()
    kept, _ = dec.decode(buf, len(buf))
    dec.untrack = True
    events, _ = dec.decode(buf, len(buf))
    assert events == kept
    assert all(gc.is_tracked(e) for e in kept)  # untrack is off by default
    assert [gc.is_tracked(e) for e in events] == [False, True, False, False]
    assert not gc.is_tracked(events[2].dfid) and not gc.is_tracked(events[3].fid)


# Directory handles from a small pool (shared within a batch) and a large one
# (past the 64 the C walk numbers).
_HANDLES = [b"h%d" % i for i in range(4)] + [b"wide%04d" % i for i in range(90)]


@st.composite
def fid_batches(draw: st.DrawFn) -> bytes:
    """Mostly FID-shape events, with the shapes that end the C builder's run between."""
    out = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["name"] * 6 + ["dfid", "fid-name", "other"]))
        handle = draw(st.sampled_from(_HANDLES))
        name = draw(st.sampled_from([b"a", b"", b".", b"caf\xe9", b"x" * 30, b"\xff"]))
        mask = draw(
            st.sampled_from([int(Event.CREATE), int(Event.DELETE), int(Event.DELETE | Event.ONDIR)])
        )
        pid = draw(st.sampled_from([1, 2, 99]))
        if kind == "name":
            out.append(event(fid_rec(DFID_NAME, handle, name), fd=-1, mask=mask, pid=pid))
        elif kind == "dfid":
            out.append(event(fid_rec(DFID, handle), fd=-1, mask=mask, pid=pid))
        elif kind == "fid-name":
            out.append(
                event(fid_rec(DFID_NAME, handle, name), fid_rec(FID, b"self"), fd=-1, mask=mask,
                      pid=pid)
            )  # fmt: skip
        else:
            out.append(draw(events()))
    return b"".join(out)


def _resolver(asked: list[Any]) -> Any:
    def dir_path(h: Any) -> str | None:
        asked.append(h)
        n = (h.handle[-1] if h.handle else 0) % 3
        return None if n == 0 else "/" if n == 1 else "/d/" + h.handle.hex()

    return dir_path


def _pidfd_records(buf: bytes, **opts: bool) -> list[bool]:
    """Per good event of ``buf`` (parse_lenient's order): has it a PIDFD record?

    The parsed event cannot say: a record holding FAN_NOPIDFD (-1) leaves
    ``pidfd`` at -1, as no record does.  The C builder sees the record.
    """
    mv = memoryview(buf)
    out = []
    off = 0
    while 0 <= off < len(mv):
        start = off
        # Never owned: these copies must not close what the test's events hold.
        item, off = parse_event(mv, off, **{**opts, "owned": False})
        if isinstance(item, ParseError):
            continue
        event_len, _v, _r, meta_len = METADATA.unpack_from(mv, start)[:4]
        pos, end, found = start + meta_len, start + event_len, False
        while pos < end:  # the records are well formed: the event parsed
            info_type, _pad, rlen = INFO_HEADER.unpack_from(mv, pos)
            found = found or info_type == PIDFD
            pos += rlen
        out.append(found)
    return out


def _plain_fid_shape(e: FanotifyData, pidfd_rec: bool = False) -> bool:
    """A DFID or DFID_NAME record, maybe FID and PIDFD records, and nothing else.

    (``pidfd_rec`` is kept for the callers: a PIDFD record, whatever it
    holds, leaves the shape plain.)
    """
    return (
        e.dfid is not None and e.fd == -1 and e.fd_error is None and e.old_dfid is None
        and e.new_dfid is None and e.error is None
        and e.range_offset is None and e.mnt_id is None and not e.unknown_records
    )  # fmt: skip


def _has_records(e: FanotifyData, pidfd_rec: bool = False) -> bool:
    return any(
        v is not None for v in (e.fid, e.dfid, e.old_dfid, e.new_dfid, e.error, e.range_offset,
                                e.mnt_id)
    ) or e.pidfd != -1 or pidfd_rec or bool(e.unknown_records)  # fmt: skip


def _reference_dir_paths(
    events: list[FanotifyData], pidfd_recs: list[bool], dir_path: Any, skip: Any
) -> tuple[list[tuple[Any, ...]], list[Any], int, int]:
    """What ``Decoder.decode(dir_path=...)`` must give, from the pure parser's events.

    The plain FID+name shape before the cut gets ``dir_path``, ``path`` and
    ``path_resolved``; ``dir_path`` is asked once per distinct directory (a
    None answer is asked again); the cut is the first event with a directory
    record of another shape, or a directory that moved or went away.
    ``pidfd_recs`` (from :func:`_pidfd_records`) says which events carry a
    PIDFD record: it keeps the plain shape (a group with FAN_REPORT_PIDFD
    has one on every event), but with a directory change it is a record, so
    the cut is there.
    """
    asked: list[Any] = []
    known: dict[Any, str] = {}
    out = []
    upto = len(events)
    filled = 0
    for i, (e, pidfd_rec) in enumerate(zip(events, pidfd_recs, strict=True)):
        plain = _plain_fid_shape(e, pidfd_rec)
        dir_change = e.ev_types & int(DIR_CHANGE_EVENTS) and e.ev_types & int(Event.ONDIR)
        # (An event with no records at all is never a cut: FID groups send none.)
        if upto == len(events) and (
            (dir_change and _has_records(e, pidfd_rec)) or (e.dfid is not None and not plain)
        ):
            upto = i
        if i >= upto or not plain or e.pid in skip:
            out.append((event_key(e), e.dir_path, e.path, e.path_resolved))
            continue
        d = known.get(e.dfid)
        if d is None:
            asked.append(e.dfid)
            d = dir_path(e.dfid)
            if d is not None:
                known[e.dfid] = d
        filled += 1
        if d is None:
            path, ok = e.name, False
        elif not e.name or e.name == ".":
            path, ok = d, True
        else:
            path, ok = (d if d == "/" else d + "/") + e.name, True
        full = dataclasses.replace(e, dir_path=d, path=path, path_resolved=ok)
        out.append((event_key(full), d, path, ok))
    return out, asked, upto, filled


@SETTINGS
@given(buf=fid_batches(), opts=st.sampled_from(OPTIONS), skip=st.sampled_from([(), {99}]))
def test_c_builder_fills_dir_paths_as_the_reference(
    buf: bytes, opts: dict[str, bool], skip: Any
) -> None:
    dec = Decoder()
    asked: list[Any] = []
    events, errors = dec.decode(buf, len(buf), dir_path=_resolver(asked), skip_pids=skip, **opts)
    ref_events, ref_errors = parse_lenient(buf, **opts)
    recs = _pidfd_records(buf, **opts)
    want, want_asked, upto, filled = _reference_dir_paths(ref_events, recs, _resolver([]), skip)
    assert [(event_key(e), e.dir_path, e.path, e.path_resolved) for e in events] == want
    assert [error_key(e) for e in errors] == [error_key(e) for e in ref_errors]
    assert asked == want_asked
    assert (dec.resolved_upto, dec.resolved_count) == (upto, filled)
    # Events of the plain shape with equal directory records share one
    # FileHandle object (the resolver's cache relies on it).
    plain = [e for e, r in zip(events, recs, strict=True) if _plain_fid_shape(e, r)]
    for e in plain:
        assert all(other.dfid is e.dfid for other in plain if other.dfid == e.dfid)



def test_resolve_fd_paths_not_utf8(tmp_path: Path, make_decoder: Any) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.txt"
    fd = os.open(raw, os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        buf = event(fd=fd) + event(fd=fd, mask=int(Event.OPEN))
        evs, _ = make_decoder().decode(buf, len(buf), resolve_fd_paths=True)
        assert [(e.path, e.path_resolved) for e in evs] == [(os.fsdecode(raw), True)] * 2
        os.unlink(raw)
        evs, _ = make_decoder().decode(buf, len(buf), resolve_fd_paths=True)
        assert [(e.path, e.path_resolved) for e in evs] == [(os.fsdecode(raw), False)] * 2
    finally:
        os.close(fd)


def test_builder_setup_refuses_a_class_without_a_base() -> None:
    from afanotify import _fanotify

    with pytest.raises(TypeError, match="not a plain slotted class"):
        _fanotify._builder_setup(object, object, (), (), ("a", "b", "c"), *OWNS)


def test_c_builder_survives_a_dir_path_that_meddles() -> None:
    """A callback that empties the batch's directory table, or sets the builder up
    again, gets an exception, not a crash (the entry in use is held)."""
    import sys as _sys

    from afanotify import _fanotify

    def clears_the_table(h: Any) -> str:
        frame = _sys._getframe(1)
        while "numbered" not in frame.f_locals:
            assert frame.f_back is not None
            frame = frame.f_back
        frame.f_locals["numbered"][:] = []
        return "/d"

    def sets_up_again(h: Any) -> str:
        _fanotify._builder_setup(FanotifyData, FileHandle, *_setup_args(), *OWNS)
        return "/d"

    buf = _dir_events(b"a", b"b")
    with pytest.raises(IndexError):
        Decoder().decode(buf, len(buf), dir_path=clears_the_table)
    with pytest.raises(RuntimeError, match="while _build runs"):
        Decoder().decode(buf, len(buf), dir_path=sets_up_again)
    (ev, _), _ = Decoder().decode(buf, len(buf), dir_path=lambda h: "/d")
    assert ev.path == "/d/a"


def test_c_builder_checks_every_offset_it_is_given() -> None:
    """An entry pointing outside the batch is refused, whatever flags it claims."""
    from afanotify import _fanotify

    buf = _dir_events(b"a")
    dec = Decoder()
    dec.decode(buf, len(buf))  # fills dec._out with one good entry
    for field, value, has in (
        ("name_off", 10_000, lib.AFN_HAS_NAME),  # a name with no directory record
        ("rec", 2**32 - 8, lib.AFN_HAS_DFID),
        ("name_len", 2**32 - 1, lib.AFN_HAS_DFID | lib.AFN_HAS_NAME),
    ):
        entry = ffi.new("struct afn_event *")
        ffi.memmove(entry, dec._out, ffi.sizeof("struct afn_event"))
        entry.has = has
        setattr(entry.dfid, field, value)
        with pytest.raises(ValueError, match="outside the batch"):
            _fanotify._build(
                ffi.buffer(entry), 0, 1, buf, b"", [], [None] * lib.AFN_MAX_DIRS, {}, None, (),
                0, 0, 0,
            )  # fmt: skip
