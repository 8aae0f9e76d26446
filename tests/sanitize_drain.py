"""The drain thread (csrc/fastpath_drain.c) driven in test_sanitizers.py's sanitized child.

``DRAIN_DRIVER`` runs in that child (argv: package dir, corpus file, and
``synthetic`` or ``kernel MOUNTPOINT``) and prints one line of counts.

- ``synthetic``: the drain reads any fd, so a SOCK_SEQPACKET socketpair hands
  it one buffer per read.  Each corpus buffer gets a drain of its own whose
  read size and chunk size are exactly that buffer's length (every read and
  copy of the buffer is then bounded by an allocation of its size).  Before
  a buffer is sent, every pidfd slot the drain would close is set to
  FAN_NOPIDFD by a walk of the same rules, so it closes nothing of ours;
  the chunks must hold the buffers byte for byte and count their events.
  Then one drain reads well-formed events carrying real pidfds this process
  opened (a live child, a reaped one, a repeated pid) and holds reads
  together in chunks and past a small memory bound: the drops, the
  Q_OVERFLOW record after the gap, the names and the closed pidfds are
  checked, and afd_destroy frees chunks never taken.
- ``kernel``: a real FID group with pidfds on the test's private tmpfs, read
  by :class:`afanotify._drain.Drain` (its latency hint, afd_hint, included)
  with small reads and a small bound;
  short-lived processes and a burst from a producer subprocess; every event
  is either handed over or counted as dropped.
"""

from __future__ import annotations

