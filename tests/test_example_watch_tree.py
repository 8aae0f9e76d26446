"""examples/watch_tree.py and examples/watch_dir_trio.py run against a private tmpfs.

watch_tree: only events under the tree, renames as one line with both paths,
a tree moved out and deleted keeps full paths.  The trio watcher prints the
events of another process and stops at its trio deadline.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from helpers import CHILD_CWD, REPO, child_env, read_line_with, sh

pytestmark = pytest.mark.kernel

TREE = REPO / "examples" / "watch_tree.py"
TRIO = REPO / "examples" / "watch_dir_trio.py"


async def _start(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=child_env(), cwd=CHILD_CWD,
    )


async def test_watch_tree_prints_the_tree_only_with_renames_and_full_paths(tmpfs: Path) -> None:
    root, other = tmpfs / "root", tmpfs / "elsewhere"
    root.mkdir()
    other.mkdir()
    (root / "old").mkdir()
    (root / "old" / "keep.txt").write_text("k")
    proc = await _start(str(TREE), "--scan", str(root))
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    try:
        await read_line_with(proc.stdout, seen, "watching the tree")
        script = (
            f"cd {tmpfs} && echo x > elsewhere/outside.txt && mkdir root/a && "
            "echo y > root/a/f.txt && mv root/a/f.txt root/a/g.txt && "
            "mv root/old elsewhere/old && rm -r elsewhere/old && echo s > root/sentinel"
        )
        assert sh(script).returncode == 0
        await read_line_with(proc.stdout, seen, f"{root}/sentinel")
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        err = await proc.stderr.read()
        assert b"Traceback" not in err, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    body = seen[1:]
    # The kernel merges a create and a close_write of the same file.
    lines = [(frozenset(line.split(" ", 1)[0].split("|")), line.split(" ", 1)[1])
             for line in body]
    kinds: dict[str, frozenset[str]] = {}
    for names, rest in lines:
        kinds[rest] = kinds.get(rest, frozenset()) | names
    assert "CREATE" in kinds[f"{root}/a"], body
    assert "CREATE" in kinds[f"{root}/a/f.txt"], body
    assert kinds[f"{root}/a/f.txt -> {root}/a/g.txt"] == {"RENAME"}, body
    # The tree moved out: one rename line with both paths, and nothing else
    # (no MOVED_FROM: the group marks moves for its map, not to deliver them);
    # what happens to it afterwards, outside the tree, is not shown.
    assert kinds[f"{root}/old -> {other}/old"] == {"RENAME"}, body
    assert all(names <= {"CREATE", "CLOSE_WRITE", "RENAME", "DELETE"} for names, _ in lines), body
    assert not any("outside.txt" in line or "keep.txt" in line for line in body), body
    assert not any(line.endswith(" ?") for line in body), body


async def test_watch_tree_rejects_a_missing_directory(tmpfs: Path) -> None:
    proc = await _start(str(TREE), str(tmpfs / "missing"))
    _out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2 and b"not a directory" in err


async def test_watch_dir_trio_prints_events_and_stops_at_its_deadline(tmpfs: Path) -> None:
    proc = await _start(str(TRIO), "--for", "20", str(tmpfs))
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    try:
        await read_line_with(proc.stdout, seen, "watching", "under trio")
        pid_line = sh(f"echo hi > {tmpfs}/hello && mv {tmpfs}/hello {tmpfs}/bye")
        assert pid_line.returncode == 0
        await read_line_with(proc.stdout, seen, f" {tmpfs}/hello ", "CREATE")
        await read_line_with(proc.stdout, seen, f" {tmpfs}/bye ", "MOVED_TO")
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        err = await proc.stderr.read()
        assert b"Traceback" not in err, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_watch_dir_trio_deadline_ends_the_watch(tmpfs: Path) -> None:
    proc = await _start(str(TRIO), "--for", "0.5", str(tmpfs))
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines()[-1] == "deadline reached", out
