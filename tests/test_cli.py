"""The ``afanotify`` command, run as a subprocess against private mounts.

Each test starts ``python -m afanotify`` (importing the afanotify under test:
helpers.child_env, run from "/"), waits for its "ready" line on stderr (marks in place) before
producing events, and kills it in a ``finally`` whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from helpers import CHILD_CWD, REPO, child_env, require_nobody_python

import afanotify
import afanotify._cli_guard
import afanotify.cli
from afanotify._static import Decision

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

ENV = child_env(PYTHONUNBUFFERED="1")
CLI = [sys.executable, "-m", "afanotify"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


class Proc:
    """A running CLI whose stderr is read line by line with deadlines."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.err = b""

    def wait_stderr(self, needle: str, timeout: float = 10.0) -> str:
        """Read stderr until a line containing ``needle`` arrives; fail at the deadline."""
        assert self.popen.stderr is not None
        fd = self.popen.stderr.fileno()
        deadline = time.monotonic() + timeout
        while needle.encode() not in self.err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} on stderr in {timeout}s: {self.err!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(
                        f"the CLI exited ({self.popen.wait()}) before {needle!r}: {self.err!r}"
                    )
                self.err += chunk
        return self.err.decode()

    def finish(self, timeout: float = 15.0) -> tuple[int, str, str]:
        """Wait for exit; returns (code, stdout, all of stderr)."""
        out, err = self.popen.communicate(timeout=timeout)
        self.err += err or b""
        return self.popen.returncode, (out or b"").decode(), self.err.decode()


@contextmanager
def cli(
    *args: str, stdout: int | object = subprocess.PIPE, prefix: Sequence[str] = ()
) -> Iterator[Proc]:
    if prefix == NOBODY:
        require_nobody_python()
    popen = subprocess.Popen(
        [*prefix, *CLI, *args], stdout=stdout, stderr=subprocess.PIPE, env=ENV,  # type: ignore[arg-type]
        cwd=CHILD_CWD,
    )
    try:
        yield Proc(popen)
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait()
        for f in (popen.stdout, popen.stderr):
            if f is not None:
                f.close()


def run(
    *args: str, prefix: Sequence[str] = (), timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    if prefix == NOBODY:
        require_nobody_python()
    return subprocess.run(
        [*prefix, *CLI, *args], capture_output=True, text=True, env=ENV, cwd=CHILD_CWD,
        timeout=timeout, check=False,
    )


def child(code: str, *argv: str, cwd: str = CHILD_CWD) -> int:
    """Run Python ``code`` in a child process; returns its pid after it exited cleanly."""
    p = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=cwd, env=child_env())
    assert p.wait(timeout=20) == 0
    return p.pid


# After its work, a lingering child says so and waits for its stdin to close.
_THEN_LINGER = "\nimport sys\nprint('done', flush=True)\nsys.stdin.read()\n"


@contextmanager
def lingering(cmd: Sequence[str], cwd: str | Path = CHILD_CWD) -> Iterator[int]:
    """Run ``cmd``, which prints "done" after its work, then reads stdin to EOF.

    Yields the child's pid once it said "done", and keeps it alive (so /proc
    still names its exe and cwd when the watcher reads its events) until the
    block ends; then it must exit cleanly.
    """
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd,
                         env=child_env())
    assert p.stdin is not None and p.stdout is not None
    try:
        said = b""
        deadline = time.monotonic() + 20
        while b"done\n" not in said:
            left = deadline - time.monotonic()
            assert left > 0, f"the child did not finish its work in 20s: {said!r}"
            if select.select([p.stdout], [], [], left)[0]:
                chunk = os.read(p.stdout.fileno(), 4096)
                assert chunk, f"the child exited ({p.wait()}) before its work was done"
                said += chunk
        yield p.pid
    finally:
        p.stdin.close()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stdout.close()
    assert p.returncode == 0


WRITER = "import sys\nwith open(sys.argv[1], 'w') as f: f.write('x')\n"


def lingering_writer(path: Path, cwd: str | Path = CHILD_CWD) -> AbstractContextManager[int]:
    """A Python child that writes ``path``, then lingers (see :func:`lingering`)."""
    return lingering([sys.executable, "-c", WRITER + _THEN_LINGER, str(path)], cwd=cwd)


