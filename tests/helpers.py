"""Helpers for tests: child processes, ext4 images, waiting with deadlines.

Python children must import the afanotify this test run imported, which is not
always the checkout: with a non-editable install the checkout's afanotify/ has
no compiled core. So children get :func:`child_env` and are started with a
working directory other than the checkout (:data:`CHILD_CWD` or a test's own
directory), because ``python -c`` and ``python -m`` put their working
directory first on sys.path, ahead of PYTHONPATH. Files of the checkout itself
(README.md, examples/, bench/) are found from :data:`REPO`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

import afanotify
from afanotify import FanotifyClient, FanotifyData, WouldBlock

T = TypeVar("T")

#: The checkout holding these tests: README.md, examples/, bench/, build_ffi.py.
REPO = Path(__file__).resolve().parents[1]
#: The directory holding the afanotify package under test (site-packages for an
#: installed copy, the checkout for an editable install or PYTHONPATH=.).
CODE_ROOT = str(Path(afanotify.__file__).resolve().parents[1])
#: A working directory for Python children with no afanotify/ in it.
CHILD_CWD = "/"


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment in which a Python child imports the afanotify under test.

    ``base`` (default: os.environ) with PYTHONPATH set to :data:`CODE_ROOT`,
    followed by the entries of base's PYTHONPATH made absolute (the child may
    run elsewhere); ``extra`` variables are added last. Start the child with a
    cwd that is not the checkout (see the module docstring).
    """
    env = dict(os.environ if base is None else base)
    inherited = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([CODE_ROOT, *inherited]))
    env.update(extra)
    return env


def make_ext4(size_mb: int = 32) -> tuple[str, str]:
    """Create an ext4 image and a mount point; returns (image, mountpoint), mounted."""
    work = tempfile.mkdtemp(prefix="afanotify-ext4-")
    image = os.path.join(work, "fs.img")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
    return image, mnt


def run_in_child(code: str, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a separate process (so its events are not our own)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=child_env(),
        cwd=CHILD_CWD,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sh(script: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a separate process."""
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=timeout, check=False
    )


def drain_client(client: FanotifyClient) -> list[FanotifyData]:
    """Take every event the client has queued now, without waiting; each is closed."""
    out = []
    while True:
        try:
            ev = client.get_nowait()
        except WouldBlock:
            return out
        ev.close()
        out.append(ev)


def is_open(fd: int) -> bool:
    """Whether ``fd`` is an open descriptor of this process (a closed one gives EBADF)."""
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def collect(
    source: object,
    until: Callable[[list[FanotifyData]], bool],
    timeout: float = 5.0,
) -> list[FanotifyData]:
    """Receive events from a group or client until ``until(events)`` is true.

    Fails the test (AssertionError) at the deadline, listing what arrived.
    The events are closed as they come; their fields stay readable.
    """
    got: list[FanotifyData] = []
    deadline = anyio.current_time() + timeout
    receive = source.receive if hasattr(source, "receive") else source.get  # type: ignore[attr-defined]
    while not until(got):
        left = deadline - anyio.current_time()
        if left <= 0:
            raise AssertionError(f"deadline passed after {len(got)} events: {got!r}")
        with anyio.move_on_after(left):
            ev = await receive()
            ev.close()
            got.append(ev)
    return got


async def read_line_with(stream: asyncio.StreamReader, seen: list[str], *want: str,
                         timeout: float = 10.0) -> str:
    """Read ``stream``'s lines into ``seen`` until one contains every string in ``want``."""
    async def read() -> str:
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"output ended before {want!r}: {seen!r}")
            line = raw.decode().rstrip("\n")
            seen.append(line)
            if all(w in line for w in want):
                return line

    return await asyncio.wait_for(read(), timeout)


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``cond`` every 10 ms; fail the test (AssertionError naming ``what``) at the deadline."""
    deadline = anyio.current_time() + timeout
    while not cond():
        assert anyio.current_time() < deadline, f"{what}: not within {timeout}s"
        await anyio.sleep(0.01)


async def in_thread(fn: Callable[..., T], *args: object, timeout: float = 10.0) -> T:
    """Run blocking ``fn(*args)`` in a worker thread; fail the test at the deadline.

    At the deadline the thread is abandoned (it is not cancellable), as
    ``asyncio.wait_for(asyncio.to_thread(...))`` did, on either backend.
    """
    with anyio.fail_after(timeout):
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), abandon_on_cancel=True)


#: Run a command as uid/gid 65534 with no capabilities.
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all")


@functools.cache
def _nobody_python_problem() -> str | None:
    r = subprocess.run(
        [*NOBODY, sys.executable, "-c", "import afanotify"], env=child_env(), cwd=CHILD_CWD,
        capture_output=True, text=True, timeout=30, check=False,
    )
    if r.returncode == 0:
        return None
    lines = r.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {r.returncode}"


def nobody_python() -> str:
    """An interpreter uid 65534 can run, for a child that needs only the standard library.

    This one if that user can load it, else the system's ``/usr/bin/python3``;
    the test skips, saying why, if that user can run neither.
    """
    import pytest

    for cand in (sys.executable, "/usr/bin/python3"):
        if _nobody_can_run(cand):
            return cand
    pytest.skip(f"uid 65534 can run neither {sys.executable} nor /usr/bin/python3 here")


@functools.cache
def _nobody_can_run(python: str) -> bool:
    r = subprocess.run(
        [*NOBODY, python, "-I", "-c", "import os"], cwd=CHILD_CWD,
        capture_output=True, timeout=30, check=False,
    )
    return r.returncode == 0


def require_nobody_python() -> None:
    """Skip the test on this interpreter if uid 65534 cannot run it with afanotify.

    (pyenv's interpreters live under /root, which that user cannot read; a
    test with an unprivileged child then runs on interpreters it can.)
    """
    import pytest

    problem = _nobody_python_problem()
    if problem is not None:
        pytest.skip(f"uid 65534 cannot run {sys.executable} with afanotify here: {problem}")
