"""afanotify.compat: pyfanotify's documented API, one test per method, parameter and exception.

Kernel tests mark only the private tmpfs (or ext4) their fixture mounted.
Events come from processes that are not descendants of the test process
(``detached``), because the compat engine, like pyfanotify, drops events
caused by its own process and its descendants.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import itertools
import logging
import os
import select
import shutil
import socket
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
from helpers import CHILD_CWD, child_env, require_nobody_python

import afanotify
import afanotify.compat as pyfanotify
from afanotify import ClosedResourceError
from afanotify.compat import FanoRule, Fanotify, FanotifyClient, FanotifyData, evt_to_str
from afanotify.flags import InitFlag

# -- helpers -------------------------------------------------------------------

_DETACH = r"""
import os, sys, time
parent = os.getpid()
if os.fork():
    os._exit(0)
# Wait until the parent is gone and this process was reparented: from then on
# it is nobody's descendant in the test's process tree.
deadline = time.monotonic() + 5
while os.getppid() == parent and time.monotonic() < deadline:
    time.sleep(0.001)
os.execvp("sh", ["sh", "-c", sys.argv[1]])
"""


def detached(script: str) -> None:
    """Run a shell script in a process that is not a descendant of this one."""
    subprocess.run([sys.executable, "-c", _DETACH, script], check=True, timeout=10,
                   env=child_env(), cwd=CHILD_CWD)


class Held:
    """Shell scripts run by processes outside both listeners' trees, kept alive until released.

    A process that exits before a listener reads its event has no exe or cwd
    left to read, so 0.3.0 and we would drop its events at random; held
    processes make an exe/cwd comparison exact.  Each script first writes its
    shell's pid (``$$``), then blocks on a FIFO outside the marked mount.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="afanotify-held-"))
        self.fifo = self.dir / "go"
        os.mkfifo(self.fifo)
        self._n = 0

    def run(self, script: str, timeout: float = 10.0) -> int:
        """Run ``script`` (by one shell, builtins only); return its pid once it is done."""
        self._n += 1
        pidfile = self.dir / f"pid{self._n}"
        detached(f"{script}; echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; "
                 f"read _ < {self.fifo}")
        deadline = time.monotonic() + timeout
        while not pidfile.exists():
            assert time.monotonic() < deadline, f"the script did not finish: {script}"
            time.sleep(0.01)
        return int(pidfile.read_text())

    def release(self) -> None:
        """Let every held shell go.  Idempotent."""
        # Each held shell is blocked opening the FIFO to read; opening it to
        # write lets them all go (ENXIO: nobody is waiting any more).
        if not self.dir.exists():
            return
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            assert exc.errno == errno.ENXIO
        else:
            os.close(fd)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def held() -> Iterator[Held]:
    h = Held()
    yield h
    h.release()


Events = list[FanotifyData]


def wait_events(
    cli: FanotifyClient, until: Callable[[Events], bool], timeout: float = 5.0
) -> Events:
    """Poll the client's sock as legacy code does until ``until(events)``; fail at the deadline."""
    poll = select.poll()
    poll.register(cli.sock.fileno(), select.POLLIN)
    got: Events = []
    deadline = time.monotonic() + timeout
    while not until(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"deadline passed after {len(got)} events: {got!r}")
        if poll.poll(min(left, 0.5) * 1000):
            got.extend(cli.get_events())
    return got


def poll_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Check ``cond`` every 10 ms until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@contextlib.contextmanager
def dgram_receiver(name: bytes) -> Iterator[socket.socket]:
    """A unix datagram socket bound to the abstract address ``name`` (as pyfanotify binds it)."""
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        rx.bind(b"\0" + name)
        yield rx
    finally:
        rx.close()


def paths(events: Events) -> set[str | None]:
    return {ev.path for ev in events}


def has_path(p: Path | str) -> Callable[[Events], bool]:
    return lambda evs: str(p) in paths(evs)


@pytest.fixture
def make() -> Iterator[Callable[..., Fanotify]]:
    """Make compat Fanotify objects; every one is stopped after the test."""
    made: list[Fanotify] = []

    def factory(**kw: Any) -> Fanotify:
        fan = Fanotify(**kw)
        made.append(fan)
        return fan

    yield factory
    for fan in made:
        fan.stop()


@pytest.fixture
def client() -> Iterator[Callable[..., FanotifyClient]]:
    """Make compat clients; every one is closed after the test."""
    made: list[FanotifyClient] = []

    def factory(fan: Fanotify, **kw: Any) -> FanotifyClient:
        cli = FanotifyClient(fan, **kw)
        made.append(cli)
        return cli

    yield factory
    for cli in made:
        cli.close()


@pytest.fixture
def running(tmpfs: Path, make: Callable[..., Fanotify]) -> Callable[..., Fanotify]:
    """Make a compat Fanotify with a mount mark (``is_type="mp"``) on the tmpfs, started."""

    def factory(*ev_types: int) -> Fanotify:
        fan = make()
        fan.mark(str(tmpfs), *ev_types, is_type="mp")
        fan.start()
        return fan

    return factory


@pytest.fixture
def tmpfs2(tmpfs: Path) -> Iterator[Path]:
    """A second private tmpfs, mounted inside the first one."""
    mnt = tmpfs / "second"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "afanotify-test2", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


# -- module surface ---------------------------------------------------------------


