"""The path of a plain handler's event is read when first asked (``LazyPathEvent``).

Each test runs the same handler with the path read by the C walk as the
event is read (eager, ``AFANOTIFY_EAGER_PATHS=1``) and read when the
handler first asks (lazy, the default) and compares: the same value for a
file left alone; for a file renamed or deleted between the read and the
question, lazy gives what is true when asked (docs/permissions.md).  Private
tmpfs; every group closed by the fixture.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from _perm_helpers import background, child, drain, group_maker, queued_at_least, wait_for

from afanotify import Event, Fanotify, FanotifyData, _answer, _permloop, events
from afanotify._ffi import lib
from afanotify.events import LazyPathEvent

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not _permloop.AVAILABLE, reason="needs the compiled core"),
]


@pytest_asyncio.fixture  # asyncio only: pytest-asyncio runs in strict mode
async def make_group() -> AsyncIterator[Callable[..., Fanotify]]:
    with group_maker(permission_timeout=30) as make:
        yield make


async def _seen(
    make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch, root: Path,
    target: Path, lazy: bool, before: Callable[[], None] = lambda: None, *,
    thread: bool = False,
) -> tuple[str | None, bool, bool, FanotifyData]:
    """(path, path_resolved, lazy class seen, the event) as the handler saw them."""
    monkeypatch.setattr(_permloop, "LAZY_PATHS", lazy)
    fan = make_group()
    fan.mark(root, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    seen: list[tuple[str | None, bool, bool, FanotifyData]] = []

    def handler(ev: FanotifyData) -> bool:
        was_lazy = type(ev) is LazyPathEvent
        before()
        seen.append((ev.path, ev.path_resolved, was_lazy, ev))
        return True

    fan.on_permission(handler, thread=thread)
    async with background(drain(fan)):
        result = await child("open", target, timeout=20)
    fan.close()  # the next run's group is the only listener
    assert result.errno == 0
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("thread", [False, True], ids=["loop", "thread"])
async def test_lazy_path_is_the_eager_path(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
    thread: bool,
) -> None:
    target = tmpfs / "f"
    target.write_text("x")
    eager = await _seen(make_group, monkeypatch, tmpfs, target, False, thread=thread)
    lazy = await _seen(make_group, monkeypatch, tmpfs, target, True, thread=thread)
    assert eager[:3] == (str(target), True, False)
    assert lazy[:3] == (str(target), True, True)
    # Asked once, it is a plain event again, and keeps its path past the close.
    assert type(lazy[3]) is FanotifyData
    assert lazy[3].closed and lazy[3].path == str(target)


async def test_a_file_renamed_before_the_question(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
) -> None:
    target, moved = tmpfs / "f", tmpfs / "g"

    def rename() -> None:
        os.rename(target, moved)

    target.write_text("x")
    eager = await _seen(make_group, monkeypatch, tmpfs, target, False, rename)
    os.rename(moved, target)
    lazy = await _seen(make_group, monkeypatch, tmpfs, target, True, rename)
    assert eager[:2] == (str(target), True)  # the path when the event was read
    assert lazy[:2] == (str(moved), True)  # the path when asked


async def test_a_file_deleted_before_the_question(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmpfs / "f"

    def delete() -> None:
        target.unlink()

    target.write_text("x")
    eager = await _seen(make_group, monkeypatch, tmpfs, target, False, delete)
    target.write_text("x")
    lazy = await _seen(make_group, monkeypatch, tmpfs, target, True, delete)
    assert eager[:2] == (str(target), True)
    # Its last name, and not resolved: as an eager read of a deleted file.
    assert lazy[:2] == (str(target), False)


async def test_a_path_first_asked_after_the_close_is_none(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmpfs / "f"
    target.write_text("x")
    monkeypatch.setattr(_permloop, "LAZY_PATHS", True)
    fan = make_group()
    fan.mark(target, Event.OPEN_PERM)
    kept: list[FanotifyData] = []
    fan.on_permission(lambda ev: kept.append(ev) is None)
    async with background(drain(fan)):
        result = await child("open", target, timeout=20)
    assert result.errno == 0 and len(kept) == 1
    ev = kept[0]
    assert ev.closed  # answered, its fd closed: nothing to read the path from
    assert (ev.path, ev.path_resolved) == (None, False)


async def test_detach_fd_reads_the_path_first(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmpfs / "f"
    target.write_text("x")
    monkeypatch.setattr(_permloop, "LAZY_PATHS", True)
    fan = make_group()
    fan.mark(target, Event.OPEN_PERM)
    fds: list[int] = []
    kept: list[FanotifyData] = []

    def handler(ev: FanotifyData) -> bool:
        ev.allow_nowait()
        fds.append(ev.detach_fd())
        kept.append(ev)
        return True

    fan.on_permission(handler)
    async with background(drain(fan)):
        result = await child("open", target, timeout=20)
    assert result.errno == 0 and len(fds) == 1
    os.close(fds[0])  # the number may name another file from now on
    assert (kept[0].path, kept[0].path_resolved) == (str(target), True)


def test_lazy_events_compare_and_pickle_as_events(tmp_path: Path) -> None:
    import pickle

    from afanotify.events import OWN_FD

    target = tmp_path / "f"
    target.write_text("x")
    fds = [os.open(target, os.O_RDONLY) for _ in range(2)]
    try:
        a, b = (FanotifyData(fd=fds[0], _owns=OWN_FD) for _ in range(2))
        for ev in (a, b):
            object.__setattr__(ev, "__class__", LazyPathEvent)
        assert a == b and hash(a) == hash(b)
        c = FanotifyData(fd=fds[0], _owns=OWN_FD)
        object.__setattr__(c, "__class__", LazyPathEvent)
        again = pickle.loads(pickle.dumps(c))
        assert type(again) is FanotifyData and again.path == str(target)
        assert repr(c).startswith("FanotifyData(")
    finally:
        for fd in fds:
            os.close(fd)
    with pytest.raises(OSError) as info:
        os.fstat(fds[0])
    assert info.value.errno == errno.EBADF


# -- async for: IterPathEvent ------------------------------------------------


def _count_path_reads(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Patch LazyPathEvent's path read to note each read (the path it found)."""
    reads: list[str | None] = []
    real = LazyPathEvent._read_path

    def counted(self: LazyPathEvent) -> None:
        real(self)
        reads.append(FanotifyData.__dict__["path"].__get__(self))

    monkeypatch.setattr(LazyPathEvent, "_read_path", counted)
    return reads


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "dropped"])
async def test_async_for_reads_a_path_for_whoever_keeps_the_event(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
    keep: bool,
) -> None:
    # The opens wait in the kernel before the consumer starts: its first
    # step reads them all ahead (lazy), then takes them one by one (the C
    # step, then the Python one).  An event kept past the step that moves on
    # has its path, read before its fd was closed; one nobody keeps is
    # closed without a readlink.
    files = [tmpfs / f"f{i}" for i in range(12)]
    for f in files:
        f.write_text("x")
    reads = _count_path_reads(monkeypatch)
    fan = make_group()
    fan.mark(tmpfs, Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    kept: list[FanotifyData] = []
    lazy = 0

    async def consume() -> None:
        nonlocal lazy
        async for ev in fan:
            lazy += type(ev) is not FanotifyData
            if keep:
                kept.append(ev)
            ev.allow_nowait()

    opens = [asyncio.ensure_future(child("open", f, timeout=20)) for f in files]
    try:
        await queued_at_least(fan, len(files) * 24, timeout=20)
        async with background(consume()):
            results = await asyncio.gather(*opens)
            # One more open: its event moves the loop past the last of the others.
            assert (await child("open", files[0], timeout=20)).errno == 0
    finally:
        for t in opens:
            t.cancel()
    assert [r.errno for r in results] == [0] * len(files)
    # Read ahead by the consumer's first step: every event but the one that
    # step takes through receive() (which reads its path as it hands it over).
    assert lazy >= len(files) - 1
    if keep:
        assert all(ev.closed for ev in kept[:-1])
        assert sorted(ev.path for ev in kept[: len(files)]) == sorted(map(str, files))
        assert all(ev.path_resolved for ev in kept)
    else:
        # That first one, and perhaps the last (held when the group closes).
        assert len(reads) <= 2


async def test_receive_hands_over_a_read_ahead_event_with_its_path(
    tmpfs: Path, make_group: Callable[..., Fanotify],
) -> None:
    # A receiver owns its event and may close it before asking: the path of
    # an event read ahead (lazy) is read as receive() hands it over.
    target = tmpfs / "f"
    target.write_text("x")
    fan = make_group()
    fan.mark(target, Event.OPEN_PERM)
    got: list[FanotifyData] = []

    async def take_two() -> None:
        for _ in range(2):
            ev = await fan.receive()
            ev.allow_nowait()
            ev.close()
            got.append(ev)

    async with background(take_two()):
        for _ in range(2):
            assert (await child("open", target, timeout=20)).errno == 0
        await wait_for(lambda: len(got) == 2)
    assert [(type(ev), ev.path, ev.path_resolved) for ev in got] == [
        (FanotifyData, str(target), True)
    ] * 2


class _WatchedLock:
    """The events' release lock, telling when a second thread waits for it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.contended = threading.Event()

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.contended.set()
            self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


@pytest.mark.parametrize("thread", [False, True], ids=["loop", "thread"])
async def test_a_path_read_on_another_thread_is_never_another_files(
    tmpfs: Path, make_group: Callable[..., Fanotify], monkeypatch: pytest.MonkeyPatch,
    thread: bool,
) -> None:
    # The handler hands the event to a worker thread, which reads ev.path
    # while the handler returns True: the verdict's C call closes the fd.
    # The worker's readlink is held until the verdict is written (and the
    # fd's number given to another file, as another thread's open would) or
    # until the verdict waits for the lock the path read holds.  The path
    # read must be the event's file's, never the other file's.
    target, decoy = tmpfs / "target", tmpfs / "decoy"
    target.write_text("t\n")
    decoy.write_text("d\n")
    lock = _WatchedLock()
    monkeypatch.setattr(events, "_RELEASE_LOCK", lock)
    inside = threading.Event()
    answered = threading.Event()
    reused: list[int] = []

    def slow_readlink(path: str) -> str:
        inside.set()
        deadline = time.monotonic() + 10
        while not (answered.is_set() or lock.contended.is_set()):
            assert time.monotonic() < deadline, "the verdict was never written"
            time.sleep(0.001)
        return os.readlink(path)

    def reuse(real: Callable[..., int]) -> Callable[..., int]:
        def answer(group_fd: int, fd: int, response: int, close: int) -> int:
            err = real(group_fd, fd, response, close)  # writes, then closes fd
            d = os.open(decoy, os.O_RDONLY)
            if d != fd:
                os.dup2(d, fd)
                os.close(d)
            reused.append(fd)
            answered.set()
            return err
        return answer

    fake_os = types.SimpleNamespace(**{**vars(os), "readlink": slow_readlink})
    monkeypatch.setattr(events, "os", fake_os)
    monkeypatch.setattr(_permloop, "_afp_answer", reuse(_permloop._afp_answer))
    monkeypatch.setattr(_answer, "lib", types.SimpleNamespace(afp_answer=reuse(lib.afp_answer)))
    fan = make_group()
    fan.mark(target, Event.OPEN_PERM)
    seen: list[tuple[str | None, bool]] = []
    workers: list[threading.Thread] = []

    def handler(ev: FanotifyData) -> bool:
        assert type(ev) is LazyPathEvent
        worker = threading.Thread(target=lambda: seen.append((ev.path, ev.path_resolved)))
        worker.start()
        workers.append(worker)
        assert inside.wait(10)
        return True

    fan.on_permission(handler, thread=thread)
    try:
        async with background(drain(fan)):
            result = await child("open", target, timeout=20)
        workers[0].join(10)
    finally:
        for fd in reused:
            os.close(fd)
    assert result.errno == 0
    assert reused, "the verdict was not written in C"
    assert seen == [(str(target), True)]


async def test_an_async_handlers_path_is_read_before_it_awaits(
    tmpfs: Path, make_group: Callable[..., Fanotify],
) -> None:
    # The file is renamed (secret/ -> public/) while the async handler
    # awaits; the path it then asks for is the one opened, not the new one.
    (tmpfs / "secret").mkdir()
    (tmpfs / "public").mkdir()
    target = tmpfs / "secret" / "x"
    target.write_text("x")
    fan = make_group()
    fan.mark(tmpfs / "secret", Event.OPEN_PERM | Event.EVENT_ON_CHILD)
    started = asyncio.Event()
    go = asyncio.Event()
    seen: list[tuple[str | None, bool]] = []

    async def handler(ev: FanotifyData) -> bool:
        started.set()
        await go.wait()
        seen.append((ev.path, ev.path_resolved))
        return True

    fan.on_permission(handler)
    async with background(drain(fan)):
        opened = asyncio.ensure_future(child("open", target, timeout=20))
        await asyncio.wait_for(started.wait(), 20)
        target.rename(tmpfs / "public" / "x")
        go.set()
        result = await opened
    assert result.errno == 0
    assert seen == [(str(target), True)]
