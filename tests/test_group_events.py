"""The group against the real kernel: each reporting mode and mark kind, on tmpfs and ext4.

Every event here is caused by a child process (the group ignores its own
process by default), and every wait has a deadline (helpers.collect).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from helpers import CHILD_CWD, child_env, collect, in_thread, sh

from afanotify import Event, Fanotify, FanotifyData, InitFlag
from afanotify._proc import pidfd_pid

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.anyio]


async def _receive_within(fan: Fanotify, timeout: float) -> FanotifyData:
    with anyio.fail_after(timeout):
        return await fan.receive()


FID_ONLY = InitFlag.REPORT_FID
DFID_NAME = InitFlag.REPORT_DFID_NAME
DIR_EVENTS = Event.CREATE | Event.DELETE | Event.MOVE | Event.ONDIR


def _kinds(evs: list[FanotifyData]) -> list[tuple[Event, str | None, bool]]:
    """(event without ONDIR, path, is-directory) for each event."""
    return [
        (Event(e.ev_types & ~Event.ONDIR), e.path, bool(e.ev_types & Event.ONDIR)) for e in evs
    ]


def _has(bit: Event, *, path: str | None = None) -> object:
    def until(evs: list[FanotifyData]) -> bool:
        return any(e.ev_types & bit and (path is None or e.path == path) for e in evs)

    return until


# -- fd mode -------------------------------------------------------------------


async def test_fd_mode_paths_on_both_filesystems(anyfs: Path) -> None:
    target = anyfs / "f.txt"
    async with Fanotify() as fan:
        fan.mark(anyfs, Event.OPEN | Event.MODIFY | Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        assert sh(f"echo hi > {target}").returncode == 0
        evs = await collect(fan, _has(Event.CLOSE_WRITE))
    seen = Event(0)
    for e in evs:
        assert (e.path, e.path_resolved, e.fid) == (str(target), True, None)
        assert e.fd >= 0 and e.closed
        seen |= e.events
    assert Event.OPEN | Event.MODIFY | Event.CLOSE_WRITE in seen


async def test_filesystem_mark_sees_every_directory(ext4: Path) -> None:
    deep = ext4 / "a" / "b" / "c"
    deep.mkdir(parents=True)
    async with Fanotify() as fan:
        fan.mark(ext4, Event.CLOSE_WRITE, "filesystem")
        assert sh(f"echo x > {deep}/f && echo y > {ext4}/top").returncode == 0
        evs = await collect(fan, _has(Event.CLOSE_WRITE, path=f"{ext4}/top"))
    assert [e.path for e in evs] == [f"{deep}/f", f"{ext4}/top"]


async def test_mount_mark(tmpfs: Path) -> None:
    (tmpfs / "sub").mkdir()
    async with Fanotify() as fan:
        fan.mark(tmpfs, Event.CLOSE_WRITE, "mount")
        assert sh(f"echo x > {tmpfs}/sub/f").returncode == 0
        evs = await collect(fan, _has(Event.CLOSE_WRITE))
    assert evs[0].path == f"{tmpfs}/sub/f"


# -- FID modes -----------------------------------------------------------------


async def test_fid_only_reports_the_directory_of_entry_events(anyfs: Path) -> None:
    d = anyfs / "d"
    d.mkdir()
    async with Fanotify(FID_ONLY) as fan:
        assert fan.fid_mode
        fan.mark(d, DIR_EVENTS)
        script = f"cd {d} && mkdir sub && touch f && mv f g && rmdir sub && rm g"
        assert sh(script).returncode == 0
        evs = await collect(fan, lambda g: len(g) >= 5)
    # Without DIR_FID the kernel reports the directory's own handle, no name;
    # a rename inside one directory is then a single event on that directory.
    assert _kinds(evs) == [
        (Event.CREATE, str(d), True),
        (Event.CREATE, str(d), False),
        (Event.MOVE, str(d), False),
        (Event.DELETE, str(d), True),
        (Event.DELETE, str(d), False),
    ]
    for e in evs:
        assert e.fid is not None and e.dfid is None and e.name is None
        assert e.fd == -1 and e.path_resolved


async def test_fid_only_self_events_report_the_object(anyfs: Path) -> None:
    sub = anyfs / "sub"
    sub.mkdir()
    (anyfs / "f").write_text("x")
    async with Fanotify(FID_ONLY) as fan:
        fan.mark(anyfs / "f", Event.ATTRIB | Event.MODIFY | Event.CLOSE_WRITE)
        fan.mark(sub, Event.MOVE_SELF | Event.ONDIR)
        script = f"chmod 600 {anyfs}/f && echo y >> {anyfs}/f && mv {sub} {anyfs}/moved"
        assert sh(script).returncode == 0
        evs = await collect(fan, _has(Event.MOVE_SELF))
    on_file = Event(0)
    for e in evs:
        assert e.fid is not None and e.dfid is None and e.path_resolved
        if e.ev_types & Event.MOVE_SELF:
            # Resolved at read time: the directory is already at its new name.
            assert e.path == f"{anyfs}/moved"
        else:
            assert e.path == f"{anyfs}/f"
            on_file |= e.events  # the kernel may merge MODIFY and CLOSE_WRITE
    assert on_file == Event.ATTRIB | Event.MODIFY | Event.CLOSE_WRITE


async def test_dfid_name_create_delete_move_with_directories(anyfs: Path) -> None:
    async with Fanotify(DFID_NAME) as fan:
        fan.mark(anyfs, DIR_EVENTS, "filesystem")
        script = (
            f"cd {anyfs} && mkdir d && touch d/a && mv d/a b && mkdir e && mv e d/e2 "
            "&& rmdir d/e2 && rm b"
        )
        assert sh(script).returncode == 0
        evs = await collect(fan, _has(Event.DELETE, path=f"{anyfs}/b"))
    assert _kinds(evs) == [
        (Event.CREATE, f"{anyfs}/d", True),
        (Event.CREATE, f"{anyfs}/d/a", False),
        (Event.MOVED_FROM, f"{anyfs}/d/a", False),
        (Event.MOVED_TO, f"{anyfs}/b", False),
        (Event.CREATE, f"{anyfs}/e", True),
        (Event.MOVED_FROM, f"{anyfs}/e", True),
        (Event.MOVED_TO, f"{anyfs}/d/e2", True),
        (Event.DELETE, f"{anyfs}/d/e2", True),
        (Event.DELETE, f"{anyfs}/b", False),
    ]
    for e in evs:
        assert e.path_resolved and e.dir_path == os.path.dirname(e.path or "")
        assert e.dfid is not None and e.name == os.path.basename(e.path or "")


async def test_dfid_name_with_fid_reports_both_handles(tmpfs: Path) -> None:
    (tmpfs / "old").write_text("x")
    async with Fanotify(DFID_NAME | InitFlag.REPORT_FID) as fan:
        fan.mark(tmpfs, Event.CREATE | Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        assert sh(f"touch {tmpfs}/new && echo y >> {tmpfs}/old").returncode == 0
        evs = await collect(fan, _has(Event.CLOSE_WRITE, path=f"{tmpfs}/old"))
    create, close = evs[0], evs[-1]
    # An entry event names the directory only (its FID record would repeat the
    # directory, so the kernel leaves it out); a child's own event carries both.
    assert (create.events, create.path, create.path_resolved) == (
        Event.CREATE, f"{tmpfs}/new", True
    )
    assert create.dfid is not None and create.fid is None
    assert (close.events, close.path, close.name) == (Event.CLOSE_WRITE, f"{tmpfs}/old", "old")
    assert close.fid is not None and close.dfid is not None and close.fid != close.dfid


async def test_dfid_name_target_reports_the_child_handle(tmpfs: Path) -> None:
    async with Fanotify(InitFlag.REPORT_DFID_NAME_TARGET) as fan:
        fan.mark(tmpfs, Event.CREATE | Event.ONDIR | Event.EVENT_ON_CHILD)
        assert sh(f"mkdir {tmpfs}/sub").returncode == 0
        (ev,) = await collect(fan, lambda g: len(g) >= 1)
    assert (ev.events, ev.path) == (Event.CREATE | Event.ONDIR, f"{tmpfs}/sub")
    assert ev.fid is not None and ev.dfid is not None and ev.fid != ev.dfid


async def test_rename_reports_old_and_new_paths(anyfs: Path) -> None:
    (anyfs / "src").mkdir()
    (anyfs / "dst").mkdir()
    (anyfs / "src" / "f").write_text("x")
    (anyfs / "olddir").mkdir()
    async with Fanotify(DFID_NAME) as fan:
        fan.mark(anyfs, Event.RENAME | Event.ONDIR, "filesystem")
        script = f"cd {anyfs} && mv src/f dst/g && mv olddir newdir"
        assert sh(script).returncode == 0
        evs = await collect(fan, lambda g: len(g) >= 2)
    f, d = evs
    assert f.events == Event.RENAME
    assert (f.old_path, f.new_path, f.path) == (
        f"{anyfs}/src/f", f"{anyfs}/dst/g", f"{anyfs}/dst/g"
    )
    assert (f.old_name, f.new_name) == ("f", "g") and f.path_resolved
    assert d.events == Event.RENAME | Event.ONDIR
    assert (d.old_path, d.new_path) == (f"{anyfs}/olddir", f"{anyfs}/newdir")


async def test_directory_rename_invalidates_cached_directory_paths(tmpfs: Path) -> None:
    async with Fanotify(DFID_NAME) as fan:
        fan.mark(tmpfs, DIR_EVENTS, "filesystem")
        assert sh(f"mkdir {tmpfs}/d && touch {tmpfs}/d/a").returncode == 0
        await collect(fan, _has(Event.CREATE, path=f"{tmpfs}/d/a"))  # caches d
        assert sh(f"mv {tmpfs}/d {tmpfs}/e && touch {tmpfs}/e/b").returncode == 0
        evs = await collect(fan, _has(Event.CREATE, path=f"{tmpfs}/e/b"))
    assert evs[-1].dir_path == f"{tmpfs}/e"


@pytest.mark.parametrize("cache", [4096, 0])
async def test_directory_cache_staleness_when_the_move_is_not_seen(
    tmpfs: Path, cache: int
) -> None:
    (tmpfs / "d").mkdir()
    async with Fanotify(DFID_NAME, handle_cache_size=cache) as fan:
        # No MOVE/ONDIR in the mask: the group never hears that d is renamed.
        fan.mark(tmpfs, Event.CREATE, "filesystem")
        assert sh(f"touch {tmpfs}/d/a").returncode == 0
        await collect(fan, _has(Event.CREATE, path=f"{tmpfs}/d/a"))
        assert sh(f"mv {tmpfs}/d {tmpfs}/e && touch {tmpfs}/e/b").returncode == 0
        (ev,) = await collect(fan, lambda g: len(g) >= 1)
    assert ev.name == "b" and ev.path_resolved
    # A group that cannot see directory moves keeps no path from one batch to
    # the next (issue 13: a resolved path is never a stale one), cache or not.
    assert ev.path == f"{tmpfs}/e/b"


# -- pidfd ---------------------------------------------------------------------


@pytest.mark.parametrize("flags", [InitFlag(0), DFID_NAME], ids=["fd", "dfid_name"])
async def test_pidfd_refers_to_the_child(tmpfs: Path, flags: InitFlag) -> None:
    # The child waits for "go" so that it creates the file only after the mark exists.
    code = "import sys; sys.stdin.readline(); open(sys.argv[1], 'w').close(); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmpfs / "f")], stdin=subprocess.PIPE, text=True,
        env=child_env(), cwd=CHILD_CWD,
    )
    assert child.stdin is not None
    try:
        async with Fanotify(flags | InitFlag.REPORT_PIDFD) as fan:
            mask = Event.CREATE if flags else Event.CLOSE_WRITE
            fan.mark(tmpfs, mask | Event.EVENT_ON_CHILD)
            child.stdin.write("go\n")
            child.stdin.flush()
            ev = await _receive_within(fan, 5)
            with ev:
                assert ev.pid == child.pid and ev.path == str(tmpfs / "f")
                assert ev.pidfd >= 0 and pidfd_pid(ev.pidfd) == child.pid
            assert ev.closed  # the pidfd went with the event
    finally:
        child.stdin.close()
        child.wait(timeout=10)


async def test_pidfd_follows_the_process_until_it_is_reaped(tmpfs: Path) -> None:
    code = "import sys; sys.stdin.readline(); open(sys.argv[1], 'w').close(); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmpfs / "f")], stdin=subprocess.PIPE, text=True,
        env=child_env(), cwd=CHILD_CWD,
    )
    assert child.stdin is not None
    try:
        async with Fanotify(DFID_NAME | InitFlag.REPORT_PIDFD) as fan:
            fan.mark(tmpfs, Event.CREATE | Event.EVENT_ON_CHILD)
            child.stdin.write("go\n")
            child.stdin.flush()
            ev = await _receive_within(fan, 5)
            with ev:
                assert ev.path == f"{tmpfs}/f"
                assert pidfd_pid(ev.pidfd) == child.pid
                child.stdin.close()
                # waitid through the pidfd sees that exact child exit (WNOWAIT: not reaped).
                info = await in_thread(os.waitid, os.P_PIDFD, ev.pidfd, os.WEXITED | os.WNOWAIT)
                assert info is not None and info.si_pid == child.pid
                assert child.wait(timeout=10) == 0
                assert pidfd_pid(ev.pidfd) is None  # reaped: fdinfo shows Pid: -1
            assert ev.closed
    finally:
        if not child.stdin.closed:
            child.stdin.close()
        child.wait(timeout=10)