def test_names_import_the_pyfanotify_way() -> None:
    from afanotify.compat import FanoRule as R
    from afanotify.compat import Fanotify as F
    from afanotify.compat import FanotifyClient as C

    # Not a second implementation: the native rule, taking malformed patterns
    # with a warning as pyfanotify does (issue 14), and nothing else of its own.
    assert R.__bases__ == (afanotify.FanoRule,)
    # (Dunder names aside: Python 3.13 adds __firstlineno__ and __static_attributes__.)
    assert {n for n in vars(R) if not n.startswith("__")} == {"_lenient_patterns"}
    assert F is pyfanotify.Fanotify and C is pyfanotify.FanotifyClient
    assert callable(pyfanotify.evt_to_str)
    for name in ("Fanotify", "FanoRule", "FanotifyClient", "FanotifyData", "evt_to_str"):
        assert name in pyfanotify.__all__


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FAN_ACCESS", 0x1), ("FAN_MODIFY", 0x2), ("FAN_ATTRIB", 0x4), ("FAN_CLOSE_WRITE", 0x8),
        ("FAN_CLOSE_NOWRITE", 0x10), ("FAN_OPEN", 0x20), ("FAN_MOVED_FROM", 0x40),
        ("FAN_MOVED_TO", 0x80), ("FAN_CREATE", 0x100), ("FAN_DELETE", 0x200),
        ("FAN_DELETE_SELF", 0x400), ("FAN_MOVE_SELF", 0x800), ("FAN_OPEN_EXEC", 0x1000),
        ("FAN_Q_OVERFLOW", 0x4000), ("FAN_OPEN_PERM", 0x10000), ("FAN_ACCESS_PERM", 0x20000),
        ("FAN_OPEN_EXEC_PERM", 0x40000), ("FAN_RENAME", 0x10000000), ("FAN_ONDIR", 0x40000000),
        ("FAN_EVENT_ON_CHILD", 0x08000000), ("FAN_CLOSE", 0x18), ("FAN_MOVE", 0xC0),
        ("FAN_CLOEXEC", 0x1), ("FAN_NONBLOCK", 0x2), ("FAN_CLASS_NOTIF", 0x0),
        ("FAN_CLASS_CONTENT", 0x4), ("FAN_CLASS_PRE_CONTENT", 0x8),
        ("FAN_UNLIMITED_QUEUE", 0x10), ("FAN_UNLIMITED_MARKS", 0x20),
        ("FAN_ENABLE_AUDIT", 0x40), ("FAN_REPORT_TID", 0x100), ("FAN_REPORT_FID", 0x200),
        ("FAN_REPORT_DIR_FID", 0x400), ("FAN_REPORT_NAME", 0x800),
        ("FAN_REPORT_DFID_NAME", 0xC00),
        ("FAN_MARK_ADD", 0x1), ("FAN_MARK_REMOVE", 0x2), ("FAN_MARK_DONT_FOLLOW", 0x4),
        ("FAN_MARK_ONLYDIR", 0x8), ("FAN_MARK_IGNORED_MASK", 0x20),
        ("FAN_MARK_IGNORED_SURV_MODIFY", 0x40), ("FAN_MARK_FLUSH", 0x80),
        ("FAN_MARK_INODE", 0x0), ("FAN_MARK_MOUNT", 0x10), ("FAN_MARK_FILESYSTEM", 0x100),
        ("FAN_ALLOW", 0x1), ("FAN_DENY", 0x2), ("FAN_AUDIT", 0x10),
        ("FAN_NOFD", -1), ("FANOTIFY_METADATA_VERSION", 3), ("AT_FDCWD", -100),
    ],
)
def test_fan_constants_have_the_kernel_values(name: str, value: int) -> None:
    assert getattr(pyfanotify, name) == value


def test_composite_constants_match_pyfanotify() -> None:
    c = pyfanotify
    assert c.FAN_ALL_EVENTS == (
        c.FAN_ACCESS | c.FAN_MODIFY | c.FAN_OPEN | c.FAN_OPEN_EXEC | c.FAN_CLOSE | c.FAN_ONDIR
        | c.FAN_EVENT_ON_CHILD
    )
    assert c.FAN_ALL_PERM_EVENTS == c.FAN_OPEN_PERM | c.FAN_ACCESS_PERM | c.FAN_OPEN_EXEC_PERM
    assert c.FAN_ALL_FID_EVENTS == (
        c.FAN_ATTRIB | c.FAN_MOVE | c.FAN_CREATE | c.FAN_DELETE | c.FAN_DELETE_SELF
        | c.FAN_MOVE_SELF | c.FAN_RENAME | c.FAN_ONDIR | c.FAN_EVENT_ON_CHILD
    )


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        (0, ""),
        (0x20, "open"),
        (0x20 | 0x10, "close_nowrite|open"),
        (0x2 | 0x8 | 0x20, "modify|close_write|open"),
        (0x100 | 0x40000000, "create|ondir"),
        (0x08000000 | 0x10000000 | 0x40000000, "rename|ondir|on_child"),
        (0x4000, "q_overflow"),
        (0x20 | 0x80000000, "open|0x80000000"),
    ],
)
def test_evt_to_str_names_bits_like_pyfanotify(mask: int, text: str) -> None:
    assert evt_to_str(mask) == text


# -- FanotifyData -------------------------------------------------------------------


def test_fanotify_data_documented_defaults() -> None:
    ev = FanotifyData()
    assert (ev.fd, ev.pid, ev.ev_types, ev.exe, ev.cwd, ev.path) == (-1, 0, 0, None, None, None)
    ev = FanotifyData(fd=7, pid=42, ev_types=0x20, exe="/bin/cat", cwd="/", path="/x")
    assert (ev.fd, ev.pid, ev.ev_types, ev.exe, ev.cwd, ev.path) == (
        7, 42, 0x20, "/bin/cat", "/", "/x"
    )
    assert isinstance(ev, afanotify.FanotifyData)  # the native type, reused


def test_fanotify_data_fields_assignable_and_indexable_like_pyfanotify_dicts() -> None:
    ev = FanotifyData(ev_types=0x20, path="/x")
    ev.ev_types = evt_to_str(ev.ev_types)  # what pyfanotify's examples do
    assert ev.ev_types == "open" and ev["ev_types"] == "open" and ev["path"] == "/x"
    ev["path"] = "/y"
    assert ev.path == "/y"
    assert set(ev.keys()) == {"fd", "pid", "ev_types", "exe", "cwd", "path"}
    with pytest.raises(KeyError):
        ev["name"]
    with pytest.raises(AttributeError):  # FrozenInstanceError: the other fields stay frozen
        ev.old_path = "/z"  # type: ignore[misc]


# -- Fanotify(): construction and its exceptions ---------------------------------------


@pytest.mark.kernel
def test_fanotify_defaults_make_a_fd_group(make: Callable[..., Fanotify]) -> None:
    fan = make()
    assert fan.with_fid is False
    assert not fan.group.fid_mode
    assert fan.group.flags & InitFlag.UNLIMITED_QUEUE  # as pyfanotify's group
    assert not fan.running


