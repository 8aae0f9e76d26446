"""How often ``afanotify watch`` names short-lived processes, and that it never misnames one.

Kernel tests on a private tmpfs.  The loads are bench/bench_cli.py's naming
scripts (``NAMING``): each process runs in the background and is waited for,
so the script logs its pid and the name it must get, outside the mount.  A
process is named if a line of its pid carries that name; a line of its pid
with any other name would be a reused pid taken for it, and fails the test.

Where the drain has the exit log (taskstats: a root watcher in the initial
namespaces; csrc/fastpath_deaths.c), every process must be named.  The
floors are fixed fractions at about what fatrace names on a loaded two-core
machine (48-55 of 60), a bar for any watcher; these tests run it with the
exit log when the machine gives it (tests/test_drain_exitlog.py covers the
drain without it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import ModuleType

import pytest
from helpers import REPO
from test_cli import cli

from afanotify import Event, Fanotify, InitFlag, WouldBlock, _drain

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

needs_drain = pytest.mark.skipif(not _drain.available(), reason="the pure core has no drain")

ROUNDS = 20  # 3 processes a round


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cli", REPO / "bench" / "bench_cli.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_pattern(pattern: str, root: Path, pidlog: Path, *args: str) -> tuple[str, dict[int, str]]:
    """Watch ``root`` while the pattern runs; (the JSON lines, ``pid -> name`` expected)."""
    script = _bench().NAMING[pattern]
    pidlog.write_text("")
    with cli("watch", "--json", *args, str(root)) as p:
        p.wait_stderr("watching")
        subprocess.run(["sh", "-c", script, "sh", str(ROUNDS), "zz_end", str(pidlog)],
                       cwd=root, check=True, timeout=60)
        out = b""
        assert p.popen.stdout is not None
        fd = p.popen.stdout.fileno()
        deadline = time.monotonic() + 30
        while b"zz_end" not in out:
            assert time.monotonic() < deadline, out[-300:]
            out += os.read(fd, 65536)
        p.popen.send_signal(signal.SIGINT)
        code, rest, err = p.finish()
    assert code == 0, err
    assert "nothing lost" in err, err
    expected = {int(a): b for a, b in (line.split() for line in pidlog.read_text().splitlines())}
    return (out.decode() + rest), expected


def _count(text: str, expected: dict[int, str]) -> tuple[set[int], set[int], list[str]]:
    """(pids seen, pids named right, lines that name a pid wrong)."""
    seen: set[int] = set()
    named: set[int] = set()
    wrong: list[str] = []
    for line in text.splitlines():
        r = json.loads(line)
        pid, name = r["process"]["pid"], r["process"]["name"]
        if pid not in expected:
            continue
        seen.add(pid)
        if name == expected[pid]:
            named.add(pid)
        elif name is not None:
            wrong.append(line)
    return seen, named, wrong


@needs_drain
@pytest.mark.parametrize(("pattern", "floor"), [("tmv", 48), ("echo", 48), ("exit", 45)])
def test_short_lived_processes_are_named_above_a_floor(
    tmpfs: Path, tmp_path: Path, pattern: str, floor: int
) -> None:
    # tmv: touch, mv, rm every 0.2 s; echo: a tight loop of sh -c 'echo x > f';
    # exit: dd, cp and ln at once, each exiting right after its write.
    text, expected = _run_pattern(pattern, tmpfs, tmp_path / "pids.log")
    assert len(expected) == 3 * ROUNDS
    seen, named, wrong = _count(text, expected)
    assert seen == set(expected)  # every process has lines, named or not
    assert not wrong, wrong[:3]
    assert len(named) >= floor, (pattern, len(named), sorted(set(expected) - named)[:10])


def _exit_log_on(root: Path) -> bool:
    """Whether a drain here gets the exit log (taskstats; root in the initial namespaces)."""
    with Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID) as fan:
        fan.mark(str(root), Event.CREATE, "filesystem")
        drain = _drain.Drain(fan, paths=False)
        try:
            return drain.exit_log.on
        finally:
            drain.close()


@needs_drain
@pytest.mark.parametrize("pattern", ["tmv", "echo", "exit"])
def test_with_the_exit_log_every_short_lived_process_is_named(
    tmpfs: Path, tmp_path: Path, pattern: str
) -> None:
    # A process reaped before the drain read its events is named from the
    # record the kernel sent as it exited (csrc/fastpath_deaths.c): none
    # is left unnamed, however the drain thread is scheduled.
    if not _exit_log_on(tmpfs):
        pytest.skip("no exit log here (taskstats needs CAP_NET_ADMIN in the initial namespaces)")
    text, expected = _run_pattern(pattern, tmpfs, tmp_path / "pids.log")
    seen, named, wrong = _count(text, expected)
    assert seen == set(expected)
    assert not wrong, wrong[:3]
    assert named == set(expected), (pattern, sorted(set(expected) - named)[:10])


@needs_drain
def test_exe_and_cwd_of_short_lived_processes_are_theirs(tmpfs: Path, tmp_path: Path) -> None:
    # --json has exe and cwd: read after the name and checked again; a named
    # process's executable is its own program and its cwd the mount.
    text, expected = _run_pattern("tmv", tmpfs, tmp_path / "pids.log")
    with_exe = 0
    for line in text.splitlines():
        r = json.loads(line)
        proc = r["process"]
        if proc["pid"] not in expected or proc["name"] is None:
            continue
        assert proc["name"] == expected[proc["pid"]], line
        if proc["executable"] is not None:
            with_exe += 1
            assert os.path.basename(proc["executable"]) == expected[proc["pid"]], line
        if proc["working_directory"] is not None:
            assert proc["working_directory"] == str(tmpfs), line
    assert with_exe >= 1


@needs_drain
def test_drain_thread_asks_for_a_short_wakeup(tmpfs: Path) -> None:
    # As root the thread gets both hints: the 0.1 ms slice and nice - 10
    # (afd_hint); without the hint it keeps the process's scheduling.
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for hint, want in ((True, (True, max(-20, base - 10))), (False, (False, None))):
        with Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID) as fan:
            fan.mark(str(tmpfs), Event.CREATE, "filesystem")
            drain = _drain.Drain(fan, paths=False, latency_hint=hint)
            drain.start()
            try:
                # not this process's: the group leaves out its own events
                subprocess.run(["touch", f"f{int(hint)}"], cwd=tmpfs, check=True)
                deadline = time.monotonic() + 10
                while True:
                    try:
                        events, _procs = drain.read_batch()
                        break
                    except WouldBlock:
                        assert time.monotonic() < deadline, drain.stats
                        time.sleep(0.005)
                assert [ev.name for ev in events] == [f"f{int(hint)}"]
                assert drain.scheduling == want
            finally:
                drain.close()
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the thread's nice, not the process's
