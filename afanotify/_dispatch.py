"""The fan-out of one group's events to its clients (see :mod:`afanotify.client`).

The dispatcher talks to the group only through :class:`GroupSink`: the
group's own queue, which accepts or refuses an event, and the group's
reader, which it pauses, resumes or leaves idle.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple, Protocol

from ._loop import TaskLike, running_loop
from ._reader import FlowControl
from .events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData
from .flags import CLASS_BITS, Event

if TYPE_CHECKING:
    from .client import FanotifyClient
    from .rules import FanoRule

__all__ = ["DispatchStatistics", "Dispatcher", "GroupSink"]

log = logging.getLogger(__name__)

_OVERFLOW = int(Event.Q_OVERFLOW)
_RENAME = int(Event.RENAME)
_FDS = OWN_FD | OWN_PIDFD
_CACHE_MAX = 4096


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


class GroupSink(FlowControl, Protocol):
    """The group as the dispatcher sees it: its own queue, and its reader.

    The group's queue is one more match-all target once someone receives
    from the group (:attr:`consuming`).  It accepts or refuses an event
    (:meth:`offer`); a refused one is held in order (:meth:`hold`, which
    pauses the reader) or, in a group that never stops reading, dropped.
    """

    @property
    def consuming(self) -> bool:
        """True while the group's own queue takes events (someone received; not closed)."""

    @property
    def maxsize(self) -> int:
        """The bound of the group's own queue."""

    def offer(self, ev: FanotifyData) -> bool:
        """Queue ``ev``; False if the queue is full or events are held already."""

    def hold(self, ev: FanotifyData) -> None:
        """Keep ``ev`` for when the queue has room, and stop reading until then."""

    def delivered(self) -> None:
        """Count one event handed to at least one consumer."""


class _OwnQueue:
    """The group's own queue as a fan-out target (always gets the original)."""

    __slots__ = ()


_GROUP = _OwnQueue()


class Dispatcher:
    """Per-group fan-out to clients.  Created by the group; not public.

    :param sink: the group's own queue and its reader
    :param fill_process: reads ``exe``/``cwd`` into a fresh event (the
        pipeline's), when a candidate rule needs them
    """

    def __init__(
        self, sink: GroupSink, flags: int, *, fill_process: Callable[[FanotifyData], bool]
    ) -> None:
        self._sink = sink
        self._fill = fill_process
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
        self._task: TaskLike | None = None
        self._inflight: deque[FanotifyData] = deque()
        #: CONTENT/PRE_CONTENT groups never stop reading: a permission event
        #: left in the kernel's queue would get no deadline.
        self.never_pause = bool(flags & CLASS_BITS)
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
        if not self._clients and not self.never_pause:
            # Nobody will take events (unless the group's own queue does):
            # leave them in the kernel's queue.  (Not in a permission group:
            # there, events must be read to get their deadline and default
            # verdict.)
            self._sink.idle()

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
        self._sink.pause()

    def _unblock(self, client: FanotifyClient) -> None:
        self._blocked.discard(client)
        if not self.holds_reader:
            self._sink.resume()

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
        if not any(c.rule.needs_proc for c in cands):
            return
        # The event has not been handed to anyone yet: the pipeline fills
        # its fields in place (unless the group already read them).
        if self._fill(ev):
            self.proc_reads += 1

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
                self._sink.pause()
                self._task = running_loop().create_task(self._run_async())
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
            if not self.holds_reader:
                self._sink.resume()

    def _fan_out(self, ev: FanotifyData, targets: list[FanotifyClient]) -> None:
        if targets:
            targets = [c for c in targets if not c._closed]
        to_group = self._sink.consuming
        if not targets and not to_group:
            self.unmatched += 1
            ev.close()  # answers an unanswered permission event with the default
            return
        self.dispatched += 1
        self._sink.delivered()
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
        primary: FanotifyClient | _OwnQueue | None
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
            pidfd=pidfd if pidfd >= 0 else _kept_pidfd(ev), _owns=new_owns, _responder=None,
        )

    def _to_group(self, ev: FanotifyData) -> None:
        sink = self._sink
        if not sink.offer(ev):
            if self.never_pause:
                # As the group does for its own queue in a permission group:
                # drop, answering a permission event with the default verdict.
                self.group_dropped += 1
                ev._release("dropped")
                log.warning(
                    "the group's own queue is full (maxsize=%d): dropped an event (%d so far)",
                    sink.maxsize, self.group_dropped,
                )
                return
            sink.hold(ev)

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
    return replace(ev, fd=fd, pidfd=_kept_pidfd(ev), _owns=0, _responder=None)


