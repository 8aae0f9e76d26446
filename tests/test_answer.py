"""afanotify/_answer.py: a plain verdict in fewer steps, with the tracker's bookkeeping.

No kernel: the group fd is a pipe, so each response written can be read back.
"""

from __future__ import annotations

import os
import struct

import pytest
from helpers import is_open

from afanotify import _answer
from afanotify.events import OWN_FD, UNANSWERED, FanotifyData
from afanotify.flags import Event, InitFlag, Response
from afanotify.permission import PermissionTracker

pytestmark = pytest.mark.skipif(not _answer.AVAILABLE, reason="needs the compiled core")


@pytest.fixture
def tracker():
    r, w = os.pipe()
    perm = PermissionTracker(int(InitFlag.CLASS_CONTENT), 10.0, Response.ALLOW)
    perm.fd = w
    yield perm, r
    os.close(r)
    os.close(w)


def _event(perm: PermissionTracker) -> FanotifyData:
    fd = os.open("/dev/null", os.O_RDONLY)
    ev = FanotifyData(fd=fd, pid=1, ev_types=int(Event.OPEN_PERM), _owns=OWN_FD | UNANSWERED,
                      _responder=perm)
    perm.add(ev, None)
    return ev


def _responses(r: int) -> list[tuple[int, int]]:
    data = os.read(r, 4096)
    return [struct.unpack_from("iI", data, i) for i in range(0, len(data), 8)]


def test_answer_and_close_writes_counts_and_closes_the_fd(tracker):
    perm, r = tracker
    allowed, denied = _event(perm), _event(perm)
    assert _answer.answer_and_close(perm, allowed, True)
    assert _answer.answer_and_close(perm, denied, False)
    assert _responses(r) == [(allowed.fd, int(Response.ALLOW)), (denied.fd, int(Response.DENY))]
    assert allowed.closed and denied.closed
    assert not is_open(allowed.fd) and not is_open(denied.fd)
    assert (perm.allowed, perm.denied, len(perm)) == (1, 1, 0)
    # Answered: a second call does nothing (the caller then goes the general way).
    assert not _answer.answer_and_close(perm, allowed, True)
    assert perm.allowed == 1


def test_an_async_handlers_task_is_left_to_write_which_keeps_deadline_order(tracker):
    perm, r = tracker
    first, second = _event(perm), _event(perm)
    perm._pending[first.fd].handler_task = object()  # type: ignore[assignment]
    assert not _answer.answer_and_close(perm, first, True)
    assert first._owns & UNANSWERED and is_open(first.fd)
    # Still the oldest pending event: its deadline is the one the timer is armed for.
    assert [e.event for e in perm._pending.values()] == [first, second]
    second.allow_nowait()  # write_plain
    assert _responses(r) == [(second.fd, int(Response.ALLOW))]
    assert second.answered and is_open(second.fd)  # allow_nowait() does not close
    second.close()
    assert [e.event for e in perm._pending.values()] == [first]
    perm._pending[first.fd].handler_task = None
    first.close()  # the default verdict
    assert _responses(r) == [(first.fd, int(Response.ALLOW))]


def test_write_plain_raises_as_write_for_an_answered_event(tracker):
    from afanotify.exceptions import AlreadyAnsweredError

    perm, _r = tracker
    ev = _event(perm)
    ev.deny_nowait()
    with pytest.raises(AlreadyAnsweredError):
        ev.allow_nowait()
    assert (perm.allowed, perm.denied) == (0, 1)
    ev.close()
