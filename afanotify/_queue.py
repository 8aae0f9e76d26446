"""A bounded event queue with an explicit overflow policy.

Used by the group's own iterator and by every client.  It is loop-bound but
thread-agnostic in the sense that all calls happen on the loop's thread.
A waiter is an asyncio future on an asyncio loop, and an ``anyio.Event``
anywhere else (trio).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple, Union

from .events import FanotifyData
from .exceptions import ClosedResourceError, WouldBlock

if TYPE_CHECKING:
    import asyncio

__all__ = ["OverflowPolicy", "QueueStatistics", "EventQueue", "POLICIES"]

OverflowPolicy = Literal["block", "drop_oldest", "drop_newest"]
POLICIES: tuple[str, ...] = ("block", "drop_oldest", "drop_newest")


class QueueStatistics(NamedTuple):
    """A snapshot of one queue's counters."""

    #: Events waiting now.
    queued: int
    #: The bound.
    maxsize: int
    #: Events accepted since the queue was made.
    delivered: int
    #: Events dropped by the overflow policy since the queue was made.
    dropped: int
    #: The most events ever waiting at once.
    high_water: int
    #: How many times a "block" queue made the group stop reading: one stall
    #: lasts until the consumer has drained the queue to half its bound.
    blocked: int


class _EventWaiter:
    """A waiter outside asyncio: an ``anyio.Event``, seen as the future the queue expects."""

    __slots__ = ("event", "gone")

    def __init__(self) -> None:
        import anyio  # only outside asyncio: an asyncio program never imports it

        self.event = anyio.Event()
        self.gone = False  # the waiting task left (cancelled) before it was woken

    def done(self) -> bool:
        return self.gone or self.event.is_set()

    def cancelled(self) -> bool:
        return self.gone and not self.event.is_set()

    def set_result(self, _value: None) -> None:
        self.event.set()


_Waiter = Union["asyncio.Future[None]", _EventWaiter]


class EventQueue:
    """Bounded FIFO of events with ``block``, ``drop_oldest`` or ``drop_newest``.

    ``put`` never blocks.  Under ``block`` it refuses a full queue (returns
    False) and the producer must stop reading until ``on_space`` is called.
    Under the drop policies, the dropped event is handed to ``on_drop`` (which
    must close it and answer it if it is a permission event) and counted.
    """

    def __init__(
        self,
        maxsize: int,
        policy: str = "block",
        *,
        on_drop: Callable[[FanotifyData], None] | None = None,
        on_space: Callable[[], None] | None = None,
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        if policy not in POLICIES:
            raise ValueError(
                f"overflow policy {policy!r} is not one of {', '.join(POLICIES)}"
            )
        self.maxsize = maxsize
        self.policy = policy
        self._items: deque[FanotifyData] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._on_drop = on_drop
        self._on_space = on_space
        self._closed = False
        self._delivered = 0
        self._dropped = 0
        self._high = 0
        self._blocked = 0
        self._full_signalled = False
        #: Inside one stall (see QueueStatistics.blocked).
        self._stalled = False

    # -- producer side ---------------------------------------------------

    def put(self, event: FanotifyData) -> bool:
        """Offer one event; False only for a full ``block`` queue (event not taken)."""
        items = self._items
        if len(items) >= self.maxsize:
            if self.policy == "block":
                if not self._full_signalled:
                    self._full_signalled = True
                    self._stall()
                return False
            self._dropped += 1
            if self.policy == "drop_newest":
                self._drop(event)
                return True
            self._drop(items.popleft())
        items.append(event)
        self._delivered += 1
        if len(items) > self._high:
            self._high = len(items)
        self._wake_one()
        return True

    def put_many(self, events: list[FanotifyData]) -> int:
        """Offer events in order; returns how many were taken (stops at a full block queue)."""
        if self.policy == "block":
            # One step for the batch, with the same outcome as put() per event.
            items = self._items
            n = min(self.maxsize - len(items), len(events))
            if n > 0:
                items.extend(events if n == len(events) else events[:n])
                self._delivered += n
                if len(items) > self._high:
                    self._high = len(items)
                for _ in range(min(n, len(self._waiters))):
                    self._wake_one()
            else:
                n = 0
            if n < len(events) and not self._full_signalled:
                self._full_signalled = True
                self._stall()
            return n
        n = 0
        for ev in events:
            if not self.put(ev):
                break
            n += 1
        return n

    @property
    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def _stall(self) -> None:
        if not self._stalled:
            self._stalled = True
            self._blocked += 1

    def _drop(self, event: FanotifyData) -> None:
        if self._on_drop is not None:
            self._on_drop(event)
            return
        # Answer at once, and count it as a drop (close() would count a release).
        event._release("dropped")

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    # -- consumer side ---------------------------------------------------

    def get_nowait(self) -> FanotifyData:
        """The oldest event.

        :raises WouldBlock: if none is waiting
        :raises ClosedResourceError: if the queue is closed and empty
        """
        if self._items:
            ev = self._items.popleft()
            if self._stalled and len(self._items) <= self.maxsize // 2:
                self._stalled = False
            if self._full_signalled and len(self._items) < self.maxsize:
                self._full_signalled = False
                if self._on_space is not None:
                    self._on_space()
            return ev
        if self._closed:
            raise ClosedResourceError("the queue is closed")
        raise WouldBlock

    async def get(self) -> FanotifyData:
        """The oldest event, waiting for one if needed.

        :raises ClosedResourceError: if the queue is closed and empty
        """
        while True:
            if self._items or self._closed:
                return self.get_nowait()
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                await self._wait_elsewhere()
                continue
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                # A waiter cancelled after being woken passes the wake-up on.
                if fut.done() and not fut.cancelled() and self._items:
                    self._wake_one()
                raise

    async def _wait_elsewhere(self) -> None:
        waiter = _EventWaiter()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            waiter.gone = True
            # As in get(): a wake-up that came before the cancellation is passed on.
            if waiter.event.is_set() and self._items:
                self._wake_one()
            raise

    def __len__(self) -> int:
        return len(self._items)

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            len(self._items), self.maxsize, self._delivered, self._dropped, self._high,
            self._blocked,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> list[FanotifyData]:
        """Close: wake every waiter; return the events still queued (caller releases them)."""
        self._closed = True
        left = list(self._items)
        self._items.clear()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        return left
