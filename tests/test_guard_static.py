"""Static rules decided in C in the library's read path (issue 14).

``Fanotify.decide_statically`` answers the events the rules decide in the
read that produced them (they are never delivered); the rest arrive as
usual.  ``Fanotify.serve_statically`` decides everything on a thread.  Each
test closes its group in a fixture and runs under a timeout; events come
from child processes.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from _perm_helpers import child

from afanotify import Event, Fanotify, InitFlag
from afanotify._static import Decision, StaticRule, StaticRules

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]


@pytest_asyncio.fixture  # asyncio only: pytest-asyncio runs in strict mode
async def make_group() -> AsyncIterator[Callable[..., Fanotify]]:
    made: list[Fanotify] = []

    def make(**kw: object) -> Fanotify:
        fan = Fanotify(InitFlag.CLASS_CONTENT, permission_timeout=5, **kw)  # type: ignore[arg-type]
        made.append(fan)
        return fan

    yield make
    for fan in made:
        fan.close()


def _files(root: Path) -> tuple[Path, Path]:
    key, txt = root / "a.key", root / "b.txt"
    key.write_text("k")
    txt.write_text("t")
    return key, txt


async def test_decided_events_are_answered_in_c_and_never_delivered(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    key, txt = _files(tmpfs)
    fan = make_group()
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    seen: list[list[Decision]] = []
    rules = StaticRules([StaticRule(False, "keys", path="*.key")], None, on_decided=seen.append)
    if not fan.decide_statically(rules):
        pytest.fail("this core has no C path (AFANOTIFY_PURE_PARSER set?)")
    delivered: list[str | None] = []

    async def consume() -> None:
        async for ev in fan:
            delivered.append(ev.path)
            ev.allow_nowait()

    task = asyncio.create_task(consume())
    try:
        denied = await child("open", key)
        allowed = await child("open", txt)  # no rule decides it: the iterator does
        for _ in range(200):
            if delivered:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert denied.errno == errno.EPERM
    assert allowed.errno == 0
    assert delivered == [str(txt)]
    assert [(d.rule.label if d.rule else None, d.allowed, d.path) for b in seen for d in b] == [
        ("keys", False, str(key))
    ]
    assert rules.hits() == [("keys", 1)]
    assert rules.denied == 1 and rules.allowed == 0
    assert fan.stats.events_read == 1  # only the delivered one became an object


async def test_serving_thread_decides_everything_and_stops_before_close(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    key, txt = _files(tmpfs)
    fan = make_group()
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    rules = StaticRules([StaticRule(False, "keys", path="*.key")], True)
    server = fan.serve_statically(rules)
    assert server is not None
    try:
        assert (await child("open", key)).errno == errno.EPERM
        assert (await child("open", txt)).errno == 0
        # Our own open is allowed, as the pipeline does (the thread is not on the loop).
        await asyncio.to_thread(lambda: key.read_text())
        # New rules between two reads.
        server.swap(StaticRules([StaticRule(False, "txt", path="*.txt")], True))
        assert (await child("open", txt)).errno == errno.EPERM
        assert (await child("open", key)).errno == 0
    finally:
        server.stop()
    assert rules.hits() == [("keys", 1), ("default allow", 1)]
    assert fan.stats.events_read == 0 and fan.stats.reads >= 1


async def test_serving_thread_refuses_a_group_read_from_the_loop(
    tmpfs: Path, make_group: Callable[..., Fanotify]
) -> None:
    fan = make_group()
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    task = asyncio.create_task(fan.receive())
    await asyncio.sleep(0.05)  # receive() registered the reader
    try:
        with pytest.raises(RuntimeError, match="nobody reads"):
            fan.serve_statically(StaticRules([], True))
    finally:
        task.cancel()


def test_rules_without_a_default_cannot_serve(tmp_path: Path) -> None:
    from afanotify._static import StaticServer

    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="default"):
            StaticServer(r, StaticRules([], None))
    finally:
        os.close(r)
        os.close(w)
