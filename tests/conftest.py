"""Shared fixtures: private filesystems for kernel tests, and subprocess helpers.

Kernel tests mark only filesystems they mounted themselves (a tmpfs or a
loop-mounted ext4 image), and unmount them here, whatever the test did.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sniffio

# The suite tests the compiled core: a process (this one, or a child) that
# imported a copy without it, such as the checkout's afanotify/ next to a
# non-editable install, fails instead of falling back to the pure core.
# AFANOTIFY_CORE=pure runs the suite on the pure core on purpose.
os.environ.setdefault("AFANOTIFY_CORE", "c")

from helpers import make_ext4

HAVE_ROOT = os.geteuid() == 0
#: Fixtures that mount filesystems: only kernel tests may use them.
_KERNEL_FIXTURES = frozenset(("tmpfs", "ext4", "anyfs"))


#: The backends an anyio-marked test runs on (``pytestmark = pytest.mark.anyio``).
BACKENDS = ("asyncio", "trio")



# A suite started in the background of a shell without job control inherits
# SIGINT ignored, and so would every child it runs: the examples and legacy
# programs the tests stop with Ctrl-C would then never stop.  A handler of our
# own becomes the default disposition again in each exec'd child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every anyio-marked test runs once per backend, each in a fresh event loop."""
    backend: str = request.param
    return backend


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """An async test not marked for anyio is pytest-asyncio's (strict mode), on asyncio only.

    Strict mode (pyproject) keeps pytest-asyncio away from anyio-marked tests,
    which its auto mode would run on asyncio whatever their backend; this hook
    gives it back every other async test, as auto mode did.
    """
    if not isinstance(collector, (pytest.Module, pytest.Class)):
        return
    if not collector.istestfunction(obj, name):
        return
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)
    if not inspect.iscoroutinefunction(inner):
        return
    own = {m.name for m in getattr(obj, "pytestmark", ())}
    if collector.get_closest_marker("anyio") is None and not own & {"anyio", "asyncio"}:
        pytest.mark.asyncio(obj)


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, None, None]:
    """An anyio-marked test fails unless its body really runs on its backend."""
    backend = pyfuncitem.funcargs.get("anyio_backend")
    test = pyfuncitem.obj
    if backend is None or not inspect.iscoroutinefunction(test):
        yield
        return
    pyfuncitem.obj = _checked_on(str(backend), test)
    try:
        yield
    finally:
        pyfuncitem.obj = test


def _checked_on(backend: str, test: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(test)
    async def on_backend(*args: Any, **kwargs: Any) -> Any:
        running = sniffio.current_async_library()
        assert running == backend, f"a [{backend}] test ran on {running}"
        if backend == "trio":
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise AssertionError("a [trio] test ran with an asyncio loop running")
        return await test(*args, **kwargs)

    return on_backend


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that mounts a filesystem must carry the ``kernel`` marker."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _KERNEL_FIXTURES and item.get_closest_marker("kernel") is None:
            raise pytest.UsageError(
                f"{item.nodeid} uses {sorted(fixtures & _KERNEL_FIXTURES)} without "
                "@pytest.mark.kernel"
            )


@pytest.fixture(autouse=True)
def _no_group_without_kernel_marker(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test without the ``kernel`` marker must not make a fanotify group in this process.

    (``pytest -m "not kernel"`` runs without root: a real group there fails.)
    """
    if request.node.get_closest_marker("kernel") is not None:
        return
    from afanotify import _ffi

    def refuse(flags: int, event_f_flags: int) -> int:
        raise AssertionError(
            f"{request.node.nodeid} calls fanotify_init: mark it @pytest.mark.kernel"
        )

    monkeypatch.setattr(_ffi, "fanotify_init", refuse)


def _umount(path: str) -> None:
    # Lazy unmount: a test that leaked an fd on the mount still cleans up.
    subprocess.run(["umount", "-l", path], check=False, capture_output=True)


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    """A fresh tmpfs mounted on a private directory; unmounted afterwards."""
    if not HAVE_ROOT:
        pytest.fail("kernel tests need root (run the suite as root, as CI does)")
    mnt = tempfile.mkdtemp(prefix="afanotify-tmpfs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "afanotify-test", mnt], check=True)
    try:
        yield Path(mnt)
    finally:
        _umount(mnt)
        os.rmdir(mnt)


@pytest.fixture
def ext4() -> Iterator[Path]:
    """A fresh loop-mounted ext4 filesystem; unmounted and deleted afterwards."""
    if not HAVE_ROOT:
        pytest.fail("kernel tests need root (run the suite as root, as CI does)")
    image, mnt = make_ext4()
    try:
        yield Path(mnt)
    finally:
        _umount(mnt)
        shutil.rmtree(os.path.dirname(image), ignore_errors=True)


@pytest.fixture
def pipe_fds() -> Iterator[list[int]]:
    """Four real descriptors (two pipes); those the test left open are closed afterwards."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    fds = [r1, w1, r2, w2]
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture(params=["tmpfs", "ext4"])
def anyfs(request: pytest.FixtureRequest) -> Path:
    """Each test using this runs twice: on a private tmpfs and on a loop-mounted ext4."""
    path: Path = request.getfixturevalue(request.param)
    return path
