"""``afanotify watch``'s event loop: readiness, timers and signals, without asyncio.

``watch`` waits on two descriptors (the drain thread's eventfd, or the group
itself, and a pipe standing for a slow reader of the output), runs two kinds
of timer (``--stats-interval`` and the rounds' pacing) and takes four
signals.  That is all it used of asyncio, whose import (with ssl, socket,
subprocess and concurrent.futures) was a third of an idle watch's CPU.  The
methods have asyncio's names and meanings, so the command's callbacks read
as they did (and :class:`afanotify._cli_sink.Sink` runs on either loop):

- a callback that became ready runs in the next round, in order, after the
  ones already waiting; ``call_soon`` appends to the same list;
- a signal is caught by a no-op handler while ``signal.set_wakeup_fd``
  writes its number into a pipe the selector watches (a handler that ran
  inside ``select`` would otherwise wait for the next wakeup: Python retries
  an interrupted ``select``), and its callback then runs in the loop's own
  thread, between rounds, as ``loop.add_signal_handler``'s do;
- :meth:`WatchLoop.run` returns once :meth:`WatchLoop.stop` was called (the
  round that called it finishes first) or its timeout passed.
"""

from __future__ import annotations

import heapq
import logging
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Handle", "Watch", "WatchLoop", "run_watch"]

log = logging.getLogger(__name__)


#: The longest wait of one round, in seconds (asyncio's cap too): a longer
#: --timeout or --stats-interval is waited in rounds of this.
_MAX_WAIT = 86400.0


class Watch(Protocol):
    """What :func:`run_watch` runs (``afanotify._cli_watch._Watch``)."""

    def start(self, loop: WatchLoop) -> None: ...

    def read_queued(self) -> None: ...

    def finish(self) -> None: ...


