"""What ``afanotify watch`` captures of a burst, and how its drain thread counts and stops.

Kernel tests on private mounts (the ``tmpfs`` and ``ext4`` fixtures).  The
percentages against fatrace are bench/bench_cli.py's; here the design's
guarantees are asserted exactly: with nothing lost (the summary says so),
every create, rename and delete of the burst is a line with its full path;
a loss beyond the drain's memory bound is counted exactly and said in words;
a process is never named by another's name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import child_env
from test_cli import CHILD_CWD, CLI, ENV, cli, json_lines

from afanotify import Event, Fanotify, InitFlag, WouldBlock, _drain
from afanotify._cli_watch import _loss_words

pytestmark = pytest.mark.timeout(120)

#: ndirs directories x nfiles files: create+write, rename, delete each; rmdir; sentinel.
BURST = r"""
import os, sys
root, ndirs, nfiles = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dirs = [os.path.join(root, f"d{i:03d}") for i in range(ndirs)]
for d in dirs:
    os.mkdir(d)
for d in dirs:
    for j in range(nfiles):
        with open(os.path.join(d, f"f{j:03d}"), "w") as f:
            f.write("x")
for d in dirs:
    for j in range(nfiles):
        os.rename(os.path.join(d, f"f{j:03d}"), os.path.join(d, f"g{j:03d}"))
for d in dirs:
    for j in range(nfiles):
        os.unlink(os.path.join(d, f"g{j:03d}"))
for d in dirs:
    os.rmdir(d)
