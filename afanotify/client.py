"""``FanotifyClient``: one consumer of a shared group, with its own bounded queue.

Many consumers can share one fanotify group.  Each connects a
:class:`~afanotify.rules.FanoRule` and gets a client: a bounded queue fed
with the events its rule matches, read with ``async for event in client``
or ``await client.get()``.

How an event is dispatched (``_Dispatcher``, called from the group's
``_deliver``):

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

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from ._proc import process_info
from ._queue import POLICIES, EventQueue
from ._resource import AsyncClosingContext
from .events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData
from .exceptions import ClosedResourceError
from .flags import CLASS_BITS, Event, InitFlag
from .rules import FanoRule

if TYPE_CHECKING:
    from .group import Fanotify

__all__ = ["ClientOverflow", "ClientStatistics", "DispatchStatistics", "FanotifyClient"]

log = logging.getLogger(__name__)

_OVERFLOW = int(Event.Q_OVERFLOW)
_RENAME = int(Event.RENAME)
_FDS = OWN_FD | OWN_PIDFD
_CACHE_MAX = 4096
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


class DispatchStatistics(NamedTuple):
    """A snapshot of a group's dispatch counters."""

    #: Clients connected now.
    clients: int
    #: Events handed to at least one consumer.
    dispatched: int
    #: Events no consumer wanted (released at once; permission ones answered
    #: with the default verdict).
    unmatched: int
    #: Extra copies made for fan-out.
    copies: int
    #: Descriptors duplicated for ``pass_fd`` clients.
    dup_fds: int
    #: Events whose exe/cwd were read from /proc because a rule needed them.
    proc_reads: int
    #: Events the group's own queue could not take in a permission-class
    #: group, which never stops reading (answered with the default verdict).
    group_dropped: int


class _GroupSink:
    """The group's own queue as a fan-out target (always gets the original)."""

    __slots__ = ()


_GROUP = _GroupSink()


