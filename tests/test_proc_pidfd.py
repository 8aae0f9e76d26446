"""process_info's pidfd check: /proc is trusted only while the pidfd names the pid."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import CHILD_CWD, child_env

from afanotify._proc import pidfd_pid, process_info


def test_live_process_is_read_and_verified() -> None:
    child = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE,
                             env=child_env(), cwd=CHILD_CWD)
    pidfd = os.pidfd_open(child.pid)
    try:
        assert pidfd_pid(pidfd) == child.pid
        exe, cwd = process_info(child.pid, pidfd, pidfd_reported=True)
        assert exe == os.path.realpath(sys.executable)
        assert cwd == CHILD_CWD
    finally:
        child.communicate(b"\n")
        os.close(pidfd)


def test_reaped_process_gives_none_even_if_proc_entry_exists() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"], env=child_env(), cwd=CHILD_CWD)
    pidfd = os.pidfd_open(child.pid)
    try:
        child.wait()  # reaped: its pid is free for reuse from now on
        assert pidfd_pid(pidfd) is None
        # Whatever /proc/<pid> shows now (maybe another process), it is not used.
        assert process_info(child.pid, pidfd, pidfd_reported=True) == (None, None)
        # Our own live pid with a pidfd of another (dead) process: mismatch, None.
        assert process_info(os.getpid(), pidfd) == (None, None)
    finally:
        os.close(pidfd)


def test_no_pidfd_from_the_kernel_means_process_gone() -> None:
    # FAN_NOPIDFD (-1) and FAN_EPIDFD (-2) in a REPORT_PIDFD group: do not read /proc.
    assert process_info(os.getpid(), -1, pidfd_reported=True) == (None, None)
    assert process_info(os.getpid(), -2, pidfd_reported=True) == (None, None)
    # Without REPORT_PIDFD there is nothing to check against: /proc is read.
    assert process_info(os.getpid(), -1)[0] == os.readlink("/proc/self/exe")
