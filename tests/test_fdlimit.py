"""The descriptor reserve and the fault counts (afanotify/_fdlimit.py), on a pipe."""

from __future__ import annotations

import errno
import logging
import os
import resource
from collections.abc import Iterator

import pytest

from afanotify._fdlimit import RESERVE, FdGuard
from afanotify._pipeline import Counters
from afanotify.flags import Response
from afanotify.permission import PermissionTracker


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    yield r, w
    os.close(r)
    os.close(w)


def _guard(fd: int, *, perm_class: bool = False, fd_error: bool = True) -> tuple[
    FdGuard, Counters, PermissionTracker
]:
    counters = Counters()
    perm = PermissionTracker(0, 5.0, Response.ALLOW)
    guard = FdGuard(fd, fd_mode=True, perm_class=perm_class, fd_error=fd_error,
                    counters=counters, perm=perm)
    return guard, counters, perm


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_the_reserve_is_free_during_the_read_and_held_after(pipe: tuple[int, int]) -> None:
    r, w = pipe
    before = _open_fds()
    guard, _, _ = _guard(r)
    held = _open_fds() - before
    assert len(held) == RESERVE
    during: set[int] = set()
    real_readv = os.readv

    def readv(fd: int, bufs: object) -> int:
        during.update(_open_fds())
        return real_readv(fd, bufs)  # type: ignore[arg-type]

    os.write(w, b"x" * 10)
    pytest.MonkeyPatch().setattr(os, "readv", readv)
    try:
        assert guard.read(r, memoryview(bytearray(64))) == 10
    finally:
        os.readv = real_readv
    assert not held & during  # released for the read ...
    assert len(_open_fds() - before) == RESERVE  # ... and taken again
    guard.close()
    assert _open_fds() == before


def test_free_fds_counts_exactly_near_the_limit_without_fd_error(
    pipe: tuple[int, int]
) -> None:
    guard, _, _ = _guard(pipe[0], fd_error=False)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 512  # near: a read could run out (far from it, the estimate does)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, limits[1]))
    try:
        # A descriptor parked high, which the estimate cannot see, is counted.
        parked = os.dup2(pipe[0], soft - 1)
        try:
            # The reserve is released for the read, so it counts as free (the
            # listing of /proc/self/fd holds one fd of its own while it runs).
            assert guard.free_fds() == soft - (len(_open_fds()) - 1) + RESERVE
        finally:
            os.close(parked)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        guard.close()


@pytest.mark.parametrize(
    ("code", "retry"),
    [(errno.EROFS, True), (errno.EMFILE, True), (errno.ENFILE, True), (errno.EINTR, True),
     (errno.EACCES, True), (errno.EBADF, False), (errno.EINVAL, False), (errno.EFAULT, False)],
)
def test_read_failed_says_whether_to_go_on_and_counts(
    pipe: tuple[int, int], code: int, retry: bool
) -> None:
    guard, counters, _ = _guard(pipe[0])
    assert guard.read_failed(OSError(code, os.strerror(code))) is retry
    assert counters.read_errors == int(retry)
    lost = retry and code != errno.EINTR  # EINTR took nothing from the queue
    assert counters.lost == int(lost)
    guard.close()


def test_a_permission_group_counts_kernel_denials_and_logs_once(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    guard, counters, perm = _guard(pipe[0], perm_class=True)
    with caplog.at_level(logging.WARNING, logger="afanotify"):
        for _ in range(5):
            guard.read_failed(OSError(errno.EMFILE, "Too many open files"))
        guard.fd_error(errno.EMFILE, True)
    st = perm.statistics()
    assert st.denied_by_kernel == st.denied == 6
    assert counters.lost == 5 and counters.fd_errors == 1
    assert caplog.text.count("DENIED the opens itself") == 1
    assert "ulimit -n" in caplog.text
    guard.close()
