"""The drain thread closes every pidfd of a read itself, and only those.

afd_close_fds (csrc/fastpath_drain.c) closes a run of consecutive pidfd
numbers with one close_range: a descriptor of another owner whose number
lies between two of a read's pidfds must stay open.  The synthetic test
hands the drain pidfds this process opened, over a socketpair, one buffer
per read; the kernel test reads a real group's burst through
:class:`afanotify._drain.Drain`.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import CHILD_CWD, child_env

from afanotify import Event, Fanotify, InitFlag, WouldBlock, _drain
from afanotify._ffi import ffi, lib

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not _drain.available(), reason="the pure core has no drain"),
]

META = 24
NOPIDFD = -1


def _event(pid: int, pidfd: int, name: bytes) -> bytes:
    body = struct.pack("=ii", 7, 9) + struct.pack("=Ii", 8, 1) + b"H" * 8 + name + b"\0"
    body += b"\0" * (-(len(body) + 4) % 4)
    fid = struct.pack("=BBH", lib.FAN_EVENT_INFO_TYPE_DFID_NAME, 0, len(body) + 4) + body
    pfd = struct.pack("=BBHi", lib.FAN_EVENT_INFO_TYPE_PIDFD, 0, 8, pidfd)
    n = META + len(fid) + len(pfd)
    return struct.pack("=IBBHQii", n, 3, 0, META, int(Event.CREATE), -1, pid) + fid + pfd


def _pidfds_in(data: bytes) -> list[int]:
    out, off = [], 0
    while off + META <= len(data):
        (elen,) = struct.unpack_from("=I", data, off)
        o = META
        while o + 4 <= elen:
            t, _, hlen = struct.unpack_from("=BBH", data, off + o)
            if t == lib.FAN_EVENT_INFO_TYPE_PIDFD:
                out.append(struct.unpack_from("=i", data, off + o + 4)[0])
            o += hlen
        off += elen
    return out


def _is_pidfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
    except OSError:
        return False


def _wait(cond: Callable[[], bool], what: Callable[[], object]) -> None:
    end = time.monotonic() + 20
    while not cond():
        assert time.monotonic() < end, what()
        time.sleep(0.002)


def test_a_read_s_pidfds_are_closed_and_a_number_between_them_is_not() -> None:
    live = subprocess.Popen(["sleep", "60"])
    fds = [os.pidfd_open(live.pid) for _ in range(6)]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    stop = os.eventfd(0, os.EFD_NONBLOCK)
    d: Any = ffi.new("struct afd_drain *")
    rc: list[int] = []
    thread = None
    try:
        # Six numbers, mostly consecutive; the third is someone else's: the
        # drain gets 0, 1, 3, 4, 5 (runs 0-1 and 3-5) and must leave fds[2].
        fds.sort()
        handed = [fd for i, fd in enumerate(fds) if i != 2]
        kept = fds[2]
        msg = b"".join(_event(live.pid, fd, b"f%d" % i) for i, fd in enumerate(handed))
        b.setblocking(False)
        assert lib.afd_init(d) == 0
        d.fd, d.wake_fd, d.stop_fd = b.fileno(), wake, stop
        d.paths, d.pidfd_reported, d.own_pid = 0, 1, os.getpid()
        d.read_size = d.chunk_size = len(msg)
        d.limit = 1 << 20
        counts = ffi.new("uint64_t[11]")

        def reads() -> int:
            lib.afd_counts(d, counts)
            return int(counts[0])

        thread = threading.Thread(target=lambda: rc.append(lib.afd_run(d)))
        thread.start()
        a.send(msg)
        _wait(lambda: reads() >= 1, lambda: list(counts))
        c = lib.afd_take(d)
        assert c != ffi.NULL
        try:
            data = bytes(ffi.buffer(c.data, c.len))
            procs = {c.procs[i].pid: bool(c.procs[i].trusted) for i in range(c.nprocs)}
        finally:
            lib.afd_free(d, c)
        assert _pidfds_in(data) == [NOPIDFD] * len(handed)  # taken out of every record
        assert procs == {live.pid: True}  # checked against the first one before closing
        assert [fd for fd in handed if _is_pidfd(fd)] == []
        assert _is_pidfd(kept)
    finally:
        if thread is not None:
            os.eventfd_write(stop, 1)
            thread.join(30)
            lib.afd_destroy(d)
        assert rc in ([], [0])
        for fd in fds:
            if _is_pidfd(fd):
                os.close(fd)
        a.close()
        b.close()
        os.close(wake)
        os.close(stop)
        live.kill()
        live.wait()


def _open_pidfds() -> int:
    return sum(1 for fd in os.listdir("/proc/self/fd") if _is_pidfd(int(fd)))


@pytest.mark.kernel
def test_drained_events_own_no_pidfd_and_none_stays_open(tmpfs: Path) -> None:
    before = _open_pidfds()
    flags = InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID | InitFlag.REPORT_PIDFD
    with Fanotify(flags) as fan:
        fan.mark(str(tmpfs), Event.CREATE | Event.DELETE, "filesystem")
        drain = _drain.Drain(fan, paths=False)
        drain.start()
        try:
            n = 2000
            script = ("import os,sys\nfor i in range(int(sys.argv[1])):\n"
                      " open(f'f{i}','w').close(); os.unlink(f'f{i}')\n"
                      "open('zz','w').close()\n")
            subprocess.run(["python3", "-c", script, str(n)], cwd=tmpfs, check=True)
            names: list[str | None] = []
            pidfds: set[int] = set()
            deadline = time.monotonic() + 20
            while "zz" not in names:
                try:
                    events, _procs = drain.read_batch()
                except WouldBlock:
                    assert time.monotonic() < deadline, drain.stats
                    time.sleep(0.005)
                    continue
                for ev in events:
                    names.append(ev.name)
                    pidfds.add(ev.pidfd)
                    ev.close()
        finally:
            drain.close()
    assert len(names) >= n + 1  # merged creates and deletes still make one per file
    assert pidfds == {NOPIDFD}
    assert _open_pidfds() == before


# A fresh process makes a pidfd group and a Drain, and prints its fd table's
# size (FDSize: the slots the kernel has allocated) before and after.
_FDSIZE = r"""
import resource, sys
from afanotify import Fanotify, InitFlag, _drain
if len(sys.argv) > 1:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
def fdsize():
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("FDSize:"))
flags = InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID | InitFlag.REPORT_PIDFD
with Fanotify(flags) as fan:
    before = fdsize()
    drain = _drain.Drain(fan, paths=False)
    print(before, fdsize())
    drain.close()
"""


@pytest.mark.kernel
@pytest.mark.parametrize("nofile", [None, 512])
def test_the_fd_table_is_grown_for_a_read_s_pidfds_before_the_thread_reads(
    nofile: int | None,
) -> None:
    # Grown while the drain thread reads, each doubling of the table waits
    # for an RCU grace period inside read(2); grown at once, it never does.
    args = [] if nofile is None else [str(nofile)]
    r = subprocess.run([sys.executable, "-c", _FDSIZE, *args], capture_output=True, text=True,
                       timeout=30, env=child_env(), cwd=CHILD_CWD, check=False)
    assert r.returncode == 0, r.stderr
    before, after = map(int, r.stdout.split())
    need = _drain.READ_SIZE // 48
    assert before < need  # a new process starts small
    if nofile is None:
        assert after >= need
    else:
        assert before < after <= nofile  # as far as the limit lets it, never beyond
