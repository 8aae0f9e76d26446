"""``afanotify guard`` with a rules file, against private mounts (issue 14).

Each test starts the guard as a subprocess (its own process, so the files
it guards are opened by other processes), waits for its "guarding" line,
and kills it in a fixture whatever happened: a killed guard's fd closes,
and the kernel allows whatever waited for it.  Every test has a timeout.
Most run twice: with the rules decided in C, and with the pure parser
(``AFANOTIFY_PURE_PARSER=1``), where the same rules decide in Python.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from helpers import CHILD_CWD, child_env, nobody_python

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

CLI = [sys.executable, "-m", "afanotify"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# Opens a file (or reads a range of it) and says how it went.
OPENER = r"""
import os, sys
path, off = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else -1
try:
    fd = os.open(path, os.O_RDONLY)
    data = os.pread(fd, 10, off) if off >= 0 else os.read(fd, 100)
    os.close(fd)
    print("ok", data.decode(errors="replace").strip())
except OSError as e:
    print("denied", e.errno)
"""


class Guard:
    """A running guard whose stderr is read line by line, with deadlines."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [*CLI, "guard", *argv], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            env=env, cwd=CHILD_CWD,
        )
        self.err = b""

    def wait_stderr(self, needle: str, timeout: float = 15.0, count: int = 1) -> str:
        assert self.popen.stderr is not None
        fd = self.popen.stderr.fileno()
        deadline = time.monotonic() + timeout
        while self.err.count(needle.encode()) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} on stderr in {timeout}s: {self.err!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the guard exited before {needle!r}: {self.err!r}")
                self.err += chunk
        return self.err.decode()

    def stop(self) -> tuple[int, str]:
        self.popen.send_signal(signal.SIGTERM)
        return self.finish()

    def finish(self) -> tuple[int, str]:
        _, err = self.popen.communicate(timeout=20)
        self.err += err or b""
        return self.popen.returncode, self.err.decode()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        if self.popen.stderr is not None:
            self.popen.stderr.close()


StartGuard = Callable[..., Guard]


@pytest.fixture(params=["c", "python"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start_guard(engine: str) -> Iterator[StartGuard]:
    """``start_guard(*argv)`` starts a guard and waits until it guards; all are killed after."""
    started: list[Guard] = []
    extra = {} if engine == "c" else {"AFANOTIFY_PURE_PARSER": "1"}

    def start(*argv: str) -> Guard:
        g = Guard(argv, child_env(PYTHONUNBUFFERED="1", **extra))
        started.append(g)
        line = g.wait_stderr("guarding")
        assert ("decided in C" in line) == (engine == "c"), line
        return g

    yield start
    for g in started:
        g.kill()


def try_open(path: Path, off: int = -1, prefix: Sequence[str] = (),
             exe: Sequence[str] = (sys.executable, "-c", OPENER)) -> str:
    args = [str(path)] + ([str(off)] if off >= 0 else [])
    r = subprocess.run([*prefix, *exe, *args], capture_output=True, text=True, timeout=20,
                       cwd=CHILD_CWD, env=child_env(), check=False)
    return r.stdout.strip() or r.stderr.strip()


def files(root: Path) -> tuple[Path, Path]:
    key = root / "a.key"
    key.write_text("secret")
    txt = root / "b.txt"
    txt.write_text("public")
    for p in (key, txt):
        p.chmod(0o644)
    return key, txt


def write_rules(tmp_path: Path, text: str) -> Path:
    rules = tmp_path / "guard.rules"  # outside the guarded mount
    rules.write_text(text)
    return rules


# -- rules -------------------------------------------------------------------------


def test_rules_file_first_match_decides(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    key, txt = files(tmpfs)
    rules = write_rules(tmp_path, "allow exe=*/cat\ndeny path=*.key name=keys\ndeny uid=65534\n")
    g = start_guard("--rules", str(rules), "--default", "allow", str(tmpfs))
    assert try_open(key) == "denied 1"                           # line 2
    assert try_open(key, exe=["cat"]) == "secret"                # line 1 comes first
    assert try_open(txt) == "ok public"                          # the default
    nobody_opener = (nobody_python(), "-c", OPENER)  # the opener needs only the stdlib
    assert try_open(txt, prefix=NOBODY, exe=nobody_opener) == "denied 1"  # line 3: uid 65534
    code, err = g.stop()
    assert code == 0, err
    assert f"by rule: {rules}:1: 1, {rules}:2 (keys): 1, {rules}:3: 1, " in err
    assert "no rule matched (--default allow): 1" in err
    assert err.strip().splitlines()[-1].endswith(
        "4 opens answered: 2 allowed, 2 denied (0 by the default after a deadline, error or stop)"
    )


# Prints whether this process is dumpable (prctl PR_GET_DUMPABLE), then opens.
DUMPABLE_OPENER = (
    "import ctypes; print('dumpable', ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n" + OPENER
)


def test_uid_rules_see_the_effective_uid_of_a_process_that_is_not_dumpable(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    # Real uid 0, effective 65534: the kernel makes such a process not
    # dumpable, and then gives most of its /proc files to root.  The rule
    # must still see 65534 (the Uid: line's second field).
    _, txt = files(tmpfs)
    rules = write_rules(tmp_path, "deny uid=65534\n")
    start_guard("--rules", str(rules), "--default", "allow", str(tmpfs))
    opener = (nobody_python(), "-c", DUMPABLE_OPENER)
    out = try_open(txt, prefix=["setpriv", "--euid=65534"], exe=opener).splitlines()
    assert out == ["dumpable 0", "denied 1"], out
    assert try_open(txt, exe=(sys.executable, "-c", DUMPABLE_OPENER)).splitlines() == [
        "dumpable 1", "ok public"]


def test_event_rules_mark_what_they_name(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    prog = tmpfs / "tool"
    prog.write_bytes(Path("/bin/true").read_bytes())
    prog.chmod(0o755)
    rules = write_rules(tmp_path, "deny event=exec path=*/tool\n")
    start_guard("--rules", str(rules), str(tmpfs))
    r = subprocess.run(["sh", "-c", str(prog)], capture_output=True, timeout=20, check=False,
                       cwd=CHILD_CWD)
    assert r.returncode == 126 and b"Operation not permitted" in r.stderr, r
    assert try_open(prog).startswith("ok")  # opening it to read is no exec


def test_audit_log_has_one_ecs_line_per_decision(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    key, txt = files(tmpfs)
    rules = write_rules(tmp_path, "deny path=*.key name=keys\n")
    log = tmp_path / "guard.json"
    g = start_guard("--rules", str(rules), "--log", str(log), "--json", str(tmpfs))
    assert try_open(key) == "denied 1"
    assert try_open(txt) == "ok public"
    code, err = g.stop()
    assert code == 0, err
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 2
    denied, allowed = lines
    for rec in lines:
        assert rec["event"]["category"] == ["file", "intrusion_detection"]
        assert rec["event"]["action"] == ["open_perm"]
        assert rec["ecs"]["version"]
        assert rec["process"]["executable"] == os.path.realpath(sys.executable)
        assert rec["process"]["pid"] > 0
        assert rec["user"]["id"] == "0"
    assert denied["event"]["type"] == ["access", "denied"]
    assert denied["event"]["outcome"] == "failure"
    assert denied["rule"] == {
        "name": f"{rules}:1 (keys)", "description": "deny path=*.key name=keys"
    }
    assert denied["file"] == {"path": str(key), "directory": str(tmpfs), "name": "a.key"}
    assert allowed["event"]["type"] == ["access", "allowed"]
    assert allowed["event"]["outcome"] == "success"
    assert allowed["rule"]["name"] == "default"
    assert allowed["file"]["path"] == str(txt)


# Opens each file it is given and exits at once, without closing or printing.
QUICK_OPENER = r"""
import os, sys
for path in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            os.open(path, os.O_RDONLY)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
"""


def test_audit_log_names_processes_that_exit_as_soon_as_answered(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    # An allowed process may exit before the guard looks at /proc: the log
    # line's executable and uid are read before the answer, so none is lost.
    _, txt = files(tmpfs)
    rules = write_rules(tmp_path, "deny path=*.key\n")
    log = tmp_path / "guard.json"
    g = start_guard("--rules", str(rules), "--log", str(log), "--json", str(tmpfs))
    n = 60
    r = subprocess.run([sys.executable, "-c", QUICK_OPENER, *[str(txt)] * n],
                       capture_output=True, timeout=30, cwd=CHILD_CWD, env=child_env(),
                       check=False)
    assert r.returncode == 0, r
    code, err = g.stop()
    assert code == 0, err
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == n
    exe = os.path.realpath(sys.executable)
    unnamed = [x["process"] for x in lines
               if x["process"]["executable"] != exe or x["user"]["id"] != "0"]
    assert unnamed == [], f"{len(unnamed)} of {n} lines name no process: {unnamed[:3]}"


def test_a_log_that_cannot_be_written_loses_no_verdict_and_says_so(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    key, txt = files(tmpfs)
    rules = write_rules(tmp_path, "deny path=*.key\n")
    g = start_guard("--rules", str(rules), "--log", "/dev/full", "--json", str(tmpfs))
    assert try_open(key) == "denied 1"
    assert try_open(txt) == "ok public"
    code, err = g.stop()
    assert code == 0, err
    assert "cannot write the log /dev/full: No space left on device" in err
    assert "2 decision(s) not logged" in err
    assert "2 opens answered: 1 allowed, 1 denied" in err


def test_audit_denials_are_accepted_by_the_kernel(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    # The kernel writes FAN_AUDIT records only where auditing is enabled
    # (system-wide, off here): this shows only that it takes the response.
    key, txt = files(tmpfs)
    rules = write_rules(tmp_path, "deny path=*.key\nallow path=*.txt audit\n")
    log = tmp_path / "guard.json"
    g = start_guard("--audit", "--rules", str(rules), "--log", str(log), "--json", str(tmpfs))
    assert try_open(key) == "denied 1"
    assert try_open(txt) == "ok public"
    code, err = g.stop()
    assert code == 0, err
    assert "refused" not in err, err
    audit = [json.loads(x)["fanotify"] for x in log.read_text().splitlines()]
    assert [a["audit"] for a in audit] == [True, True]
    assert [a["response"] for a in audit] == [0x2 | 0x10, 0x1 | 0x10]


def test_deny_errno_in_a_pre_content_group(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    key, txt = files(tmpfs)
    rules = write_rules(tmp_path, "deny path=*.key errno=EBUSY\n")
    start_guard("--pre-content", "--rules", str(rules), str(tmpfs))
    assert try_open(key) == "denied 16"
    assert try_open(txt) == "ok public"


def test_pre_access_denies_by_range_on_ext4(
    ext4: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    cold = ext4 / "cold.bin"
    cold.write_text("A" * 8192 + "B" * 8192)
    rules = write_rules(
        tmp_path, "deny event=pre_access path=*/cold.bin range=0-8191 errno=EIO\n"
    )
    start_guard("--pre-access", "--rules", str(rules), str(ext4))
    assert try_open(cold, off=0) == "denied 5"
    assert try_open(cold, off=9000) == "ok BBBBBBBBBB"


# -- reload --------------------------------------------------------------------------


def test_sighup_reloads_good_rules_and_keeps_them_on_a_bad_file(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    key, txt = files(tmpfs)
    rules = write_rules(tmp_path, "deny path=*.key\n")
    log = tmp_path / "guard.log"
    g: Guard = start_guard("--rules", str(rules), "--log", str(log), str(tmpfs))
    assert try_open(key) == "denied 1" and try_open(txt) == "ok public"
    # a good file: the new rules decide from now on; the log is reopened
    rules.write_text("deny path=*.txt\n")
    log.rename(tmp_path / "guard.log.1")
    g.popen.send_signal(signal.SIGHUP)
    g.wait_stderr(f"reloaded {rules}: 1 rule(s)")
    assert try_open(key) == "ok secret" and try_open(txt) == "denied 1"
    # a bad file: refused as a whole, the rules in force stay
    rules.write_text("allow path=*.txt\ndeny path=*.@(key\n")
    g.popen.send_signal(signal.SIGHUP)
    err = g.wait_stderr("reload failed")
    assert f"keeping the 1 rule(s) in force: {rules}:2: path=: '@(' is never closed" in err
    assert try_open(txt) == "denied 1"
    code, err = g.stop()
    assert code == 0, err
    old = (tmp_path / "guard.log.1").read_text().splitlines()
    new = log.read_text().splitlines()
    assert len(old) == 2 and len(new) == 3, (old, new)
    assert new[0].endswith("by default") and "allow" in new[0]  # a.key, after the reload
    assert f"{txt}  by {rules}:1" in new[1] and "deny" in new[1]


def test_reload_with_a_process_waiting_never_hangs(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    key, txt = files(tmpfs)
    rules = write_rules(tmp_path, "deny path=*.key\n")
    g: Guard = start_guard("--rules", str(rules), "--default", "deny", str(tmpfs))
    rules.write_text("allow path=*.txt\n")
    os.kill(g.popen.pid, signal.SIGSTOP)
    try:
        opener = subprocess.Popen([sys.executable, "-c", OPENER, str(txt)], stdout=subprocess.PIPE,
                                  text=True, cwd=CHILD_CWD, env=child_env())
        try:
            _assert_waiting(opener)
            os.kill(g.popen.pid, signal.SIGHUP)  # the reload and the event, in flight together
        finally:
            os.kill(g.popen.pid, signal.SIGCONT)
        out, _ = opener.communicate(timeout=15)
    finally:
        os.kill(g.popen.pid, signal.SIGCONT)
    # Decided by the old rules (the default denies) or the new (allowed): never left waiting.
    assert out.strip() in ("ok public", "denied 1")
    g.wait_stderr("reloaded")
    assert try_open(txt) == "ok public"
    assert try_open(key) == "denied 1"


def test_sigterm_with_a_waiting_process_answers_it(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    _, txt = files(tmpfs)
    rules = write_rules(tmp_path, "allow path=*.txt\n")
    g: Guard = start_guard("--rules", str(rules), "--default", "deny", str(tmpfs))
    os.kill(g.popen.pid, signal.SIGSTOP)
    opener = subprocess.Popen([sys.executable, "-c", OPENER, str(txt)], stdout=subprocess.PIPE,
                              text=True, cwd=CHILD_CWD, env=child_env())
    try:
        _assert_waiting(opener)
        os.kill(g.popen.pid, signal.SIGTERM)
        os.kill(g.popen.pid, signal.SIGCONT)
        out, _ = opener.communicate(timeout=15)
    finally:
        if opener.poll() is None:
            opener.kill()
    code, err = g.finish()
    assert code == 0, err
    # Read before the stop: the rules allow it; after: the default denies it.  Answered.
    assert out.strip() in ("ok public", "denied 1")
    assert "1 opens answered" in err.strip().splitlines()[-1]


def test_sigkilled_guard_fails_open(tmpfs: Path, tmp_path: Path, start_guard: StartGuard) -> None:
    key, _ = files(tmpfs)
    rules = write_rules(tmp_path, "deny path=*.key\n")
    g: Guard = start_guard("--rules", str(rules), str(tmpfs))
    os.kill(g.popen.pid, signal.SIGSTOP)
    opener = subprocess.Popen([sys.executable, "-c", OPENER, str(key)], stdout=subprocess.PIPE,
                              text=True, cwd=CHILD_CWD, env=child_env())
    try:
        _assert_waiting(opener)
        os.kill(g.popen.pid, signal.SIGKILL)
        out, _ = opener.communicate(timeout=15)
    finally:
        if opener.poll() is None:
            opener.kill()
    assert out.strip() == "ok secret"  # the kernel allowed it: a dead guard fails open


def test_stats_interval_lines_count_by_rule(
    tmpfs: Path, tmp_path: Path, start_guard: StartGuard
) -> None:
    key, txt = files(tmpfs)
    rules = write_rules(tmp_path, "deny path=*.key\n")
    g: Guard = start_guard("--rules", str(rules), "--stats-interval", "0.2", str(tmpfs))
    assert try_open(key) == "denied 1"
    assert try_open(txt) == "ok public"
    needle = f"by rule: {rules}:1: 1, no rule matched (--default allow): 1"
    err = g.wait_stderr(needle)
    line = next(x for x in err.splitlines() if needle in x)
    assert "stats: 1 allowed, 1 denied, 0 pending" in line


def _assert_waiting(proc: subprocess.Popen[str]) -> None:
    # The opener must be stuck in the kernel, waiting for the (stopped) guard.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/wchan") as f:
                if "fanotify" in f.read():
                    return
        except OSError:
            pass
        assert proc.poll() is None, "the opener finished while the guard was stopped"
        time.sleep(0.02)
    raise AssertionError("the opener never waited for the guard")


@pytest.mark.parametrize(("deadline", "expect"), [("0.3", "denied 1"), ("3", "ok public")])
def test_deadline_answers_a_slow_decision_with_a_rules_file(
    tmpfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deadline: str, expect: str
) -> None:
    # In process, with the rules decided in Python (the pure parser) and a
    # decision that blocks the guard's loop for 1.5 s: a shorter --deadline
    # answers first, with --default deny.  (Decisions in C never wait.)
    import threading

    import afanotify._cli_guard
    import afanotify.cli
    from afanotify._static import Decision

    _, txt = files(tmpfs)
    rules = write_rules(tmp_path, "allow path=*.txt\n")
    guarding = threading.Event()
    lines: list[str] = []

    def record(msg: str) -> None:
        lines.append(msg)
        if msg.startswith("guarding"):
            guarding.set()

    original = afanotify._cli_guard.GuardPolicy.decide

    def slow(self: afanotify._cli_guard.GuardPolicy, ev: object) -> Decision:
        time.sleep(1.5)
        return original(self, ev)  # type: ignore[arg-type]

    monkeypatch.setattr(afanotify._cli_guard, "_err", record)
    monkeypatch.setattr(afanotify._cli_guard.GuardPolicy, "decide", slow)
    monkeypatch.setenv("AFANOTIFY_PURE_PARSER", "1")
    seen: list[str] = []

    def open_when_guarded() -> None:
        if guarding.wait(10):
            seen.append(try_open(txt))

    opener = threading.Thread(target=open_when_guarded)
    opener.start()
    try:
        code = afanotify.cli.main([
            "guard", "--rules", str(rules), "--default", "deny", "--deadline", deadline,
            "--timeout", "4", str(tmpfs),
        ])
    finally:
        guarding.set()
        opener.join(20)
    assert code == 0, lines
    assert seen == [expect], lines
    if expect.startswith("denied"):
        assert "1 opens answered: 0 allowed, 1 denied (1 by the default" in lines[-1], lines
    else:
        assert "1 opens answered: 1 allowed, 0 denied (0 by the default" in lines[-1], lines