DRAIN_DRIVER = r'''
import os, socket, struct, subprocess, sys, threading, time
from pathlib import Path

pkg = Path(sys.argv[1]).resolve()
import afanotify
from afanotify import _drain
from afanotify._ffi import ffi, lib
from afanotify.flags import Event, InitFlag

assert Path(afanotify.__file__).resolve().parent == pkg, afanotify.__file__
maps = Path("/proc/self/maps").read_text()
assert "libasan" in maps and "libubsan" in maps, "the sanitizer runtimes are not loaded"
assert _drain.available(), "the sanitized core has no drain"

META, HDR, PIDFD_TYPE, NOPIDFD = 24, 4, lib.FAN_EVENT_INFO_TYPE_PIDFD, -1
Q_OVERFLOW = int(Event.Q_OVERFLOW)

def deadline_wait(cond, what, seconds=60.0):
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, what()
        time.sleep(0.002)

def slots(buf):
    """(offset of each pidfd slot the drain looks at, events counted), as the drain walks."""
    out, off, n, count = [], 0, len(buf), 0
    while off + META <= n:
        (elen,) = struct.unpack_from("=I", buf, off)
        if elen < META or off + elen > n:
            break
        count += 1
        o = META
        while o + HDR <= elen:
            t, _, hlen = struct.unpack_from("=BBH", buf, off + o)
            if hlen < HDR or o + hlen > elen:
                break
            if t == PIDFD_TYPE and hlen >= 8:
                out.append(off + o + 4)
                break
            o += hlen
        off += elen
    return out, count

def neutral(buf):
    b = bytearray(buf)
    found, count = slots(b)
    for s in found:
        struct.pack_into("=i", b, s, NOPIDFD)
    return bytes(b), count

class Run:
    """One drain over one end of a socketpair, set up as _drain.Drain sets it up."""
    def __init__(self, read_size, chunk_size, limit, pidfd_reported=0, paths=1):
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.b.setblocking(False)  # as the group fd: the drain reads until EAGAIN
        self.wake = os.eventfd(0, os.EFD_NONBLOCK)
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK)
        d = self.d = ffi.new("struct afd_drain *")
        assert lib.afd_init(d) == 0
        d.fd, d.wake_fd, d.stop_fd = self.b.fileno(), self.wake, self.stop_fd
        d.paths, d.pidfd_reported, d.own_pid = paths, pidfd_reported, os.getpid()
        d.read_size, d.chunk_size, d.limit = read_size, chunk_size, limit
        self.counts = ffi.new("uint64_t[11]")
        self.rc = []
        self.t = threading.Thread(target=lambda: self.rc.append(lib.afd_run(d)))
        self.t.start()
    def stats(self):
        lib.afd_counts(self.d, self.counts)
        return list(self.counts)
    def send(self, msgs):
        want = self.stats()[0] + len(msgs)  # one read per message (none is empty)
        for m in msgs:
            self.a.send(m)
        deadline_wait(lambda: self.stats()[0] >= want, lambda: ("reads", self.stats(), want))
    def take(self):
        out = []
        while True:
            c = lib.afd_take(self.d)
            if c == ffi.NULL:
                return out
            procs = {}
            for i in range(c.nprocs):
                p = c.procs[i]
                txt = lambda off, n: None if n < 0 else bytes(ffi.buffer(c.text + off, n))
                procs[p.pid] = (p.trusted, txt(p.name_off, p.name_len),
                                txt(p.exe_off, p.exe_len), txt(p.cwd_off, p.cwd_len))
            out.append((bytes(ffi.buffer(c.data, c.len)), c.nevents, procs))
            lib.afd_free(self.d, c)
    def stop(self):
        os.eventfd_write(self.stop_fd, 1)
        self.t.join(30)
        assert not self.t.is_alive(), "the drain did not stop"
        assert self.rc == [0], self.rc
    def destroy(self):
        lib.afd_destroy(self.d)
        self.a.close(); self.b.close(); os.close(self.wake); os.close(self.stop_fd)

def strip_gap(data):
    m = struct.unpack_from("=IBBHQii", data, 0) if len(data) >= META else None
    if m and m[0] == META and m[4] == Q_OVERFLOW and m[5] == -1:
        return data[META:], 1
    return data, 0

def synthetic():
    data = Path(sys.argv[2]).read_bytes()
    bufs, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("=I", data, pos)
        bufs.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    runs = events = 0
    for i, raw in enumerate(bufs):
        if not raw or len(raw) > 60000:
            continue  # an empty read is no read; a seqpacket message stays small
        buf, count = neutral(raw)
        r = Run(len(buf), 0, 1 << 30, pidfd_reported=i % 2, paths=(i // 2) % 2)
        try:
            r.send([buf])
            r.stop()
            got = r.take()
            st = r.stats()
        finally:
            r.destroy()
        assert [(g[0], g[1]) for g in got] == [(buf, count)], (raw, got)
        assert st[:6] == [1, len(buf), count, 0, 0, 0] and st[6] == 0 and st[8] == 0, st
        runs += 1
        events += count
    return runs, events

def event(pid, pidfd, name):
    body = struct.pack("=ii", 7, 9) + struct.pack("=Ii", 8, 1) + b"H" * 8 + name + b"\0"
    body += b"\0" * (-(len(body) + 4) % 4)
    fid = struct.pack("=BBH", lib.FAN_EVENT_INFO_TYPE_DFID_NAME, 0, len(body) + 4) + body
    pfd = struct.pack("=BBHi", PIDFD_TYPE, 0, 8, pidfd)
    n = META + len(fid) + len(pfd)
    return struct.pack("=IBBHQii", n, 3, 0, META, int(Event.CREATE), -1, pid) + fid + pfd

def is_pidfd(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
    except OSError:
        return False

def with_pidfds():
    live = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"]); gone.wait()
    live_comm = Path(f"/proc/{live.pid}/comm").read_bytes().rstrip(b"\n")
    handed = []
    def pidfd(pid):
        fd = os.pidfd_open(pid)
        handed.append(fd)
        return fd
    try:
        # Reads of 8 events: the live child's (two pidfds of one pid in a read:
        # the second closed at once), a pid with no pidfd, and a reaped pid's.
        def read(k, fd=pidfd):
            evs = [event(live.pid, fd(live.pid), b"l%03dx%d" % (k, j)) for j in range(5)]
            evs.append(event(live.pid, NOPIDFD, b"n%03d" % k))
            evs.append(event(gone.pid, NOPIDFD, b"g%03d" % k))
            evs.append(event(os.getpid(), NOPIDFD, b"o%03d" % k))
            return b"".join(evs)
        one = len(read(0, lambda pid: NOPIDFD))
        r = Run(one, 3 * one, 10 * one, pidfd_reported=1, paths=1)
        try:
            msgs = [read(k) for k in range(40)]
            r.send(msgs)
            st = r.stats()
            assert st[3] > 0 and st[4] > 0, st  # nobody took: the bound dropped reads
            got = r.take()
            r.send([read(99)])  # after the gap: its chunk starts with Q_OVERFLOW
            got += r.take()
            r.send([read(100), read(101)])  # left for afd_destroy
            r.stop()
            st = r.stats()
        finally:
            r.destroy()
        leaked = [fd for fd in handed if is_pidfd(fd)]
        assert not leaked, leaked  # the drain closed every pidfd it was handed
        kept, gaps, nev = b"", 0, 0
        for data, n, procs in got:
            body, g = strip_gap(data)
            gaps += g
            nev += n - g
            kept += body
            assert procs[live.pid][:2] == (1, live_comm), procs
            assert procs[live.pid][2] is not None and procs[live.pid][3] is not None, procs
            assert os.getpid() not in procs, procs
            assert procs[gone.pid][0] == 0, procs  # no pidfd under REPORT_PIDFD: not trusted
        want = [neutral(m)[0] for m in msgs + [read(99, lambda pid: NOPIDFD)]]
        handed_bytes = [m for m in want if m in kept]
        assert kept == b"".join(handed_bytes), "the kept reads are not whole reads in order"
        dropped = len(want) - len(handed_bytes)
        assert gaps == st[5] >= 1 and dropped == st[4], (gaps, dropped, st)
        assert st[2] == 8 * 43 and nev + st[3] == 8 * 41 and st[3] == 8 * dropped, (nev, st)
        assert st[0] == 43 and st[8] >= 1, st  # two reads never taken
    finally:
        live.kill(); live.wait()
    return st[2], st[3], gaps

def kernel():
    from afanotify import Fanotify
    from afanotify.exceptions import WouldBlock
    mnt = Path(sys.argv[2])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "LD_PRELOAD", "ASAN_", "UBSAN_"))}
    flags = (InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID | InitFlag.REPORT_PIDFD
             | InitFlag.UNLIMITED_QUEUE)
    short, bulk = 30, 8000
    produce = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "d = Path(sys.argv[1])\n"
        f"for i in range({short}):\n"
        "    subprocess.run(['touch', str(d / f's{i:03d}')], check=True)\n"
        f"for i in range({bulk}):\n"
        "    (d / f'b{i:05d}').touch()\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    with Fanotify(flags) as fan:
        fan.mark(str(mnt), Event.CREATE, "filesystem")
        drain = _drain.Drain(fan, limit=2 << 20, paths=True)
        # small reads and a small bound: many reads, and the bound is passed
        drain._d.read_size, drain._d.chunk_size, drain._d.limit = 8192, 32768, 256 << 10
        drain.start()
        try:
            p = subprocess.Popen([sys.executable, "-c", produce, str(mnt)], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
            try:
                assert p.stdout.readline() == "done\n"
                comm = Path(f"/proc/{p.pid}/comm").read_text().rstrip("\n")
                deadline_wait(lambda: drain.stats.events_read >= short + bulk,
                              lambda: drain.stats)
            finally:
                p.stdin.close(); p.wait(30)
            names, gaps, procs_of = [], 0, {}
            def take():
                nonlocal gaps
                while True:
                    try:
                        events, procs = drain.read_batch()
                    except WouldBlock:
                        return
                    for ev in events:
                        if ev.ev_types & Event.Q_OVERFLOW:
                            gaps += 1
                        else:
                            names.append(ev.name)
                            procs_of.setdefault(ev.pid, set()).add(procs.get(ev.pid))
                        ev.close()
            take()
            st = drain.stats
            assert st.dropped > 0 and st.dropped_reads > 0 and st.reads > 10, st
            subprocess.run(["touch", str(mnt / "z0")], check=True, env=env)
            deadline_wait(lambda: drain.stats.events_read == short + bulk + 1,
                          lambda: drain.stats)
            take()
            subprocess.run(["touch", *(str(mnt / f"y{i}") for i in range(5))],
                           check=True, env=env)
            deadline_wait(lambda: drain.stats.events_read == short + bulk + 6,
                          lambda: drain.stats)
        finally:
            drain.close()  # the last batch is freed untaken (afd_destroy)
        st = drain.stats
    assert drain.error is None, drain.error
    # afd_hint ran in the thread: as root, the 0.1 ms slice and nice - 10
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert drain.scheduling == (True, max(-20, base - 10)), drain.scheduling
    want = {f"s{i:03d}" for i in range(short)} | {f"b{i:05d}" for i in range(bulk)} | {"z0"}
    assert len(names) == len(set(names)) and set(names) <= want, sorted(set(names) - want)[:5]
    assert "z0" in names  # the gap's batch, after the drops
    assert len(names) + st.dropped == short + bulk + 1, (len(names), st)
    assert st.events_read == short + bulk + 6 and gaps == st.gaps >= 1, (gaps, st)
    assert st.waiting >= 1 and st.held > 0, st  # the y batch, freed by afd_destroy
    for pid, seen in procs_of.items():
        for proc in seen:  # a name is the process's own or none
            assert proc is None or proc[0] in (None, "touch", comm), (pid, proc)
    assert (comm, os.path.realpath(sys.executable), "/") in procs_of.get(p.pid, set()), \
        procs_of.get(p.pid)
    return st.events_read, st.dropped, st.gaps

if sys.argv[3] == "synthetic":
    print(*synthetic(), *with_pidfds())
else:
    print(*kernel())
'''
