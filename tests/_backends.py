"""Running a test body on asyncio and on trio, from a plain (sync) test.

Most tests that run on both backends are anyio-marked async tests (see
tests/conftest.py).  tests/test_trio_*.py and tests/test_fork.py instead
call :func:`run` from plain functions parametrized over :data:`BACKENDS`
(``ON_BOTH``), which asserts the backend the same way.  Everything
awaited in the bodies is anyio's, so one body serves both.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import sniffio
from helpers import CHILD_CWD, child_env

from afanotify import FanotifyData

BACKENDS = ("asyncio", "trio")
#: For a module's ``pytestmark``: every test there takes ``backend``.
ON_BOTH = pytest.mark.parametrize("backend", BACKENDS)

T = TypeVar("T")


def run(backend: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` to completion on ``backend``, checking it really runs there."""

    async def body() -> T:
        assert sniffio.current_async_library() == backend
        return await fn(*args)

    return anyio.run(body, backend=backend)


async def collect(
    source: object, until: Callable[[list[FanotifyData]], bool], timeout: float = 5.0
) -> list[FanotifyData]:
    """Receive from a group or client until ``until(events)``; fails at the deadline."""
    got: list[FanotifyData] = []
    receive = source.receive if hasattr(source, "receive") else source.get  # type: ignore[attr-defined]
    with anyio.move_on_after(timeout):
        while not until(got):
            ev = await receive()
            ev.close()
            got.append(ev)
    if not until(got):
        raise AssertionError(f"deadline passed after {len(got)} events: {got!r}")
    return got


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` until it holds; fails at the deadline."""
    with anyio.move_on_after(timeout):
        while not cond():
            await anyio.sleep(0.005)
    assert cond(), "condition not met before the deadline"


_OPEN = r"""
import json, os, sys, time
t = time.monotonic()
err = 0
try:
    os.close(os.open(sys.argv[1], os.O_RDONLY))
except OSError as exc:
    err = exc.errno
print(json.dumps({"errno": err, "elapsed": time.monotonic() - t}))
"""


async def open_in_child(path: Path | str, timeout: float = 20.0) -> tuple[int, float]:
    """Open ``path`` in another process; returns (errno or 0, seconds the open took)."""
    with anyio.fail_after(timeout):
        r = await anyio.run_process(
            [sys.executable, "-c", _OPEN, str(path)], env=child_env(), cwd=CHILD_CWD
        )
    data = json.loads(r.stdout)
    return data["errno"], data["elapsed"]


async def sh(script: str, timeout: float = 20.0) -> None:
    """Run a shell script in another process, without blocking the loop."""
    with anyio.fail_after(timeout):
        await anyio.run_process(["sh", "-c", script])
