"""Every C file of the core under AddressSanitizer and UndefinedBehaviorSanitizer.

The whole cffi extension (build_ffi.py's inline C and every afanotify/csrc/*.c)
is compiled again with ``-fsanitize=address,undefined`` into a temporary copy
of the package, and a Python child with gcc's libasan and libubsan preloaded
drives the C walk, the C builder and the static-rule walk over the
differential corpus (and the C step of ``async for`` through each of its
branches, tests/test_events_iter.py), and the watch's line formatter over
seeded random batches: every
hand-built shape, prefixes of them, and seeded random and mutated buffers.
Each buffer is copied into an allocation of exactly its size (the child runs
with ``PYTHONMALLOC=malloc``, so the sanitizer sees every allocation), which
makes one byte read past its end a failure.  Any sanitizer report ends the
child with a nonzero status.  (CPython's own flags, which the build inherits,
include -fwrapv: signed overflow is defined there, so UBSan does not flag it.)
The decoded events must also be the pure parser's, so the -O1 sanitized
build is held to the same results as the shipped one.

The drain thread (csrc/fastpath_drain.c) runs in the same sanitized build,
driven by tests/sanitize_drain.py: over a socketpair (every corpus buffer as
one read of exactly its size, then real pidfds, the memory bound and the gap
record) and over a real FID group on a private tmpfs.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import REPO
from sanitize_drain import DRAIN_DRIVER
from test_events_iter import SCENARIO as ITER_SCENARIO
from test_fastparse_differential import (
    BAD,
    C_BUILT,
    DFID,
    DFID_NAME,
    FID,
    GOOD,
    NEW,
    OLD,
    PIDFD,
    asan_corpus,
    event,
    fid_rec,
    rec,
)

from afanotify.flags import Event

SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined")
#: AFN_NO_FREE_LIST: freed events are not kept for reuse, so ASan sees every free.
CFLAGS = (
    "-O1", "-g", *SANITIZE, "-fno-omit-frame-pointer", "-Wall", "-Wno-unused-function",
    "-DAFN_NO_FREE_LIST",
)  # fmt: skip

# Run in the child: the sanitized copy of afanotify, one decode per buffer,
# options and directory resolver (the C builder's FID+name protocol).
DRIVER = r'''
import struct, sys
from pathlib import Path

pkg = Path(sys.argv[2]).resolve()
import afanotify
from afanotify import _fanotify, _fastparse
from afanotify._ffi import ffi
from afanotify._parser import parse_lenient
from afanotify.flags import Event

assert Path(afanotify.__file__).resolve().parent == pkg, afanotify.__file__
assert Path(_fanotify.__file__).resolve().parent == pkg, _fanotify.__file__
assert _fastparse._BUILD is not None, "the sanitized core has no C builder"
maps = Path("/proc/self/maps").read_text()
assert "libasan" in maps and "libubsan" in maps, "the sanitizer runtimes are not loaded"

data = Path(sys.argv[1]).read_bytes()
bufs, pos = [], 0
while pos < len(data):
    (n,) = struct.unpack_from("=I", data, pos)
    bufs.append(data[pos + 4 : pos + 4 + n])
    pos += 4 + n

def dir_path(h):
    n = h.handle[-1] % 3 if h.handle else 0
    return None if n == 0 else "/" if n == 1 else "/d/" + h.handle.hex()

def key(e):
    return (e, e._owns)

def err_key(e):
    return (type(e), str(e), e.offset, e.fd, e.pid, e.mask, e.pidfd)

dec = _fastparse.Decoder()
decoded = 0
for buf in bufs:
    n = len(buf)
    exact = ffi.new("unsigned char[]", n)
    ffi.memmove(exact, buf, n)
    for pid_is_tid, fd_error in ((False, False), (True, False), (False, True)):
        for resolver in (None, dir_path):
            events, errors = dec.decode(
                exact, n, owned=False, pid_is_tid=pid_is_tid, fd_error=fd_error,
                dir_path=resolver, resolve_fd_paths=False,
            )
            decoded += 1
            if resolver is None:
                ref, ref_errors = parse_lenient(buf, pid_is_tid=pid_is_tid, fd_error=fd_error)
                assert [key(e) for e in events] == [key(e) for e in ref], buf
                assert [err_key(e) for e in errors] == [err_key(e) for e in ref_errors], buf
    # watch_tree's filter in the builder, and the walk's move check, on the same buffer.
    dec.decode(
        exact, n, owned=False, dir_path=dir_path, tree=("/d", "/", "d", (1 << 64) - 1),
        moves=int(Event.MOVED_FROM | Event.MOVED_TO | Event.RENAME), on_walk=lambda flags: None,
    )

# The static-rule walk (csrc/fastpath_rules.c) over the same buffers: once
# keeping every event (no rule decides), which must leave the buffer as it
# was; once deciding every permission event by a path rule and a default.
# Deciding closes the events' fds, so every fd above 2 is closed first and
# buffers naming 0, 1 or 2 are only walked.
import os
from afanotify._static import StaticRule, StaticRules
os.closerange(3, 4096)
keep_all = StaticRules([], None, own_pid=-1)
decide_all = StaticRules([StaticRule(False, "r", path="*.key")], True, own_pid=-1,
                         on_decided=lambda ds: None)
walked = 0
for buf in bufs:
    n = len(buf)
    exact = bytearray(buf)
    left = keep_all.apply(-1, memoryview(exact))
    assert bytes(left) == buf, buf
    ref, _ = parse_lenient(buf)
    if all(e.fd > 2 or e.fd < 0 for e in ref):
        decide_all.apply(-1, memoryview(bytearray(buf)))
    walked += 1

# The watch's line formatter (csrc/fastpath_format.c) on seeded random
# batches, in every form, held to the Python formatter; long names make the
# output buffer grow past its first allocation.
import random
from afanotify._cli_output import BatchFormatter, Template
from afanotify.events import FanotifyData
rnd = random.Random(5)
pieces = ["a", "", "x" * 300, "tab\t", "nl\n", '"', "\\", "caf\u00e9", "\U0001f600",
          os.fsdecode(b"\xff\xfe"), "\x7f", "/"]
masks = [int(m) for m in (Event.CREATE, Event.DELETE | Event.ONDIR, Event.RENAME,
                          Event.Q_OVERFLOW, Event.MODIFY)] + [0, (1 << 64) - 1]
def text():
    if rnd.random() < 0.2:
        return None
    return "/".join(rnd.choice(pieces) for _ in range(rnd.randrange(5)))
forms = [{"json": True}, {}, {"time_format": "%Y %f"}, {"template": Template(
    "{time}{pid:>9}{comm!r}{exe:.3}{cwd}{events}{actions}{type}{path}{dir}{name}"
    "{old_path}{new_path}{resolved}")}]
formatted = 0
for _ in range(40):
    evs = [FanotifyData(pid=rnd.choice([-1, 0, 1, 2, 2**70]), ev_types=rnd.choice(masks),
                        path=text(), dir_path=text(), name=text(), old_path=text(),
                        new_path=text(), exe=text(), cwd=text(),
                        path_resolved=rnd.random() < 0.5)
           for _ in range(rnd.randrange(1, 300))]
    procs = {p: (text(), text(), text()) for p in (1, 2)}
    for kw in forms:
        c = BatchFormatter(**kw)
        assert c.in_c, "the sanitized core has no C formatter"
        assert c.format(evs, procs, 1e9 + 0.5) == BatchFormatter(**kw, use_c=False).format(
            evs, procs, 1e9 + 0.5)
        formatted += 1
print(len(bufs), decoded + walked, formatted)
'''


def _runtime(gcc: str, name: str) -> str | None:
    """gcc's path to a sanitizer runtime; gcc answers with the bare name when it has none."""
    out = subprocess.run(
        [gcc, f"-print-file-name={name}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


def _dir_batches(rnd: random.Random, count: int) -> list[bytes]:
    """Runs of FID+name events over a small and a large pool of directories (past the
    64 the C walk numbers), with the shapes that cut or end the C builder's run."""
    handles = [b"h%d" % i for i in range(4)] + [b"wide%04d" % i for i in range(90)]
    names = [b"a", b"", b".", b"caf\xe9", b"x" * 30, b"\xff"]
    masks = [int(Event.CREATE), int(Event.DELETE), int(Event.DELETE | Event.ONDIR)]
    out = []
    for _ in range(count):
        evs = []
        for _ in range(rnd.randrange(1, 40)):
            h, name = rnd.choice(handles), rnd.choice(names)
            kw = {"fd": -1, "mask": rnd.choice(masks), "pid": rnd.choice([1, 2, 99])}
            kind = rnd.randrange(6)
            if kind == 0:
                evs.append(event(fid_rec(DFID, h), **kw))
            elif kind == 1:
                evs.append(event(fid_rec(DFID_NAME, h, name), fid_rec(FID, b"self"), **kw))
            elif kind == 2:
                evs.append(event(fid_rec(DFID_NAME, h, name), rec(PIDFD, b"\0" * 4), **kw))
            elif kind == 3:
                evs.append(event(fid_rec(OLD, h, name), fid_rec(NEW, h, name), **kw))
            else:
                evs.append(event(fid_rec(DFID_NAME, h, name), **kw))
        out.append(b"".join(evs))
    return out


def _mutate(rnd: random.Random, buf: bytes) -> bytes:
    b = bytearray(buf)
    for _ in range(rnd.randrange(1, 5)):
        if b:
            b[rnd.randrange(len(b))] = rnd.choice([0, 1, 2, 3, 4, 23, 24, 0x7F, 0xFF])
    if b and rnd.random() < 0.3:
        del b[rnd.randrange(len(b)) :]
    return bytes(b)


def corpus() -> list[bytes]:
    rnd = random.Random(1)
    bufs = asan_corpus()  # the hand-built shapes, their prefixes, mutations, noise
    bufs += [b * 3 for b in C_BUILT.values()]
    bufs += [b"".join(GOOD.values()), b"".join(BAD.values())]
    batches = _dir_batches(rnd, 150)
    bufs += batches
    bufs += [_mutate(rnd, rnd.choice(batches)) for _ in range(600)]
    # A longer fuzz run on demand (docs/reliability.md records one):
    # AFANOTIFY_FUZZ_BUFFERS=100000 pytest tests/test_sanitizers.py --timeout=3600
    extra = _EXTRA
    pool = [*batches, *GOOD.values(), b"".join(GOOD.values())]
    for _ in range(extra):
        kind = rnd.randrange(3)
        if kind == 0:
            bufs.append(_mutate(rnd, rnd.choice(pool)))
        elif kind == 1:
            bufs.append(_mutate(rnd, rnd.choice(pool) + rnd.choice(pool)))
        else:
            bufs.append(rnd.randbytes(rnd.randrange(300)))
    return bufs


#: Fuzzed buffers added on demand (AFANOTIFY_FUZZ_BUFFERS, see corpus()).
_EXTRA = int(os.environ.get("AFANOTIFY_FUZZ_BUFFERS", "0"))


class Sanitized(NamedTuple):
    """The sanitized copy of the package and the environment its child runs in."""

    root: Path
    pkg: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory: pytest.TempPathFactory) -> Sanitized:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the core with sanitizers")
    asan, ubsan = _runtime(gcc, "libasan.so"), _runtime(gcc, "libubsan.so")
    if asan is None or ubsan is None:
        pytest.skip(f"gcc has no sanitizer runtimes (libasan: {asan}, libubsan: {ubsan})")
    tmp_path = tmp_path_factory.mktemp("sanitized")

    # The package's Python files, then the sanitized extension beside them.
    pkg = tmp_path / "afanotify"
    pkg.mkdir()
    for src in (REPO / "afanotify").glob("*.py"):
        shutil.copy2(src, pkg / src.name)
    build = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import build_ffi\n"
        f"build_ffi.make_builder({CFLAGS!r}, {SANITIZE[:1]!r}).compile(tmpdir={str(tmp_path)!r})\n"
    )
    built = subprocess.run(
        [sys.executable, "-c", build], cwd=tmp_path, capture_output=True, text=True,
        check=False, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    assert list(pkg.glob("_fanotify*.so")), "the sanitized build wrote no extension"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ASAN_", "UBSAN_"))
    }
    env.update(
        PYTHONPATH=str(tmp_path),
        PYTHONMALLOC="malloc",
        LD_PRELOAD=f"{asan}:{ubsan}",
        # CPython itself leaks at exit; the allocations the C code makes are checked
        # for leaks by the asan_harness test.
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
        UBSAN_OPTIONS="print_stacktrace=1",
    )
    return Sanitized(tmp_path, pkg, env)