def json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def flat_keys(obj: dict[str, object], prefix: str = "") -> set[str]:
    keys = set()
    for k, v in obj.items():
        if isinstance(v, dict):
            keys |= flat_keys(v, f"{prefix}{k}.")
        else:
            keys.add(prefix + k)
    return keys


def readme_json_fields() -> set[str]:
    """The field names the README's "JSON lines" table documents."""
    text = (REPO / "README.md").read_text()
    table = text.split("### JSON lines", 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    fields: set[str] = set()
    for line in table.splitlines()[2:]:
        fields.update(re.findall(r"`([@\w.]+)`", line.split("|")[1]))
    return fields


# -- watch --------------------------------------------------------------------


def test_watch_json_fields_match_the_files_touched(tmpfs: Path) -> None:
    target = tmpfs / "new.txt"
    with cli("watch", "--json", "--events", "create,close_write", "--count", "2",
             str(tmpfs)) as p:
        ready = p.wait_stderr("watching")
        assert "FID mode" in ready
        with lingering_writer(target, cwd=tmpfs) as pid:
            code, out, err = p.finish()
    assert code == 0, err
    recs = json_lines(out)
    assert len(recs) == 2
    actions = [r["event"]["action"] for r in recs]  # type: ignore[index]
    assert actions == [["create"], ["close_write"]]
    for r in recs:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["@timestamp"])  # type: ignore[arg-type]
        assert r["event"]["kind"] == "event"  # type: ignore[index]
        assert r["event"]["category"] == ["file"]  # type: ignore[index]
        assert r["file"] == {
            "path": str(target), "directory": str(tmpfs), "name": "new.txt", "type": "file",
        }
        proc = r["process"]
        assert proc["pid"] == pid  # type: ignore[index]
        assert proc["executable"] == os.path.realpath(sys.executable)  # type: ignore[index]
        assert proc["working_directory"] == str(tmpfs)  # type: ignore[index]
        assert proc["name"] == "python3" or str(proc["name"]).startswith("python")  # type: ignore[index]
    for r in recs:
        assert flat_keys(r) == readme_json_fields()
    assert recs[0]["event"]["type"] == ["creation"]  # type: ignore[index]
    assert recs[1]["event"]["type"] == ["change"]  # type: ignore[index]
    assert "2 events seen, 2 shown, 0 filtered out, 0 dropped, 0 overflows" in err


