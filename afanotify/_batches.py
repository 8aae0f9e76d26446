"""``Fanotify.batches()``: the events of each read from the kernel, as one list.

For consumers that count, index or forward events: a batch costs one step
of the consumer's loop instead of one per event, and the group's own queue
is bypassed (the reader hands each decoded read to the iterator directly).

Descriptors: each event of a batch owns its ``fd`` and ``pidfd`` until the
consumer asks for the next batch (or leaves the loop, or closes the group);
then whatever was not detached (``event.detach_fd()``) is closed, and a
permission event nobody answered gets the default verdict.  Leaving the loop
with ``break`` releases the last batch only once the iterator is closed:
use ``async with fan.batches() as batches:`` to make that immediate.

Reads: in a FID group without pidfds, a full read's successor is read by
the group's read-ahead thread while this one is built (:mod:`afanotify._threaded`);
the reads, and so the batches, are the ones the loop would make itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

from .events import UNANSWERED, FanotifyData
from .exceptions import ClosedResourceError
from .flags import InitFlag

if TYPE_CHECKING:
    import asyncio

    from .group import Fanotify

__all__ = ["BatchSink", "Batches", "batches"]

#: Batches read ahead of the consumer before the reader pauses.
READ_AHEAD = 2


class BatchSink:
    """Where the group delivers its reads while a :class:`Batches` iterator runs."""

    __slots__ = ("ready", "last", "waiter")

    def __init__(self) -> None:
        self.ready: deque[list[FanotifyData]] = deque()
        #: The batch the consumer holds (released when it asks for the next).
        self.last: list[FanotifyData] = []
        self.waiter: asyncio.Future[None] | None = None

    def put(self, events: list[FanotifyData]) -> bool:
        """Take one read's events; True when the reader should pause."""
        self.ready.append(events)
        self.wake()
        return len(self.ready) >= READ_AHEAD

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def close(self) -> list[FanotifyData]:
        """Everything it holds, for the group to release; wakes the consumer."""
        left = self.last
        self.last = []
        for batch in self.ready:
            left += batch
        self.ready.clear()
        self.wake()
        return left


def _release(events: list[FanotifyData]) -> None:
    for ev in events:
        if ev._owns:
            ev.close()


class Batches(AsyncIterator[list[FanotifyData]]):
    """The iterator :meth:`Fanotify.batches` returns (see the module docstring)."""

    def __init__(self, group: Fanotify) -> None:
        self._g = group
        self._sink: BatchSink | None = None
        # A FID notification group without pidfds gives events that own
        # nothing: no release pass over each batch.
        self._owning = not (
            group.fid_mode and not group._perm_class
            and not group.flags & InitFlag.REPORT_PIDFD
        )  # fmt: skip

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> list[FanotifyData]:
        g = self._g
        sink = self._sink
        if sink is None:
            if g._batch_sink is not None:
                raise RuntimeError("this group already has a batches() iterator running")
            sink = self._sink = g._batch_sink = BatchSink()
            # What the group's own queue already holds comes first.
            first: list[FanotifyData] = []
            while len(g._queue):
                first.append(g._queue.get_nowait())
            first += g._held
            g._held = []
            if first:
                sink.ready.append(first)
        else:
            last, sink.last = sink.last, []
            if self._owning:
                _release(last)
        try:
            g._ensure_reader()
        except ClosedResourceError:
            raise StopAsyncIteration from None
        g._consuming = True
        while not sink.ready:
            if g._closed:
                raise StopAsyncIteration
            if g._error is not None:
                raise ClosedResourceError(f"the group failed: {g._error}") from g._error
            import asyncio

            fut = sink.waiter = asyncio.get_running_loop().create_future()
            try:
                await fut
            finally:
                sink.waiter = None
        batch = sink.ready.popleft()
        sink.last = batch
        if g._perm_class:  # only such a group has permission events
            for ev in batch:
                if ev._owns & UNANSWERED:
                    g._perm.received_by(ev)
        g._counters.events_delivered += len(batch)
        if g._reader.paused and len(sink.ready) < READ_AHEAD:
            g._resume()
        return batch

    async def aclose(self) -> None:
        """Release the last batch and stop; batches read but not taken go back to the group."""
        self.close()

    def close(self) -> None:
        """As :meth:`aclose`, for synchronous code."""
        sink, self._sink = self._sink, None
        g = self._g
        if sink is None or g._batch_sink is not sink:
            return
        g._batch_sink = None
        last, sink.last = sink.last, []
        _release(last)
        rest = [ev for batch in sink.ready for ev in batch]
        sink.ready.clear()
        if rest and not g._closed:
            g._deliver(rest)
        else:
            _release(rest)
        if not g._closed and g._reader.paused:
            g._resume()

    async def __aenter__(self) -> Batches:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def batches(group: Fanotify) -> Batches:
    """``async for batch in fan.batches():`` the events of each read, as one list.

    Each event keeps its descriptors until the next batch is asked for (see
    :mod:`afanotify._batches`); detach what you keep.  One iterator per
    group at a time; while it runs, ``receive()`` and ``async for event in
    fan`` get nothing (with clients connected, the clients get the events).

    :raises RuntimeError: if the group already has a running ``batches()``
    :raises ClosedResourceError: if reading failed (the group's error chained)
    """
    return Batches(group)
