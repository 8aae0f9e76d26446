"""examples/watch_mounts.py names the mounts attached to and detached from
another process's mount namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CHILD_CWD, REPO, child_env

pytestmark = pytest.mark.kernel

EXAMPLE = REPO / "examples" / "watch_mounts.py"

# In its own mount namespace (private propagation: nothing reaches ours), the
# child mounts a tmpfs on $1 and unmounts it, one step per line on stdin.
CHILD = """
set -e
echo ready
read cmd
mount -t tmpfs afanotify-example "$1"
read cmd
umount "$1"
read cmd
"""


def _until(stream: object, prefix: str, seen: list[str]) -> str:
    """Lines from ``stream`` until one starting with ``prefix`` (the caller bounds the time)."""
    while True:
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            raise AssertionError(f"output ended before {prefix!r}: {seen!r}")
        seen.append(line)
        if line.startswith(prefix):
            return str(line)


@pytest.mark.timeout(60)
def test_attach_and_detach_are_named(tmpfs: Path) -> None:
    target = tmpfs / "inner"
    target.mkdir()
    child = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", CHILD, "sh", str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    watcher = None
    seen: list[str] = []
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        watcher = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--pid", str(child.pid)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
            cwd=CHILD_CWD,
        )
        assert watcher.stdout is not None and watcher.stderr is not None
        assert watcher.stderr.readline().startswith("watching the mount namespace of pid")
        child.stdin.write("mount\n")
        child.stdin.flush()
        # Other mounts of the copied namespace may come and go (other tests'
        # tmpfs mounts); the lines about our target are the ones checked.
        attach = _until(watcher.stdout, "ATTACH", seen)
        while f" {target} " not in attach:
            attach = _until(watcher.stdout, "ATTACH", seen)
        child.stdin.write("umount\n")
        child.stdin.flush()
        detach = _until(watcher.stdout, "DETACH", seen)
        while f" {target} " not in detach:
            detach = _until(watcher.stdout, "DETACH", seen)
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.communicate(timeout=10)  # also closes its pipes
        child.communicate(timeout=10)
    a, d = attach.split(), detach.split()
    assert a[2:] == [str(target), "tmpfs"] and d[2:] == [str(target), "tmpfs"], seen
    assert a[1] == d[1] and int(a[1], 16) > 0  # the same unique mount id
    assert str(target) not in Path("/proc/self/mounts").read_text()