@pytest.mark.kernel
def test_init_fid_makes_a_fid_group(make: Callable[..., Fanotify]) -> None:
    fan = make(init_fid=True)
    assert fan.with_fid is True
    assert fan.group.fid_mode
    assert fan.group.flags & InitFlag.REPORT_DFID_NAME == InitFlag.REPORT_DFID_NAME


@pytest.mark.parametrize("fn", [5, "name", object()])
def test_fn_not_callable_raises_type_error(fn: object) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(TypeError, match="fn must be callable"):
        Fanotify(fn=fn)  # type: ignore[arg-type]
    assert len(os.listdir("/proc/self/fd")) == before  # no group was left open


@pytest.mark.parametrize("fn_args", [[1], 1, "ab", None])
def test_fn_args_not_tuple_raises_type_error(fn_args: object) -> None:
    with pytest.raises(TypeError, match="fn_args must be a tuple"):
        Fanotify(fn=print, fn_args=fn_args)  # type: ignore[arg-type]


def test_negative_fn_timeout_raises_value_error() -> None:
    with pytest.raises(ValueError, match="fn_timeout"):
        Fanotify(fn=print, fn_timeout=-1)


def test_oserror_when_fanotify_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from afanotify import _ffi

    def no_fanotify(flags: int, event_flags: int) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(_ffi, "fanotify_init", no_fanotify)
    with caplog.at_level(logging.ERROR, logger="afanotify.compat"):
        with pytest.raises(OSError) as info:
            Fanotify()
    assert info.value.errno == errno.ENOSYS
    assert "fanotify_init failed" in caplog.text


@pytest.mark.kernel
def test_oserror_without_privilege() -> None:
    # As a user without CAP_SYS_ADMIN, fanotify_init fails: OSError, as documented.
    require_nobody_python()
    code = textwrap.dedent("""
        import afanotify.compat as pyfanotify
        try:
            pyfanotify.Fanotify()
        except OSError as exc:
            print("OSError", exc.errno)
    """)
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, cwd=CHILD_CWD, env=child_env(),
    )
    assert r.stdout.split() == ["OSError", str(errno.EPERM)], r.stdout + r.stderr


# -- start / stop --------------------------------------------------------------------


@pytest.mark.kernel
def test_start_runs_the_engine_on_a_thread_not_a_process(make: Callable[..., Fanotify]) -> None:
    fan = make()
    before = {t.name for t in threading.enumerate()}
    fan.start()
    assert fan.running
    assert "afanotify-compat" in {t.name for t in threading.enumerate()} - before
    fan.start()  # a second start does nothing
    assert fan.running


@pytest.mark.kernel
def test_stop_joins_closes_and_is_idempotent(make: Callable[..., Fanotify]) -> None:
    fan = make()
    fan.start()
    thread = fan._thread
    assert thread is not None
    fan.stop()
    assert not thread.is_alive()
    assert fan.group.closed
    assert not fan.running
    fan.stop()  # twice is fine
    with pytest.raises(ClosedResourceError):
        fan.start()


@pytest.mark.kernel
def test_stop_without_start_closes_the_group(make: Callable[..., Fanotify]) -> None:
    fan = make()
    fan.stop()
    assert fan.group.closed


@pytest.mark.kernel
def test_stop_is_called_at_interpreter_exit(tmpfs: Path) -> None:
    # The atexit hook registered first runs last: it sees the engine stopped.
    code = textwrap.dedent("""
        import atexit, sys
        state = {}
        def check():
            fan = state["fan"]
            print("stopped" if fan.group.closed and not fan.running else "RUNNING")
        atexit.register(check)
        import afanotify.compat as pyfanotify
        fan = pyfanotify.Fanotify()
        fan.mark(sys.argv[1], is_type="mp")
        fan.start()
        cli = pyfanotify.FanotifyClient(fan, path_pattern="*")
        state["fan"] = fan
        print("started", flush=True)
    """)
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmpfs)], capture_output=True, text=True, timeout=30,
        cwd=CHILD_CWD, env=child_env(),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["started", "stopped"], r.stdout + r.stderr
    assert "Traceback" not in r.stderr


# -- fn timer --------------------------------------------------------------------------


@pytest.mark.kernel
def test_fn_called_with_fn_args_every_fn_timeout(make: Callable[..., Fanotify]) -> None:
    calls: list[tuple[float, tuple[Any, ...], str]] = []
    done = threading.Event()

    def fn(*args: Any) -> None:
        calls.append((time.monotonic(), args, threading.current_thread().name))
        if len(calls) >= 3:
            done.set()

    fan = make(fn=fn, fn_args=("a", 2), fn_timeout=0.2)
    fan.start()
    assert done.wait(5)
    fan.stop()
    n = len(calls)
    assert all(args == ("a", 2) for _, args, _ in calls)
    assert all(name == "afanotify-compat" for _, _, name in calls)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
    assert all(g >= 0.15 for g in gaps), gaps
    # stop() joined the engine thread, the only caller of fn: no call can follow.
    assert not any(t.name == "afanotify-compat" for t in threading.enumerate())
    assert len(calls) == n


@pytest.mark.kernel
def test_fn_not_called_before_start(make: Callable[..., Fanotify]) -> None:
    called = threading.Event()
    make(fn=called.set, fn_timeout=0.05)
    assert not called.wait(0.2)


@pytest.mark.kernel
def test_fn_exception_is_logged_and_fn_keeps_running(
    make: Callable[..., Fanotify], caplog: pytest.LogCaptureFixture
) -> None:
    calls = []
    done = threading.Event()

    def fn() -> None:
        calls.append(1)
        if len(calls) >= 2:
            done.set()
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="afanotify.compat"):
        fan = make(fn=fn, fn_timeout=0.05)
        fan.start()
        assert done.wait(5)
        fan.stop()
    assert "boom" in caplog.text


# -- FanoRule (re-exported; its own tests live in test_rules.py) --------------------------


