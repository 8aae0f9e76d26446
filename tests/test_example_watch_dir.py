"""examples/watch_dir.py runs, prints the events of another process, and exits 0 on Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from helpers import CHILD_CWD, REPO, child_env, read_line_with, sh

pytestmark = pytest.mark.kernel

EXAMPLE = REPO / "examples" / "watch_dir.py"


@pytest.mark.parametrize(
    ("args", "expect"),
    [((), "CLOSE_WRITE"), (("--fid",), "CREATE")],
    ids=["fd", "fid"],
)
async def test_watch_dir_prints_events_and_exits_on_sigint(
    tmpfs: Path, args: tuple[str, ...], expect: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), *args, str(tmpfs),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
        cwd=CHILD_CWD,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    try:
        await read_line_with(proc.stdout, seen, "watching")  # the mark exists from here on
        assert sh(f"touch {tmpfs}/hello").returncode == 0
        # OPEN may come first, or merged with the close: wait for the line with ``expect``.
        line = await read_line_with(proc.stdout, seen, f" {tmpfs}/hello ", expect)
        assert expect in line.split()[0].split("|"), seen
        assert line.endswith(")") and "(pid " in line
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        err = await proc.stderr.read()
        assert b"Traceback" not in err, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_watch_dir_rejects_a_missing_directory(tmpfs: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), str(tmpfs / "missing"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=child_env(), cwd=CHILD_CWD,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2 and b"not a directory" in err
