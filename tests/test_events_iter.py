"""The C step of ``async for event in fan`` (afanotify/csrc/fastpath_iter.c), without a kernel.

``Fanotify.__aiter__`` returns the C iterator when the core has the C
builder.  It takes an event that is already queued itself and leaves every
other step to the group's Python ``__anext__``.  These tests drive it over a
stand-in group (a real EventQueue, a reader's two flags, a recording slow
path) and check each branch: which steps it takes (as many as its grant),
which it hands on, what it releases; and the grant the Python step gives
(``OwnQueue._grant``) in each state of the group.  The same checks run under the sanitizers
(tests/test_sanitizers.py runs ``SCENARIO`` in its child).
"""

from __future__ import annotations

import pytest

from afanotify import _fastparse

#: Run as is here and in the sanitized child: defines and calls check_events_iter().
SCENARIO = r'''
import asyncio, os
from afanotify import _fastparse
from afanotify._parser import parse_lenient
from afanotify._consume import OwnQueue
from afanotify._queue import EventQueue
from afanotify.events import OWN_FD, UNANSWERED, FanotifyData
import struct

def _event(fd=-1, mask=0x100, pid=4242):
    buf = struct.pack("=IBBHQii", 24, 3, 0, 24, mask, fd, pid)
    (ev,), errors = parse_lenient(buf, owned=fd >= 0)
    assert not errors
    return ev

class _Reader:
    def __init__(self):
        self.reading, self.paused = True, False

class _Group:
    """What OwnQueue._grant reads, and a recording Python step."""

    def __init__(self, maxsize=8):
        self._queue = EventQueue(maxsize, "block")
        self._reader = _Reader()
        self._closed, self._error = False, None
        self._held = []
        self.slow_calls = 0
        self._events_iter = _fastparse.events_iter_factory()(
            self, self._queue, self._queue._items, self._reader, self._slow
        )
        self.iter = self._events_iter

    async def _slow(self):
        self.slow_calls += 1
        return "slow"

    def grant(self):
        OwnQueue._grant(self)
        return self.iter.grant

async def _step(it):
    return await it.__anext__()

def next_value(aw):
    try:
        next(aw)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("a ready step did not return at once")

def check_events_iter():
    run = asyncio.run
    # No grant: every step is the Python one, events left queued.
    g = _Group()
    g._queue.put_many([_event()])
    assert run(_step(g.iter)) == "slow" and len(g._queue) == 1 and g.slow_calls == 1
    # A grant of 2: two queued events come out in order, each released by
    # the next step; then the Python step again.
    g = _Group()
    r1, w1 = os.pipe()
    os.close(w1)
    a, b, c = _event(fd=r1), _event(), _event()
    assert a._owns == OWN_FD
    g._queue.put_many([a, b, c])
    g.iter.grant = 2
    assert run(_step(g.iter)) is a and g.iter.last is a
    assert run(_step(g.iter)) is b and a._owns == 0 and g.iter.grant == 0
    try:
        os.fstat(r1)
    except OSError:
        pass
    else:
        raise AssertionError("the fd of the event moved past was not closed")
    assert run(_step(g.iter)) == "slow" and len(g._queue) == 1 and g.slow_calls == 1
    # A queue emptied under a grant ends it.
    g = _Group()
    g.iter.grant = 5
    assert run(_step(g.iter)) == "slow" and g.iter.grant == 0
    # A permission event, and an object of another class, go to the Python step.
    g = _Group()
    perm = _event()
    object.__setattr__(perm, "_owns", UNANSWERED)
    g._queue.put_many([perm, _event()])
    g.iter.grant = 5
    assert run(_step(g.iter)) == "slow" and len(g._queue) == 2 and g.iter.grant == 5
    g = _Group()
    g._queue.put_many(["not an event"])
    g.iter.grant = 5
    assert run(_step(g.iter)) == "slow" and len(g._queue) == 1
    # The grant OwnQueue._grant gives: all queued events in the steady state;
    # none before reading starts, when paused with nothing held (_refill
    # resumes then), failed, closed, or the queue signalled full; down to
    # just above half with events held or a stall.
    g = _Group(maxsize=8)
    g._queue.put_many([_event() for _ in range(6)])
    assert g.grant() == 6
    for state in ("not started", "paused, nothing held", "failed", "closed"):
        h = _Group(maxsize=8)
        h._queue.put_many([_event() for _ in range(6)])
        if state == "not started":
            h._reader.reading = False
        elif state == "paused, nothing held":
            h._reader.reading, h._reader.paused = False, True
        elif state == "failed":
            h._error = OSError(5, "EIO")
        else:
            h._closed = True
        assert h.grant() == 0, state
    g._held.append(_event())
    g._reader.reading, g._reader.paused = False, True  # as the group pauses to hold events
    assert g.grant() == 1  # 6 queued, refill at 4: one taken in C, then Python
    g._reader.reading, g._reader.paused = True, False
    g._held.clear()
    g._queue._stalled = True
    assert g.grant() == 1
    g = _Group(maxsize=2)
    assert g._queue.put_many([_event() for _ in range(3)]) == 2
    assert g._queue._full_signalled and g.grant() == 0
    # A ready awaitable gives its event once, by send or (under a tracer) by iteration.
    g = _Group()
    ev = _event()
    g._queue.put_many([ev])
    g.iter.grant = 1
    aw = g.iter.__anext__()
    assert next_value(aw) is ev
    try:
        next(aw)
    except RuntimeError:
        pass
    else:
        raise AssertionError("a used awaitable gave a second value")
    # The awaitable is used again only once nobody else holds it: steps
    # taken while an earlier awaitable is still held give new ones, and each
    # gives its own event, in order.
    g = _Group()
    evs = [_event(pid=p) for p in (1, 2, 3)]
    g._queue.put_many(evs)
    g.iter.grant = 3
    held1 = g.iter.__anext__()
    held2 = g.iter.__anext__()
    assert held1 is not held2
    assert next_value(held1) is evs[0] and next_value(held2) is evs[1]
    del held1
    held3 = g.iter.__anext__()
    assert held3 is not held2 and next_value(held3) is evs[2]
    # A release that fails raises from the next step, ownership already given up.
    # (A high number closed before: no loop's descriptor gets it meanwhile.)
    g = _Group()
    r2, w2 = os.pipe()
    stale = os.dup2(r2, 1000)
    os.close(r2)
    os.close(w2)
    bad = _event(fd=stale)
    g._queue.put_many([bad])
    g.iter.grant = 1
    assert next_value(g.iter.__anext__()) is bad
    os.close(stale)
    try:
        g.iter.__anext__()
    except OSError:
        pass
    else:
        raise AssertionError("closing a stale fd did not raise")
    assert bad._owns == 0 and g.iter.last is None
    # `last` is settable (the group's _iter_last) and released by the next step.
    r3, w3 = os.pipe()
    os.close(w3)
    kept = _event(fd=r3)
    g.iter.last = kept
    assert run(_step(g.iter)) == "slow" and kept._owns == 0
    g.iter.last = None
    assert g.iter.last is None
    # With a plain step (OwnQueue._step): called when the grant does not
    # cover the next event; an event it gives is handed out ready (no
    # coroutine) and held as the last one, None sends the step to `slow`.
    g = _Group()
    given = [_event(pid=7), None, RuntimeError("a failing step")]
    calls = []

    def step():
        calls.append(1)
        item = given.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    g.iter = _fastparse.events_iter_factory()(
        g, g._queue, g._queue._items, g._reader, g._slow, step
    )
    first = given[0]
    assert next_value(g.iter.__anext__()) is first and g.iter.last is first
    assert g.slow_calls == 0 and len(calls) == 1
    assert run(_step(g.iter)) == "slow" and g.slow_calls == 1 and len(calls) == 2
    try:
        g.iter.__anext__()
    except RuntimeError as exc:
        assert "a failing step" in str(exc)
    else:
        raise AssertionError("a step that raised did not raise from __anext__")
    try:
        _fastparse.events_iter_factory()(g, g._queue, g._queue._items, g._reader, g._slow, 1)
    except TypeError:
        pass
    else:
        raise AssertionError("a step that is not callable was taken")

check_events_iter()
'''


@pytest.mark.skipif(
    _fastparse.events_iter_factory() is None, reason="this core has no C builder"
)
def test_the_c_step_takes_queued_events_and_hands_on_the_rest() -> None:
    exec(compile(SCENARIO, "events_iter_scenario", "exec"), {})
