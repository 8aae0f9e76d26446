"""Clients against the real kernel: rules, fan-out, overflow policies, permission
drops, and pid reuse.  Events come from subprocesses on a private tmpfs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from helpers import CHILD_CWD, child_env, drain_client, open_fd_count, sh

from afanotify import (
    ClientOverflow,
    Event,
    FanoRule,
    Fanotify,
    FanotifyClient,
    FanotifyData,
    InitFlag,
    WouldBlock,
)

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

OPEN = int(Event.OPEN)
CW = int(Event.CLOSE_WRITE)
CNW = int(Event.CLOSE_NOWRITE)
MODIFY = int(Event.MODIFY)


async def wait_for_path(
    client: FanotifyClient, path: str, pid: int | None = None, timeout: float = 5
) -> list[FanotifyData]:
    """Receive from ``client`` until an event for ``path`` (by ``pid``, if given) arrives."""
    got: list[FanotifyData] = []

    async def run() -> None:
        while True:
            ev = await client.get()
            ev.close()
            got.append(ev)
            if ev.path == path and (pid is None or ev.pid == pid):
                return

    with anyio.move_on_after(timeout) as scope:
        await run()
    if scope.cancelled_caught:
        raise AssertionError(f"no event for {path} within {timeout}s; got {got!r}")
    return got


async def _get(client: FanotifyClient, timeout: float) -> FanotifyData:
    with anyio.fail_after(timeout):
        return await client.get()


def _which(name: str) -> str:
    found = shutil.which(name)
    assert found is not None, f"{name} not installed"
    return os.path.realpath(found)


async def test_three_clients_each_get_exactly_their_events(tmpfs: Path) -> None:
    (tmpfs / "a").mkdir()
    cat, head = _which("cat"), _which("head")
    async with Fanotify() as fan:
        fan.mark(tmpfs, OPEN | MODIFY | CW | CNW, "mount")
        writes_in_a = fan.connect(FanoRule("writes-in-a", ev_types=CW, path_pattern=f"{tmpfs}/a/*"))
        logs = FanotifyClient(fan, path_pattern="*.log")
        readers = fan.connect(FanoRule("readers", ev_types=OPEN, exe_pattern="*/@(cat|head)"))
        everything = fan.connect(FanoRule("all", ev_types=OPEN | MODIFY | CW | CNW))
        assert sh(f"cd {tmpfs} && touch a/x a/y && echo hi > b.log").returncode == 0
        # cat and head stay alive (reading stdin after the file) until the
        # events are dispatched: exe is read from /proc, which needs the process.
        readers_procs = [
            subprocess.Popen([cat, f"{tmpfs}/a/x", "-"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL),
        ]
        try:
            allev = await wait_for_path(everything, f"{tmpfs}/a/x", readers_procs[0].pid)
            readers_procs.append(
                subprocess.Popen([head, f"{tmpfs}/a/y", "-"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL)
            )
            allev += await wait_for_path(everything, f"{tmpfs}/a/y", readers_procs[1].pid)
            assert sh(f": > {tmpfs}/sentinel").returncode == 0
            # Events are dispatched in order: once the match-all client has
            # the sentinel, every earlier event has reached every client.
            allev += await wait_for_path(everything, f"{tmpfs}/sentinel")
        finally:
            for p in readers_procs:
                p.communicate(b"")
        # (The kernel merges an open and close of one file into one event.)
        got_a = [(e.path, bool(e.ev_types & CW)) for e in drain_client(writes_in_a)]
        got_logs = [(e.path, e.ev_types) for e in drain_client(logs)]
        got_readers = [(e.path, bool(e.ev_types & OPEN), e.exe) for e in drain_client(readers)]
    assert got_a == [(f"{tmpfs}/a/x", True), (f"{tmpfs}/a/y", True)]
    log_path = f"{tmpfs}/b.log"
    seen = 0
    for _, t in got_logs:
        seen |= t
    assert seen & (OPEN | MODIFY | CW) == OPEN | MODIFY | CW
    assert {p for p, _ in got_logs} == {log_path}
    assert got_readers == [(f"{tmpfs}/a/x", True, cat), (f"{tmpfs}/a/y", True, head)]
    # The match-all client saw every one of those too.
    paths = {e.path for e in allev}
    assert {f"{tmpfs}/a/x", f"{tmpfs}/a/y", log_path} <= paths
    assert fan.dispatch_stats.proc_reads > 0


N_FILES = 200


async def test_slow_clients_under_each_policy_counts_add_up(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        fan.mark(tmpfs, CW, "mount")
        control = fan.connect(FanoRule("control", ev_types=CW), maxsize=10_000)
        block = fan.connect(FanoRule("block", ev_types=CW), maxsize=4, overflow="block")
        oldest = fan.connect(FanoRule("oldest", ev_types=CW), maxsize=4, overflow="drop_oldest")
        newest = fan.connect(FanoRule("newest", ev_types=CW), maxsize=4, overflow="drop_newest")
        proc = await anyio.open_process(
            ["sh", "-c", f"cd {tmpfs} && i=0; while [ $i -lt {N_FILES} ]; do : > f$i; "
             "i=$((i+1)); done"], stdin=subprocess.DEVNULL, stdout=None, stderr=None,
        )
        # The block client is slow: it sleeps between events.
        block_paths: list[str | None] = []

        async def slow() -> None:
            while len(block_paths) < N_FILES:
                ev = await block.get()
                ev.close()
                assert not isinstance(ev, ClientOverflow)
                block_paths.append(ev.path)
                await anyio.sleep(0.0005)

        async with proc:
            with anyio.fail_after(30):
                await slow()
            assert await proc.wait() == 0
        got_control = drain_client(control)
        old_evs, new_evs = drain_client(oldest), drain_client(newest)
        st_block, st_old, st_new = block.stats, oldest.stats, newest.stats
    expected = [f"{tmpfs}/f{i}" for i in range(N_FILES)]
    # block: every event, in order, nothing dropped; it made the group pause.
    assert block_paths == expected
    assert st_block.dropped == 0 and st_block.matched == N_FILES and st_block.blocked > 0
    assert [e.path for e in got_control] == expected
    for st, evs in ((st_old, old_evs), (st_new, new_evs)):
        markers = [e for e in evs if isinstance(e, ClientOverflow)]
        real = [e for e in evs if not isinstance(e, ClientOverflow)]
        assert st.matched == N_FILES
        assert st.dropped > 0
        assert sum(m.dropped for m in markers) == st.dropped
        assert st.received == len(real)
        assert st.matched == st.received + st.dropped + st.queued + st.held + st.discarded
        assert st.queued == 0 and st.held == 0
    # drop_newest keeps the first events, drop_oldest the last ones.
    assert [e.path for e in new_evs if not isinstance(e, ClientOverflow)][:4] == expected[:4]
    assert [e.path for e in old_evs if not isinstance(e, ClientOverflow)][-4:] == expected[-4:]


@pytest.mark.timeout(30)
async def test_dropped_permission_events_are_answered_at_once(tmpfs: Path) -> None:
    for i in range(3):
        (tmpfs / f"p{i}").write_text("x")
    async with Fanotify(InitFlag.CLASS_CONTENT) as fan:
        fan.mark(tmpfs, int(Event.OPEN_PERM), "mount")
        client = fan.connect(
            FanoRule("perm", ev_types=int(Event.OPEN_PERM)), maxsize=1, overflow="drop_newest"
        )
        with pytest.raises(WouldBlock):
            client.get_nowait()  # starts the reader
        procs = [
            subprocess.Popen(["cat", str(tmpfs / f"p{i}")], stdout=subprocess.DEVNULL)
            for i in range(3)
        ]
        try:
            now = anyio.current_time
            deadline = now() + 10
            # One event waits in the full queue, unanswered; the other two were
            # dropped and answered with the default (allow) at once.
            while sum(p.poll() is not None for p in procs) < 2:
                assert now() < deadline, "dropped permission events were not answered"
                await anyio.sleep(0.01)
            marker = await client.get()
            assert isinstance(marker, ClientOverflow) and marker.dropped == 2
            ev = await client.get()
            assert ev.is_permission and not ev.answered
            # Its event is unanswered, so the third process still waits on us.
            assert [p.pid for p in procs if p.poll() is None] == [ev.pid]
            ev.close()  # default verdict: allow
            while any(p.poll() is None for p in procs):
                assert now() < deadline, "the queued permission event was not answered"
                await anyio.sleep(0.01)
            assert all(p.returncode == 0 for p in procs)
            assert client.stats.dropped == 2
            assert fan.stats.defaulted == 3
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()


PID_REUSE_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, subprocess, sys, time
    from afanotify import Event, Fanotify, FanoRule, InitFlag, WouldBlock
    from afanotify._proc import process_info

    d = sys.argv[1]
    target = os.path.join(d, "f")

    async def main():
        out = {"mypid": os.getpid()}
        async with Fanotify(InitFlag.REPORT_PIDFD) as fan:
            fan.mark(d, Event.OPEN | Event.EVENT_ON_CHILD)
            by_exe = fan.connect(
                FanoRule("exe", ev_types=Event.OPEN, exe_pattern="*", pass_fd=True)
            )
            every = fan.connect(FanoRule("all", ev_types=Event.OPEN))
            # A opens the file and is reaped before the event is read.
            a = subprocess.Popen([sys.executable, "-c", f"open({target!r})"])
            a.wait()
            pid_a = out["pid_a"] = a.pid
            # Make the next pid be A's again: B (sleep) reuses it.
            b = None
            for _ in range(20):
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(pid_a - 1))
                b = subprocess.Popen(["sleep", "30"])
                if b.pid == pid_a:
                    break
                b.kill(); b.wait(); b = None
            out["reused"] = b is not None
            if b is not None:
                out["unchecked_exe"] = process_info(pid_a)[0]
                ev = await asyncio.wait_for(every.get(), 5)
                out["event"] = {"pid": ev.pid, "pidfd": ev.pidfd, "exe": ev.exe, "cwd": ev.cwd}
                ev.close()
                try:
                    by_exe.get_nowait()
                    out["exe_rule_matched"] = True
                except WouldBlock:
                    out["exe_rule_matched"] = False
                b.kill(); b.wait()
            # Control: a live process's event gets its exe (pidfd verified).
            c = subprocess.Popen([sys.executable, "-c", f"open({target!r}); input()"],
                                 stdin=subprocess.PIPE)
            ev = await asyncio.wait_for(by_exe.get(), 5)
            out["live"] = {"pid": ev.pid, "c": c.pid, "exe": ev.exe, "pidfd_ok": ev.pidfd >= 0}
            ev.close()
            c.communicate(b"\\n")
            drained = []
            while True:
                try:
                    drained.append(every.get_nowait())
                except WouldBlock:
                    break
            for e in drained:
                e.close()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


@pytest.mark.timeout(60)
def test_pid_reuse_is_detected_with_pidfd(tmpfs: Path) -> None:
    (tmpfs / "f").write_text("x")
    res = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", PID_REUSE_CHILD,
         str(tmpfs)],
        capture_output=True, text=True, timeout=50, env=child_env(), cwd=CHILD_CWD, check=False,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["reused"], f"could not make the kernel reuse pid {out['pid_a']}"
    sleep = os.path.realpath(shutil.which("sleep") or "sleep")
    # Without the pidfd check, /proc/<pid> now describes the wrong process.
    assert out["unchecked_exe"] == sleep
    ev = out["event"]
    assert ev["pid"] == out["pid_a"]
    assert ev["pidfd"] < 0  # the kernel could not make a pidfd: A was gone
    assert ev["exe"] is None and ev["cwd"] is None  # delivered, fields unknown
    assert out["exe_rule_matched"] is False  # an exe rule treats None as no match
    live = out["live"]
    assert live["pid"] == live["c"] and live["pidfd_ok"]
    assert live["exe"] == os.path.realpath(sys.executable)


async def test_pass_fd_fan_out_gives_each_client_its_own_fd(tmpfs: Path) -> None:
    target = tmpfs / "f"
    target.write_text("x")
    baseline = open_fd_count()

    async def is_target(e: FanotifyData) -> bool:
        await anyio.sleep(0)
        return e.path == str(target)

    async with Fanotify() as fan:
        fan.mark(tmpfs, CNW, "mount")
        p1 = fan.connect(FanoRule("p1", ev_types=CNW, pass_fd=True))
        p2 = fan.connect(FanoRule("p2", predicate=is_target, pass_fd=True))  # async predicate
        plain = fan.connect(FanoRule("plain", ev_types=CNW))
        assert sh(f"cat {target} > /dev/null").returncode == 0
        e1, e2, e3 = [await _get(c, 5) for c in (p1, p2, plain)]
        assert e1.path == e2.path == e3.path == str(target)
        assert e1.fd >= 0 and e2.fd >= 0 and e1.fd != e2.fd and e3.fd == -1
        st = os.stat(target)
        for e in (e1, e2):
            fst = os.fstat(e.fd)
            assert (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino)
        e1.close()
        assert os.read(e2.fd, 1) == b"x"  # still open: p2 owns its own descriptor
        e2.close()
        e3.close()
    assert open_fd_count() == baseline