class Handle:
    """A callback the loop will run unless cancelled (what ``call_soon``/``call_later`` return)."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Handle) -> bool:
        return self.when < other.when

    def _run(self) -> None:
        try:
            self.callback(*self.args)
        except Exception:
            # As asyncio's loop: said, and the loop goes on.
            log.error("Exception in callback %r", self.callback, exc_info=True)


class WatchLoop:
    """A selector loop with asyncio's ``add_reader``/``call_later``/``add_signal_handler``."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        #: fd -> [reader, writer] (either may be None)
        self._io: dict[int, list[Handle | None]] = {}
        self._ready: deque[Handle] = deque()
        self._timers: list[Handle] = []
        self._signals: dict[int, Handle] = {}
        self._stopping = False
        self._closed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._old_wakeup: int | None = None

    # -- time and callbacks --------------------------------------------------

    def time(self) -> float:
        return time.monotonic()

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Handle:
        h = Handle(0.0, callback, args)
        self._ready.append(h)
        return h

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Handle:
        h = Handle(time.monotonic() + delay, callback, args)
        heapq.heappush(self._timers, h)
        return h

    def stop(self) -> None:
        """Return from :meth:`run` once the callbacks of this round have run."""
        self._stopping = True

    # -- descriptors ---------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        self._set(fd, 0, Handle(0.0, callback, args))

    def remove_reader(self, fd: int) -> bool:
        return self._set(fd, 0, None)

    def add_writer(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        self._set(fd, 1, Handle(0.0, callback, args))

    def remove_writer(self, fd: int) -> bool:
        return self._set(fd, 1, None)

    def _set(self, fd: int, which: int, handle: Handle | None) -> bool:
        pair = self._io.get(fd)
        had = pair is not None and pair[which] is not None
        if pair is None:
            if handle is None:
                return False
            pair = [None, None]
        old_mask = _mask(pair)
        pair = list(pair)
        old = pair[which]
        if old is not None:
            old.cancel()  # a round that found it ready does not run it now
        pair[which] = handle
        mask = _mask(pair)
        if not old_mask:
            self._selector.register(fd, mask)
        elif mask:
            self._selector.modify(fd, mask)
        else:
            self._selector.unregister(fd)
        if mask:
            self._io[fd] = pair
        else:
            self._io.pop(fd, None)
        return had

    # -- signals -------------------------------------------------------------

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        if self._old_wakeup is None:
            self._old_wakeup = signal.set_wakeup_fd(self._wake_w)
        self._signals[sig] = Handle(0.0, callback, args)
        signal.signal(sig, _noop)

    def remove_signal_handler(self, sig: int, restore: Any = None) -> bool:
        """Stop handling ``sig``; its handler becomes ``restore`` (None: the default)."""
        if self._signals.pop(sig, None) is None:
            return False
        if restore is None:
            restore = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, restore)
        return True

    def _read_signals(self) -> None:
        while True:
            try:
                data = os.read(self._wake_r, 4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                h = self._signals.get(signum)
                if h is not None:
                    self._ready.append(Handle(0.0, h.callback, h.args))

    # -- running -------------------------------------------------------------

    def run(self, timeout: float | None = None) -> bool:
        """Run rounds until :meth:`stop`; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ready = self._ready
        timers = self._timers
        while True:
            if self._stopping:
                # Also a stop asked for before run(): by a first read that
                # reached --count, found the output closed, or failed.
                self._stopping = False
                return True
            if ready:
                wait: float | None = 0.0
            else:
                until = timers[0].when if timers else deadline
                if deadline is not None and until is not None and deadline < until:
                    until = deadline
                wait = None if until is None else max(0.0, until - time.monotonic())
                if wait is not None and wait > _MAX_WAIT:
                    wait = _MAX_WAIT  # epoll takes at most INT_MAX milliseconds
            for key, mask in self._selector.select(wait):
                fd = key.fd
                if fd == self._wake_r:
                    self._read_signals()
                    continue
                pair = self._io.get(fd)
                if pair is None:
                    continue
                if mask & selectors.EVENT_READ and pair[0] is not None:
                    ready.append(pair[0])
                if mask & selectors.EVENT_WRITE and pair[1] is not None:
                    ready.append(pair[1])
            now = time.monotonic()
            while timers and timers[0].when <= now:
                h = heapq.heappop(timers)
                if not h.cancelled:
                    ready.append(h)
            for _ in range(len(ready)):
                h = ready.popleft()
                if not h.cancelled:
                    h._run()
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sig in list(self._signals):
            self.remove_signal_handler(sig)
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self._old_wakeup = None
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _mask(pair: list[Handle | None]) -> int:
    return (selectors.EVENT_READ if pair[0] is not None else 0) | (
        selectors.EVENT_WRITE if pair[1] is not None else 0
    )


def _noop(signum: int, frame: object) -> None:
    """The handler while the loop has the signal: its number went into the wakeup pipe."""


def run_watch(watch: Watch, timeout: float | None, announce: Callable[[], None]) -> None:
    """Run ``watch`` until it ends, the timeout passes, or SIGINT/SIGTERM.

    As :func:`afanotify._cli_run._run_until_stopped` runs ``guard`` (and
    ran ``watch``, under ``asyncio.run``): the handlers are in place before
    ``announce()``, so a signal sent after the announcement always gets a
    clean stop; they are taken down (and the handlers from before put back)
    before what was read is written.  A Ctrl-C while that is written lets
    it finish and then ends the command as interrupted, a second one at
    once, as asyncio.run's own SIGINT handler did.
    """
    loop = WatchLoop()
    try:
        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.getsignal(sig) for sig in sigs}
        for sig in sigs:
            loop.add_signal_handler(sig, loop.stop)
        started = False
        try:
            announce()
            watch.start(loop)
            started = True
            watch.read_queued()
            loop.run(timeout)
        finally:
            # A Ctrl-C while what was read is written is caught (below) from
            # the moment the loop lets go of SIGINT: no default handler in
            # between to raise out of here before that is written.
            catch = started and previous[signal.SIGINT] is signal.default_int_handler
            interrupted: list[int] = []
            for sig in sigs:
                if catch and sig == signal.SIGINT:
                    loop.remove_signal_handler(sig, _catching(interrupted))
                else:
                    loop.remove_signal_handler(sig, previous[sig] or signal.SIG_DFL)
            if started:
                _finish_interruptibly(watch, interrupted if catch else None)
    finally:
        loop.close()


def _catching(interrupted: list[int]) -> Callable[[int, object], None]:
    """A SIGINT handler that notes the first Ctrl-C and raises on the second."""

    def on_sigint(signum: int, frame: object) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(signum)

    return on_sigint


def _finish_interruptibly(watch: Watch, interrupted: list[int] | None) -> None:
    """``watch.finish()``; then, if a Ctrl-C came meanwhile (``interrupted``), KeyboardInterrupt."""
    if interrupted is None:
        watch.finish()  # SIGINT is ignored, or someone else's
        return
    try:
        watch.finish()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        raise KeyboardInterrupt
