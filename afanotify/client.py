"""``FanotifyClient``: one consumer of a shared group, with its own bounded queue.

Many consumers can share one fanotify group.  Each connects a
:class:`~afanotify.rules.FanoRule` and gets a client: a bounded queue fed
with the events its rule matches, read with ``async for event in client``
or ``await client.get()``.

How an event is dispatched (``_dispatch.Dispatcher``, called from the
group's ``_deliver``):

1. Cheap criteria first.  The clients whose ``ev_types`` and ``pids``
   accept an event depend only on ``(mask, pid)``, so that tuple is looked up
   in a cache rebuilt when clients come and go; an event whose mask no rule
   wants is rejected with one AND against the combined mask.
2. ``exe``/``cwd`` are read from /proc only if a candidate's rule needs them
   (and the group did not already read them: ``proc_info=True``).
3. Patterns, then predicates.  When no connected rule has an ``async``
   predicate this is a plain loop in the reader callback: no task, no future.
   Otherwise the group stops reading while one task awaits the predicates
   batch by batch, so events stay in order and the kernel queue holds the
   rest.
4. Fan-out.  Each target gets the event in its queue.  Descriptors: the
   event's ``fd``/``pidfd`` go with the *primary* target (the group's own
   queue if it is consuming, else for a permission event the first matching
   client in connection order, else the first ``pass_fd`` client).  Every
   other ``pass_fd`` client gets a copy with its own ``os.dup`` descriptors;
   every other client gets a copy with ``fd=-1``/``pidfd=-1``.  If no target
   took the original, the library closes its descriptors at once.  A
   permission event keeps its fd with the primary even without ``pass_fd``,
   because the kernel matches a verdict by that fd number; copies cannot be
   answered.

The group's own queue: when no client is connected the group behaves as
before.  While clients are connected, the group's own queue receives events
only once someone has received from the group (``receive()``,
``receive_nowait()``, ``async for event in fan``); from then on it is one
more match-all consumer with the ``block`` policy.  When the last client
disconnects and nobody ever received from the group, it stops reading, so
the kernel keeps the events for whoever reads next.

Overflow policies (per client): ``block`` keeps the event (in order) in the
client's hold list and makes the group stop reading until the client has
room, so nothing is lost: the kernel's queue holds the backlog.
``drop_oldest`` and ``drop_newest`` discard an event, answering a dropped
permission event at once with the group's default verdict.  Drops are
counted in :attr:`FanotifyClient.stats`, and the consumer's next ``get()``
returns a :class:`ClientOverflow` marker (``ev_types`` = ``Event.Q_OVERFLOW``,
``dropped`` = how many were lost since the previous marker) before the next
event.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ._dispatch import Dispatcher
from ._dispatch import DispatchStatistics as DispatchStatistics
from ._queue import POLICIES, EventQueue
from ._resource import AsyncClosingContext
from .events import UNANSWERED, FanotifyData
from .exceptions import ClosedResourceError
from .flags import Event
from .rules import FanoRule

if TYPE_CHECKING:
    from .group import Fanotify

__all__ = ["ClientOverflow", "ClientStatistics", "DispatchStatistics", "FanotifyClient"]

log = logging.getLogger(__name__)

_OVERFLOW = int(Event.Q_OVERFLOW)
#: Default bound of a client's queue.
DEFAULT_MAXSIZE = 1024


@dataclass(frozen=True, slots=True)
class ClientOverflow(FanotifyData):
    """Marker a client returns after its overflow policy dropped events.

    ``ev_types`` is ``Event.Q_OVERFLOW`` (as for the kernel's own overflow
    event), ``fd`` is -1, and ``dropped`` says how many events this client
    lost since the previous marker.  It owns nothing.
    """

    #: Events this client's policy dropped since the previous marker.
    dropped: int = 0


class ClientStatistics(NamedTuple):
    """A snapshot of one client's counters.

    Every matched event is accounted for:
    ``matched == received + dropped + queued + held + discarded``.
    """

    #: Events the rule matched (offered to this client).
    matched: int
    #: Events handed to the consumer (markers not counted).
    received: int
    #: Events dropped by the overflow policy.
    dropped: int
    #: Events waiting in the queue.
    queued: int
    #: Events waiting for room (``block`` policy; the group is not reading).
    held: int
    #: Events released unread because the client was closed.
    discarded: int
    #: The queue bound.
    maxsize: int
    #: The most events ever queued at once.
    high_water: int
    #: Times this client made the group stop reading (``block``).
    blocked: int
    #: Predicate calls that raised (the event counts as not matching; logged).
    predicate_errors: int
    #: Copies delivered without an fd because ``os.dup`` failed (logged).
    fd_errors: int


class FanotifyClient(AsyncClosingContext):
    """One consumer of a shared :class:`~afanotify.Fanotify` group.

    ``FanotifyClient(fan, maxsize=..., overflow="block", **rule_kwargs)``
    builds a :class:`~afanotify.FanoRule` from ``rule_kwargs`` (its name is
    generated unless given, and kept in :attr:`rname`) and connects it;
    ``fan.connect(rule)`` does the same for a rule you built.

    Read with ``async for event in client`` (each event is released when
    the loop moves on, unless you detached its fd), or ``await client.get()``
    / ``client.get_nowait()`` (you own the event: close it or use
    ``with event:``).  ``close()`` disconnects at once: nothing more is
    delivered and queued events are released.

    :param maxsize: bound of this client's queue.
    :param overflow: ``"block"`` (stop reading the group until there is room:
        nothing is lost, but every consumer waits), ``"drop_oldest"`` or
        ``"drop_newest"`` (counted, and announced by a :class:`ClientOverflow`).
        The default is ``"block"``, except for a CLASS_CONTENT or
        CLASS_PRE_CONTENT group, which never stops reading (a permission
        event left in the kernel's queue would have no deadline): there it is
        ``"drop_newest"``, and ``"block"`` is refused.
    :raises TypeError, ValueError: for bad arguments (from FanoRule too)
    :raises ClosedResourceError: if the group is closed
    """

    _counter = 0

    def __init__(
        self,
        fan: Fanotify,
        rule: FanoRule | None = None,
        *,
        maxsize: int = DEFAULT_MAXSIZE,
        overflow: str | None = None,
        **rule_kwargs: Any,
    ) -> None:
        self._closed = True
        from .group import Fanotify as _Group  # (group.py imports this module)

        if not isinstance(fan, _Group):
            raise TypeError(f"fan must be a Fanotify group, not {type(fan).__name__}")
        if rule is None:
            if "name" not in rule_kwargs:
                FanotifyClient._counter += 1
                rule_kwargs["name"] = f"client-{os.getpid()}-{FanotifyClient._counter}"
            rule = FanoRule(**rule_kwargs)
        elif rule_kwargs:
            raise TypeError(
                f"pass either a FanoRule or rule keywords, not both (got {sorted(rule_kwargs)})"
            )
        if not isinstance(rule, FanoRule):
            raise TypeError(f"rule must be a FanoRule, not {type(rule).__name__}")
        if fan.closed:
            raise ClosedResourceError("the fanotify group is closed")
        never_pause = fan._clients.never_pause
        if overflow is None:
            overflow = "drop_newest" if never_pause else "block"
        if overflow not in POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(POLICIES)}, not {overflow!r}")
        if overflow == "block" and never_pause:
            raise ValueError(
                "overflow='block' would stop a permission-class group from reading, leaving "
                "permission events in the kernel's queue with no deadline: use "
                "overflow='drop_newest' or 'drop_oldest' (dropped events get the default verdict)"
            )
        if rule.path_pattern is not None and not fan.resolve_paths:
            raise ValueError(
                f"rule {rule.name!r} has a path_pattern but the group does not resolve "
                "paths: create it with resolve_paths=True"
            )
        self.rule = rule
        self._fan = fan
        self._dispatcher: Dispatcher = fan._clients
        self._queue = EventQueue(maxsize, overflow, on_drop=self._on_drop, on_space=self._on_space)
        self._held: deque[FanotifyData] = deque()
        self._unreported = 0
        self._iter_last: FanotifyData | None = None
        self._error: BaseException | None = None
        self._matched = self._received = self._discarded = 0
        self._predicate_errors = self._fd_errors = 0
        self._order = 0  # connection order, set by the dispatcher
        self._closed = False
        self._dispatcher.add(self)

    @property
    def rname(self) -> str | bytes:
        """The rule's name (pyfanotify's attribute)."""
        return self.rule.name

    @property
    def closed(self) -> bool:
        """True once the client is closed: by :meth:`close`, by
        ``fan.disconnect()``, or because its group closed or failed."""
        return self._closed

    @property
    def overflow(self) -> str:
        """This client's overflow policy: ``"block"``, ``"drop_oldest"`` or ``"drop_newest"``."""
        return self._queue.policy

    @property
    def stats(self) -> ClientStatistics:
        """A snapshot of this client's counters (:class:`ClientStatistics`).

        Every event the rule matched is in exactly one of ``received``,
        ``dropped``, ``queued``, ``held`` and ``discarded``.
        """
        q = self._queue.statistics()
        return ClientStatistics(
            self._matched, self._received, q.dropped, q.queued, len(self._held),
            self._discarded, q.maxsize, q.high_water, q.blocked, self._predicate_errors,
            self._fd_errors,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"queued={len(self._queue)}"
        return f"<FanotifyClient {self.rule!r} overflow={self.overflow} {state}>"

    # -- fed by the dispatcher -------------------------------------------

    def _offer(self, ev: FanotifyData) -> None:
        self._matched += 1
        if self._held:
            self._held.append(ev)  # stay in order behind what already waits
            return
        if not self._queue.put(ev):
            self._held.append(ev)
            self._dispatcher._block(self)

    def _on_drop(self, ev: FanotifyData) -> None:
        self._unreported += 1
        # The default verdict goes out now (counted as a drop), then the fd.
        ev._release("dropped")

    def _on_space(self) -> None:
        held = self._held
        while held:
            if not self._queue.put(held[0]):
                return
            held.popleft()
        self._dispatcher._unblock(self)

    # -- consuming -------------------------------------------------------

    def _marker(self) -> FanotifyData | None:
        n = self._unreported
        if not n:
            return None
        self._unreported = 0
        return ClientOverflow(ev_types=_OVERFLOW, dropped=n)

    def _closed_error(self) -> ClosedResourceError:
        if self._error is not None:
            return ClosedResourceError(f"the group failed: {self._error}")
        return ClosedResourceError("the client is closed")

    def get_nowait(self) -> FanotifyData:
        """The next event (or drop marker) if one is waiting; the caller owns it.

        :raises WouldBlock: if none is waiting
        :raises ClosedResourceError: if the client (or its group) is closed
        """
        if self._closed:
            raise self._closed_error()
        self._fan._ensure_reader()
        marker = self._marker()
        if marker is not None:
            return marker
        try:
            ev = self._queue.get_nowait()
        except ClosedResourceError:
            raise self._closed_error() from None
        self._received += 1
        if ev._owns & UNANSWERED:
            self._fan._perm.received_by(ev)  # answered at once if this task dies
        if self._error is not None:
            self._close_if_drained()
        return ev

    def _close_if_drained(self) -> None:
        # After a group failure nothing more arrives: once the queue (and the
        # hold list, which refills it) is empty, waiters learn of the failure.
        if not len(self._queue) and not self._held:
            self._queue.close()

    async def get(self) -> FanotifyData:
        """The next event (or drop marker); the caller owns it.

        :raises ClosedResourceError: if the client (or its group) is closed,
            also while waiting
        """
        if self._closed:
            raise self._closed_error()
        self._fan._ensure_reader()
        marker = self._marker()
        if marker is not None:
            return marker
        try:
            ev = await self._queue.get()
        except ClosedResourceError:
            raise self._closed_error() from None
        self._received += 1
        if ev._owns & UNANSWERED:
            self._fan._perm.received_by(ev)  # answered at once if this task dies
        if self._error is not None:
            self._close_if_drained()
        return ev

    def __aiter__(self) -> AsyncIterator[FanotifyData]:
        """``async for event in client``: each event is closed when the loop moves on.

        The loop ends when the client is closed; if the group failed, it
        raises :class:`ClosedResourceError` naming the failure instead.
        """
        return self

    async def __anext__(self) -> FanotifyData:
        last, self._iter_last = self._iter_last, None
        if last is not None:
            last.close()
        try:
            ev = await self.get()
        except ClosedResourceError:
            if self._error is not None:
                raise  # the group failed: say so instead of ending quietly
            raise StopAsyncIteration from None
        self._iter_last = ev
        return ev

    # -- closing ---------------------------------------------------------

    def _shutdown(self) -> list[FanotifyData]:
        """Mark closed, wake waiters; returns the events nobody will read."""
        self._closed = True
        left = self._queue.close()
        left.extend(self._held)
        self._held.clear()
        self._discarded += len(left)
        if self._iter_last is not None:
            left.append(self._iter_last)
            self._iter_last = None
        return left

    def close(self) -> None:
        """Disconnect: delivery stops at once; queued events are released.  Idempotent."""
        if self._closed:
            return
        left = self._shutdown()
        self._dispatcher.remove(self)
        for ev in left:
            ev.close()



def connect(
    fan: Fanotify, rule: FanoRule, *, maxsize: int = DEFAULT_MAXSIZE, overflow: str | None = None
) -> FanotifyClient:
    """Connect ``rule`` to ``fan``; see :meth:`afanotify.Fanotify.connect`."""
    return FanotifyClient(fan, rule, maxsize=maxsize, overflow=overflow)


def disconnect(fan: Fanotify, rule_or_client: FanoRule | FanotifyClient) -> int:
    """Close ``rule_or_client`` (a client, or every client with an equal rule).

    Returns how many clients were closed (0 if none was connected).
    """
    if isinstance(rule_or_client, FanotifyClient):
        if rule_or_client._fan is not fan:
            raise ValueError("that client belongs to another group")
        was_open = not rule_or_client.closed
        rule_or_client.close()
        return int(was_open)
    if not isinstance(rule_or_client, FanoRule):
        raise TypeError(
            f"disconnect takes a FanoRule or FanotifyClient, not {type(rule_or_client).__name__}"
        )
    found = fan._clients.find(rule_or_client)
    for c in found:
        c.close()
    return len(found)