def _run_child(san: Sanitized, source: str, *args: str, timeout: float) -> list[str]:
    """Run ``source`` in the sanitized child; its printed words, after it ended clean."""
    driver = san.root / "driver.py"
    driver.write_text(source)
    run = subprocess.run(
        [sys.executable, str(driver), *args], cwd=san.root, env=san.env,
        capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip
    report = run.stderr[-4000:]
    assert run.returncode == 0, report
    assert "Sanitizer" not in run.stderr and "runtime error" not in run.stderr, report
    return run.stdout.split()


def _write_corpus(san: Sanitized, bufs: list[bytes]) -> Path:
    data = san.root / "corpus.bin"
    data.write_bytes(b"".join(struct.pack("=I", len(b)) + b for b in bufs))
    return data


@pytest.mark.timeout(180 + _EXTRA // 20)
def test_the_core_is_clean_under_asan_and_ubsan(sanitized: Sanitized) -> None:
    bufs = corpus()
    data = _write_corpus(sanitized, bufs)
    # Then the C step of async for (csrc/fastpath_iter.c), every branch.
    out = _run_child(
        sanitized, DRIVER + ITER_SCENARIO, str(data), str(sanitized.pkg),
        timeout=150 + len(bufs) // 20,
    )
    assert out == [str(len(bufs)), str(len(bufs) * 7), "160"]


@pytest.mark.timeout(240)
def test_the_drain_is_clean_under_asan_and_ubsan_on_synthetic_reads(
    sanitized: Sanitized,
) -> None:
    # Every corpus buffer is one read of a drain of its own (read and chunk
    # sizes exactly its length), then real pidfds, chunks and the bound
    # (tests/sanitize_drain.py); the child checks what was handed over.
    bufs = corpus()
    data = _write_corpus(sanitized, bufs)
    out = _run_child(sanitized, DRAIN_DRIVER, str(sanitized.pkg), str(data), "synthetic",
                     timeout=200)  # fmt: skip
    sent = [b for b in bufs if b and len(b) <= 60000]
    runs, _events, read, dropped, gaps = (int(x) for x in out)
    assert runs == len(sent) > 1000
    assert read == 8 * 43 and dropped > 0 and gaps >= 1, out


@pytest.mark.kernel
@pytest.mark.timeout(240)
def test_the_drain_is_clean_under_asan_and_ubsan_on_a_real_group(
    sanitized: Sanitized, tmpfs: Path
) -> None:
    # A FID group with pidfds on our tmpfs, short-lived processes and a burst
    # past the drain's bound (tests/sanitize_drain.py checks the counts).
    out = _run_child(sanitized, DRAIN_DRIVER, str(sanitized.pkg), str(tmpfs), "kernel",
                     timeout=200)  # fmt: skip
    read, dropped, gaps = (int(x) for x in out)
    assert read == 30 + 8000 + 6 and dropped > 0 and gaps >= 1, out


# Run in the child: the permission thread of the sanitized build on a real
# permission group (afp_read_walk reads and walks, the C builder builds,
# afp_answer writes each verdict and closes the fd), against opens made by a
# shell that runs without the sanitizer runtimes.
PERMTHREAD_DRIVER = r'''
import asyncio, os, subprocess, sys
from pathlib import Path

pkg, root = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
import afanotify
from afanotify import Event, Fanotify, InitFlag
assert Path(afanotify.__file__).resolve().parent == pkg, afanotify.__file__

files = [root / f"f{i:03d}" for i in range(200)]
for f in files:
    f.write_text("x")
seen = []

def decide(ev):
    seen.append(ev.path)
    return not ev.path.endswith("7")

OPENER = 'for f; do if cat "$f" >/dev/null 2>&1; then echo ok; else echo no; fi; done'

async def main():
    with Fanotify(InitFlag.CLASS_CONTENT, permission_timeout=30) as fan:
        fan.mark(root, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
        fan.on_permission(decide, thread=True)
        # Reading starts with the first consumer (the thread takes it over):
        # a receive() that waits for the events no handler takes, of which
        # there are none here.
        waiter = asyncio.create_task(fan.receive())
        await asyncio.sleep(0)
        assert fan._perm.thread is not None and fan._perm.thread.started
        run = await asyncio.to_thread(
            subprocess.run, ["/bin/sh", "-c", OPENER, "sh", *map(str, files)],
            env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
        )
        waiter.cancel()
        st = fan.permission_stats
        return run.stdout.split(), st

said, st = asyncio.run(main())
assert said == ["no" if str(f).endswith("7") else "ok" for f in files], said
assert seen == [str(f) for f in files], seen[:5]
assert (st.defaulted, st.pending) == (0, 0), st
print(st.allowed, st.denied, len(seen))
'''


@pytest.mark.kernel
@pytest.mark.timeout(240)
def test_the_permission_thread_is_clean_under_asan_and_ubsan(
    sanitized: Sanitized, tmpfs: Path
) -> None:
    out = _run_child(sanitized, PERMTHREAD_DRIVER, str(sanitized.pkg), str(tmpfs), timeout=200)
    assert out == ["180", "20", "200"], out
