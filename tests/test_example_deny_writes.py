"""examples/deny_writes.py against a private tmpfs: reads pass, writes get EPERM."""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio
from helpers import CHILD_CWD, REPO, child_env

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

_EXAMPLE = REPO / "examples" / "deny_writes.py"

_CHILD = r"""
import json, os, sys, threading
path, mode, in_thread = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "a": os.O_WRONLY | os.O_APPEND,
         "rw": os.O_RDWR, "create": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
         "trunc": os.O_RDONLY | os.O_TRUNC}[mode]
out = {}
def attempt():
    try:
        os.close(os.open(path, flags, 0o644))
        out["errno"] = 0
    except OSError as exc:
        out["errno"] = exc.errno
if in_thread:
    t = threading.Thread(target=attempt); t.start(); t.join()
else:
    attempt()
print(json.dumps(out))
"""


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deny_writes", _EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def _open_in_child(path: Path, mode: str, in_thread: bool = False) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(path), mode, "1" if in_thread else "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=child_env(), cwd=CHILD_CWD,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    return int(json.loads(out)["errno"])


@pytest_asyncio.fixture  # asyncio only: pytest-asyncio runs in strict mode
async def agent(tmpfs: Path, request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """The example agent guarding ``tmpfs/protected``, stopped (group closed) at teardown."""
    mod = _load()
    root = tmpfs / "protected"
    root.mkdir()
    (root / "doc.txt").write_text("keep me\n")
    (tmpfs / "free.txt").write_text("scratch\n")
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        mod.run(str(root), mount=request.param, timeout=5.0, ready=ready, stop=stop)
    )
    await asyncio.wait_for(ready.wait(), 10)
    state: dict[str, Any] = {"root": root, "free": tmpfs / "free.txt"}
    try:
        yield state
    finally:
        stop.set()
        state["policy"] = await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("agent", [False, True], indirect=True, ids=["inode", "mount"])
async def test_reads_pass_writes_are_denied(
    agent: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    doc = agent["root"] / "doc.txt"
    with caplog.at_level(logging.WARNING, logger="deny_writes"):
        assert await _open_in_child(doc, "r") == 0
        assert await _open_in_child(doc, "w") == errno.EPERM
        assert await _open_in_child(doc, "a") == errno.EPERM
        assert await _open_in_child(doc, "rw") == errno.EPERM
        assert await _open_in_child(doc, "trunc") == errno.EPERM
        # The opener's thread, not its main thread, is the one asking.
        assert await _open_in_child(doc, "w", in_thread=True) == errno.EPERM
        assert await _open_in_child(doc, "r", in_thread=True) == 0
        # Outside the guarded directory (seen only by the mount mark): allowed.
        assert await _open_in_child(agent["free"], "w") == 0
    # Read in a thread: an open() on the loop's own thread would wait for a
    # verdict that only this loop can write (see docs/permissions.md).
    assert await asyncio.to_thread(doc.read_text) == "keep me\n"
    denials = [r for r in caplog.records if r.message.startswith("denied")]
    assert len(denials) == 5
    assert str(doc) in denials[0].message


@pytest.mark.parametrize("agent", [False], indirect=True, ids=["inode"])
async def test_creating_a_file_is_denied(agent: dict[str, Any]) -> None:
    new = agent["root"] / "new.txt"
    assert await _open_in_child(new, "create") == errno.EPERM
    # The kernel creates the entry before the open is judged; nothing was written.
    assert not new.exists() or new.stat().st_size == 0


def test_write_detection_from_flags() -> None:
    mod = _load()
    assert not mod.is_write(os.O_RDONLY | os.O_CLOEXEC)
    assert mod.is_write(os.O_WRONLY) and mod.is_write(os.O_RDWR)
    assert mod.is_write(os.O_RDONLY | os.O_TRUNC)
    assert mod.is_write(None)  # unknown: fail closed
    assert mod.open_flags(os.getpid()) is None  # this thread is running, not blocked in open
