"""Helpers for the permission tests: timed child processes, waiting, draining."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from helpers import CHILD_CWD, child_env

from afanotify import Fanotify

_CHILD = r"""
import errno, json, os, subprocess, sys, time
op, path = sys.argv[1], sys.argv[2]
t = time.monotonic()
err = 0
try:
    if op == "open":
        os.close(os.open(path, os.O_RDONLY))
    elif op == "openw":
        os.close(os.open(path, os.O_WRONLY))
    elif op == "read":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.read(fd, 4096)
        finally:
            os.close(fd)
    elif op == "exec":
        subprocess.run([path], check=True)
except OSError as exc:
    err = exc.errno
print(json.dumps({"errno": err, "elapsed": time.monotonic() - t}))
"""


class ChildResult:
    def __init__(self, err: int, elapsed: float) -> None:
        self.errno = err
        self.elapsed = elapsed

    def __repr__(self) -> str:
        name = errno.errorcode.get(self.errno, self.errno)
        return f"ChildResult(errno={name}, {self.elapsed:.3f}s)"


async def child(op: str, path: Path, timeout: float = 20.0) -> ChildResult:
    """Run one file operation in a child process, without blocking the loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, op, str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=child_env(), cwd=CHILD_CWD,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"child {op} {path} still blocked after {timeout}s") from None
    assert proc.returncode == 0, err.decode()
    data = json.loads(out)
    return ChildResult(data["errno"], data["elapsed"])


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


async def drain(fan: Fanotify) -> None:
    """Keep the group reading (permission events go to the handler)."""
    async for ev in fan:
        ev.close()


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, object]) -> AsyncIterator[asyncio.Task[object]]:
    """Run ``coro`` as a task while the block runs; cancel it on the way out."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
