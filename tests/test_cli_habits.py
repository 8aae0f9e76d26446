"""Operator habits and bad input for ``afanotify watch``, against the real command.

Each test runs ``python -m afanotify`` on a private tmpfs (the ``tmpfs``
fixture), waits for its "watching" line before producing events from child
processes, and proves what did not happen with a later sentinel event.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import (
    _THEN_LINGER,
    CHILD_CWD,
    CLI,
    ENV,
    NOBODY,
    child,
    cli,
    json_lines,
    lingering,
    run,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

CREATE = "import sys\nfor p in sys.argv[1:]: open(p, 'w').close()\n"


def _wait_for(path: Path, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        assert time.monotonic() < deadline, f"no {needle!r} in {path}: {text[-500:]!r}"
        time.sleep(0.02)


def test_sighup_reopens_the_output_and_keeps_running(tmpfs: Path, tmp_path: Path) -> None:
    log = tmp_path / "events.json"
    rotated = tmp_path / "events.json.1"
    with cli("watch", "--json", "--events", "create", "--output", str(log), str(tmpfs)) as p:
        p.wait_stderr("watching")
        child(CREATE, str(tmpfs / "before"))
        _wait_for(log, "before")
        log.rename(rotated)  # what logrotate does, then it signals the command
        os.kill(p.popen.pid, signal.SIGHUP)
        # The reopen is not announced: keep creating until a file shows in the new log.
        deadline = time.monotonic() + 10
        n = 0
        while not (log.exists() and "after" in log.read_text()):
            assert time.monotonic() < deadline, "nothing written after SIGHUP"
            assert p.popen.poll() is None, "SIGHUP stopped the command"
            child(CREATE, str(tmpfs / f"after{n}"))
            # Each file lands in one of the two logs before the next is made.
            while not any(f"after{n}" in f.read_text() for f in (log, rotated) if f.exists()):
                assert time.monotonic() < deadline, f"after{n} was not written"
                time.sleep(0.02)
            n += 1
        p.popen.send_signal(signal.SIGTERM)
        code, _, err = p.finish()
    assert code == 0, err
    old = [r["file"]["name"] for r in json_lines(rotated.read_text())]  # type: ignore[index]
    new = [r["file"]["name"] for r in json_lines(log.read_text())]  # type: ignore[index]
    assert old[0] == "before"
    assert new and all(str(name).startswith("after") for name in new)
    assert len(set(old) | set(new)) == len(old) + len(new)  # no line written twice


def test_stats_interval_writes_progress_lines(tmpfs: Path) -> None:
    with cli("watch", "--events", "create", "--stats-interval", "0.2", str(tmpfs)) as p:
        p.wait_stderr("watching")
        child(CREATE, str(tmpfs / "a"), str(tmpfs / "b"))
        err = p.wait_stderr("2 events seen, 2 lines written")
        p.popen.send_signal(signal.SIGTERM)
        code, _, err = p.finish()
    assert code == 0, err
    line = next(x for x in err.splitlines() if "progress:" in x and "2 events seen" in x)
    assert "0 filtered out" in line
    assert "nothing lost" in line
    assert "bytes queued in the kernel" in line


def test_empty_event_name_is_an_error(tmpfs: Path) -> None:
    r = run("watch", "--events", "create,,delete", str(tmpfs))
    assert r.returncode == 2
    assert "empty event name" in r.stderr
    assert "usage: afanotify watch" in r.stderr


@pytest.mark.parametrize("command", ["watch", "guard"])
def test_unknown_option_prints_the_subcommands_usage(tmpfs: Path, command: str) -> None:
    r = run(command, "--no-such-option", str(tmpfs))
    assert r.returncode == 2
    assert f"usage: afanotify {command}" in r.stderr
    assert "unrecognized arguments: --no-such-option" in r.stderr


def test_features_without_root_says_what_needs_root_once() -> None:
    r = run("features", prefix=NOBODY)
    assert r.returncode == 1
    assert r.stderr.count("CAP_SYS_ADMIN") == 1
    assert "root" in r.stderr
    assert "Traceback" not in r.stderr


def test_rename_is_one_line_with_both_paths_by_default(tmpfs: Path, tmp_path: Path) -> None:
    log = tmp_path / "events.json"
    (tmpfs / "old").write_text("x")
    with cli("watch", "--filesystem", "--json", "--output", str(log), str(tmpfs)) as p:
        p.wait_stderr("watching")
        child("import os, sys\nos.rename(sys.argv[1], sys.argv[2])\n"
              "open(sys.argv[3], 'w').close()\n",
              str(tmpfs / "old"), str(tmpfs / "new"), str(tmpfs / "sentinel"))
        _wait_for(log, "sentinel")
        p.popen.send_signal(signal.SIGTERM)
        code, _, err = p.finish()
    assert code == 0, err
    recs = json_lines(log.read_text())
    actions = [a for r in recs for a in r["event"]["action"]]  # type: ignore[index]
    assert "moved_from" not in actions and "moved_to" not in actions
    (ren,) = [r for r in recs if "rename" in r["event"]["action"]]  # type: ignore[index]
    assert ren["fanotify"]["old_path"] == str(tmpfs / "old")  # type: ignore[index]
    assert ren["fanotify"]["new_path"] == str(tmpfs / "new")  # type: ignore[index]
    for r in recs:  # ECS 8.11: every type is one the file category expects
        assert set(r["event"]["type"]) <= {"access", "change", "creation", "deletion", "info"}  # type: ignore[index]


def test_non_utf8_name_is_valid_strict_json(tmpfs: Path, tmp_path: Path) -> None:
    log = tmp_path / "events.json"
    with cli("watch", "--json", "--events", "create", "--output", str(log), str(tmpfs)) as p:
        p.wait_stderr("watching")
        child("import os, sys\nos.close(os.open(os.fsencode(sys.argv[1]) + b'/bad\\xffname',"
              " os.O_CREAT | os.O_WRONLY))\nopen(sys.argv[1] + '/sentinel', 'w').close()\n",
              str(tmpfs))
        _wait_for(log, "sentinel")
        p.popen.send_signal(signal.SIGTERM)
        code, _, err = p.finish()
    assert code == 0, err
    raw = log.read_bytes()
    raw.decode("ascii")  # every line is ASCII
    assert b"\\ud" not in raw.lower()  # no lone surrogate escapes: strict parsers refuse them
    recs = [json.loads(line) for line in raw.decode().splitlines()]
    bad = recs[0]["file"]
    assert bad["name"] == "bad\\xffname"
    assert bad["path"] == f"{tmpfs}/bad\\xffname"


def test_closed_pipe_summary_counts_are_exact(tmpfs: Path) -> None:
    # head takes one line and exits; the summary counts what reached it.
    script = " ".join([*CLI, "watch", "--events", "create", str(tmpfs)]) + " | head -n 1"
    proc = subprocess.Popen(["sh", "-c", script], env=ENV, cwd=CHILD_CWD,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        err = b""
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        n = 0
        while proc.poll() is None:
            assert time.monotonic() < deadline, err
            if b"watching" in err:
                child(CREATE, *(str(tmpfs / f"f{n}-{i}") for i in range(50)))
                n += 1
            try:
                err += proc.stderr.read() or b""
            except BlockingIOError:
                pass
            time.sleep(0.05)
        out, rest = proc.communicate(timeout=10)
        err += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.decode()
    summary = next(x for x in text.splitlines() if "events seen" in x)
    shown = int(summary.split(" shown")[0].rsplit(" ", 1)[1])
    assert len(out.decode().splitlines()) == 1
    assert "not written (the output was closed)" in summary
    # head read one line, but the pipe may have taken more before it closed:
    # what the summary calls shown is what write(2) accepted, never more.
    assert shown >= 1


def test_slow_reader_of_stdout_is_counted_not_silent(tmpfs: Path) -> None:
    # The test is the slow reader: it reads nothing from the pipe until every
    # event was seen.  The command must keep reading the kernel (no overflow),
    # drop what does not fit in --max-pending, and count it exactly.
    names = [str(tmpfs / f"slow{i:04d}") for i in range(3000)]
    with cli("watch", "--json", "--events", "create", "--max-pending", "0.05",
             "--stats-interval", "0.2", str(tmpfs)) as p:
        p.wait_stderr("watching")
        for i in range(0, len(names), 500):
            child(CREATE, *names[i:i + 500])
        deadline = time.monotonic() + 30
        fd = p.popen.stderr.fileno()  # type: ignore[union-attr]
        while True:
            progress = [x for x in p.err.decode().splitlines() if "progress:" in x]
            if progress and "3000 events seen" in progress[-1]:
                break
            left = deadline - time.monotonic()
            assert left > 0, p.err.decode()[-800:]
            if select.select([fd], [], [], left)[0]:
                p.err += os.read(fd, 65536)
        assert "LINES LOST" in progress[-1] and "line(s) dropped" in progress[-1]
        p.popen.send_signal(signal.SIGINT)
        code, out, err = p.finish()
    assert code == 0, err
    summary = next(x for x in err.splitlines() if "events seen" in x and "progress" not in x)
    dropped = int(summary.split(" dropped for a slow reader")[0].rsplit(" ", 1)[1])
    shown = int(summary.split(" shown")[0].rsplit(" ", 1)[1])
    lines = json_lines(out)
    assert "0 overflows" in summary and "nothing lost" not in summary, summary
    assert f"LINES LOST: {dropped} line(s) dropped" in summary
    assert dropped > 0
    assert shown == 3000
    assert len(lines) + dropped == shown
    # What got out are whole lines, in order.
    got = [r["file"]["name"] for r in lines]  # type: ignore[index]
    assert got == sorted(got)


def test_format_template_names_fields(tmpfs: Path) -> None:
    template = "{time} {pid:>7} {comm} {events} {type} {path} | {dir} | {name} | {old_path}"
    with cli("watch", "--format", template, "--events", "create,rename",
             "--time-format", "%Y-%m-%d %H:%M:%S.%f", str(tmpfs)) as p:
        p.wait_stderr("watching")
        move = "import os, sys\nopen(sys.argv[1], 'w').close()\nos.rename(*sys.argv[1:3])\n"
        # The mover stays alive until its lines are read, so that {comm} is
        # its name however late the watcher looks at /proc.
        with lingering([sys.executable, "-c", move + _THEN_LINGER,
                        str(tmpfs / "a"), str(tmpfs / "b")]):
            child(CREATE, str(tmpfs / "zz_end"))
            deadline = time.monotonic() + 10
            out = b""
            assert p.popen.stdout is not None
            fd = p.popen.stdout.fileno()
            while b"zz_end" not in out:
                left = deadline - time.monotonic()
                assert left > 0, out
                if select.select([fd], [], [], left)[0]:
                    out += os.read(fd, 65536)
        p.popen.send_signal(signal.SIGINT)
        code, rest, err = p.finish()
    assert code == 0, err
    lines = (out.decode() + rest).splitlines()
    create, rename = lines[0], lines[1]
    day, clock, pid, comm, events, kind, path = create.split(" | ")[0].split()
    assert time.strptime(day, "%Y-%m-%d")
    assert clock.count(":") == 2 and len(clock.rsplit(".", 1)[1]) == 3
    assert int(pid) > 0 and comm.startswith("python")
    assert (events, kind, path) == ("CREATE", "file", f"{tmpfs}/a")
    assert create.split(" | ")[1:] == [str(tmpfs), "a", "-"]
    assert rename.split()[4:7] == ["RENAME", "file", f"{tmpfs}/b"]
    assert rename.endswith(f"| {tmpfs} | b | {tmpfs}/a")


@pytest.mark.parametrize(("template", "says"), [
    ("{nosuch}", "unknown field {nosuch}"),
    ("{path.__class__}", "unknown field {path.__class__}"),
    ("{}", "an empty field {}"),
    ("{pid:d}", "Unknown format code 'd'"),
    ("{path", "expected '}'"),
])
def test_bad_format_template_is_a_usage_error(tmpfs: Path, template: str, says: str) -> None:
    r = run("watch", "--format", template, str(tmpfs))
    assert r.returncode == 2
    assert "usage: afanotify watch" in r.stderr
    assert says in r.stderr
    if "field" in says:
        assert "the fields are {time}, {pid}" in r.stderr


def test_format_with_json_is_a_usage_error(tmpfs: Path) -> None:
    r = run("watch", "--json", "--format", "{path}", str(tmpfs))
    assert r.returncode == 2
    assert "--format: not allowed with --json" in r.stderr


SHORT_LIVED = (
    'i=0; while [ $i -lt 10 ]; do touch "f$i"; mv "f$i" "g$i"; rm "g$i"; sleep 0.2; '
    "i=$((i + 1)); done; touch zz_end"
)


def test_short_lived_processes_are_named(tmpfs: Path) -> None:
    # touch, mv and rm live for about a millisecond: their names must be read
    # as soon as their events are (the comparison with fatrace, which races
    # the same exits, is bench/bench_cli.py --naming: a shared machine makes
    # it too noisy for a test).
    with cli("watch", "--json", "--events", "create,rename,delete", str(tmpfs)) as p:
        p.wait_stderr("watching")
        subprocess.run(["sh", "-c", SHORT_LIVED], cwd=tmpfs, check=True, timeout=30)
        out = b""
        assert p.popen.stdout is not None
        fd = p.popen.stdout.fileno()
        deadline = time.monotonic() + 10
        while b"zz_end" not in out:
            left = deadline - time.monotonic()
            assert left > 0, out[-500:]
            if select.select([fd], [], [], left)[0]:
                out += os.read(fd, 65536)
        p.popen.send_signal(signal.SIGINT)
        p.finish()
    who = {"create": "touch", "rename": "mv", "delete": "rm"}
    ours: dict[int, str | None] = {}
    for r in json_lines(out.decode()):
        proc, name = r["process"], r["file"]["name"]  # type: ignore[index]
        if name and name[0] in "fg" and name[1:].isdigit():
            pid, comm = proc["pid"], proc["name"]  # type: ignore[index]
            action = r["event"]["action"][0]  # type: ignore[index]
            # A name is never a wrong one: the process that made the event.
            assert comm in (None, who[action]), r
            if ours.get(pid) is None:
                ours[pid] = comm
    assert len(ours) == 30, ours
    # Some are named although they are gone within a millisecond.  How many
    # depends on how busy the machine is (a process reaped before the read
    # has no name to read: FAN_NOPIDFD), from 14 to 30 of 30 here: the count
    # against fatrace is the bench's.  A process that is alive when its
    # events are read is always named: test_cli.py's lingering writers.
    assert sum(1 for n in ours.values() if n) >= 1, ours


@pytest.mark.parametrize(("value", "says"), [
    ("0", "must be a positive number of MiB, got 0"),
    ("-1", "must be a positive number of MiB, got -1"),
    ("lots", "'lots' is not a number of MiB"),
])
def test_bad_max_pending_is_a_usage_error(tmpfs: Path, value: str, says: str) -> None:
    r = run("watch", f"--max-pending={value}", str(tmpfs))
    assert r.returncode == 2
    assert "usage: afanotify watch" in r.stderr and says in r.stderr, r.stderr
