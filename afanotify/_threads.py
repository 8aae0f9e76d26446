"""The thread ids of this process, remembered after their threads exit.

With FAN_REPORT_TID an event carries the id of the thread that caused it.
One of our threads may exit before the group reads its event, and then
``/proc/self/task`` no longer lists it.  So every thread started through
:mod:`threading` records its native id as it starts (the first thing
``Thread._bootstrap_inner`` does is ``_set_native_id``; that call is
wrapped), and the threads alive when the hook goes in are recorded too.
A thread made with ``_thread.start_new_thread`` directly is only known
while it is alive.

Whether a remembered id still names our thread is decided by the caller
(``_pipeline.Pipeline.is_own``): an id that another process has taken over
since is never trusted.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["forget", "install", "known", "remember"]

#: Ids remembered at most (the oldest go first).
_MAX = 65536
_known: OrderedDict[int, None] = OrderedDict()
_lock = threading.Lock()
_installed = False
_pid = os.getpid()


def remember(tid: int) -> None:
    """Record ``tid`` as a thread of this process."""
    with _lock:
        _known[tid] = None
        _known.move_to_end(tid)
        if len(_known) > _MAX:
            _known.popitem(last=False)


def known(tid: int) -> bool:
    """True if ``tid`` was recorded as one of this process's threads."""
    return tid in _known


def forget(tid: int) -> None:
    """Drop ``tid`` (another process holds it now)."""
    with _lock:
        _known.pop(tid, None)


def _after_fork() -> None:
    # A forked child has one thread, and a new pid: the parent's ids are not its own.
    global _pid, _lock
    _lock = threading.Lock()
    _known.clear()
    _pid = os.getpid()
    remember(threading.get_native_id())


def install() -> None:
    """Record the native id of every thread from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        original = threading.Thread._set_native_id  # type: ignore[attr-defined]

        def _set_native_id(self: threading.Thread, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            remember(threading.get_native_id())
            return result

        threading.Thread._set_native_id = _set_native_id  # type: ignore[attr-defined]
        os.register_at_fork(after_in_child=_after_fork)
    for t in threading.enumerate():
        if t.native_id is not None:
            remember(t.native_id)
