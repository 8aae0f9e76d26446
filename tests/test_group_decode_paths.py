"""The group's two decoders (C batch decoder and pure parser) give the same events."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import _buffers
import anyio
import pytest
from helpers import collect, is_open, open_fd_count, run_in_child, sh

from afanotify import Event, Fanotify, InitFlag

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.anyio]


@pytest.fixture(params=["fast", "pure"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "pure":
        monkeypatch.setenv("AFANOTIFY_PURE_PARSER", "1")
    else:
        monkeypatch.delenv("AFANOTIFY_PURE_PARSER", raising=False)
    return str(request.param)


def _check_decoder(fan: Fanotify, decoder: str) -> None:
    assert (fan._pipeline.fast is not None) == (decoder == "fast")


async def test_fd_mode_paths_and_deleted_files(tmpfs: Path, decoder: str) -> None:
    async with Fanotify() as fan:
        _check_decoder(fan, decoder)
        fan.mark(tmpfs, Event.CLOSE_WRITE, "mount")
        script = f"for i in 1 2 3; do : > {tmpfs}/f$i; done; : > {tmpfs}/gone; rm {tmpfs}/gone"
        assert sh(script).returncode == 0
        evs = await collect(fan, lambda g: len(g) == 4)
    got = [(e.path, e.path_resolved, e.ev_types, e.fd >= 0) for e in evs]
    assert got == [
        (f"{tmpfs}/f1", True, Event.CLOSE_WRITE, True),
        (f"{tmpfs}/f2", True, Event.CLOSE_WRITE, True),
        (f"{tmpfs}/f3", True, Event.CLOSE_WRITE, True),
        (f"{tmpfs}/gone", False, Event.CLOSE_WRITE, True),
    ]
    assert all(e.closed for e in evs)


async def test_fid_mode_paths(tmpfs: Path, decoder: str) -> None:
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        _check_decoder(fan, decoder)
        fan.mark(tmpfs, Event.CREATE | Event.DELETE | Event.ONDIR, "filesystem")
        assert sh(f"mkdir {tmpfs}/d && touch {tmpfs}/d/a && rm {tmpfs}/d/a").returncode == 0
        evs = await collect(fan, lambda g: len(g) == 3)
    got = [(e.ev_types, e.path, e.dir_path, e.name, e.path_resolved, e.fd) for e in evs]
    assert got == [
        (Event.CREATE | Event.ONDIR, f"{tmpfs}/d", str(tmpfs), "d", True, -1),
        (Event.CREATE, f"{tmpfs}/d/a", f"{tmpfs}/d", "a", True, -1),
        (Event.DELETE, f"{tmpfs}/d/a", f"{tmpfs}/d", "a", True, -1),
    ]


async def test_events_past_a_full_queue_arrive_in_order(tmpfs: Path, decoder: str) -> None:
    # maxsize 3: the group holds the rest of each batch and pauses its reader.
    async with Fanotify(InitFlag.REPORT_DFID_NAME, maxsize=3) as fan:
        _check_decoder(fan, decoder)
        fan.mark(tmpfs, Event.CREATE, "filesystem")
        assert sh(f"cd {tmpfs} && touch $(seq -f 'n%03g' 1 50)").returncode == 0
        names: list[str | None] = []
        async for ev in fan:
            names.append(ev.name)
            if len(names) == 50:
                break
    assert names == [f"n{i:03d}" for i in range(1, 51)]


async def test_held_events_stay_bounded_when_the_consumer_yields(tmpfs: Path) -> None:
    # A consumer that awaits between events lets the loop poll the group fd
    # while the queue is full: the group must not read the kernel's backlog
    # into memory then.  At most one read's worth of events is held.
    async with Fanotify(InitFlag.REPORT_DFID_NAME, maxsize=10, buffer_size=4096) as fan:
        fan.mark(tmpfs, Event.CREATE, "filesystem")
        assert sh(f"cd {tmpfs} && touch $(seq -f 'n%04g' 1 600)").returncode == 0
        most_held = got = 0
        async for _ev in fan:
            got += 1
            most_held = max(most_held, len(fan._held))
            await anyio.sleep(0)
            if got == 600:
                break
    assert most_held <= 4096 // 24


async def test_fd_mode_non_ascii_and_undecodable_names(tmpfs: Path, decoder: str) -> None:
    names = [b"plain", "caf\u00e9".encode(), b"bad\xff"]
    async with Fanotify() as fan:
        _check_decoder(fan, decoder)
        fan.mark(tmpfs, Event.CLOSE_WRITE, "mount")
        code = (
            "import os, sys\n"
            "for n in sys.argv[2:]:\n"
            "    os.close(os.open(os.path.join(os.fsencode(sys.argv[1]), bytes.fromhex(n)),"
            " os.O_CREAT | os.O_WRONLY))\n"
        )
        proc = run_in_child(code, str(tmpfs), *(n.hex() for n in names))
        assert proc.returncode == 0, proc.stderr
        evs = await collect(fan, lambda g: len(g) == len(names))
    assert [e.path for e in evs] == [
        os.fsdecode(os.path.join(os.fsencode(tmpfs), n)) for n in names
    ]
    assert all(e.path_resolved for e in evs)


async def test_iterating_releases_each_event_fd_when_moving_on(tmpfs: Path, decoder: str) -> None:
    async with Fanotify() as fan:
        _check_decoder(fan, decoder)
        fan.mark(tmpfs, Event.CLOSE_WRITE, "mount")
        assert sh(f"cd {tmpfs} && touch $(seq -f 'n%03g' 1 20)").returncode == 0
        before = open_fd_count()
        seen = []
        async for ev in fan:
            assert not ev.closed
            seen.append(ev)
            if len(seen) == 20:
                break
        assert all(e.closed for e in seen[:-1])
        assert not seen[-1].closed
        seen[-1].close()
        assert open_fd_count() <= before


@pytest.mark.parametrize("fid", [False, True], ids=["fd-mode", "fid-mode"])
async def test_events_are_left_out_of_the_cyclic_collector(tmpfs: Path, fid: bool) -> None:
    # Frozen events holding only ints, strs and handles: reference counting
    # frees them, and a collection need not scan thousands of them per batch.
    async with Fanotify(InitFlag.REPORT_DFID_NAME if fid else InitFlag.CLASS_NOTIF) as fan:
        assert fan._pipeline.fast is not None and fan._pipeline.fast.untrack
        fan.mark(tmpfs, Event.CREATE if fid else Event.CLOSE_WRITE, "filesystem")
        assert sh(f"touch {tmpfs}/a {tmpfs}/b").returncode == 0
        evs = await collect(fan, lambda g: len(g) == 2)
    assert [e.path for e in evs] == [f"{tmpfs}/a", f"{tmpfs}/b"]
    assert not any(gc.is_tracked(e) for e in evs)


def test_malformed_event_is_counted_logged_and_releases_what_it_holds(
    decoder: str, pipe_fds: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    # A kernel never sends one; a synthetic batch through the group's own path.
    r1, _, r2, _ = pipe_fds
    mask = int(Event.CLOSE_WRITE)
    bad = _buffers.event(mask, _buffers.pidfd(r2), _buffers.mnt(0, length=8), fd=r1)
    good = _buffers.event(mask)
    with Fanotify() as fan:
        _check_decoder(fan, decoder)
        fan._handle_batch(memoryview(bad + good))
        assert fan.stats.parse_errors == 1
        assert len(fan._queue) == 1
    assert not is_open(r1) and not is_open(r2)
    assert "malformed fanotify event" in caplog.text
