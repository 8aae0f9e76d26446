"""The drain names a process reaped before it could read /proc, from the exit log.

Kernel tests on a private tmpfs.  The exit log (csrc/fastpath_deaths.c) is
registered when the :class:`~afanotify._drain.Drain` is made, and the thread
is started only after the writers have exited and been reaped, so that
/proc certainly has no entry for them when their events are read: whatever
names them is the log.  The same run without the log shows them unnamed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from helpers import CHILD_CWD, child_env

from afanotify import Event, Fanotify, InitFlag, WouldBlock, _drain
from afanotify._proc import NO_PROCESS, Proc

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not _drain.available(), reason="the pure core has no drain"),
]

FLAGS = InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID | InitFlag.REPORT_PIDFD
#: Without pidfds the drain checks /proc against the exit log instead.
NO_PIDFD = InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID


def _reaped(argv: list[str], cwd: Path) -> int:
    """Run argv to its end and reap it; its pid, which /proc no longer has."""
    p = subprocess.Popen(argv, cwd=cwd)
    assert p.wait(timeout=20) == 0
    assert not os.path.exists(f"/proc/{p.pid}")
    return p.pid


def _batches_until(drain: _drain.Drain, names: set[str]) -> tuple[list[str], dict[int, Proc]]:
    """Take batches until events of every name in ``names`` came: (names, processes)."""
    seen: list[str] = []
    procs: dict[int, Proc] = {}
    deadline = time.monotonic() + 20
    while not names <= set(seen):
        try:
            events, batch_procs = drain.read_batch()
        except WouldBlock:
            assert time.monotonic() < deadline, (seen, drain.stats)
            time.sleep(0.005)
            continue
        seen += [ev.name for ev in events if isinstance(ev.name, str)]
        procs.update(batch_procs)
    return seen, procs


@pytest.mark.parametrize("flags", [FLAGS, NO_PIDFD], ids=["pidfd", "no-pidfd"])
@pytest.mark.parametrize("exit_names", [True, False])
def test_reaped_writers_are_named_by_the_exit_log(
    tmpfs: Path, exit_names: bool, flags: InitFlag
) -> None:
    with Fanotify(flags) as fan:
        fan.mark(str(tmpfs), Event.CREATE, "filesystem")
        drain = _drain.Drain(fan, paths=True, exit_names=exit_names)
        try:
            assert drain.exit_log.on == exit_names  # root, initial namespaces
            touch = _reaped(["touch", "a"], tmpfs)
            ln = _reaped(["ln", "-s", "x", "b"], tmpfs)
            # alive while its event is read: named from /proc, with its links
            live = subprocess.Popen(["sh", "-c", ": > c; read x"], cwd=tmpfs,
                                    stdin=subprocess.PIPE)
            try:
                drain.start()
                _seen, procs = _batches_until(drain, {"a", "b", "c"})
                assert procs[live.pid][0] == "sh"
                assert procs[live.pid][2] == str(tmpfs)
                assert procs[live.pid][1] is not None
            finally:
                assert live.stdin is not None
                live.stdin.close()
                live.wait(timeout=20)
            if exit_names:
                # the name alone: a reaped process's exe and cwd are gone
                assert procs[touch] == ("touch", None, None)
                assert procs[ln] == ("ln", None, None)
                assert drain.exit_log == _drain.ExitLog(True, 2, 0)
            else:
                assert procs[touch] == NO_PROCESS
                assert procs[ln] == NO_PROCESS
                assert drain.exit_log == _drain.ExitLog(False, 0, 0)
        finally:
            drain.close()


def test_a_drain_dropped_unclosed_closes_its_log(tmpfs: Path) -> None:
    with Fanotify(FLAGS) as fan:
        fan.mark(str(tmpfs), Event.CREATE, "filesystem")
        before = sorted(os.listdir("/proc/self/fd"))
        drain = _drain.Drain(fan, paths=False)
        assert drain.exit_log.on and sorted(os.listdir("/proc/self/fd")) != before
        del drain
        gc.collect()  # the drain and its (unstarted) thread hold each other
        assert sorted(os.listdir("/proc/self/fd")) == before


def test_exit_log_is_closed_with_the_drain(tmpfs: Path) -> None:
    # Made and closed without a start, and with one: no socket stays open.
    with Fanotify(FLAGS) as fan:
        fan.mark(str(tmpfs), Event.CREATE, "filesystem")
        before = sorted(os.listdir("/proc/self/fd"))
        for start in (False, True):
            drain = _drain.Drain(fan, paths=False)
            assert drain.exit_log.on
            if start:
                drain.start()
            drain.close()
            assert sorted(os.listdir("/proc/self/fd")) == before
        assert drain.exit_log == _drain.ExitLog(True, 0, 0)  # kept after close


CHILD = r"""
import os, subprocess, sys, time
from afanotify import Event, Fanotify, InitFlag, WouldBlock, _drain
root = sys.argv[1]
flags = InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID | InitFlag.REPORT_PIDFD
with Fanotify(flags) as fan:
    fan.mark(root, Event.CREATE, "filesystem")
    drain = _drain.Drain(fan, paths=False)
    drain.start()
    live = subprocess.Popen(["sh", "-c", ": > f; read x"], cwd=root, stdin=subprocess.PIPE)
    deadline = time.monotonic() + 20
    procs = {}
    while live.pid not in procs:
        try:
            procs.update(drain.read_batch().processes)
        except WouldBlock:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    live.stdin.close()
    live.wait()
    print(drain.exit_log.on, procs[live.pid][0])
    drain.close()