open(os.path.join(root, "zz_end"), "w").close()
"""

needs_drain = pytest.mark.skipif(not _drain.available(), reason="the pure core has no drain")


def _burst(root: Path, ndirs: int, nfiles: int) -> None:
    subprocess.run([sys.executable, "-c", BURST, str(root), str(ndirs), str(nfiles)],
                   cwd=CHILD_CWD, env=child_env(), check=True, timeout=60)


def _wait_lines(log: Path, needle: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return text
        assert time.monotonic() < deadline, f"no {needle!r} in {log}: {text[-300:]!r}"
        time.sleep(0.05)


def _full_paths(text: str, root: Path) -> dict[str, set[str]]:
    got: dict[str, set[str]] = {"create": set(), "rename": set(), "delete": set()}
    for line in text.splitlines():
        r = json.loads(line)
        acts, path = r["event"]["action"], r["file"]["path"]
        if not r["fanotify"]["path_resolved"] or not path:
            continue
        if "rename" in acts:
            got["rename"].add(f"{r['fanotify']['old_path']}>{path}")
        elif "create" in acts:
            got["create"].add(path)
        elif "delete" in acts:
            got["delete"].add(path)
    return got


def _expected(root: Path, ndirs: int, nfiles: int) -> dict[str, set[str]]:
    ds = [root / f"d{i:03d}" for i in range(ndirs)]
    fs = [(d, f"{j:03d}") for d in ds for j in range(nfiles)]
    return {
        "create": {str(d) for d in ds} | {f"{d}/f{j}" for d, j in fs} | {f"{root}/zz_end"},
        "rename": {f"{d}/f{j}>{d}/g{j}" for d, j in fs},
        "delete": {str(d) for d in ds} | {f"{d}/g{j}" for d, j in fs},
    }


def _watch_burst(root: Path, log: Path, ndirs: int, nfiles: int) -> tuple[str, str]:
    with cli("watch", "--filesystem", "--json", "--output", str(log), str(root)) as p:
        p.wait_stderr("watching")
        _burst(root, ndirs, nfiles)
        _wait_lines(log, f"{root}/zz_end")
        p.popen.send_signal(signal.SIGINT)
        code, _out, err = p.finish(timeout=60)
    assert code == 0, err
    return log.read_text(), err


@pytest.mark.kernel
@pytest.mark.parametrize("fs", ["tmpfs", "ext4"])
def test_burst_is_caught_with_full_paths(fs: str, request: pytest.FixtureRequest,
                                         tmp_path: Path) -> None:
    # 60 x 100 files: about 30,000 events, twice what the kernel queues
    # (16384) if nobody read it.  The drain thread empties the kernel's queue
    # as fast as it fills and the directory map outlives each read, so every
    # create, rename and delete has its full path: exactly, not a share.
    root: Path = request.getfixturevalue(fs)
    log = tmp_path / "events.json"
    text, err = _watch_burst(root, log, 60, 100)
    summary = next(x for x in err.splitlines() if "events seen" in x)
    assert summary.endswith("nothing lost"), summary
    got, want = _full_paths(text, root), _expected(root, 60, 100)
    for kind in ("create", "rename", "delete"):
        assert want[kind] <= got[kind], (kind, sorted(want[kind] - got[kind])[:5])
    seen = int(summary.split("afanotify: ")[1].split(" events seen")[0])
    assert seen == len(text.splitlines())


@pytest.mark.kernel
def test_pure_core_watch_catches_the_burst(tmpfs: Path, tmp_path: Path) -> None:
    # No compiler: the loop reads the group itself (PolledReader), same lines.
    log = tmp_path / "events.json"
    env = dict(ENV, AFANOTIFY_CORE="pure")
    proc = subprocess.Popen([*CLI, "watch", "--filesystem", "--json", "--output", str(log),
                             str(tmpfs)], env=env, cwd=CHILD_CWD, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        assert b"watching" in proc.stderr.readline()
        _burst(tmpfs, 3, 20)
        _wait_lines(log, f"{tmpfs}/zz_end")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Read later than the drain reads, a directory may be gone before the
    # loop looks up its handle: such an event has a bare name, never a wrong
    # path.  Every event is there, with its path or without.
    assert b"nothing lost" in err, err
    got, want = _full_paths(log.read_text(), tmpfs), _expected(tmpfs, 3, 20)
    for kind in ("create", "rename", "delete"):
        assert got[kind] <= want[kind], (kind, sorted(got[kind] - want[kind])[:5])
    names = {"create": set(), "delete": set()}  # type: dict[str, set[str]]
    for line in log.read_text().splitlines():
        r = json.loads(line)
        for kind in names:
            if kind in r["event"]["action"] and r["file"]["name"]:
                names[kind].add(r["file"]["name"])
    files = {f"{c}{j:03d}" for c in "f" for j in range(20)}
    assert files <= names["create"]
    assert {f"g{j:03d}" for j in range(20)} <= names["delete"]


@pytest.mark.kernel
@needs_drain
def test_drain_bound_counts_every_dropped_event(tmpfs: Path) -> None:
    # Nobody takes the batches: the drain fills its 2 MiB and then drops
    # what it reads, counting each event; the first batch kept after the
    # gap starts with a Q_OVERFLOW record (the directory map starts over).
    with Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID) as fan:
        fan.mark(str(tmpfs), Event.CREATE | Event.DELETE | Event.ONDIR, "filesystem")
        drain = _drain.Drain(fan, limit=2 << 20, paths=False)
        drain.start()
        try:
            names = " ".join(f"n{i:05d}" for i in range(3000))
            deadline = time.monotonic() + 60
            while drain.stats.dropped == 0:
                assert time.monotonic() < deadline, drain.stats
                subprocess.run(["sh", "-c", f"touch {names}; rm {names}"], cwd=tmpfs,
                               check=True)
            # Take everything, with sentinels (not ours) until one is read:
            # then every event before it was read, kept or dropped.
            taken = gap_records = 0
            seen_sentinel = False
            k = 0
            while not seen_sentinel:
                assert time.monotonic() < deadline, drain.stats
                subprocess.run(["touch", f"zz{k}"], cwd=tmpfs, check=True)
                k += 1
                while True:
                    try:
                        events, _procs = drain.read_batch()
                    except WouldBlock:
                        break
                    for ev in events:
                        if ev.ev_types & Event.Q_OVERFLOW:
                            gap_records += 1
                        else:
                            taken += 1
                            seen_sentinel |= bool(ev.name and ev.name.startswith("zz"))
                        ev.close()
                time.sleep(0.01)
            while True:  # the rest of the sentinels
                try:
                    events, _procs = drain.read_batch()
                except WouldBlock:
                    if drain.stats.events_read - drain.stats.dropped == taken:
                        break
                    time.sleep(0.01)
                    continue
                taken += sum(1 for ev in events if not ev.ev_types & Event.Q_OVERFLOW)
            st = drain.stats
        finally:
            drain.close()
    # The batch after a gap starts with its Q_OVERFLOW record, one per gap.
    assert st.gaps == gap_records >= 1
    assert st.held == 0 and st.waiting == 0
    # every event read is either in a batch or counted as dropped
    assert taken + st.dropped == st.events_read, (taken, st)


def test_backlog_loss_is_said_in_words() -> None:
    words = _loss_words(0, 0, 0, backlog=1234, limit=2 << 20)
    assert words.startswith("EVENTS LOST: 1234 event(s) read and dropped")
    assert "2 MiB" in words and "--max-backlog" in words
    assert _loss_words(0, 0) == "nothing lost"


@needs_drain
@pytest.mark.kernel
def test_drain_refuses_fd_mode_groups() -> None:
    with Fanotify() as fan, pytest.raises(ValueError, match="FID groups only"):
        _drain.Drain(fan)


@pytest.mark.kernel
def test_short_lived_processes_are_never_named_wrong(tmpfs: Path, tmp_path: Path) -> None:
    # Each process is its own copy of touch, named t00, t01, ...: it creates
    # the file of its own number and is gone within a millisecond.  A line's
    # name is null or that copy's, never another's (a pid reused by the next
    # copy would give the next name).
    touch = shutil.which("touch")
    assert touch is not None
    bins = tmp_path / "bin"
    bins.mkdir()
    n = 40
    for i in range(n):
        shutil.copy(touch, bins / f"t{i:02d}")
    script = "; ".join(f"{bins}/t{i:02d} f{i:02d}" for i in range(n)) + "; touch zz_end"
    with cli("watch", "--json", "--events", "create", str(tmpfs)) as p:
        p.wait_stderr("watching")
        subprocess.run(["sh", "-c", script], cwd=tmpfs, check=True, timeout=30)
        out = b""
        assert p.popen.stdout is not None
        fd = p.popen.stdout.fileno()
        deadline = time.monotonic() + 20
        while b"zz_end" not in out:
            assert time.monotonic() < deadline, out[-300:]
            out += os.read(fd, 65536)
        p.popen.send_signal(signal.SIGINT)
        p.finish()
    named = 0
    seen = 0
    for r in json_lines(out.decode()):
        name = r["file"]["name"]  # type: ignore[index]
        if isinstance(name, str) and name.startswith("f"):
            seen += 1
            comm = r["process"]["name"]  # type: ignore[index]
            assert comm in (None, "t" + name[1:]), r
            named += comm is not None
    assert seen == n
    assert named >= 1


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_burst_stops_with_exact_counts(tmpfs: Path, tmp_path: Path,
                                                  sig: int) -> None:
    # The signal comes while the burst runs: the thread stops, what it read
    # is written, and the summary's counts are the lines in the file.
    log = tmp_path / "events.json"
    with cli("watch", "--filesystem", "--json", "--output", str(log), str(tmpfs)) as p:
        p.wait_stderr("watching")
        burst = subprocess.Popen([sys.executable, "-c", BURST, str(tmpfs), "40", "100"],
                                 cwd=CHILD_CWD, env=child_env())
        try:
            _wait_lines(log, "/d039/f0")
            p.popen.send_signal(sig)
            code, _out, err = p.finish(timeout=60)
        finally:
            burst.wait(timeout=60)
    assert code == 0, err
    summary = next(x for x in err.splitlines() if "events seen" in x)
    assert "Traceback" not in err
    seen = int(summary.split("afanotify: ")[1].split(" events seen")[0])
    shown = int(summary.split(" shown")[0].rsplit(" ", 1)[1])
    lines = log.read_text().splitlines()
    assert seen == shown == len(lines), summary
