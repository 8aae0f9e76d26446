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
from helpers import is_open

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


def _event_owning_a_pipe() -> tuple[FanotifyData, int]:
    r, w = os.pipe()
    os.close(w)
    return FanotifyData(r, 1, 0, _owns=OWN_FD), r


@pytest.mark.timeout(20)
def test_an_event_closed_inside_the_locked_lines_on_the_same_thread_does_not_hang() -> None:
    # What a signal handler or a finaliser run by the collector does when it
    # lands inside _release's locked lines and closes an event: the thread
    # already holds the lock.
    ev, fd = _event_owning_a_pipe()
    done = threading.Event()

    def nested() -> None:
        with events._RELEASE_LOCK:
            ev.close()
        done.set()

    t = threading.Thread(target=nested, daemon=True)
    t.start()
    assert done.wait(5), "close() blocked on the lock its own thread holds"
    assert not is_open(fd)


@pytest.mark.timeout(20)
def test_detach_and_release_race_gives_the_fd_to_one_of_them() -> None:
    # detach_fd reads and clears its bit under the same lock as _release: the
    # test holds the lock, starts both, and lets them go together.
    for _ in range(50):
        ev, fd = _event_owning_a_pipe()
        got: list[int] = []

        def detach(ev: FanotifyData = ev, got: list[int] = got) -> None:
            try:
                got.append(ev.detach_fd())
            except ValueError:
                pass

        with events._RELEASE_LOCK:
            threads = [threading.Thread(target=detach), threading.Thread(target=ev.close)]
            for t in threads:
                t.start()
        for t in threads:
            t.join(5)
        if got:
            assert is_open(fd), "the fd was detached and closed as well"
            os.close(got[0])
        else:
            assert not is_open(fd)
        assert ev._owns == 0


@pytest.mark.timeout(30)
def test_a_forked_child_can_close_events_while_a_parent_thread_held_the_lock() -> None:
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with events._RELEASE_LOCK:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(5)
        pid = os.fork()
        if pid == 0:  # the child: the holder thread does not exist here
            code = 1
            try:
                ev, fd = _event_owning_a_pipe()
                ev.close()
                code = 0 if not is_open(fd) else 2
            finally:
                os._exit(code)
        deadline_status = None
        for _ in range(100):
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid:
                deadline_status = status
                break
            release.wait(0.1)  # a bounded poll step, not a stand-in for a condition
        if deadline_status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the child's close() hung on a lock held at fork")
        assert os.waitstatus_to_exitcode(deadline_status) == 0
    finally:
        release.set()
        t.join(5)