def test_watch_default_human_output_is_aligned(tmpfs: Path) -> None:
    with cli("watch", "--count", "3", str(tmpfs)) as p:
        p.wait_stderr("watching")
        work = "import os, sys\nos.mkdir(sys.argv[1])\nopen(sys.argv[2], 'w').close()\n"
        with lingering([sys.executable, "-c", work + _THEN_LINGER, str(tmpfs / "d"),
                        str(tmpfs / "f")]) as pid:
            code, out, err = p.finish()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    row = re.compile(r"(\d\d:\d\d:\d\d\.\d{3})  +(\d+)  (\S+) +  (\S+) +  (/\S+)")
    parsed = [row.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [m.group(2) for m in parsed if m] == [str(pid)] * 3
    events = [m.group(4) for m in parsed if m]
    assert events[:2] == ["CREATE|ONDIR", "CREATE"]
    assert "OPEN" in events[2].split("|")
    assert [m.group(5) for m in parsed if m] == [str(tmpfs / "d"), str(tmpfs / "f"),
                                                 str(tmpfs / "f")]
    # the path column starts at the same offset on every line
    assert len({line.index("/") for line in lines}) == 1


def test_watch_json_directory_event(tmpfs: Path) -> None:
    with cli("watch", "--json", "--events", "create", "--count", "1", str(tmpfs)) as p:
        p.wait_stderr("watching")
        child("import os, sys\nos.mkdir(sys.argv[1])\n", str(tmpfs / "sub"))
        code, out, err = p.finish()
    assert code == 0, err
    (rec,) = json_lines(out)
    assert rec["file"]["type"] == "dir"  # type: ignore[index]
    assert rec["file"]["path"] == str(tmpfs / "sub")  # type: ignore[index]
    assert rec["event"]["action"] == ["create"]  # type: ignore[index]
    assert rec["fanotify"]["events"] == ["CREATE", "ONDIR"]  # type: ignore[index]


def test_watch_rename_shows_both_paths(tmpfs: Path) -> None:
    (tmpfs / "d").mkdir()
    (tmpfs / "old").write_text("x")
    with cli("watch", "--filesystem", "--json", "--events", "rename", "--count", "1",
             str(tmpfs)) as p:
        p.wait_stderr("watching")
        child("import os, sys\nos.rename(sys.argv[1], sys.argv[2])\n",
              str(tmpfs / "old"), str(tmpfs / "d" / "new"))
        code, out, err = p.finish()
    assert code == 0, err
    (rec,) = json_lines(out)
    assert rec["event"]["action"] == ["rename"]  # type: ignore[index]
    assert rec["file"]["path"] == str(tmpfs / "d" / "new")  # type: ignore[index]
    assert rec["fanotify"]["old_path"] == str(tmpfs / "old")  # type: ignore[index]
    assert rec["fanotify"]["new_path"] == str(tmpfs / "d" / "new")  # type: ignore[index]
    with cli("watch", "--filesystem", "--events", "rename", "--count", "1", str(tmpfs)) as p:
        p.wait_stderr("watching")
        child("import os, sys\nos.rename(sys.argv[1], sys.argv[2])\n",
              str(tmpfs / "d" / "new"), str(tmpfs / "back"))
        code, out, err = p.finish()
    assert code == 0, err
    assert out.rstrip().endswith(f"RENAME{' ' * 20}  {tmpfs}/d/new -> {tmpfs}/back")


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"afanotify {afanotify.__version__}"


def test_watch_fd_mode_for_open_and_close(tmpfs: Path) -> None:
    target = tmpfs / "f"
    target.write_text("x")
    with cli("watch", "--json", "--events", "open,close_nowrite", "--count", "1",
             str(target)) as p:
        assert "fd mode" in p.wait_stderr("watching")
        pid = child("import sys\nopen(sys.argv[1]).read()\n", str(target))
        code, out, err = p.finish()
    assert code == 0, err
    (rec,) = json_lines(out)
    assert rec["file"]["path"] == str(target)  # type: ignore[index]
    assert rec["process"]["pid"] == pid  # type: ignore[index]
    assert "open" in rec["event"]["action"]  # type: ignore[index,operator]


@pytest.mark.parametrize("scope", ["--mount", "--filesystem"])
def test_watch_mount_and_filesystem_cover_subdirectories(tmpfs: Path, scope: str) -> None:
    deep = tmpfs / "a" / "b"
    deep.mkdir(parents=True)
    with cli("watch", scope, "--json", "--events", "close_write", "--count", "1",
             "--path", "*.log", str(tmpfs)) as p:
        p.wait_stderr("watching")
        child(WRITER, str(deep / "skip.txt"))
        child(WRITER, str(deep / "x.log"))
        code, out, err = p.finish()
    assert code == 0, err
    (rec,) = json_lines(out)
    assert rec["file"]["path"] == str(deep / "x.log")  # type: ignore[index]
    assert re.search(r"[1-9]\d* filtered out", err), err


def test_watch_mount_rejects_directory_entry_events(tmpfs: Path) -> None:
    r = run("watch", "--mount", "--events", "create", str(tmpfs))
    assert r.returncode == 2
    assert "--events" in r.stderr and "--filesystem" in r.stderr


def test_watch_pid_filter(tmpfs: Path) -> None:
    # a lingering process whose pid is known before it writes
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nsys.stdin.readline()\n"
         "open(sys.argv[1], 'w').close()\n", str(tmpfs / "mine")],
        stdin=subprocess.PIPE, cwd=CHILD_CWD, env=child_env(),
    )
    try:
        with cli("watch", "--json", "--events", "close_write", "--count", "1",
                 "--pid", f"1,{holder.pid}", str(tmpfs)) as p:
            p.wait_stderr("watching")
            child(WRITER, str(tmpfs / "other"))
            assert holder.stdin is not None
            holder.stdin.write(b"go\n")
            holder.stdin.flush()
            code, out, err = p.finish()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdin is not None:
            holder.stdin.close()
    assert code == 0, err
    (rec,) = json_lines(out)
    assert rec["process"]["pid"] == holder.pid  # type: ignore[index]
    assert rec["file"]["path"] == str(tmpfs / "mine")  # type: ignore[index]


