"""The group against the real kernel: fd mode and FID+name mode basics."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers import collect, sh

from afanotify import Event, Fanotify, InitFlag, UnsupportedFlagError

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.anyio]


async def test_fd_mode_open_modify_close_with_paths(tmpfs: Path) -> None:
    target = tmpfs / "file.txt"
    target.write_text("x")
    async with Fanotify() as fan:
        fan.mark(tmpfs, Event.OPEN | Event.MODIFY | Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        assert sh(f"echo hello >> {target}").returncode == 0
        evs = await collect(
            fan, lambda g: any(e.ev_types & Event.CLOSE_WRITE for e in g)
        )
    seen = 0
    for e in evs:
        assert e.path == str(target)
        assert e.path_resolved
        assert e.pid != os.getpid()
        seen |= e.ev_types
    assert seen & (Event.OPEN | Event.MODIFY | Event.CLOSE_WRITE) == (
        Event.OPEN | Event.MODIFY | Event.CLOSE_WRITE
    )


async def test_dfid_name_create_delete_move(tmpfs: Path) -> None:
    async with Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID) as fan:
        fan.mark(tmpfs, Event.CREATE | Event.DELETE | Event.MOVE | Event.ONDIR, "filesystem")
        script = f"mkdir {tmpfs}/d && touch {tmpfs}/d/a && mv {tmpfs}/d/a {tmpfs}/b && rm {tmpfs}/b"
        assert sh(script).returncode == 0
        evs = await collect(fan, lambda g: any(e.ev_types & Event.DELETE for e in g))
    got = [(Event(e.ev_types & ~Event.ONDIR), e.path, bool(e.ev_types & Event.ONDIR)) for e in evs]
    assert got == [
        (Event.CREATE, f"{tmpfs}/d", True),
        (Event.CREATE, f"{tmpfs}/d/a", False),
        (Event.MOVED_FROM, f"{tmpfs}/d/a", False),
        (Event.MOVED_TO, f"{tmpfs}/b", False),
        (Event.DELETE, f"{tmpfs}/b", False),
    ]


async def test_missing_path_raises_file_not_found(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        with pytest.raises(FileNotFoundError) as info:
            fan.mark(tmpfs / "nope", Event.OPEN)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(tmpfs / "nope")


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(TypeError, match="flags"):
        Fanotify("REPORT_FID")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="REPORT_DFID_NAME"):
        Fanotify(InitFlag.REPORT_NAME)
    with pytest.raises(ValueError, match="maxsize"):
        Fanotify(maxsize=0)


async def test_fid_events_need_fid_group(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        with pytest.raises(ValueError, match="FID group"):
            fan.mark(tmpfs, Event.CREATE)
        with pytest.raises(ValueError, match="kind"):
            fan.mark(tmpfs, Event.OPEN, "bogus")  # type: ignore[arg-type]


def test_unsupported_flag_error_is_oserror() -> None:
    err = UnsupportedFlagError(errno.EINVAL, "x")
    assert isinstance(err, OSError) and err.errno == errno.EINVAL
