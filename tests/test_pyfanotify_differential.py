"""afanotify.pyfanotify against the real pyfanotify 0.3.0, on the same actions.

Both listeners watch one private tmpfs; the actions run in a process that is
a descendant of neither (``detached``), and end with a sentinel file whose
event tells each side that everything before it has arrived.  Events
pyfanotify drops are allowed as extras on our side (docs/compat.md lists
them); every event pyfanotify reports must be ours too, with the same types.
"""

from __future__ import annotations

import os
import select
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_compat import Held, detached

import afanotify.pyfanotify as ours

real: Any = pytest.importorskip(
    "pyfanotify",
    reason="pyfanotify 0.3.0 is not installed: pip install '.[pyfanotify-ref]' (needs gcc)",
)

pytestmark = pytest.mark.kernel


def _collect(cli: Any, sentinel: bytes, timeout: float = 10.0) -> list[Any]:
    poll = select.poll()
    poll.register(cli.sock.fileno(), select.POLLIN)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while not any(sentinel in p for ev in got for p in ev.path):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no sentinel event before the deadline: {got!r}")
        if poll.poll(min(left, 0.5) * 1000):
            got.extend(cli.get_events())
    return got


def _keys(events: list[Any]) -> Counter[tuple[Any, ...]]:
    """One key per event bit: the kernel merges events per group as its reads fall."""
    out: Counter[tuple[Any, ...]] = Counter()
    for ev in events:
        for bit in (1 << i for i in range(64)):
            if ev.ev_types & bit:
                out[(
                    type(ev).__name__, isinstance(ev, dict), ev.fd, ev.pid, bit, ev.exe,
                    type(ev.exe).__name__, ev.cwd, ev.path,
                    tuple(type(p).__name__ for p in ev.path), tuple(ev.keys()),
                )] += 1
    return out


@pytest.fixture
def pair() -> Iterator[Callable[..., tuple[Any, Any]]]:
    """Start a real and an afanotify.pyfanotify Fanotify with the same marks and client rule."""
    made: list[tuple[Any, Any]] = []

    def factory(mark: dict[str, Any], init_fid: bool = False, **rule: Any) -> tuple[Any, Any]:
        clients = []
        for mod in (real, ours):
            fan = mod.Fanotify(init_fid=init_fid)
            fan.mark(**mark)
            fan.start()
            cli = mod.FanotifyClient(fan, **rule)
            made.append((fan, cli))
            clients.append(cli)
        return clients[0], clients[1]

    yield factory
    for fan, cli in made:
        cli.close()
        fan.stop()


@pytest.fixture
def held() -> Iterator[Held]:
    h = Held()
    yield h
    h.release()


def _collect_pid(cli: Any, pid: int, timeout: float = 10.0) -> list[Any]:
    """Events until one of ``pid``; the kernel queues them after every earlier one."""
    poll = select.poll()
    poll.register(cli.sock.fileno(), select.POLLIN)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while not any(ev.pid == pid for ev in got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no event of the sentinel process {pid}: {got!r}")
        if poll.poll(min(left, 0.5) * 1000):
            got.extend(cli.get_events())
    return got


@pytest.mark.parametrize(
    "rule",
    [{"path_pattern": "*"}, {"exe_pattern": "*"}, {"cwd_pattern": "*"},
     {"exe_pattern": "*/*sh", "cwd_pattern": "/*", "path_pattern": "*"}],
    ids=["path", "exe", "cwd", "all"],
)
def test_fd_group_events_match_pyfanotify(
    tmpfs: Path, pair: Callable[..., tuple[Any, Any]], held: Held, rule: dict[str, Any]
) -> None:
    theirs_cli, ours_cli = pair(
        {"path": str(tmpfs), "is_type": "mp",
         "ev_types": ours.FAN_OPEN | ours.FAN_CLOSE_WRITE | ours.FAN_CLOSE_NOWRITE
         | ours.FAN_MODIFY},
        **rule,
    )
    # One shell does every action with builtins and stays alive until both
    # sides have read its events; a second one writes the sentinel.
    actor = held.run(f"cd {tmpfs} && echo x > f && : < f && read line < f")
    sentinel = held.run(f"cd {tmpfs} && echo s > sentinel")
    theirs = [ev for ev in _collect_pid(theirs_cli, sentinel) if ev.pid == actor]
    mine = [ev for ev in _collect_pid(ours_cli, sentinel) if ev.pid == actor]
    assert theirs, "pyfanotify reported nothing"
    if "exe_pattern" in rule:
        assert all(ev.exe.endswith(b"sh") for ev in theirs), theirs
    if "cwd_pattern" in rule:
        assert all(ev.cwd == os.fsencode(tmpfs) for ev in theirs), theirs
    missing = set(_keys(theirs)) - set(_keys(mine))
    assert not missing, f"pyfanotify reported, we did not: {missing}"


def test_fid_group_events_match_pyfanotify(
    tmpfs: Path, pair: Callable[..., tuple[Any, Any]]
) -> None:
    theirs_cli, ours_cli = pair(
        {"path": str(tmpfs), "is_type": "fs", "ev_types": ours.FAN_ALL_FID_EVENTS},
        init_fid=True, path_pattern="*",
    )
    detached(f"cd {tmpfs} && mkdir d && echo x > d/a && mv d/a d/b && chmod 600 d/b && "
             "rm d/b && echo s > sentinel")
    theirs = _collect(theirs_cli, b"sentinel")
    mine = _collect(ours_cli, b"sentinel")
    assert theirs, "pyfanotify reported nothing"
    missing = set(_keys(theirs)) - set(_keys(mine))
    assert not missing, f"pyfanotify reported, we did not: {missing}\nours: {mine}"
