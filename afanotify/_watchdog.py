"""The permission watchdog: a thread that answers for an event loop that stopped answering."""

from __future__ import annotations

import logging
import select
import threading
import time

from . import _ffi
from .events import UNANSWERED
from .flags import Response
from .permission import PermissionTracker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._pipeline import Counters, Pipeline

__all__ = ["Watchdog"]

log = logging.getLogger(__name__)

_ALLOW = int(Response.ALLOW)


class Watchdog:
    """A thread that answers for an event loop that has stopped answering.

    The deadline timer runs on the event loop, so a loop that blocks cannot
    keep it.  The worst case is the agent's own: an ``open()`` of a marked
    file on the loop's thread waits for a verdict only that loop could
    write.  Every ``tick`` seconds this thread looks at two things, without
    touching the loop:

    * events the loop read whose deadline passed more than a tick ago (the
      loop's timer did not fire): it answers them with the default verdict;
    * the group fd: if it stayed readable for ``timeout`` seconds while the
      loop did not read once, the loop is stalled (or nobody started
      reading).  The thread then reads the waiting events itself (through
      the group's :class:`~afanotify._pipeline.Pipeline`, which allows the
      group's own ones) and answers the rest with the default verdict.
      Those events are not delivered: they are counted (``stalled``) and
      logged.

    It holds the group's parts (tracker, pipeline, counters), never the
    group itself, so an unreferenced group is still collected and closed;
    the group stops (and joins) it before closing its fd.
    """

    def __init__(
        self, fd: int, perm: PermissionTracker, pipeline: Pipeline, counters: Counters,
        tick: float,
    ) -> None:
        self.tick = tick
        self._fd = fd
        self._perm = perm
        self._pipeline = pipeline
        self._counters = counters
        self._stop = threading.Event()
        self._buf = bytearray(64 * 1024)
        self._since: float | None = None
        self._last_reads = -1
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._thread = threading.Thread(
            target=self._run, name=f"afanotify-watchdog-fd{fd}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (it never blocks for long)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _wait(self) -> float:
        # While a thread serves the handler (_permthread) no loop timer keeps
        # the deadlines: wake for the oldest one, not a tick after it.
        if not self._perm.threaded:
            return self.tick
        with self._perm.lock:
            head = next(iter(self._perm._pending.values()), None)
        if head is None:
            return self.tick
        return min(self.tick, max(0.001, head.deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stop.wait(self._wait()):
            if self._perm.fd < 0:
                return
            try:
                self._check()
            except Exception:
                log.exception("the permission watchdog failed to check its group")

    def _check(self) -> None:
        perm = self._perm
        now = time.monotonic()
        if len(perm):
            perm.expire(now if perm.threaded else now - self.tick)
        reads = self._counters.reads
        if reads != self._last_reads or not self._readable():
            self._last_reads = reads
            self._since = None
            return
        if self._since is None:
            self._since = now
        elif now - self._since >= perm.timeout:
            self._since = None
            self._rescue()

    def _readable(self) -> bool:
        try:
            return bool(self._poll.poll(0))
        except OSError:
            return False

    def _rescue(self) -> None:
        perm = self._perm
        answered = own = 0
        with perm.lock:
            if self._stop.is_set() or perm.fd < 0:
                return
            for ev in self._pipeline.leftovers(self._fd, self._buf):
                unanswered = ev._owns & UNANSWERED
                if unanswered and self._pipeline.take_own(ev):  # allowed and closed there
                    own += 1
                    answered += 1
                    continue
                if unanswered:
                    object.__setattr__(ev, "_owns", ev._owns & ~UNANSWERED)
                    response = int(perm.default)
                    perm.count_stalled(response)
                    answered += 1
                    try:
                        _ffi.respond(self._fd, ev.fd, response)
                    except OSError as exc:
                        log.error("watchdog could not answer fd=%d: %s", ev.fd, exc)
                ev.close()
        if answered:
            log.error(
                "the event loop did not read its fanotify group for %.3gs: the watchdog "
                "answered %d permission event(s) (%d of this process allowed, the rest %s)",
                perm.timeout, answered, own, perm.default.name,
            )
