"""``fn`` in a forked single-threaded child that shares the group (pyfanotify 0.3.0's way).

``afanotify.pyfanotify.Fanotify`` runs ``fn`` there by default, and
``afanotify.compat.Fanotify(fn_in="process")`` on request.  Events come from
processes that are not descendants of the test process (``detached``).
"""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CHILD_CWD, child_env
from test_compat import detached

import afanotify.compat as compat
import afanotify.pyfanotify as legacy

CLONE_NEWNS = 0x00020000


class Reports:
    """A pipe fn writes one line per call to; the test reads the lines with deadlines."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self._buf = b""

    def send(self, text: str) -> None:
        os.write(self.w, text.encode() + b"\n")

    def next(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                return None
            self._buf += os.read(self.r, 4096)
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def reports() -> Iterator[Reports]:
    rep = Reports()
    yield rep
    rep.close()


@pytest.fixture
def started() -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def start(**kw: Any) -> Any:
        fan = legacy.Fanotify(**kw)
        made.append(fan)
        fan.start()
        return fan

    yield start
    for fan in made:
        fan.stop()


def _threads() -> int:
    with open("/proc/self/status") as f:
        return int(next(ln for ln in f if ln.startswith("Threads:")).split()[1])


def _wait_event(cli: Any, pred: Callable[[Any], bool], timeout: float = 10.0) -> list[Any]:
    poll = select.poll()
    poll.register(cli.sock.fileno(), select.POLLIN)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while not any(pred(ev) for ev in got):
        left = deadline - time.monotonic()
        assert left > 0, f"no such event before the deadline: {got!r}"
        if poll.poll(min(left, 0.5) * 1000):
            got.extend(cli.get_events())
    return got


def test_fn_in_defaults_and_validation() -> None:
    assert legacy.Fanotify.FN_IN == "process"
    assert compat.Fanotify.FN_IN == "thread"
    assert issubclass(legacy.Fanotify, compat.Fanotify)
    with pytest.raises(ValueError, match="fn_in must be 'thread' or 'process'"):
        compat.Fanotify(fn=print, fn_in="fork")  # type: ignore[arg-type]


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_fn_runs_in_a_single_threaded_child_whose_marks_are_the_groups(
    tmpfs: Path, reports: Reports, started: Callable[..., Any]
) -> None:
    holder: list[Any] = []

    def fn(path: str) -> None:
        holder[0].mark(path, ev_types=legacy.FAN_CLOSE_WRITE, is_type="mp")
        reports.send(f"{os.getpid()} {_threads()}")

    fan = legacy.Fanotify(fn=fn, fn_args=(str(tmpfs),), fn_timeout=30)
    holder.append(fan)
    try:
        fan.start()
        assert reports.next(0.3) is None  # no rule yet: fn does not run
        cli = legacy.FanotifyClient(fan, path_pattern="*")
        line = reports.next(10)
        assert line is not None, "fn never ran"
        pid, threads = map(int, line.split())
        assert pid != os.getpid()
        assert threads == 1
        assert _threads() > 1  # this process has the engine thread
        # Only the child marked the tmpfs: its event reaches the parent's client.
        detached(f"echo x > {tmpfs}/from-child-mark")
        _wait_event(cli, lambda ev: ev.path == (f"{tmpfs}/from-child-mark".encode(),))
        cli.close()
    finally:
        fan.stop()


@pytest.fixture
def other_namespace() -> Iterator[tuple[int, str]]:
    """A process in a private mount namespace with a tmpfs only that namespace sees."""
    where = tempfile.mkdtemp(prefix="afanotify-ns-")
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs afanotify-ns {where} && echo ready && exec sleep 120"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        yield proc.pid, where
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        os.rmdir(where)


def _setns_and_mark(fan: list[Any], pid: int, where: str, reports: Reports) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNS) != 0:
            reports.send(f"setns {ctypes.get_errno()}")
            return
    finally:
        os.close(fd)
    fan[0].mark(where, ev_types=legacy.FAN_CLOSE_WRITE, is_type="mp")
    reports.send("setns 0")


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_fn_marks_a_mount_of_another_namespace_through_setns(
    other_namespace: tuple[int, str], reports: Reports
) -> None:
    pid, where = other_namespace
    holder: list[Any] = []
    fan = legacy.Fanotify(fn=_setns_and_mark, fn_args=(holder, pid, where, reports),
                          fn_timeout=30)
    holder.append(fan)
    try:
        fan.start()
        cli = legacy.FanotifyClient(fan, path_pattern="*")
        assert reports.next(10) == "setns 0"
        detached(f"nsenter -t {pid} -m sh -c 'echo x > {where}/inside'")
        _wait_event(cli, lambda ev: ev.path[0].endswith(b"/inside")
                    and ev.ev_types & legacy.FAN_CLOSE_WRITE)
        cli.close()
    finally:
        fan.stop()
    # The mount stayed in its namespace: here the directory is empty.
    assert os.listdir(where) == []


@pytest.mark.kernel
def test_on_a_thread_setns_into_a_mount_namespace_fails() -> None:
    # Why fn needs a process: in a multi-threaded process setns(CLONE_NEWNS)
    # is refused with EINVAL (run in a child, which must not end up elsewhere).
    code = textwrap.dedent("""
        import ctypes, os, threading
        t = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
        t.start()
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
        print(libc.setns(fd, 0x00020000), ctypes.get_errno())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, env=child_env(), cwd=CHILD_CWD)
    assert r.stdout.split() == ["-1", str(22)], r.stdout + r.stderr


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_fn_runs_only_while_a_rule_is_connected_and_at_once_for_the_first(
    reports: Reports, started: Callable[..., Any]
) -> None:
    fan = started(fn=lambda: reports.send(repr(time.monotonic())), fn_timeout=3)
    rule = legacy.FanoRule(b"fnchild-test", ev_types=legacy.FAN_CLOSE_WRITE)
    t_before = time.monotonic()
    fan.connect(rule)
    t_connect = time.monotonic()
    first = reports.next(10)
    assert first is not None
    # The first call came with connect() (none between start and connect),
    # and at once, not a period later.
    assert t_before <= float(first) <= t_connect + 2, (t_before, t_connect, first)
    second = reports.next(10)
    assert second is not None and float(second) - float(first) >= 2.5
    fan.disconnect(rule)
    t_idle = time.monotonic()
    assert reports.next(3.5) is None  # a period passed with no rule: no call
    fan.connect(rule)
    t_again = time.monotonic()
    again = reports.next(10)
    assert again is not None and float(again) >= t_idle + 3, (t_idle, t_again, again)
    assert float(again) <= t_again + 2


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_stop_reaps_the_child(started: Callable[..., Any], reports: Reports) -> None:
    fan = started(fn=lambda: reports.send(str(os.getpid())), fn_timeout=30)
    fan.connect(legacy.FanoRule(b"fnchild-reap", ev_types=legacy.FAN_CLOSE_WRITE))
    line = reports.next(10)
    assert line is not None
    pid = int(line)
    fan.stop()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped already
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_the_child_ends_when_its_parent_dies() -> None:
    code = textwrap.dedent("""
        import os, sys, time
        import afanotify.pyfanotify as fan
        r, w = os.pipe()
        f = fan.Fanotify(fn=lambda: os.write(w, b"%d\\n" % os.getpid()), fn_timeout=30)
        f.start()
        f.connect(fan.FanoRule(b"orphan", ev_types=fan.FAN_CLOSE_WRITE))
        print(os.read(r, 64).decode().strip(), flush=True)
        os._exit(0)  # no stop(): the child must notice by itself
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, env=child_env(), cwd=CHILD_CWD)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    try:
        assert select.select([pidfd], [], [], 10)[0], "fn's child outlived its parent"
    finally:
        os.close(pidfd)


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_stop_kills_an_fn_that_does_not_return(reports: Reports) -> None:
    def stuck() -> None:
        reports.send(str(os.getpid()))
        time.sleep(120)

    fan = legacy.Fanotify(fn=stuck, fn_timeout=30)
    assert fan._fn_child is not None
    fan._fn_child.grace = 0.5
    fan.start()
    try:
        fan.connect(legacy.FanoRule(b"fnchild-stuck", ev_types=legacy.FAN_CLOSE_WRITE))
        line = reports.next(10)
        assert line is not None
        t0 = time.monotonic()
    finally:
        fan.stop()
    assert time.monotonic() - t0 < 10
    with pytest.raises(ProcessLookupError):
        os.kill(int(line), 0)


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_fn_in_chooses_either_way_in_both_modules(reports: Reports) -> None:
    cases = [(compat.Fanotify, "process"), (legacy.Fanotify, "thread")]
    for cls, where in cases:
        fan = cls(fn=lambda: reports.send(f"{os.getpid()} {threading.current_thread().name}"),
                  fn_timeout=30, fn_in=where)
        try:
            fan.start()
            fan.connect(legacy.FanoRule(b"fnchild-either", ev_types=legacy.FAN_CLOSE_WRITE))
            line = reports.next(10)
        finally:
            fan.stop()
        assert line is not None, where
        pid, name = line.split()
        if where == "process":
            assert int(pid) != os.getpid()
        else:
            assert (int(pid), name) == (os.getpid(), "afanotify-compat")


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_an_exception_in_fn_is_logged_by_the_child_and_fn_runs_again() -> None:
    code = textwrap.dedent("""
        import logging, os, sys
        import afanotify.pyfanotify as fan
        logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
        r, w = os.pipe()
        def fn():
            os.write(w, b"x")
            raise RuntimeError("boom in fn")
        f = fan.Fanotify(fn=fn, fn_timeout=0.1)
        f.start()
        f.connect(fan.FanoRule(b"raises", ev_types=fan.FAN_CLOSE_WRITE))
        got = b""
        while len(got) < 2:
            got += os.read(r, 1)
        f.stop()
        print("calls", len(got))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, env=child_env(), cwd=CHILD_CWD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["calls", "2"]
    assert "fn raised" in r.stderr and "RuntimeError: boom in fn" in r.stderr, r.stderr