def test_fanorule_documented_exceptions() -> None:
    with pytest.raises(TypeError):
        FanoRule("r", pids=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FanoRule("r")
    with pytest.raises(ValueError):
        FanoRule("r", pass_fd=True)
    rule = FanoRule(b"r", pids=["12", 13], ev_types=pyfanotify.FAN_OPEN, exe_pattern="/bin/*",
                    cwd_pattern="/", path_pattern="/x/*", pass_fd=True)
    assert rule.name == b"r" and rule.pids == {12, 13} and rule.pass_fd


# -- FanotifyClient ------------------------------------------------------------------------


@pytest.mark.kernel
def test_client_generates_rname_and_rule(
    make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    import hashlib

    fan = make()
    a = client(fan, path_pattern="/x/*", ev_types=pyfanotify.FAN_OPEN)
    b = client(fan, path_pattern="/x/*")
    assert isinstance(a.rname, bytes) and len(a.rname) == 64
    assert a.rname != b.rname
    assert a.rule.name == a.rname and a.rule.path_pattern == "/x/*"
    assert a.rule.ev_types == pyfanotify.FAN_OPEN
    named = client(fan, name=b"mine", path_pattern="*")
    assert named.rname == hashlib.sha256(b"mine").hexdigest().encode()


@pytest.mark.kernel
def test_client_rule_exceptions(make: Callable[..., Fanotify]) -> None:
    fan = make()
    with pytest.raises(TypeError):
        FanotifyClient(fan, pids=1)
    with pytest.raises(ValueError):
        FanotifyClient(fan)
    with pytest.raises(TypeError):
        FanotifyClient(object())  # type: ignore[arg-type]


@pytest.mark.kernel
def test_get_events_yields_nothing_without_blocking(
    make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = make()
    fan.start()
    cli = client(fan, path_pattern="*")
    t0 = time.monotonic()
    assert list(cli.get_events()) == []
    assert time.monotonic() - t0 < 0.5
    assert select.select([cli.sock], [], [], 0)[0] == []


@pytest.mark.kernel
def test_events_reach_a_poll_loop(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running()
    cli = client(fan, path_pattern=f"{tmpfs}/*")
    target = tmpfs / "a.txt"
    detached(f"echo hi > {target}")
    evs = wait_events(cli, lambda e: any(
        x.path == str(target) and x.ev_types & pyfanotify.FAN_CLOSE_WRITE for x in e))
    ev = next(x for x in evs if x.path == str(target))
    assert isinstance(ev, FanotifyData) and isinstance(ev.path, str)
    assert ev.pid > 0 and ev.pid != os.getpid()
    assert ev.fd == -1  # pass_fd=False
    # Drained: the sock is no longer readable.
    assert select.select([cli.sock], [], [], 0)[0] == []


@pytest.mark.kernel
def test_sock_readable_while_events_wait(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running()
    cli = client(fan, path_pattern=f"{tmpfs}/*")
    detached(f"echo hi > {tmpfs}/r")
    assert select.select([cli.sock], [], [], 5)[0] == [cli.sock]
    got = list(cli.get_events())
    assert str(tmpfs / "r") in paths(got)


@pytest.mark.kernel
def test_breaking_out_of_get_events_keeps_the_rest(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    cli = client(fan, path_pattern=f"{tmpfs}/*")
    detached(f"for i in 1 2 3 4 5; do echo x > {tmpfs}/f$i; done")
    deadline = time.monotonic() + 5
    while cli.statistics().queued < 5 and time.monotonic() < deadline:
        select.select([cli.sock], [], [], 0.1)
    assert cli.statistics().queued == 5
    for ev in cli.get_events():
        first = ev
        break
    rest = list(cli.get_events())
    assert [first.path, *[e.path for e in rest]] == [f"{tmpfs}/f{i}" for i in range(1, 6)]


@pytest.mark.kernel
def test_pass_fd_gives_the_receiver_an_open_fd(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    with_fd = client(fan, path_pattern=f"{tmpfs}/*", pass_fd=True)
    with_fd2 = client(fan, path_pattern=f"{tmpfs}/*", pass_fd=True)
    without = client(fan, path_pattern=f"{tmpfs}/*")
    detached(f"echo hi > {tmpfs}/p")
    a = wait_events(with_fd, has_path(tmpfs / "p"))[0]
    b = wait_events(with_fd2, has_path(tmpfs / "p"))[0]
    c = wait_events(without, has_path(tmpfs / "p"))[0]
    try:
        assert a.fd >= 0 and b.fd >= 0 and a.fd != b.fd
        assert os.readlink(f"/proc/self/fd/{a.fd}") == str(tmpfs / "p")
        assert os.read(b.fd, 10) == b"hi\n"
        assert c.fd == -1
    finally:
        os.close(a.fd)  # the receiver owns it, as in pyfanotify
        os.close(b.fd)


@pytest.mark.kernel
def test_exe_and_cwd_patterns_fill_exe_and_cwd(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    (tmpfs / "wd").mkdir()
    exe = os.path.realpath(sys.executable)
    cli = client(fan, exe_pattern=f"*/{os.path.basename(exe)}", cwd_pattern=f"{tmpfs}/wd")
    # The writer stays alive until we have read its exe and cwd (bounded wait).
    detached(f"cd {tmpfs}/wd && exec {exe} -c \"import os, time; open('out', 'w').close(); "
             "t = time.monotonic() + 10\n"
             "while not os.path.exists('release') and time.monotonic() < t: time.sleep(0.01)\"")
    try:
        ev = wait_events(cli, has_path(tmpfs / "wd" / "out"))[0]
    finally:
        (tmpfs / "wd" / "release").touch()
    assert ev.exe == exe
    assert ev.cwd == str(tmpfs / "wd")


@pytest.mark.kernel
def test_pids_rule_selects_by_pid(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    pidfile = tmpfs / "pid"
    catch_all = client(fan, path_pattern=f"{tmpfs}/*")
    detached(f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; "
             f"while [ ! -e {tmpfs}/go ]; do sleep 0.01; done; echo x > {tmpfs}/bypid")
    poll_until(pidfile.exists)
    pid = int(pidfile.read_text())
    by_pid = client(fan, pids=[pid])
    detached(f"echo x > {tmpfs}/other; touch {tmpfs}/go")
    wait_events(catch_all, has_path(tmpfs / "bypid"))
    got = wait_events(by_pid, has_path(tmpfs / "bypid"))
    assert {e.pid for e in got} == {pid}
    assert str(tmpfs / "other") not in paths(got)


@pytest.mark.kernel
def test_close_disconnects_and_is_idempotent(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    control = client(fan, path_pattern=f"{tmpfs}/*")
    cli = client(fan, path_pattern=f"{tmpfs}/*")
    detached(f"echo x > {tmpfs}/one")
    wait_events(cli, has_path(tmpfs / "one"))
    cli.close()
    assert cli.closed and cli.sock.fileno() == -1
    cli.close()
    detached(f"echo x > {tmpfs}/two")
    wait_events(control, has_path(tmpfs / "two"))
    assert list(cli.get_events()) == []
    assert fan.statistics().dispatch.clients == 1


@pytest.mark.kernel
def test_disconnect_and_connect_rule(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    control = client(fan, path_pattern=f"{tmpfs}/*")
    cli = client(fan, path_pattern=f"{tmpfs}/*")
    fan.disconnect(cli.rule)
    detached(f"echo x > {tmpfs}/while-off")
    wait_events(control, has_path(tmpfs / "while-off"))
    assert list(cli.get_events()) == []
    fan.connect(cli.rule)
    detached(f"echo x > {tmpfs}/while-on")
    got = wait_events(cli, has_path(tmpfs / "while-on"))
    assert str(tmpfs / "while-off") not in paths(got)


@pytest.mark.kernel
def test_connect_and_disconnect_take_only_rules(make: Callable[..., Fanotify]) -> None:
    fan = make()
    with pytest.raises(TypeError):
        fan.connect("rule")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fan.disconnect(None)  # type: ignore[arg-type]


@pytest.mark.kernel
def test_rule_without_client_gets_pyfanotify_datagrams(
    tmpfs: Path, make: Callable[..., Fanotify]
) -> None:
    import array
    import struct

    # Legacy code may bind the abstract socket itself, as pyfanotify's client does.
    name = b"legacy-receiver-%d" % os.getpid()
    with dgram_receiver(name) as rx:
        fan = make()
        fan.mark(str(tmpfs), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
        rule = FanoRule(name, path_pattern=f"{tmpfs}/*", pass_fd=True)
        fan.connect(rule)
        fan.start()
        detached(f"echo hi > {tmpfs}/dgram")
        rx.settimeout(5)
        msg, anc, _flags, _addr = rx.recvmsg(8192, socket.CMSG_SPACE(4))
        fds = array.array("i")
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data)
        try:
            pid, mask = struct.unpack_from("=qQ", msg)
            off, fields = 16, []
            while off < len(msg):
                (size,) = struct.unpack_from("=I", msg, off)
                fields.append(msg[off + 4:off + 4 + size])
                off += 4 + size
            assert pid > 0 and mask & pyfanotify.FAN_CLOSE_WRITE
            assert fields == [b"", b"", os.fsencode(tmpfs / "dgram")]  # exe, cwd, path
            assert len(fds) == 1 and os.read(fds[0], 10) == b"hi\n"
        finally:
            for fd in fds:
                os.close(fd)
        fan.disconnect(rule)


@pytest.mark.kernel
def test_full_datagram_receiver_makes_the_engine_wait_not_drop(
    tmpfs: Path, make: Callable[..., Fanotify]
) -> None:
    # A unix datagram socket queues ~10 messages; pyfanotify dropped the rest.
    name = b"slow-receiver-%d" % os.getpid()
    done = tmpfs / f"../done-{name.decode()}"
    try:
        with dgram_receiver(name) as rx:
            fan = make()
            fan.mark(str(tmpfs), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
            fan.connect(FanoRule(name, path_pattern=f"{tmpfs}/*"))
            fan.start()
            n = 60
            detached(f"i=0; while [ $i -lt {n} ]; do : > {tmpfs}/f$i; i=$((i+1)); done; "
                     f": > {done}")
            assert poll_until(done.exists, timeout=10)
            rx.settimeout(5)
            got = [rx.recv(8192)[-len(f"{tmpfs}/f{i}"):] for i in range(n)]
            assert got == [os.fsencode(f"{tmpfs}/f{i}") for i in range(n)]
            assert fan.statistics().datagrams_dropped == 0
    finally:
        done.unlink(missing_ok=True)


@pytest.mark.kernel
def test_rule_without_receiver_counts_and_logs_drops(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fan = make()
    fan.mark(str(tmpfs), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
    with caplog.at_level(logging.WARNING, logger="afanotify.compat"):
        fan.connect(FanoRule(b"nobody-listens-here", path_pattern=f"{tmpfs}/*"))
        fan.start()
        control = client(fan, path_pattern=f"{tmpfs}/*")
        detached(f"echo x > {tmpfs}/lost")
        wait_events(control, has_path(tmpfs / "lost"))
        poll_until(lambda: fan.statistics().datagrams_dropped >= 1)
    assert fan.statistics().datagrams_dropped == 1
    assert "no receiver" in caplog.text


# -- mark() ---------------------------------------------------------------------------------


@pytest.mark.kernel
def test_mark_inode_watches_only_that_file(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    (tmpfs / "watched").write_text("")
    (tmpfs / "other").write_text("")
    fan = make()
    fan.mark(str(tmpfs / "watched"), pyfanotify.FAN_CLOSE_WRITE)
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/other; echo x > {tmpfs}/watched")
    got = wait_events(cli, has_path(tmpfs / "watched"))
    assert paths(got) == {str(tmpfs / "watched")}


@pytest.mark.kernel
def test_mark_default_ev_types_cover_a_directorys_children(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    # FAN_ALL_EVENTS includes FAN_EVENT_ON_CHILD, as in pyfanotify.
    d = tmpfs / "d"
    d.mkdir()
    fan = make()
    fan.mark(str(d), is_type="dir")
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {d}/child")
    got = wait_events(cli, lambda e: any(
        x.path == str(d / "child") and x.ev_types & pyfanotify.FAN_CLOSE_WRITE for x in e))
    assert all(x.path.startswith(str(d)) for x in got if x.path)


@pytest.mark.kernel
def test_mark_mp_watches_the_mount(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    (tmpfs / "sub").mkdir()
    fan = make()
    fan.mark(str(tmpfs), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/sub/deep")
    wait_events(cli, has_path(tmpfs / "sub" / "deep"))


@pytest.mark.kernel
def test_mark_fs_watches_the_filesystem(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    (tmpfs / "sub").mkdir()
    fan = make()
    fan.mark(str(tmpfs / "sub"), pyfanotify.FAN_CLOSE_WRITE, is_type="fs")
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/top")  # outside the marked dir, same filesystem
    wait_events(cli, has_path(tmpfs / "top"))


@pytest.mark.kernel
def test_mark_dir_on_a_file_logs_and_does_not_raise(
    tmpfs: Path, make: Callable[..., Fanotify], caplog: pytest.LogCaptureFixture
) -> None:
    (tmpfs / "file").write_text("")
    fan = make()
    with caplog.at_level(logging.ERROR, logger="afanotify.compat"):
        fan.mark(str(tmpfs / "file"), is_type="dir")
    assert "mark(" in caplog.text and "file" in caplog.text


@pytest.mark.kernel
def test_mark_iterable_of_paths(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    for n in ("a", "b", "c"):
        (tmpfs / n).write_text("")
    fan = make()
    fan.mark([str(tmpfs / "a"), tmpfs / "b"], pyfanotify.FAN_CLOSE_WRITE)
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/c; echo x > {tmpfs}/a; echo x > {tmpfs}/b")
    got = wait_events(cli, lambda e: {str(tmpfs / "a"), str(tmpfs / "b")} <= paths(e))
    assert str(tmpfs / "c") not in paths(got)


@pytest.mark.kernel
def test_mark_dont_follow_marks_the_link_itself(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    (tmpfs / "target").write_text("")
    (tmpfs / "target2").write_text("")
    (tmpfs / "control").write_text("")
    os.symlink(tmpfs / "target", tmpfs / "link")
    os.symlink(tmpfs / "target2", tmpfs / "link2")
    fan = make()
    fan.mark(str(tmpfs / "link"), pyfanotify.FAN_CLOSE_WRITE, dont_follow=True)
    fan.mark(str(tmpfs / "link2"), pyfanotify.FAN_CLOSE_WRITE)  # follows: marks target2
    fan.mark(str(tmpfs / "control"), pyfanotify.FAN_CLOSE_WRITE)
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/target; echo x > {tmpfs}/target2; echo x > {tmpfs}/control")
    got = wait_events(cli, has_path(tmpfs / "control"))
    assert str(tmpfs / "target2") in paths(got)
    assert str(tmpfs / "target") not in paths(got)


@pytest.mark.kernel
def test_mark_as_ignore_silences_a_file(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    (tmpfs / "quiet").write_text("")
    fan = make()
    fan.mark(str(tmpfs), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
    fan.mark(str(tmpfs / "quiet"), pyfanotify.FAN_CLOSE_WRITE, as_ignore=True)
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/quiet; echo x > {tmpfs}/quiet; echo x > {tmpfs}/loud")
    got = wait_events(cli, has_path(tmpfs / "loud"))
    assert str(tmpfs / "quiet") not in paths(got)


@pytest.mark.kernel
def test_mark_remove_as_ignore_lets_events_through_again(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    (tmpfs / "quiet").write_text("")
    fan = make()
    fan.mark(str(tmpfs), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
    fan.mark(str(tmpfs / "quiet"), pyfanotify.FAN_CLOSE_WRITE, as_ignore=True)
    fan.mark(str(tmpfs / "quiet"), pyfanotify.FAN_CLOSE_WRITE, as_ignore=True, remove=True)
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/quiet")
    wait_events(cli, has_path(tmpfs / "quiet"))


@pytest.mark.kernel
def test_mark_remove_takes_events_off_the_mark(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    (tmpfs / "gone").write_text("")
    (tmpfs / "kept").write_text("")
    fan = make()
    fan.mark([str(tmpfs / "gone"), str(tmpfs / "kept")], pyfanotify.FAN_CLOSE_WRITE)
    fan.mark(str(tmpfs / "gone"), pyfanotify.FAN_CLOSE_WRITE, remove=True)
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/gone; echo x > {tmpfs}/kept")
    got = wait_events(cli, has_path(tmpfs / "kept"))
    assert str(tmpfs / "gone") not in paths(got)


@pytest.mark.kernel
def test_mark_after_start_works(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = make()
    fan.start()
    cli = client(fan, path_pattern="*")
    fan.mark(str(tmpfs), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
    detached(f"echo x > {tmpfs}/late")
    wait_events(cli, has_path(tmpfs / "late"))


@pytest.mark.kernel
def test_mark_failure_logs_to_given_logger_and_not_stdout(
    tmpfs: Path, make: Callable[..., Fanotify], capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mine = logging.getLogger("legacy.app")
    fan = make(log=mine)
    with caplog.at_level(logging.ERROR, logger="legacy.app"):
        fan.mark(str(tmpfs / "does-not-exist"))
        fan.mark(str(tmpfs), 0)  # an empty mask fails too
    records = [r for r in caplog.records if r.name == "legacy.app"]
    assert len(records) == 2
    assert "does-not-exist" in records[0].getMessage()
    assert capfd.readouterr().out == ""


@pytest.mark.kernel
def test_mark_failure_default_logger_is_the_modules(
    tmpfs: Path, make: Callable[..., Fanotify], capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fan = make()
    with caplog.at_level(logging.ERROR, logger="afanotify.compat"):
        fan.mark(str(tmpfs / "nope"), is_type="mp")
    assert any(r.name == "afanotify.compat" and "nope" in r.getMessage() for r in caplog.records)
    assert capfd.readouterr().out == ""


@pytest.mark.kernel
def test_mark_bad_arguments_raise(make: Callable[..., Fanotify], tmpfs: Path) -> None:
    fan = make()
    with pytest.raises(ValueError, match="is_type"):
        fan.mark(str(tmpfs), is_type="mount")
    with pytest.raises(NotImplementedError):
        fan.mark(str(tmpfs), pyfanotify.FAN_OPEN_PERM)
    with pytest.raises(TypeError):
        fan.mark(42)  # type: ignore[arg-type]


# -- flush() ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "silent", "loud"),
    [
        ({"do_non_mounts": True, "do_mounts": False, "do_fs": False}, "inode", "mount"),
        ({"do_non_mounts": False, "do_mounts": True, "do_fs": False}, "mount", "inode"),
        ({"do_non_mounts": False, "do_mounts": False, "do_fs": True}, "fs", "inode"),
    ],
)
@pytest.mark.kernel
def test_flush_removes_one_kind_of_mark(
    tmpfs: Path, tmpfs2: Path, ext4: Path, make: Callable[..., Fanotify],
    client: Callable[..., FanotifyClient], kwargs: dict[str, bool], silent: str, loud: str,
) -> None:
    # inode mark on tmpfs/f, mount mark on tmpfs2, filesystem mark on ext4.
    (tmpfs / "f").write_text("")
    files = {"inode": tmpfs / "f", "mount": tmpfs2 / "m", "fs": ext4 / "e"}
    fan = make()
    fan.mark(str(files["inode"]), pyfanotify.FAN_CLOSE_WRITE)
    fan.mark(str(tmpfs2), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
    fan.mark(str(ext4), pyfanotify.FAN_CLOSE_WRITE, is_type="fs")
    fan.flush(**kwargs)
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {files[silent]}; echo x > {files[loud]}")
    got = wait_events(cli, has_path(files[loud]))
    assert str(files[silent]) not in paths(got)


@pytest.mark.kernel
def test_flush_defaults_remove_every_mark(
    tmpfs: Path, tmpfs2: Path, make: Callable[..., Fanotify],
    client: Callable[..., FanotifyClient],
) -> None:
    (tmpfs / "f").write_text("")
    fan = make()
    fan.mark(str(tmpfs / "f"), pyfanotify.FAN_CLOSE_WRITE)
    fan.mark(str(tmpfs2), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
    fan.mark(str(tmpfs2), pyfanotify.FAN_CLOSE_WRITE, is_type="fs")
    fan.flush()
    (tmpfs / "ctl").write_text("")
    fan.mark(str(tmpfs / "ctl"), pyfanotify.FAN_CLOSE_WRITE)  # the control, marked after
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/f; echo x > {tmpfs2}/m; echo x > {tmpfs}/ctl")
    got = wait_events(cli, has_path(tmpfs / "ctl"))
    assert paths(got) == {str(tmpfs / "ctl")}


@pytest.mark.kernel
def test_flush_failure_is_logged(
    make: Callable[..., Fanotify], caplog: pytest.LogCaptureFixture
) -> None:
    fan = make()
    fan.stop()
    with caplog.at_level(logging.ERROR, logger="afanotify.compat"):
        fan.flush()
    assert "flush" in caplog.text


# -- FID mode -----------------------------------------------------------------------------------


@pytest.mark.kernel
def test_fid_events_carry_paths_and_rename_carries_both(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = make(init_fid=True)
    fan.mark(str(tmpfs), pyfanotify.FAN_ALL_FID_EVENTS, is_type="fs")
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"touch {tmpfs}/new; mv {tmpfs}/new {tmpfs}/renamed; rm {tmpfs}/renamed")
    got = wait_events(cli, lambda e: any(x.ev_types & pyfanotify.FAN_DELETE for x in e))
    kinds = {evt_to_str(e.ev_types): e for e in got}
    create = next(e for e in got if e.ev_types & pyfanotify.FAN_CREATE)
    assert create.path == str(tmpfs / "new") and create.fd == -1, kinds
    rename = next(e for e in got if e.ev_types & pyfanotify.FAN_RENAME)
    assert isinstance(rename.path, str)
    assert (rename.old_path, rename.new_path) == (str(tmpfs / "new"), str(tmpfs / "renamed"))


@pytest.mark.kernel
def test_clients_do_not_share_mutable_events(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    # In FID mode events own no fd, so the native fan-out shares one object.
    fan = make(init_fid=True)
    fan.mark(str(tmpfs), pyfanotify.FAN_CREATE, is_type="fs")
    fan.start()
    a = client(fan, path_pattern="*")
    b = client(fan, path_pattern="*")
    detached(f"touch {tmpfs}/shared")
    ea = wait_events(a, has_path(tmpfs / "shared"))[0]
    eb = wait_events(b, has_path(tmpfs / "shared"))[0]
    assert ea is not eb
    ea.ev_types = evt_to_str(ea.ev_types)
    assert ea.ev_types == "create" and eb.ev_types == pyfanotify.FAN_CREATE


# -- filtering our own process tree -----------------------------------------------------------


@pytest.mark.kernel
def test_events_from_own_process_and_descendants_are_not_delivered(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    cli = client(fan, path_pattern="*")
    (tmpfs / "mine").write_text("own process")
    # A grandchild (sh -> python) that stays alive until we have seen the control.
    child = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -c \"open('{tmpfs}/child', 'w').write('x'); "
         "print('written', flush=True); import sys; sys.stdin.read()\""],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
        cwd=CHILD_CWD,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
        detached(f"echo x > {tmpfs}/foreign")
        got = wait_events(cli, has_path(tmpfs / "foreign"))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
    assert paths(got) == {str(tmpfs / "foreign")}
    assert fan.statistics().descendant_events >= 1


# -- backlog: nothing lost ------------------------------------------------------------------------


@pytest.mark.kernel
def test_full_mailbox_applies_backpressure_and_loses_nothing(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    cli = client(fan, path_pattern="*", maxsize=8)
    n = 300
    detached(f"i=0; while [ $i -lt {n} ]; do : > {tmpfs}/f$i; i=$((i+1)); done; : > {tmpfs}/end")
    # Do not read until the whole burst is in the kernel's or our queues.
    poll_until((tmpfs / "end").exists, timeout=10)
    poll_until(lambda: cli.statistics().queued >= 8)
    assert cli.statistics().queued == 8  # the bound holds
    got = wait_events(cli, has_path(tmpfs / "end"), timeout=20)
    names = [e.path for e in got]
    assert names == [f"{tmpfs}/f{i}" for i in range(n)] + [str(tmpfs / "end")]
    st = cli.statistics()
    assert st.dropped == 0 and st.blocked > 0 and st.high_water == 8
    assert fan.statistics().waits > 0


@pytest.mark.kernel
def test_drop_policy_counts_and_logs_drops(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    cli = client(fan, path_pattern="*", maxsize=4, overflow="drop_newest")
    with caplog.at_level(logging.WARNING, logger="afanotify.compat"):
        detached(f"for i in 1 2 3 4 5 6 7 8 9 10; do : > {tmpfs}/f$i; done")
        assert poll_until(
            lambda: cli.statistics().delivered + cli.statistics().dropped >= 10
        ), cli.statistics()
        # The engine thread logs a drop just after counting it.
        assert poll_until(lambda: "dropped" in caplog.text), caplog.text
    st = cli.statistics()
    assert (st.delivered, st.dropped, st.queued) == (4, 6, 4)
    assert [e.path for e in cli.get_events()] == [f"{tmpfs}/f{i}" for i in range(1, 5)]


@pytest.mark.kernel
def test_burst_beyond_the_kernels_default_queue_arrives_whole(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    # 20,000 events > the default 16384-event kernel queue: the compat group
    # has FAN_UNLIMITED_QUEUE, and the mailbox (512) is far smaller than the
    # burst, so the engine must wait for the reader many times.
    n = 20_000
    fan = make()
    fan.mark(str(tmpfs), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
    cli = client(fan, path_pattern=f"{tmpfs}/*", maxsize=512)
    code = (f"import os\nfor i in range({n}): "
            f"os.close(os.open('{tmpfs}/f%d' % i, os.O_CREAT | os.O_WRONLY, 0o644))")
    detached(f"exec {sys.executable} -c \"{code}\"")
    fan.start()
    count = 0
    last = None

    def enough(evs: Events) -> bool:
        nonlocal count, last
        count += len(evs)
        if evs:
            last = evs[-1].path
        evs.clear()
        return count >= n

    wait_events(cli, enough, timeout=60)
    assert (count, last) == (n, f"{tmpfs}/f{n - 1}")
    st = fan.statistics()
    assert st.group.overflows == 0 and cli.statistics().dropped == 0


@pytest.mark.kernel
def test_get_events_is_a_generator(
    make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    import inspect

    cli = client(make(), path_pattern="*")
    assert inspect.isgenerator(cli.get_events())


@pytest.mark.kernel
def test_unstopped_fanotify_and_unclosed_client_warn() -> None:
    import gc

    fan = Fanotify()
    cli = FanotifyClient(fan, path_pattern="*")
    with pytest.warns(ResourceWarning, match="unclosed"):
        del cli
        gc.collect()
    group = fan.group
    with pytest.warns(ResourceWarning, match="unstopped"):
        del fan
        gc.collect()
    assert group.closed


@pytest.mark.kernel
def test_default_mask_on_a_file_is_accepted(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmpfs / "plain").write_text("")
    fan = make()
    with caplog.at_level(logging.ERROR, logger="afanotify.compat"):
        fan.mark(str(tmpfs / "plain"))  # FAN_ALL_EVENTS, with ONDIR and EVENT_ON_CHILD
    assert caplog.records == []
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"cat {tmpfs}/plain")
    got = wait_events(cli, lambda e: any(x.ev_types & pyfanotify.FAN_CLOSE_NOWRITE for x in e))
    assert paths(got) == {str(tmpfs / "plain")}


@pytest.mark.kernel
def test_client_on_a_stopped_fanotify_raises(make: Callable[..., Fanotify]) -> None:
    fan = make()
    fan.stop()
    with pytest.raises(ClosedResourceError):
        FanotifyClient(fan, path_pattern="*")


@pytest.mark.kernel
def test_client_made_before_start_receives_after_start(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    fan = make()
    fan.mark(str(tmpfs), pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
    cli = client(fan, path_pattern="*")
    fan.start()
    detached(f"echo x > {tmpfs}/early")
    wait_events(cli, has_path(tmpfs / "early"))


@pytest.mark.kernel
def test_stop_from_fn_ends_the_engine(make: Callable[..., Fanotify]) -> None:
    holder: list[Fanotify] = []
    fan = make(fn=lambda: holder[0].stop(), fn_timeout=0.05)
    holder.append(fan)
    fan.start()
    thread = fan._thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
    assert fan.group.closed


@pytest.mark.kernel
def test_fn_timeout_zero_calls_fn_every_second(make: Callable[..., Fanotify]) -> None:
    calls: list[float] = []
    done = threading.Event()

    def fn() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 2:
            done.set()

    fan = make(fn=fn)  # fn_timeout=0, the default
    fan.start()
    assert done.wait(5)
    assert 0.8 <= calls[1] - calls[0] <= 3.0


@pytest.mark.kernel
def test_mark_relative_path_with_dirfd(
    tmpfs: Path, make: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    (tmpfs / "rel").write_text("")
    dirfd = os.open(tmpfs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fan = make()
        fan.mark("rel", pyfanotify.FAN_CLOSE_WRITE, dirfd=dirfd)
    finally:
        os.close(dirfd)
    fan.start()
    cli = client(fan, path_pattern="*")
    detached(f"echo x > {tmpfs}/rel")
    wait_events(cli, has_path(tmpfs / "rel"))


def test_ancestry_walks_the_ppid_chain_and_caches() -> None:
    import signal

    from afanotify._compat_ancestry import _Ancestry

    anc = _Ancestry(os.getpid())
    child = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        now = time.monotonic()
        assert anc.is_ours(grandchild, now)
        assert anc.is_ours(child.pid, now)  # answered by the walk above
        assert anc.walks == 1
        assert anc.is_ours(os.getpid(), now)
        assert not anc.is_ours(os.getppid(), now)
        assert not anc.is_ours(2**22 + 12345, now)  # no such process
        walks = anc.walks
        assert anc.is_ours(grandchild, now + 10)  # the cached answer expired: walk again
        assert anc.walks == walks + 1
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
        assert child.stdout is not None
        child.stdout.close()


@pytest.mark.kernel
def test_legacy_events_stay_visible_to_the_garbage_collector(
    tmpfs: Path, running: Callable[..., Fanotify], client: Callable[..., FanotifyClient]
) -> None:
    # Native events are left untracked (they are frozen and hold no cycles);
    # legacy ones are mutable, so a cycle through one must stay collectable.
    fan = running(pyfanotify.FAN_CLOSE_WRITE)
    cli = client(fan, path_pattern="*")
    detached(f": > {tmpfs}/f1; : > {tmpfs}/f2")
    evs = wait_events(cli, lambda got: len(got) >= 2)
    assert all(gc.is_tracked(ev) for ev in evs)