def test_watch_exe_and_cwd_filters(tmpfs: Path) -> None:
    (tmpfs / "here").mkdir()
    with cli("watch", "--json", "--events", "close_write", "--count", "1",
             "--exe", "*/python*", "--cwd", "*/here", str(tmpfs)) as p:
        p.wait_stderr("watching")
        # a shell in the right cwd (wrong exe), python in the wrong cwd, then the
        # match, each alive until the command has read all three events
        with lingering(["sh", "-c", "echo x > ../by-sh; echo done; cat >/dev/null"],
                       cwd=tmpfs / "here"), \
                lingering_writer(tmpfs / "wrong-cwd", cwd=tmpfs), \
                lingering_writer(tmpfs / "right", cwd=tmpfs / "here") as pid:
            code, out, err = p.finish()
    assert code == 0, err
    (rec,) = json_lines(out)
    assert rec["process"]["pid"] == pid  # type: ignore[index]
    assert rec["file"]["path"] == str(tmpfs / "right")  # type: ignore[index]
    assert "2 filtered out" in err


def test_watch_output_file_and_timeout(tmpfs: Path, tmp_path: Path) -> None:
    log = tmp_path / "events.json"
    started = time.monotonic()
    with cli("watch", "--json", "--output", str(log), "--events", "create",
             "--timeout", "1.5", str(tmpfs)) as p:
        p.wait_stderr("watching")
        child("import sys\nopen(sys.argv[1], 'w').close()\n", str(tmpfs / "a"))
        code, out, err = p.finish()
    assert code == 0, err
    assert time.monotonic() - started >= 1.5
    assert out == ""
    (rec,) = json_lines(log.read_text())
    assert rec["file"]["path"] == str(tmpfs / "a")  # type: ignore[index]
    assert "1 events seen, 1 shown" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_watch_signal_prints_summary_without_traceback(tmpfs: Path, sig: int) -> None:
    with cli("watch", "--events", "create", str(tmpfs)) as p:
        p.wait_stderr("watching")
        child("import sys\nopen(sys.argv[1], 'w').close()\n", str(tmpfs / "a"))
        deadline = time.monotonic() + 10
        assert p.popen.stdout is not None
        first = b""
        while b"\n" not in first and time.monotonic() < deadline:
            ready, _, _ = select.select([p.popen.stdout], [], [], 0.2)
            if ready:
                first += os.read(p.popen.stdout.fileno(), 4096)
        assert str(tmpfs / "a").encode() in first
        p.popen.send_signal(sig)
        code, _, err = p.finish()
    assert code == 0
    assert "Traceback" not in err
    assert "1 events seen, 1 shown, 0 filtered out, 0 dropped, 0 overflows" in err


@pytest.mark.parametrize("flags", [["--events", "open,modify,close_write"], ["--filesystem"]])
def test_watch_count_reached_by_the_first_read_ends_the_command(
    tmpfs: Path, flags: list[str]
) -> None:
    # A writer busy before the watch starts: the read of what queued before
    # the loop runs already reaches --count, and the command must end then
    # (not at --timeout), with exactly that many lines.
    writer = subprocess.Popen(["sh", "-c", f"while :; do echo x > {tmpfs}/f; done"],
                              cwd=CHILD_CWD, env=child_env())
    try:
        started = time.monotonic()
        with cli("watch", *flags, "--count", "1", "--timeout", "60", str(tmpfs)) as p:
            code, out, err = p.finish(timeout=30)
    finally:
        writer.kill()
        writer.wait()
    assert code == 0, err
    assert time.monotonic() - started < 30
    assert len(out.splitlines()) == 1, out[:500]
    assert "1 shown" in err


@pytest.mark.parametrize("option", ["--timeout", "--stats-interval"])
def test_watch_takes_a_wait_longer_than_the_loops_longest(
    tmpfs: Path, tmp_path: Path, option: str
) -> None:
    # 3,000,000 s is more milliseconds than epoll takes (INT_MAX): waited in
    # rounds, not an OverflowError.
    log = tmp_path / "events.log"
    with cli("watch", option, "3000000", "--events", "create", "--output", str(log),
             str(tmpfs)) as p:
        p.wait_stderr("watching")
        child("import sys\nopen(sys.argv[1], 'w').close()\n", str(tmpfs / "a"))
        deadline = time.monotonic() + 20
        while str(tmpfs / "a") not in _read(log):
            assert time.monotonic() < deadline, p.err
            time.sleep(0.02)
        p.popen.send_signal(signal.SIGTERM)
        code, _, err = p.finish()
    assert code == 0, err
    assert "Traceback" not in err


