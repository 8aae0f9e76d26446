"""afanotify.compat's engine: the thread that reads the native group and feeds each rule's sink.

Each connected rule is a :class:`_Link`: a native :class:`afanotify.FanotifyClient`
(which does the matching and fan-out), the mailbox or datagram sink it feeds,
and the pump task that moves events from one to the other on the engine's own
event loop.  :class:`afanotify.compat.Fanotify` owns the group, the marks and
the thread; this module is what runs on that thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ._compat_ancestry import _Ancestry
from ._compat_data import FanotifyData, from_native
from ._compat_mailbox import _DgramSink, _Mailbox
from .client import FanotifyClient as _NativeClient
from .events import FanotifyData as _NativeData
from .exceptions import ClosedResourceError, WouldBlock
from .group import Fanotify as _Group
from .rules import FanoRule

#: Events taken from the group per dispatch round.
_BATCH = 512

_ASYNC_SIGNALS = {
    getattr(signal, name) for name in (
        "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD",
        "SIGWINCH",
    ) if hasattr(signal, name)
}

#: Bound of the native client queue behind each mailbox.  Small on purpose:
#: the mailbox is the bound a user sees; this one only smooths the hand-off.
_NATIVE_MAXSIZE = 1024


class _Link:
    """One connected rule: its native client, the mailbox (or socket) it feeds, the pump task."""

    __slots__ = ("rule", "box", "native", "task", "space")

    def __init__(self, rule: FanoRule, box: _Mailbox | _DgramSink) -> None:
        self.rule = rule
        self.box = box
        self.native: _NativeClient | None = None
        self.task: asyncio.Task[None] | None = None
        self.space: asyncio.Event | None = None


class _Engine:
    """The rules connected to one compat ``Fanotify``, and the loop that serves them.

    :meth:`run` is the thread's target.  Until it runs, rules are connected
    directly (their pumps start with the loop); once it runs, the caller goes
    through the loop (``Fanotify._in_loop``), the only thread that touches the
    group's dispatcher then.
    """

    def __init__(
        self,
        group: _Group,
        log: logging.Logger,
        mark_lock: threading.Lock,
        fn: Callable[..., object] | None,
        fn_args: tuple[Any, ...],
        fn_timeout: float,
    ) -> None:
        self._group = group
        self._log = log
        self._mark_lock = mark_lock
        self._fn = fn
        self._fn_args = fn_args
        self._fn_timeout = fn_timeout
        self._links_lock = threading.Lock()
        self._links: dict[str | bytes, _Link] = {}
        self._boxes: dict[str | bytes, _Mailbox] = {}
        self._ancestry = _Ancestry(os.getpid())
        #: The engine thread's event loop, once :meth:`run` made it.
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        #: Events caused by descendants of this process, not delivered.
        self.descendant_events = 0
        #: Times a pump waited for a full client mailbox (backpressure).
        self.waits = 0
        #: Events for client-less rules whose socket address nobody had bound.
        self.datagrams_dropped = 0

    # -- rules (called by Fanotify) ------------------------------------------

    def attach(self, name: str | bytes, box: _Mailbox) -> None:
        """Make ``box`` the mailbox of the rule called ``name`` once it connects."""
        with self._links_lock:
            self._boxes[name] = box

    def detach(self, name: str | bytes) -> None:
        with self._links_lock:
            self._boxes.pop(name, None)

    def rule_count(self) -> int:
        """How many rules are connected (clients' and client-less ones)."""
        with self._links_lock:
            return len(self._links)

    def box_for(self, rule: FanoRule) -> _Mailbox | _DgramSink:
        """The client's mailbox for ``rule``, or a datagram sink when no client made it."""
        with self._links_lock:
            box: _Mailbox | _DgramSink | None = self._boxes.get(rule.name)
        if box is None:
            box = _DgramSink(rule.name, self._log, self._count_datagram_drop)
        return box

    def connect_now(self, rule: FanoRule, box: _Mailbox | _DgramSink) -> None:
        self.disconnect_now(rule.name)
        if self._group.closed:
            if isinstance(box, _DgramSink):
                box.close()
            return
        link = _Link(rule, box)
        link.native = _NativeClient(self._group, rule, maxsize=_NATIVE_MAXSIZE)
        with self._links_lock:
            self._links[rule.name] = link
        if self._stop_requested is not None and not self._stopping:
            self._start_pump(link)

    def disconnect_now(self, name: str | bytes) -> None:
        with self._links_lock:
            link = self._links.pop(name, None)
        if link is None:
            return
        if link.native is not None:
            link.native.close()
        if link.space is not None:
            link.space.set()
        if link.task is None and isinstance(link.box, _DgramSink):
            link.box.close()  # no pump to close it

    def release_idle(self) -> None:
        """After the group closed: drop the links no pump serves, wake every mailbox's reader."""
        with self._links_lock:
            idle = [lk for lk in self._links.values() if lk.task is None]
            for lk in idle:
                del self._links[lk.rule.name]
            boxes = list(self._boxes.values())
        for lk in idle:
            if isinstance(lk.box, _DgramSink):
                lk.box.close()
        for box in boxes:
            box.wake()

    def _count_datagram_drop(self) -> None:
        self.datagrams_dropped += 1

    # -- the engine thread ---------------------------------------------------

    def run(self, ready: threading.Event) -> None:
        """The thread's body: serve the rules until :meth:`request_stop`; sets ``ready``."""
        # Leave asynchronous signals to the main thread, where Python runs the
        # handlers: a Ctrl-C must interrupt the legacy poll() loop there.
        signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop, ready))
        except BaseException:
            self._log.exception("Fanotify: the engine failed")
        finally:
            ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        self._stop_requested = stop = asyncio.Event()
        self.loop = loop
        with self._links_lock:
            links = list(self._links.values())
        for link in links:
            self._start_pump(link)
        timer = loop.create_task(self._timer()) if self._fn is not None else None
        ready.set()
        try:
            await stop.wait()
        finally:
            self._stopping = True
            # Closing the group closes every native client, which ends the
            # pumps; it must happen on this thread, whose loop reads the group.
            with self._mark_lock:
                self._group.close()
            with self._links_lock:
                links = list(self._links.values())
                self._links.clear()
            tasks = [t for t in (timer, *(lk.task for lk in links)) if t is not None]
            for lk in links:
                if lk.space is not None:
                    lk.space.set()
            if timer is not None:
                timer.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def request_stop(self) -> None:
        """End :meth:`run`; call on the engine's loop (``call_soon_threadsafe``)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    def _start_pump(self, link: _Link) -> None:
        link.space = asyncio.Event()
        link.task = asyncio.get_running_loop().create_task(self._pump(link))

    async def _timer(self) -> None:
        fn = self._fn
        assert fn is not None
        period = self._fn_timeout or 1.0
        while True:
            try:
                fn(*self._fn_args)
            except Exception:
                self._log.exception("Fanotify: fn raised; it is called again in %s s", period)
            await asyncio.sleep(period)

    async def _pump(self, link: _Link) -> None:
        """Move one native client's events into its mailbox, minus our descendants'."""
        native, box, space = link.native, link.box, link.space
        assert native is not None and space is not None
        try:
            if isinstance(box, _DgramSink):
                await self._pump_events(native, None, box, space)
            else:
                await self._pump_events(native, box, None, space)
        finally:
            if isinstance(box, _DgramSink):
                box.close()

    async def _pump_events(
        self,
        native: _NativeClient,
        box: _Mailbox | None,
        sink: _DgramSink | None,
        space: asyncio.Event,
    ) -> None:
        ancestry = self._ancestry
        notify = self._notifier(space)
        while not self._stopping:
            try:
                ev = await native.get()
            except ClosedResourceError:
                return
            batch = [ev]
            while len(batch) < _BATCH:
                try:
                    batch.append(native.get_nowait())
                except (WouldBlock, ClosedResourceError):
                    break
            now = time.monotonic()
            kept: list[_NativeData] = []
            for ev in batch:
                pid = ev.pid
                # The group already skipped this process's own events.
                if pid > 0 and ancestry.is_ours(pid, now):
                    self.descendant_events += 1
                    ev.close()
                    continue
                kept.append(ev)
            if sink is not None:
                # Encoded and released at once: the native events will do.
                await sink.send_all(kept, lambda: self._stopping or native.closed)
                continue
            assert box is not None
            # The client gets objects of its own (it may mutate them), which
            # take over the native events' descriptors.
            out: list[FanotifyData] = [from_native(ev) for ev in kept]
            while out:
                space.clear()
                n = box.put_many(out, notify)
                if n == len(out):
                    break
                # Backpressure: the mailbox is full.  While this pump waits,
                # the native client's queue fills and the group stops reading;
                # the kernel keeps the backlog.
                out = out[n:]
                self.waits += 1
                await space.wait()
                if self._stopping or native.closed:
                    for ev in out:
                        ev.close()
                    return

    def _notifier(self, space: asyncio.Event) -> Callable[[], None]:
        loop = asyncio.get_running_loop()

        def notify() -> None:
            # Called on a client's thread when it took events from a full mailbox.
            try:
                loop.call_soon_threadsafe(space.set)
            except RuntimeError:  # the loop is closed: the engine is gone
                pass

        return notify
