"""Running ``fn`` as pyfanotify 0.3.0 did: in a forked, single-threaded child sharing the group.

pyfanotify's worker is a forked process, and its ``fn`` runs there.  Code
written for it relies on two things a thread cannot give: ``setns(2)`` into
a mount namespace (pyfanotify's ``all_mountpoints`` example, through the
pysetns package) fails with EINVAL in a process with more than one thread,
and ``fn`` may block or change process-wide state (namespaces, credentials,
the working directory) without touching the program that owns the group.

So :class:`FnChild` forks once, when the compat engine starts and before
its thread exists.  The child inherits the group's descriptor: a mark it adds
(``fanot.mark(...)`` from ``fn``, or from a grandchild pysetns forked inside
another namespace) is a mark of the same fanotify group, and its events reach
the parent's engine.  The child only ever runs ``fn``: it never reads the
group, answers an event or closes anything of the parent's.

0.3.0's timing, kept here: ``fn`` runs only while at least one rule is
connected; the first rule makes it run at once, and then every
``fn_timeout`` seconds (0.3.0 ran it on every pass of its loop when
``fn_timeout`` was 0, which is at least once a second; here it is once a
second).  The parent tells the child over a pipe: ``b"1"`` a rule is
connected, ``b"0"`` none is, ``b"q"`` stop.  End of file (the parent died)
and a changed parent pid stop it too, so it never outlives its parent.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

#: Seconds stop() waits for the child to finish its current ``fn`` call.
STOP_GRACE = 5.0

_ACTIVE, _IDLE, _QUIT = b"1", b"0", b"q"


class FnChild:
    """The forked child that calls ``fn(*fn_args)``; the parent's handle on it."""

    def __init__(
        self,
        fn: Callable[..., object],
        fn_args: tuple[Any, ...],
        fn_timeout: float,
        log: logging.Logger,
    ) -> None:
        self._fn = fn
        self._fn_args = fn_args
        self._period = fn_timeout or 1.0
        self._log = log
        self._wfd = -1
        self._active = False
        # connect() and stop() may come from different threads: one writer
        # at a time, and none after the pipe is closed (its number reused).
        self._lock = threading.Lock()
        #: Seconds :meth:`stop` waits for the current ``fn`` call before it kills.
        self.grace = STOP_GRACE
        #: The child's pid once :meth:`start` forked it, else 0.
        self.pid = 0

    def start(self, in_child: Callable[[], None]) -> None:
        """Fork the child; ``in_child()`` runs in it first (to make the caller's locks new).

        :raises OSError: if the pipe or the fork fails
        """
        rfd, wfd = os.pipe()
        # What the parent buffered must not be written a second time by the child.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        try:
            with warnings.catch_warnings():
                # Python 3.12 warns when a multi-threaded process forks.  The
                # child runs only fn, as pyfanotify's forked worker did.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:  # the child: it never returns from here
            code = 1
            try:
                os.close(wfd)
                in_child()
                code = self._serve(rfd, os.getppid())
            except BaseException:
                try:
                    self._log.exception("Fanotify: fn's child process failed")
                except BaseException:
                    pass
            finally:
                os._exit(code)
        os.close(rfd)
        self._wfd = wfd
        self.pid = pid

    def set_active(self, active: bool) -> None:
        """Tell the child whether a rule is connected (fn runs only then)."""
        with self._lock:
            if active == self._active:
                return
            self._active = active
            self._send(_ACTIVE if active else _IDLE)

    def stop(self) -> None:
        """Stop the child and reap it; it has :attr:`grace` seconds to finish ``fn``."""
        with self._lock:
            if self._wfd < 0:
                return
            self._send(_QUIT)
            os.close(self._wfd)
            self._wfd = -1
            pid, self.pid = self.pid, 0
        if pid and not _wait(pid, self.grace):
            self._log.warning(
                "Fanotify: fn did not return within %s s of stop(); its process is killed",
                self.grace,
            )
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait(pid, None)

    def _send(self, what: bytes) -> None:
        if self._wfd >= 0:
            try:
                os.write(self._wfd, what)
            except OSError:  # the child is gone already (BrokenPipe)
                pass

    # -- in the child ----------------------------------------------------------

    def _serve(self, rfd: int, parent: int) -> int:
        # Ctrl-C goes to the whole foreground process group: the parent handles
        # it and stops this child through the pipe.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        poller = select.poll()
        poller.register(rfd, select.POLLIN)
        active = False
        due = 0.0
        while os.getppid() == parent:
            now = time.monotonic()
            if active and now >= due:
                self._call()
                due = time.monotonic() + self._period
                now = time.monotonic()
            wait = min(1.0, max(0.0, due - now)) if active else 1.0
            if not poller.poll(wait * 1000):
                continue
            data = os.read(rfd, 64)
            if not data or _QUIT in data:
                return 0
            last = data[-1:]
            if last == _ACTIVE and not active:
                due = time.monotonic()
            active = last == _ACTIVE
        return 0

    def _call(self) -> None:
        try:
            self._fn(*self._fn_args)
        except Exception:
            self._log.exception("Fanotify: fn raised; it is called again in %s s", self._period)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass


def _wait(pid: int, timeout: float | None) -> bool:
    """Reap ``pid``; False if it is still running after ``timeout`` seconds."""
    if timeout is not None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = -1
        except OSError:  # no pidfd_open (Linux < 5.3): wait without a deadline
            pidfd = -1
            timeout = None
        if pidfd >= 0:
            try:
                ready = select.select([pidfd], [], [], timeout)[0]
            finally:
                os.close(pidfd)
            if not ready:
                return False
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # reaped by someone else (a SIGCHLD handler)
        pass
    return True
