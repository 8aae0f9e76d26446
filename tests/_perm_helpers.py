"""Helpers for the permission tests: timed child processes, waiting, draining.

Everything here is anyio's, so it serves tests on asyncio and on trio.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup
from helpers import CHILD_CWD, child_env

from afanotify import ClosedResourceError, Fanotify, InitFlag

T = TypeVar("T")

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
    with anyio.move_on_after(timeout) as scope:
        proc = await anyio.run_process(
            [sys.executable, "-c", _CHILD, op, str(path)], check=False,
            env=child_env(), cwd=CHILD_CWD,
        )
    if scope.cancelled_caught:  # run_process killed and reaped it
        raise AssertionError(f"child {op} {path} still blocked after {timeout}s")
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    return ChildResult(data["errno"], data["elapsed"])


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = anyio.current_time() + timeout
    while not cond():
        if anyio.current_time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await anyio.sleep(0.01)


async def all_blocked(n: int) -> bool:
    """True once ``n`` children of this process wait in fanotify's permission wait."""
    me = os.getpid()
    blocked = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{pid}/wchan") as f:
                wchan = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if "fanotify" in wchan:
            blocked += 1
    return blocked >= n


def fds_into(root: Path) -> list[str]:
    """This process's descriptors open on files under ``root``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor, gone by now
        if target.startswith(str(root) + "/"):
            found.append(target)
    return found


def queued_bytes(fan: Fanotify) -> int:
    """Bytes of events the kernel holds for ``fan``, not yet read (FIONREAD: 24 an event)."""
    buf = bytearray(4)
    fcntl.ioctl(fan.fileno(), termios.FIONREAD, buf)
    return int.from_bytes(buf, "little")


async def queued_at_least(fan: Fanotify, n: int, timeout: float = 10.0) -> None:
    """Wait (with a deadline) until the kernel queues ``n`` bytes of events for ``fan``."""
    deadline = anyio.current_time() + timeout
    while queued_bytes(fan) < n:
        assert anyio.current_time() < deadline, "the events never queued"
        await anyio.sleep(0.01)


async def wait_queued(fan: Fanotify, n: int, timeout: float = 10.0) -> None:
    """Wait until ``n`` children wait on ``fan`` and nothing has read it yet: the
    group's first read then holds all of their events."""
    poll = select.poll()
    poll.register(fan.fileno(), select.POLLIN)
    deadline = anyio.current_time() + timeout
    while not poll.poll(0) or not await all_blocked(n):
        if anyio.current_time() > deadline:
            raise AssertionError(f"{n} opens never waited on the group")
        await anyio.sleep(0.01)


async def drain(fan: Fanotify) -> None:
    """Keep the group reading (permission events go to the handler)."""
    async for ev in fan:
        ev.close()


class Task(Generic[T]):
    """A coroutine running as a task of its own, awaited for its result like a task.

    :meth:`cancel` cancels that task the way asyncio's ``Task.cancel()`` does:
    the cancellation leaves the task (asyncio sees it cancelled; trio sees it
    exit from a cancelled nursery), which is what the group watches for.
    """

    def __init__(self) -> None:
        self._scope: anyio.CancelScope | None = None
        self._cancel = False
        self._done = anyio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def cancel(self) -> None:
        self._cancel = True
        if self._scope is not None:
            self._scope.cancel()

    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancel and self.done() and self._error is None

    async def host(self, coro: Awaitable[T]) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                if self._cancel:
                    tg.cancel_scope.cancel()
                tg.start_soon(self._body, coro)
        finally:
            self._done.set()

    async def _body(self, coro: Awaitable[T]) -> None:
        try:
            self._result = await coro
        except Exception as exc:  # handed to whoever awaits the result
            self._error = exc

    async def result(self, timeout: float = 30.0) -> T:
        """The coroutine's result (its exception, raised); fails at the deadline."""
        with anyio.fail_after(timeout):
            await self._done.wait()
        if self._error is not None:
            raise self._error
        assert not self.cancelled, "the task was cancelled"
        return self._result  # type: ignore[return-value]


class Tasks:
    def __init__(self, tg: TaskGroup) -> None:
        self._tg = tg

    def start(self, coro: Coroutine[Any, Any, T]) -> Task[T]:
        task: Task[T] = Task()
        self._tg.start_soon(task.host, coro)
        return task


@contextlib.asynccontextmanager
async def tasks() -> AsyncIterator[Tasks]:
    """Start coroutines as tasks inside the block; those still running at its end are cancelled."""
    async with anyio.create_task_group() as tg:
        try:
            yield Tasks(tg)
        finally:
            tg.cancel_scope.cancel()


async def gather(*coros: Coroutine[Any, Any, T]) -> list[T]:
    """Run ``coros`` at once; their results, in order."""
    async with tasks() as ts:
        started = [ts.start(c) for c in coros]
        return [await t.result() for t in started]


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, object]) -> AsyncIterator[None]:
    """Run ``coro`` as a task while the block runs; cancel it on the way out.

    It may end with ClosedResourceError (its group closed); any other error
    it raised is raised here.
    """
    async with tasks() as ts:
        task = ts.start(coro)
        yield
    if task.done() and not task.cancelled:
        try:
            await task.result()
        except ClosedResourceError:
            pass


@contextlib.contextmanager
def group_maker(flags: int = InitFlag.CLASS_CONTENT,
                **defaults: Any) -> Iterator[Callable[..., Fanotify]]:
    """A maker of permission groups (``flags``, ``defaults`` unless given) that
    closes every group it made on leaving: the tests' ``make_group`` fixtures."""
    made: list[Fanotify] = []

    def make(flags: int = flags, **kw: Any) -> Fanotify:
        group = Fanotify(flags, **{**defaults, **kw})
        made.append(group)
        return group

    try:
        yield make
    finally:
        for group in made:
            group.close()
