"""afanotify.pyfanotify against the real pyfanotify 0.3.0, on the same actions.

Both listeners watch one private tmpfs; the actions run in a process that is
a descendant of neither (``detached``), and end with a sentinel file whose
event tells each side that everything before it has arrived.  Events
pyfanotify drops are allowed as extras on our side (docs/compat.md lists
them); every event pyfanotify reports must be ours too, with the same types.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CHILD_CWD, child_env
from test_compat import detached

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


@pytest.mark.parametrize(
    "rule",
    [
        {"path_pattern": "*"},
        {"path_pattern": "*", "exe_pattern": "*", "cwd_pattern": "*"},
    ],
    ids=["path", "exe_cwd"],
)
def test_fd_group_events_match_pyfanotify(
    tmpfs: Path, pair: Callable[..., tuple[Any, Any]], rule: dict[str, Any]
) -> None:
    theirs_cli, ours_cli = pair(
        {"path": str(tmpfs), "is_type": "mp",
         "ev_types": ours.FAN_OPEN | ours.FAN_CLOSE_WRITE | ours.FAN_CLOSE_NOWRITE
         | ours.FAN_MODIFY},
        **rule,
    )
    # The shell stays alive a moment after the sentinel: pyfanotify reads a
    # process's exe and cwd when it handles the event, and drops the event
    # if the process is gone by then ("; true" keeps sleep from replacing it).
    detached(f"cd {tmpfs} && echo x > f && cat f > /dev/null && echo s > sentinel && "
             "(sleep 2; true) &")
    theirs = _collect(theirs_cli, b"sentinel")
    mine = _collect(ours_cli, b"sentinel")
    assert theirs, "pyfanotify reported nothing"
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


# A program as code written for pyfanotify 0.3.0 reads events: asyncio's
# add_reader on the client's socket, bytes paths decoded.  Only the import
# differs between the two runs.
_ADD_READER = r"""
import asyncio, importlib, sys
fan = importlib.import_module(sys.argv[1])
watched = sys.argv[2]

async def main():
    fanot = fan.Fanotify()
    fanot.mark(watched, is_type="mp", ev_types=fan.FAN_CLOSE_WRITE)
    fanot.start()
    cli = fan.FanotifyClient(fanot, path_pattern=watched + "/*")
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def readable():
        for i in cli.get_events():
            name = i.path[0].decode()
            print(fan.evt_to_str(i.ev_types), name, flush=True)
            if name.endswith("/sentinel"):
                done.set()

    loop.add_reader(cli.sock.fileno(), readable)
    print("ready", flush=True)
    try:
        await asyncio.wait_for(done.wait(), 20)
    finally:
        loop.remove_reader(cli.sock.fileno())
        cli.close()
        fanot.stop()

asyncio.run(main())
"""


def test_add_reader_program_runs_unchanged_under_both(tmpfs: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _ADD_READER, mod, str(tmpfs)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=child_env(), cwd=CHILD_CWD,
        )
        for mod in ("pyfanotify", "afanotify.pyfanotify")
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n", p.stderr.read() if p.stderr else ""
        detached(f"cd {tmpfs} && echo x > one && echo y > two && echo s > sentinel")
        outs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    (theirs, theirs_err), (mine, mine_err) = outs
    assert [p.returncode for p in procs] == [0, 0], theirs_err + mine_err
    assert "Traceback" not in theirs_err + mine_err
    want = [f"close_write {tmpfs}/{n}" for n in ("one", "two", "sentinel")]
    assert [ln for ln in theirs.splitlines() if "DEBUG" not in ln] == want
    assert mine.splitlines() == want