def test_watch_exclude_self_drops_the_pipeline(tmpfs: Path) -> None:
    # `afanotify ... | tee FILE`: tee shares the command's process group, and
    # its writes to FILE are on the watched directory.
    def pipeline(extra: str, n: int) -> tuple[str, str]:
        errf = tmpfs / f"err{n}"
        script = (
            f"{' '.join(CLI)} watch --json --events close_write,modify --timeout 3 {extra} "
            f"{tmpfs} 2>{errf} | tee {tmpfs}/tee{n}.json >/dev/null"
        )
        proc = subprocess.Popen(["sh", "-c", script], env=ENV, cwd=CHILD_CWD,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while "watching" not in _read(errf):
                assert time.monotonic() < deadline, _read(errf)
                time.sleep(0.05)
            child("import sys\nopen(sys.argv[1], 'w').write('x')\n", str(tmpfs / "other"))
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return (tmpfs / f"tee{n}.json").read_text(), _read(errf)

    out, err = pipeline("--exclude-self", 1)
    paths = {r["file"]["path"] for r in json_lines(out)}  # type: ignore[index]
    assert paths == {str(tmpfs / "other")}, err
    assert re.search(r"[1-9]\d* filtered out", err), err
    out, err = pipeline("", 2)
    paths = {r["file"]["path"] for r in json_lines(out)}  # type: ignore[index]
    assert paths == {str(tmpfs / "other"), str(tmpfs / "tee2.json")}, err


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_watch_closed_pipe_exits_quietly(tmpfs: Path) -> None:
    with cli("watch", "--json", "--events", "create", str(tmpfs)) as p:
        p.wait_stderr("watching")
        assert p.popen.stdout is not None
        child("import sys\nopen(sys.argv[1], 'w').close()\n", str(tmpfs / "first"))
        line = p.popen.stdout.readline()
        assert b"first" in line
        p.popen.stdout.close()  # like `| head -1` exiting
        child(
            "import sys\nfor i in range(50): open(f'{sys.argv[1]}/f{i}', 'w').close()\n",
            str(tmpfs),
        )
        code = p.popen.wait(timeout=15)
        _, err = p.popen.communicate(timeout=5)
        text = (p.err + err).decode()
    assert code == 0, text
    assert "Traceback" not in text
    assert "events seen" in text


def test_watch_shell_pipe_to_head(tmpfs: Path) -> None:
    for i in range(5):
        (tmpfs / f"f{i}").write_text("x")
    script = (
        f"{' '.join(CLI)} watch --events open --count 1000 --timeout 20 {tmpfs} "
        f"2>{tmpfs}/err | head -1 & head=$!; "
        # marks in place (10 s deadline), opens that give head its line; once
        # head has exited, more opens make the command write to the closed pipe
        f"i=0; until grep -q watching {tmpfs}/err 2>/dev/null; do "
        f"i=$((i + 1)); [ $i -le 200 ] || exit 3; sleep 0.05; done; "
        f"cat {tmpfs}/f* >/dev/null; wait $head; cat {tmpfs}/f* >/dev/null; wait"
    )
    r = subprocess.run(["sh", "-c", script], env=ENV, cwd=CHILD_CWD, capture_output=True,
                       text=True, timeout=30, check=False)
    err = (tmpfs / "err").read_text()
    assert r.returncode == 0, (r.returncode, r.stderr, err)
    assert len(r.stdout.splitlines()) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# -- errors and usage -------------------------------------------------------------


def test_not_root_names_the_capability(tmpfs: Path) -> None:
    r = run("watch", "--events", "open", str(tmpfs), prefix=NOBODY)
    assert r.returncode == 1
    assert "CAP_SYS_ADMIN" in r.stderr
    assert "FID mode" in r.stderr and "--fid" in r.stderr
    assert "Traceback" not in r.stderr


def test_not_root_mount_mark_names_the_capability(tmpfs: Path) -> None:
    r = run("watch", "--mount", "--fid", "--events", "open", str(tmpfs), prefix=NOBODY)
    assert r.returncode == 1
    assert "CAP_SYS_ADMIN" in r.stderr and "inode marks" in r.stderr


def test_not_root_fid_inode_watch_works(tmpfs: Path) -> None:
    own = tmpfs / "nobody"
    own.mkdir()
    os.chown(own, 65534, 65534)
    with cli("watch", "--json", "--fid", "--events", "create", "--count", "1", str(own),
             prefix=NOBODY) as p:
        p.wait_stderr("watching")
        child("import sys\nopen(sys.argv[1], 'w').close()\n", str(own / "x"))
        code, out, err = p.finish()
    assert code == 0, err
    (rec,) = json_lines(out)
    assert rec["file"]["path"] == str(own / "x")  # type: ignore[index]


def test_nonexistent_path_is_named(tmpfs: Path) -> None:
    missing = str(tmpfs / "no" / "such")
    r = run("watch", missing)
    assert r.returncode == 2
    assert missing in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_events_lists_valid_names() -> None:
    r = run("watch", "--events", "open,bogus", "/nonexistent")
    assert r.returncode == 2
    msg = r.stderr.strip().splitlines()[-1]
    assert "--events" in msg and "'bogus'" in msg
    for name in ("open", "close_write", "create", "delete", "moved_to"):
        assert name in msg


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["watch", "--count", "0", "/"], "--count"),
        (["watch", "--timeout", "soon", "/"], "--timeout"),
        (["watch", "--pid", "abc", "/"], "--pid"),
        (["watch", "--mount", "--filesystem", "/"], "--filesystem"),
        (["watch"], "PATH"),
        (["guard", "--default", "maybe", "/"], "--default"),
        (["guard", "--deadline", "0", "/"], "--deadline"),
        ([], "COMMAND"),
    ],
)
def test_usage_errors_exit_2_naming_the_argument(args: list[str], named: str) -> None:
    r = run(*args)
    assert r.returncode == 2
    assert named in r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["watch", "guard", "features"])