class _Dispatcher:
    """Per-group fan-out to clients.  Created by the group; not public."""

    def __init__(self, group: Fanotify) -> None:
        self._group = group
        self._clients: list[FanotifyClient] = []
        #: (mask, pid) -> (candidates without a path index key, in order;
        #: candidates with one).  Only ev_types and pids decide membership.
        self._cache: dict[
            tuple[int, int], tuple[tuple[FanotifyClient, ...], frozenset[FanotifyClient]]
        ] = {}
        #: Directory prefix -> clients whose path_pattern lies under it.
        self._pindex: dict[str, list[FanotifyClient]] = {}
        self._next_order = 0
        #: Union of every rule's ev_types, or -1 if some rule accepts any type.
        self._mask = 0
        self.needs_proc = False
        self._async_rules = 0
        self._blocked: set[FanotifyClient] = set()
        self._task: asyncio.Task[None] | None = None
        self._inflight: deque[FanotifyData] = deque()
        self._pidfd_mode = bool(group.flags & InitFlag.REPORT_PIDFD)
        #: CONTENT/PRE_CONTENT groups never stop reading: a permission event
        #: left in the kernel's queue would get no deadline.
        self.never_pause = bool(group.flags & CLASS_BITS)
        self.dispatched = self.unmatched = self.copies = self.dup_fds = self.proc_reads = 0
        self.group_dropped = 0

    # -- membership ------------------------------------------------------

    @property
    def active(self) -> bool:
        return bool(self._clients)

    @property
    def holds_reader(self) -> bool:
        """True while a client (block policy) or an async dispatch needs the group paused."""
        return bool(self._blocked) or self._task is not None

    def stats(self) -> DispatchStatistics:
        return DispatchStatistics(
            len(self._clients), self.dispatched, self.unmatched, self.copies, self.dup_fds,
            self.proc_reads, self.group_dropped,
        )

    def add(self, client: FanotifyClient) -> None:
        self._next_order += 1
        client._order = self._next_order
        self._clients.append(client)
        self._recompute()

    def remove(self, client: FanotifyClient) -> None:
        try:
            self._clients.remove(client)
        except ValueError:
            return
        self._recompute()
        if client in self._blocked:
            self._unblock(client)
        g = self._group
        if (
            not self._clients and not g._consuming and not self.never_pause
            and g._reading and g._loop is not None
        ):
            # Nobody will take events: leave them in the kernel's queue.  (Not
            # in a permission group: there, events must be read to get their
            # deadline and default verdict.)
            g._loop.remove_reader(g._fd)
            g._reading = False

    def _recompute(self) -> None:
        self._cache.clear()
        mask = 0
        for c in self._clients:
            if not c.rule.ev_types:
                mask = -1
                break
            mask |= c.rule.ev_types
        self._mask = mask
        self.needs_proc = any(c.rule.needs_proc for c in self._clients)
        self._async_rules = sum(1 for c in self._clients if c.rule.is_async)
        index: dict[str, list[FanotifyClient]] = {}
        for c in self._clients:
            key = c.rule._path_key
            if key is not None:
                index.setdefault(key, []).append(c)
        self._pindex = index

    def find(self, rule: FanoRule) -> list[FanotifyClient]:
        return [c for c in self._clients if c.rule == rule]

    # -- flow control ----------------------------------------------------

    def _block(self, client: FanotifyClient) -> None:
        self._blocked.add(client)
        self._group._pause()

    def _unblock(self, client: FanotifyClient) -> None:
        self._blocked.discard(client)
        if not self.holds_reader:
            self._group._resume()

    # -- matching --------------------------------------------------------

    def _candidates(self, ev: FanotifyData) -> Sequence[FanotifyClient]:
        """Clients whose ev_types, pids and path directory accept ``ev``, in order.

        ev_types and pids depend only on ``(mask, pid)``, which is cached.
        Rules whose path pattern starts with a literal directory are then
        looked up by the event path's ancestor directories, so a set of
        per-directory rules costs a few dict lookups, not one fnmatch each.
        """
        key = (ev.ev_types, ev.pid)
        entry = self._cache.get(key)
        if entry is None:
            fast = [c for c in self._clients if c.rule._match_fast(ev)]
            entry = (
                tuple(c for c in fast if c.rule._path_key is None),
                frozenset(c for c in fast if c.rule._path_key is not None),
            )
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = entry
        plain, indexed = entry
        if not indexed:
            return plain
        hits = self._path_hits(ev, indexed)
        if not hits:
            return plain
        if not plain and len(hits) == 1:
            return hits
        return sorted((*plain, *hits), key=_order_of)

    def _path_hits(
        self, ev: FanotifyData, allowed: frozenset[FanotifyClient]
    ) -> list[FanotifyClient]:
        index = self._pindex
        paths = (ev.old_path, ev.new_path, ev.path) if ev.ev_types & _RENAME else (ev.path,)
        hits: list[FanotifyClient] = []
        for p in paths:
            if p is None:
                continue
            if isinstance(p, bytes):
                p = os.fsdecode(p)
            i = p.find("/")
            while i >= 0:
                found = index.get(p[: i + 1])
                if found:
                    hits.extend(c for c in found if c in allowed and c not in hits)
                i = p.find("/", i + 1)
        return hits

    def _fill_proc(self, ev: FanotifyData, cands: Iterable[FanotifyClient]) -> None:
        if self._group.proc_info or ev.exe is not None or ev.cwd is not None:
            return  # the group already read them
        if not any(c.rule.needs_proc for c in cands):
            return
        self.proc_reads += 1
        exe, cwd = process_info(ev.pid, ev.pidfd, pidfd_reported=self._pidfd_mode)
        # The event has not been handed to anyone yet, so filling its fields
        # in place is invisible to consumers and keeps the group's record of
        # pending permission events pointing at the same object.
        object.__setattr__(ev, "exe", exe)
        object.__setattr__(ev, "cwd", cwd)

    def _match_sync(self, ev: FanotifyData) -> list[FanotifyClient]:
        if ev.ev_types & _OVERFLOW:
            return list(self._clients)  # every consumer must learn of the loss
        if self._mask != -1 and not ev.ev_types & self._mask:
            return []
        cands = self._candidates(ev)
        if not cands:
            return []
        if self.needs_proc:
            self._fill_proc(ev, cands)
        out: list[FanotifyClient] = []
        for c in cands:
            rule = c.rule
            if not rule._has_rest:
                out.append(c)
                continue
            try:
                if rule._match_fields(ev) and (rule.predicate is None or rule._call_sync(ev)):
                    out.append(c)
            except Exception:
                c._predicate_errors += 1
                log.exception("predicate of rule %r failed; event not delivered to it", rule.name)
        return out

    async def _match_async(self, ev: FanotifyData) -> list[FanotifyClient]:
        if ev.ev_types & _OVERFLOW:
            return list(self._clients)
        if self._mask != -1 and not ev.ev_types & self._mask:
            return []
        cands = self._candidates(ev)
        if not cands:
            return []
        if self.needs_proc:
            self._fill_proc(ev, cands)
        out: list[FanotifyClient] = []
        for c in cands:
            rule = c.rule
            if not rule._has_rest:
                out.append(c)
                continue
            try:
                if not rule._match_fields(ev):
                    continue
                if rule.predicate is None:
                    ok = True
                elif rule.is_async:
                    ok = bool(await rule.predicate(ev))  # type: ignore[misc]
                else:
                    ok = rule._call_sync(ev)
            except Exception:
                c._predicate_errors += 1
                log.exception("predicate of rule %r failed; event not delivered to it", rule.name)
                continue
            if ok:
                out.append(c)
        return out

    # -- dispatch --------------------------------------------------------

    def dispatch(self, events: list[FanotifyData]) -> None:
        """Hand ``events`` (in order) to the clients whose rules match."""
        if self._async_rules or self._task is not None:
            self._inflight.extend(events)
            if self._task is None:
                self._group._pause()
                loop = asyncio.get_running_loop()
                self._task = loop.create_task(self._run_async())
            return
        for ev in events:
            self._fan_out(ev, self._match_sync(ev))

    async def _run_async(self) -> None:
        inflight = self._inflight
        try:
            while inflight:
                # The event stays in inflight while its predicates run, so a
                # cancellation (group closing) releases it in finally.
                ev = inflight[0]
                targets = await self._match_async(ev)
                inflight.popleft()
                self._fan_out(ev, targets)
        finally:
            self._task = None
            while inflight:
                inflight.popleft().close()
            if not self._group._closed and not self.holds_reader:
                self._group._resume()

    def _fan_out(self, ev: FanotifyData, targets: list[FanotifyClient]) -> None:
        g = self._group
        if targets:
            targets = [c for c in targets if not c._closed]
        to_group = g._consuming and not g._closed
        if not targets and not to_group:
            self.unmatched += 1
            ev.close()  # answers an unanswered permission event with the default
            return
        self.dispatched += 1
        g._counters.events_delivered += 1
        owns = ev._owns
        if not owns & _FDS:
            # Nothing to hand out: every target shares the immutable event;
            # the first one keeps any pending answer.
            if to_group:
                self._to_group(ev)
                if targets:
                    shared = ev
                    if owns:
                        shared = _strip(ev)
                        self.copies += 1
                    for c in targets:
                        c._offer(shared)
                return
            targets[0]._offer(ev)
            if len(targets) > 1:
                shared = ev
                if owns:
                    shared = _strip(ev)
                    self.copies += 1
                for c in targets[1:]:
                    c._offer(shared)
            return
        primary: FanotifyClient | _GroupSink | None
        if to_group:
            primary = _GROUP
        elif owns & UNANSWERED:
            primary = targets[0]
        else:
            primary = next((c for c in targets if c.rule.pass_fd), None)
        stripped: FanotifyData | None = None
        for c in targets:
            if c is primary:
                continue
            if c.rule.pass_fd:
                copy = self._dup_copy(ev, c)
                if copy is not None:
                    c._offer(copy)
                    continue
            if stripped is None:
                stripped = _strip(ev)
                self.copies += 1
            c._offer(stripped)
        if primary is None:
            ev.close()
        elif primary is _GROUP:
            self._to_group(ev)
        else:
            primary._offer(ev)  # type: ignore[union-attr]

    def _dup_copy(self, ev: FanotifyData, client: FanotifyClient) -> FanotifyData | None:
        owns = ev._owns
        fd = pidfd = -1
        try:
            if owns & OWN_FD:
                fd = os.dup(ev.fd)
            if owns & OWN_PIDFD:
                pidfd = os.dup(ev.pidfd)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            client._fd_errors += 1
            log.warning(
                "could not duplicate the fd of an event for rule %r (%s); it gets the event "
                "without descriptors", client.rule.name, exc,
            )
            return None
        self.copies += 1
        self.dup_fds += (fd >= 0) + (pidfd >= 0)
        new_owns = (OWN_FD if fd >= 0 else 0) | (OWN_PIDFD if pidfd >= 0 else 0)
        return replace(
            ev, fd=fd if fd >= 0 else (ev.fd if ev.fd < 0 else -1),
            pidfd=pidfd if pidfd >= 0 else _kept_pidfd(ev), _owns=new_owns, _group=None,
        )

    def _to_group(self, ev: FanotifyData) -> None:
        g = self._group
        if g._held or not g._queue.put(ev):
            if self.never_pause:
                # As the group does for its own queue in a permission group:
                # drop, answering a permission event with the default verdict.
                self.group_dropped += 1
                if ev._owns & UNANSWERED:
                    g._answer_default(ev, "dropped")
                ev.close()
                log.warning(
                    "the group's own queue is full (maxsize=%d): dropped an event (%d so far)",
                    g._queue.maxsize, self.group_dropped,
                )
                return
            g._held.append(ev)
            g._pause()

    # -- shutdown --------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """The group failed and reads no more.

        Events already queued (or held) for a client are still delivered;
        then its ``get()`` and ``async for`` raise ClosedResourceError naming
        the failure.
        """
        for c in list(self._clients):
            c._error = exc
            c._close_if_drained()

    def close_all(self) -> list[FanotifyData]:
        """The group is closing: end every client; returns events for the group to release."""
        left: list[FanotifyData] = []
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        left.extend(self._inflight)
        self._inflight.clear()
        clients, self._clients = self._clients, []
        self._blocked.clear()
        self._recompute()
        for c in clients:
            left.extend(c._shutdown())
        return left


def _order_of(client: FanotifyClient) -> int:
    return client._order


def _kept_pidfd(ev: FanotifyData) -> int:
    # FAN_NOPIDFD / FAN_EPIDFD are information, not descriptors: keep them.
    return ev.pidfd if ev.pidfd < 0 else -1


def _strip(ev: FanotifyData) -> FanotifyData:
    """A copy that owns nothing: no fd, no pidfd, no pending answer."""
    fd = ev.fd if ev.fd < 0 else -1
    return replace(ev, fd=fd, pidfd=_kept_pidfd(ev), _owns=0, _group=None)


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
        self._dispatcher: _Dispatcher = fan._clients
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
        return self._closed

    @property
    def overflow(self) -> str:
        return self._queue.policy

    @property
    def stats(self) -> ClientStatistics:
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
        if ev._owns & UNANSWERED:
            # The default verdict goes out now (counted as a drop), then the fd.
            self._fan._answer_default(ev, "dropped")
        ev.close()

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