"""


def test_without_net_admin_the_log_is_off_and_proc_still_names(tmpfs: Path) -> None:
    # Registering for every CPU's exits needs CAP_NET_ADMIN: without it the
    # drain runs as before, naming from /proc.
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop CAP_NET_ADMIN")
    out = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable,
         "-c", CHILD, str(tmpfs)],
        capture_output=True, text=True, timeout=40, check=True, env=child_env(), cwd=CHILD_CWD,
    )
    assert out.stdout.split() == ["False", "sh"], out.stderr


@pytest.mark.parametrize("settle", [-0.001, 0.6, float("nan")])
def test_a_settle_out_of_range_is_refused(tmpfs: Path, settle: float) -> None:
    with Fanotify(FLAGS) as fan:
        with pytest.raises(ValueError, match=r"settle must be 0 to 0\.5 seconds"):
            _drain.Drain(fan, settle=settle)


@pytest.mark.parametrize("slow", [-0.001, 0.6, float("nan")])
def test_a_slow_settle_out_of_range_is_refused(tmpfs: Path, slow: float) -> None:
    with Fanotify(FLAGS) as fan:
        with pytest.raises(ValueError, match=r"slow_settle must be 0 to 0\.5 seconds"):
            _drain.Drain(fan, slow_settle=slow)


def _slow_writer_reads(tmpfs: Path, slow: float) -> tuple[int, int]:
    """Reads and events of a drain while 60 files are made 10 ms apart."""
    (tmpfs / str(slow)).mkdir()  # new names each time: CREATE events
    with Fanotify(FLAGS) as fan:
        fan.mark(str(tmpfs), Event.CREATE, "filesystem")
        drain = _drain.Drain(fan, settle=0.005, slow_settle=slow)
        drain.start()
        try:
            # (from a child: the drain leaves out this process's own events)
            subprocess.run(["sh", "-c", "for i in $(seq 60); do : > f$i; sleep 0.01; done"],
                           cwd=tmpfs / str(slow), check=True, timeout=20)
            deadline = time.monotonic() + 20
            while drain.stats.events_read < 60:
                assert time.monotonic() < deadline, drain.stats
                time.sleep(0.01)
            return drain.stats.reads, drain.stats.events_read
        finally:
            drain.stop()
            drain.close()


def test_a_slow_writer_is_read_in_fewer_reads(tmpfs: Path) -> None:
    # A file every 10 ms: read after a 5 ms settle, nearly a read per file;
    # after a 200 ms one (a few events a read: slow), a read or two per 200 ms.
    if not _drain.exit_log_available():
        pytest.skip("the settle applies with the exit log only (CAP_NET_ADMIN)")
    reads, events = _slow_writer_reads(tmpfs, 0.2)
    assert events == 60
    fast_reads, fast_events = _slow_writer_reads(tmpfs, 0.0)  # 0: settle alone
    assert fast_events == 60
    assert reads * 3 <= fast_reads, (reads, fast_reads)


def _zombie(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """Run argv to its end but do not reap it (its /proc entry stays)."""
    p = subprocess.Popen(argv, cwd=cwd)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.002)
    return p


@pytest.mark.parametrize("flags", [FLAGS, NO_PIDFD], ids=["pidfd", "no-pidfd"])
def test_an_exited_process_is_named_but_its_links_are_not_taken(
    tmpfs: Path, flags: InitFlag
) -> None:
    # A zombie still has /proc/PID/comm, and is named from there (with
    # pidfds, signal 0 still reaches it); its exe and cwd are gone.
    with Fanotify(flags) as fan:
        fan.mark(str(tmpfs), Event.CREATE, "filesystem")
        drain = _drain.Drain(fan, paths=True)
        z = _zombie(["touch", "z"], tmpfs)
        try:
            drain.start()
            _seen, procs = _batches_until(drain, {"z"})
            assert procs[z.pid] == ("touch", None, None)
            assert drain.exit_log == _drain.ExitLog(True, 0, 0)
        finally:
            assert z.wait(timeout=20) == 0
            drain.close()


# Pid reuse, made to happen at once: tests/pid_at.c runs a program as a
# chosen pid (clone3's set_tid), here the pid of a writer just reaped.  A
# name taken for the writer must be the writer's, never the new holder's.


@pytest.fixture(scope="module")
def pid_at(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("needs a C compiler for tests/pid_at.c")
    exe = tmp_path_factory.mktemp("pid_at") / "pid_at"
    subprocess.run([gcc, "-O1", "-o", str(exe), str(Path(__file__).with_name("pid_at.c"))],
                   check=True, timeout=60)
    return exe


def _wait_comm(pid: int, comm: str) -> None:
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}/comm").read_text().strip() != comm:
        assert time.monotonic() < deadline, f"pid {pid} never ran {comm}"
        time.sleep(0.002)


def _writer_then_reuse(pid_at: Path, root: Path, name: str,
                       *argv: str) -> int:
    """A reaped ``touch name``, whose pid then runs argv to its end; the pid."""
    for _ in range(5):  # another process may take the freed pid first
        pid = _reaped(["touch", name], root)
        r = subprocess.run([str(pid_at), str(pid), *argv], timeout=20)
        if r.returncode != 3:
            assert r.returncode == 0, r.returncode
            return pid
        name += "x"
    pytest.fail("the freed pid was taken five times")


@contextlib.contextmanager
def _held_reuse(pid_at: Path, root: Path, name: str, *argv: str) -> Iterator[int]:
    """A reaped ``touch name`` whose pid then runs argv, alive until the block ends: the pid."""
    holder = None
    try:
        for _ in range(5):  # another process may take the freed pid first
            pid = _reaped(["touch", name], root)
            holder = subprocess.Popen([str(pid_at), str(pid), "--hold", *argv], cwd=root,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert holder.stdout is not None and holder.stdin is not None
            line = holder.stdout.readline()
            if line:
                break
            assert holder.wait(timeout=20) == 3
            holder.stdout.close()
            holder.stdin.close()
            holder = None
        assert holder is not None and int(line) == pid
        yield pid
    finally:
        if holder is not None:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.close()
            holder.wait(timeout=20)
            holder.stdout.close()


@pytest.mark.parametrize("flags", [FLAGS, NO_PIDFD], ids=["pidfd", "no-pidfd"])
def test_two_exits_of_one_pid_in_the_window_leave_it_unnamed(
    tmpfs: Path, pid_at: Path, flags: InitFlag
) -> None:
    # The writer and the next holder of its pid both exit before the read:
    # two records of the pid, so which one made the event is not known.
    with Fanotify(flags) as fan:
        fan.mark(str(tmpfs), Event.CREATE, "filesystem")
        drain = _drain.Drain(fan, paths=True)
        try:
            pid = _writer_then_reuse(pid_at, tmpfs, "w", "true")
            drain.start()
            _seen, procs = _batches_until(drain, set())
            deadline = time.monotonic() + 20
            while pid not in procs:
                assert time.monotonic() < deadline, procs
                try:
                    procs.update(drain.read_batch().processes)
                except WouldBlock:
                    time.sleep(0.005)
            assert procs[pid] == NO_PROCESS
            assert drain.exit_log == _drain.ExitLog(True, 0, 0)
        finally:
            drain.close()


@pytest.mark.parametrize("flags", [FLAGS, NO_PIDFD], ids=["pidfd", "no-pidfd"])
def test_a_pid_reused_after_an_event_queued_before_the_log_is_not_its_name(
    tmpfs: Path, pid_at: Path, flags: InitFlag
) -> None:
    # The writer exits before the log exists (its record is never seen);
    # the next holder of its pid exits after.  The writer's event was queued
    # before the log: the log does not name it.
    with Fanotify(flags) as fan:
        fan.mark(str(tmpfs), Event.CREATE, "filesystem")
        # events queued ahead of the writer's (this process's: FIONREAD
        # counts 24 bytes an event, a read gives them with their records)
        for k in range(3):
            (tmpfs / f"ahead{k}").touch()
        for _ in range(5):
            pid = _reaped(["touch", "e"], tmpfs)
            drain = _drain.Drain(fan, paths=True)
            r = subprocess.run([str(pid_at), str(pid), "true"], timeout=20)
            if r.returncode != 3:
                break
            drain.close()
        try:
            assert r.returncode == 0, r.returncode
            drain.start()
            _seen, procs = _batches_until(drain, {"e"})
            assert procs[pid] == NO_PROCESS
            assert drain.exit_log.named == 0
        finally:
            drain.close()


def _read_across_a_held_reuse(
    tmpfs: Path, pid_at: Path, name: str, argv: Sequence[str], names: set[str]
) -> tuple[object, int]:
    """A reaped ``touch name`` whose pid then runs ``argv`` (up to an exec of
    ``sleep``), both read by a drain started only then, until ``names``:
    ``(what the batch says of the pid, processes named by the exit log)``."""
    with Fanotify(FLAGS) as fan:
        fan.mark(str(tmpfs), Event.CREATE, "filesystem")
        drain = _drain.Drain(fan, paths=True)
        try:
            with _held_reuse(pid_at, tmpfs, name, *argv) as pid:
                _wait_comm(pid, "sleep")
                drain.start()
                _seen, procs = _batches_until(drain, names)
                return procs[pid], drain.exit_log.named
        finally:
            drain.close()


def test_a_new_holder_of_the_pid_is_not_taken_for_the_writer(
    tmpfs: Path, pid_at: Path
) -> None:
    # The writer is reaped and its pid runs `sleep` while the event is read:
    # /proc/PID says "sleep", but the event has no pidfd (its process was
    # reaped), so /proc is not read and the record names the writer.  (A
    # group without pidfds cannot tell: it trusts /proc, as fatrace does.)
    proc, named = _read_across_a_held_reuse(tmpfs, pid_at, "n", ["sleep", "30"], {"n"})
    assert proc == ("touch", None, None)
    assert named == 1


def test_a_pid_with_events_of_a_reaped_and_a_live_process_in_one_read_is_unnamed(
    tmpfs: Path, pid_at: Path
) -> None:
    # The writer is reaped, and the next holder of its pid writes too and
    # lives on; both events come in one read.  The writer's has no pidfd,
    # the holder's has one: the pid stands for two processes there, and one
    # name (the writer's record, or /proc's "sleep") would be wrong for one.
    proc, named = _read_across_a_held_reuse(
        tmpfs, pid_at, "w", ["sh", "-c", ": > q; exec sleep 30"], {"w", "q"}
    )
    assert (tmpfs / "q").exists()  # written before the exec (so in the same read)
    assert proc == NO_PROCESS
    assert named == 0


def test_in_another_network_namespace_the_log_is_off() -> None:
    # The kernel takes the registration there but sends the records to the
    # initial namespace: the drain hears its own test child's exit or stays off.
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    code = "from afanotify import _drain; print(_drain.exit_log_available())"
    here = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=40, check=True, env=child_env(), cwd=CHILD_CWD)
    there = subprocess.run(["unshare", "--net", sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=40, check=True,
                           env=child_env(), cwd=CHILD_CWD)
    assert (here.stdout.split(), there.stdout.split()) == (["True"], ["False"]), there.stderr
