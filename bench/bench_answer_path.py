"""CPU time of answering one permission event in Python, without the kernel.

    PYTHONPATH=. python bench/bench_answer_path.py

Two paths, each ending with the event's fd closed: a sync ``on_permission``
handler returning True (``PermissionTracker.dispatch``), and
``allow_nowait()`` then ``close()`` (what ``async for`` does per event).
The group fd is ``/dev/null`` opened for writing and each event's fd a
``/dev/null`` of its own, so the two system calls (write, close) are the
cheapest there are and what is left is the library's own work per event.
Compare checkouts by running it with ``PYTHONPATH`` set to each, in turns.
Prints the median over the reps, in us per event, with min-max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from afanotify.events import OWN_FD, UNANSWERED, FanotifyData
from afanotify.flags import Event, InitFlag, Response
from afanotify.permission import PermissionTracker

_OPEN_PERM = int(Event.OPEN_PERM)


def one_rep(mode: str, n: int) -> float:
    perm = PermissionTracker(int(InitFlag.CLASS_CONTENT), 10.0, Response.ALLOW)
    perm.fd = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
    perm.handler = lambda ev: True
    events = []
    for _ in range(n):
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        ev = FanotifyData(fd=fd, pid=1, ev_types=_OPEN_PERM, _owns=OWN_FD | UNANSWERED,
                          _responder=perm)
        perm.add(ev, None)
        events.append(ev)
    t0 = time.process_time()
    if mode == "handler":
        dispatch = perm.dispatch
        for ev in events:
            dispatch(ev)
    else:
        for ev in events:
            ev.allow_nowait()
            ev.close()
    dt = time.process_time() - t0
    os.close(perm.fd)
    if perm.allowed != n or len(perm) or any(not ev.closed for ev in events):
        raise RuntimeError(f"{mode}: not every event was answered and closed")
    return dt / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=800, help="events per rep (fds held)")
    parser.add_argument("--reps", type=int, default=41)
    args = parser.parse_args()
    for mode, label in (("handler", "on_permission(sync fn) -> True"),
                        ("nowait", "allow_nowait() + close()")):
        reps = [one_rep(mode, args.events) for _ in range(args.reps)]
        print(f"{label:34s} {statistics.median(reps):6.2f} us/event "
              f"({min(reps):.2f}-{max(reps):.2f}, {args.reps} reps)")


if __name__ == "__main__":
    main()
