"""FanotifyData._release from two threads at once closes the fd exactly once.

A ``thread=True`` handler still releasing its event when the group's close
times out races the loop's close of the same event.  The test makes the race
certain instead of likely: a trace function holds the first thread at the
line that clears ``_owns`` (it has read the bits, not yet cleared them) until
the second thread's release has finished or 0.5 s passed.  Without a lock
around the read-and-clear both threads read the fd bit and both close it.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
from types import FrameType
from typing import Any

import pytest

from afanotify import events
from afanotify.events import OWN_FD, OWN_PIDFD, FanotifyData


def _clear_line() -> int:
    lines, first = inspect.getsourcelines(FanotifyData._release)
    for i, text in enumerate(lines):
        if '"_owns", 0)' in text:
            return first + i
    raise AssertionError("_release no longer clears _owns with object.__setattr__")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("bits", [OWN_FD, OWN_FD | OWN_PIDFD])
def test_two_threads_releasing_one_event_close_each_fd_once(
    monkeypatch: pytest.MonkeyPatch, bits: int
) -> None:
    r, w = os.pipe()
    fd, pidfd = r, (w if bits & OWN_PIDFD else -1)
    ev = FanotifyData(fd, 1, 0, pidfd=pidfd, _owns=bits)
    closed: list[int] = []
    real_close = os.close

    def counting_close(n: int) -> None:
        if n in (r, w):
            closed.append(n)
        real_close(n)

    monkeypatch.setattr(events.os, "close", counting_close)
    line = _clear_line()
    code = FanotifyData._release.__code__
    first_at_clear = threading.Event()
    second_done = threading.Event()
    errors: list[BaseException] = []

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "line" and frame.f_lineno == line:
                first_at_clear.set()
                second_done.wait(0.5)  # with the lock, the second waits on us
            return local

        return local

    def first() -> None:
        sys.settrace(tracer)
        try:
            ev.close()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            sys.settrace(None)

    def second() -> None:
        try:
            assert first_at_clear.wait(10)
            ev.close()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    if not bits & OWN_PIDFD:
        real_close(w)
    assert not errors, errors
    assert sorted(closed) == sorted([r] + ([w] if bits & OWN_PIDFD else []))
    assert ev.closed
