"""examples/trace_files.py prints the file events of the command it runs, and
only those, with the command's exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CHILD_CWD, REPO, child_env

pytestmark = pytest.mark.kernel

EXAMPLE = REPO / "examples" / "trace_files.py"

# The traced command: waits on a FIFO outside the watched mount (so the test
# can act first), then reads one file, writes another, and exits 3.
COMMAND = (
    "import sys\n"
    "open(sys.argv[1]).read()\n"
    "open(sys.argv[2]).read()\n"
    "with open(sys.argv[3], 'w') as f: f.write('out')\n"
    "sys.exit(3)\n"
)


def test_traces_one_process_and_ends_with_its_status(tmpfs: Path, tmp_path: Path) -> None:
    (tmpfs / "input.txt").write_text("in")
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    tracer = subprocess.Popen(
        [sys.executable, str(EXAMPLE), str(tmpfs), "--", sys.executable, "-c", COMMAND,
         str(gate), str(tmpfs / "input.txt"), str(tmpfs / "output.txt")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        cwd=CHILD_CWD,
    )  # fmt: skip
    try:
        assert tracer.stderr is not None
        first = tracer.stderr.readline()  # the mark is in place from here on
        assert first.startswith("trace_files: tracing pid "), first
        traced_pid = int(first.split()[3])
        # Another process touches a file on the mount: not traced.
        subprocess.run(["sh", "-c", f"cat {tmpfs}/input.txt > {tmpfs}/other.txt"], check=True)
        with open(gate, "w") as g:  # lets the command go on
            g.write("go\n")
        out, err = tracer.communicate(timeout=30)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    assert tracer.returncode == 3, err
    lines = [line.split() for line in out.splitlines()]
    assert lines and all(int(f[0]) == traced_pid for f in lines), out
    seen: dict[str, set[str]] = {}
    for f in lines:
        seen.setdefault(f[3], set()).update(f[2].split("|"))
    # The output file's events come last, after the other process's: had the
    # tracer shown that process, its lines would be here too.
    assert set(seen) == {f"{tmpfs}/input.txt", f"{tmpfs}/output.txt"}, out
    assert {"OPEN", "ACCESS", "CLOSE_NOWRITE"} <= seen[f"{tmpfs}/input.txt"]
    assert {"OPEN", "MODIFY", "CLOSE_WRITE"} <= seen[f"{tmpfs}/output.txt"]
    assert f"pid {traced_pid}: 1 files read, 1 written, 0 executed" in err
    assert "Traceback" not in err


def test_refuses_a_missing_command() -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), "/tmp"], capture_output=True, text=True,
        env=child_env(), cwd=CHILD_CWD, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "give either -- COMMAND" in r.stderr
