"""Every default-verdict path, for every permission event kind.

Kinds: OPEN_PERM (open), ACCESS_PERM (read), OPEN_EXEC_PERM (exec), each on a
private tmpfs, and PRE_ACCESS (read) on the ext4 fixture.  Each group answers
with ``default_response=DENY``, so a child that gets EPERM shows that the
group wrote the default (the kernel itself would allow), and each child times
its own system call against ``permission_timeout + 1 s``.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from _perm_helpers import background, child, drain, gather, tasks, wait_for

from afanotify import Event, Fanotify, FanotifyData, InitFlag, Response

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60), pytest.mark.anyio]

T = 1.0  # permission_timeout of the groups here


@dataclass
class Kind:
    name: str
    flags: InitFlag
    mask: Event
    op: str
    files: list[Path]


def _make_files(root: Path, name: str) -> list[Path]:
    files = []
    for i in range(3):
        p = root / f"{name}{i}"
        if name == "exec":
            shutil.copy("/bin/true", p)
            p.chmod(0o755)
        else:
            p.write_text("data\n" * 100)
        files.append(p)
    return files


@pytest.fixture(params=["open", "access", "exec", "pre_access"])
def kind(request: pytest.FixtureRequest) -> Kind:
    name = request.param
    if name == "pre_access":
        root: Path = request.getfixturevalue("ext4")
        return Kind(name, InitFlag.CLASS_PRE_CONTENT, Event.PRE_ACCESS, "read",
                    _make_files(root, name))
    root = request.getfixturevalue("tmpfs")
    mask, op = {
        "open": (Event.OPEN_PERM, "open"),
        "access": (Event.ACCESS_PERM, "read"),
        "exec": (Event.OPEN_EXEC_PERM, "exec"),
    }[name]
    return Kind(name, InitFlag.CLASS_CONTENT, mask, op, _make_files(root, name))


@pytest.fixture
async def make_group(kind: Kind) -> AsyncIterator[Callable[..., Fanotify]]:
    """Makes groups for ``kind`` (its files marked, default DENY); closes them all."""
    made: list[Fanotify] = []

    def make(**kw: Any) -> Fanotify:
        kw.setdefault("permission_timeout", T)
        fan = Fanotify(kind.flags, default_response=Response.DENY, **kw)
        made.append(fan)
        for f in kind.files:
            fan.mark(f, kind.mask)
        return fan

    try:
        yield make
    finally:
        for fan in made:
            fan.close()


@pytest.fixture
def group(make_group: Callable[..., Fanotify]) -> Fanotify:
    return make_group()


async def test_handler_sleeps_forever(kind: Kind, group: Fanotify) -> None:
    async def forever(ev: FanotifyData) -> bool:
        await anyio.sleep(3600)
        return True

    group.on_permission(forever)
    async with background(drain(group)):
        result = await child(kind.op, kind.files[0])
    assert result.errno == errno.EPERM
    assert T * 0.9 <= result.elapsed <= T + 1
    assert group.permission_stats.timed_out >= 1


async def test_handler_raises(kind: Kind, group: Fanotify) -> None:
    calls: list[Event] = []

    def broken(ev: FanotifyData) -> bool:
        calls.append(ev.events)
        raise RuntimeError("policy bug")

    group.on_permission(broken)
    async with background(drain(group)):
        result = await child(kind.op, kind.files[0])
    assert result.errno == errno.EPERM
    assert result.elapsed < T * 0.9  # at once, not at the deadline
    assert calls and calls[0] == kind.mask
    assert group.permission_stats.handler_errors >= 1


async def test_consumer_cancelled(kind: Kind, group: Fanotify) -> None:
    got = anyio.Event()

    async def consumer() -> None:
        await group.receive()
        got.set()
        await anyio.sleep(3600)

    async with tasks() as ts:
        task = ts.start(consumer())
        run = ts.start(child(kind.op, kind.files[0]))
        with anyio.fail_after(10):
            await got.wait()
        task.cancel()
        result = await run.result()
    assert result.errno == errno.EPERM
    assert result.elapsed <= T + 1
    assert group.permission_stats.abandoned == 1


async def test_close_with_three_waiting(
    kind: Kind, make_group: Callable[..., Fanotify]
) -> None:
    # A long deadline here, so that a child answered before it was answered by close().
    fan = make_group(permission_timeout=20)
    held: list[FanotifyData] = []

    async def hoard() -> None:
        while True:
            held.append(await fan.receive())

    async with tasks() as ts:
        task = ts.start(hoard())
        runs = [ts.start(child(kind.op, f)) for f in kind.files]
        await wait_for(lambda: len(held) == 3, timeout=15)
        fan.close()
        results = [await r.result() for r in runs]
        task.cancel()
    assert [r.errno for r in results] == [errno.EPERM] * 3
    assert all(r.elapsed < 17 for r in results)  # answered by close, before any deadline
    assert fan.permission_stats.at_close == 3
    assert fan.permission_stats.timed_out == 0


async def test_queue_overflow(kind: Kind, make_group: Callable[..., Fanotify]) -> None:
    fan = make_group(maxsize=1)
    fan._ensure_reader()  # read, but never take from the queue
    results = await gather(*(child(kind.op, f) for f in kind.files))
    st = fan.permission_stats
    assert [r.errno for r in results] == [errno.EPERM] * 3
    assert all(r.elapsed <= T + 1 for r in results)
    assert st.dropped == 2 and st.timed_out == 1