def test_help_has_examples(command: str) -> None:
    r = run(command, "--help")
    assert r.returncode == 0
    assert "examples:" in r.stdout
    assert f"afanotify {command}" in r.stdout


# -- features ---------------------------------------------------------------


def test_features_json_and_text() -> None:
    r = run("features", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["available"] is True
    assert "OPEN" in data["events"] and "FILESYSTEM" in data["mark_types"]
    assert data == afanotify.features().as_dict()
    t = run("features")
    assert t.returncode == 0
    assert re.search(r"^events: .*\bOPEN\b", t.stdout, re.M)


def test_features_not_root_says_why() -> None:
    r = run("features", prefix=NOBODY)
    assert r.returncode == 1
    assert "CAP_SYS_ADMIN" in r.stderr


# -- guard --------------------------------------------------------------------

# Opens a file and reports how it went: "ok <content>" or "denied <errno>".
OPENER = (
    "import sys\n"
    "try:\n"
    "    with open(sys.argv[1]) as f: print('ok', f.read().strip())\n"
    "except PermissionError as e: print('denied', e.errno)\n"
)


def try_open(path: Path, exe: Sequence[str] = (sys.executable, "-c", OPENER)) -> str:
    r = subprocess.run([*exe, str(path)], capture_output=True, text=True, timeout=20,
                       cwd=CHILD_CWD, env=child_env(), check=False)
    return (r.stdout.strip() or r.stderr.strip())


def secrets(tmpfs: Path) -> tuple[Path, Path]:
    key = tmpfs / "a.key"
    key.write_text("secret")
    txt = tmpfs / "b.txt"
    txt.write_text("public")
    return key, txt


def test_guard_denies_matching_paths_and_logs(tmpfs: Path) -> None:
    key, txt = secrets(tmpfs)
    with cli("guard", "--deny", "*.key", "--log-denials", str(tmpfs)) as p:
        p.wait_stderr("guarding")
        assert try_open(key) == "denied 1"
        assert try_open(txt) == "ok public"
        err = p.wait_stderr("denied open")
        assert f"denied open of {key} by pid" in err
        assert "--deny '*.key'" in err
        p.popen.send_signal(signal.SIGTERM)
        code, _, err = p.finish()
    assert code == 0
    assert "2 opens answered: 1 allowed, 1 denied" in err
    assert "Traceback" not in err


def test_guard_default_deny_with_allowed_exe(tmpfs: Path) -> None:
    _, txt = secrets(tmpfs)
    with cli("guard", "--default", "deny", "--allow-exe", "*/cat", "--timeout", "30",
             str(tmpfs)) as p:
        p.wait_stderr("guarding")
        assert try_open(txt) == "denied 1"
        assert try_open(txt, ["cat"]) == "public"
        p.popen.send_signal(signal.SIGINT)
        code, _, err = p.finish()
    assert code == 0, err
    assert "1 allowed, 1 denied" in err


def test_guard_deny_exe_beats_default_allow(tmpfs: Path) -> None:
    _, txt = secrets(tmpfs)
    with cli("guard", "--deny-exe", "*/cat", "--timeout", "30", str(tmpfs)) as p:
        p.wait_stderr("guarding")
        assert "Operation not permitted" in try_open(txt, ["cat"])
        assert try_open(txt) == "ok public"


def test_guard_mount_scope_covers_subdirectories(tmpfs: Path) -> None:
    deep = tmpfs / "x" / "y"
    deep.mkdir(parents=True)
    (deep / "z.key").write_text("k")
    with cli("guard", "--mount", "--deny", f"{tmpfs}/x/**.key", str(tmpfs)) as p:
        p.wait_stderr("guarding")
        assert try_open(deep / "z.key") == "denied 1"


def test_guard_timeout_stops_it(tmpfs: Path) -> None:
    secrets(tmpfs)
    with cli("guard", "--deny", "*.key", "--timeout", "1", str(tmpfs)) as p:
        p.wait_stderr("guarding")
        code, _, err = p.finish()
    assert code == 0
    assert "0 opens answered" in err


@contextmanager
def _opener(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Start OPENER on ``path``; kill it on the way out if it is still running."""
    proc = subprocess.Popen([sys.executable, "-c", OPENER, str(path)],
                            stdout=subprocess.PIPE, text=True, cwd=CHILD_CWD, env=child_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_waiting(proc: subprocess.Popen[str]) -> None:
    # The opener must be stuck in the kernel: its open waits for the guard.
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


def test_sigkilled_guard_leaves_no_waiting_process(tmpfs: Path) -> None:
    key, _ = secrets(tmpfs)
    with cli("guard", "--deny", "*.key", str(tmpfs)) as p:
        p.wait_stderr("guarding")
        os.kill(p.popen.pid, signal.SIGSTOP)
        with _opener(key) as opener:
            _assert_waiting(opener)
            os.kill(p.popen.pid, signal.SIGKILL)
            out, _ = opener.communicate(timeout=10)
    # the guard's fd closed with the open unanswered: the kernel allowed it
    assert out.strip() == "ok secret"


def test_sigterm_with_a_waiting_process_answers_the_default(tmpfs: Path) -> None:
    _, txt = secrets(tmpfs)
    with cli("guard", "--default", "deny", "--deny", "*.key", str(tmpfs)) as p:
        p.wait_stderr("guarding")
        os.kill(p.popen.pid, signal.SIGSTOP)
        with _opener(txt) as opener:
            _assert_waiting(opener)
            os.kill(p.popen.pid, signal.SIGTERM)
            os.kill(p.popen.pid, signal.SIGCONT)
            out, _ = opener.communicate(timeout=10)
        code, _, err = p.finish()
    assert code == 0, err
    assert "Traceback" not in err
    # whether the stop or the event was seen first, the answer is the default
    assert out.strip() == "denied 1"
    assert "1 opens answered: 0 allowed, 1 denied" in err


def test_guard_not_root_names_the_capability(tmpfs: Path) -> None:
    r = run("guard", "--deny", "*", str(tmpfs), prefix=NOBODY)
    assert r.returncode == 1
    assert "CAP_SYS_ADMIN" in r.stderr
    assert "Traceback" not in r.stderr


def test_watch_reports_a_queue_overflow(tmpfs: Path, tmp_path: Path) -> None:
    log = tmp_path / "events.json"
    with cli("watch", "--json", "--events", "create", "--output", str(log), str(tmpfs)) as p:
        p.wait_stderr("watching")
        # Stopped, the command reads nothing: more creates than the kernel
        # queues (16384) make it drop events and queue an overflow.
        os.kill(p.popen.pid, signal.SIGSTOP)
        try:
            child("import sys\nfor i in range(17000): open(f'{sys.argv[1]}/{i}', 'w').close()\n",
                  str(tmpfs))
        finally:
            os.kill(p.popen.pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while "pipeline_error" not in _read(log):
            assert time.monotonic() < deadline, "no overflow line"
            time.sleep(0.1)
        p.popen.send_signal(signal.SIGTERM)
        code, _, err = p.finish()
    assert code == 0, err
    recs = json_lines(log.read_text())
    overflow = [r for r in recs if r["event"]["kind"] == "pipeline_error"]  # type: ignore[index]
    assert len(overflow) == 1
    assert overflow[0]["event"]["action"] == ["q_overflow"]  # type: ignore[index]
    creates = len(recs) - 1
    assert 0 < creates < 17000
    assert f"{creates} events seen, {creates} shown" in err
    assert "1 overflows" in err


def test_fs_error_needs_filesystem_scope(tmpfs: Path) -> None:
    r = run("watch", "--events", "fs_error", str(tmpfs))
    assert r.returncode == 2
    assert "--filesystem" in r.stderr.strip().splitlines()[-1]


# -- guard --deadline ------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan", ""])
def test_guard_bad_deadline_exits_2_naming_it(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert afanotify.cli.main(["guard", "--deadline", value, str(tmp_path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--deadline" in last and "seconds" in last, last


class _GroupMade(Exception):
    """Raised by the stand-in group once the CLI has created it."""


@pytest.mark.parametrize(("argv", "timeout"), [([], 5.0), (["--deadline", "0.25"], 0.25)])
def test_guard_deadline_is_the_groups_permission_timeout(
    argv: list[str], timeout: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made: list[dict[str, object]] = []

    def fake_group(*args: object, **kwargs: object) -> None:
        made.append(kwargs)
        raise _GroupMade

    monkeypatch.setattr(afanotify._cli_guard, "Fanotify", fake_group)
    with pytest.raises(_GroupMade):
        afanotify.cli.main(["guard", *argv, "--default", "deny", str(tmp_path)])
    (kwargs,) = made
    assert kwargs["permission_timeout"] == timeout
    assert kwargs["default_response"] == afanotify.Response.DENY  # what a deadline answers


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("deadline", "expect"), [("0.3", "denied 1"), ("3", "ok public")])
def test_guard_deadline_answers_a_slow_decision_with_the_default(
    tmpfs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    deadline: str, expect: str,
) -> None:
    # In process, with a decision that blocks the guard's loop for 1.5 s before
    # allowing: a shorter --deadline answers first, with --default deny.
    _, txt = secrets(tmpfs)
    guarding = threading.Event()
    err_lines: list[str] = []

    def record(msg: str) -> None:
        err_lines.append(msg)
        if msg.startswith("guarding"):
            guarding.set()

    def slow_decide(self: object, ev: afanotify.FanotifyData) -> Decision:
        time.sleep(1.5)
        return Decision(None, True, 1, ev.pid, ev.ev_types, ev.path, None, None, None, 0)

    monkeypatch.setattr(afanotify._cli_guard, "_err", record)
    monkeypatch.setattr(afanotify.cli.GuardPolicy, "decide", slow_decide)
    # Decisions are made in C unless the pure parser is in use: there, in
    # Python, the decision can be made slow.
    monkeypatch.setenv("AFANOTIFY_PURE_PARSER", "1")
    seen: list[str] = []

    def open_when_guarded() -> None:
        if guarding.wait(10):
            seen.append(try_open(txt))

    opener = threading.Thread(target=open_when_guarded)
    opener.start()
    try:
        code = afanotify.cli.main(
            ["guard", "--default", "deny", "--deadline", deadline, "--timeout", "4", str(tmpfs)]
        )
    finally:
        guarding.set()
        opener.join(20)
    assert code == 0, err_lines
    assert seen == [expect], err_lines
    summary = err_lines[-1]
    if expect.startswith("denied"):
        assert "1 opens answered: 0 allowed, 1 denied (1 by the default" in summary, summary
    else:
        assert "1 opens answered: 1 allowed, 0 denied (0 by the default" in summary, summary
