"""Edge cases against the real kernel: objects gone before the read, our own
events, queue overflow, and FS_ERROR from a corrupted ext4 image."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import collect, run_in_child, sh

from afanotify import Event, Fanotify, InitFlag

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.anyio]


# -- objects that no longer exist ----------------------------------------------


async def test_fd_mode_file_deleted_before_read(anyfs: Path) -> None:
    f = anyfs / "gone"
    async with Fanotify() as fan:
        fan.mark(anyfs, Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        assert sh(f"echo x > {f} && rm {f}").returncode == 0
        (ev,) = await collect(fan, lambda g: len(g) >= 1)
    # The event fd still refers to the unlinked file; its last name is kept,
    # without the kernel's " (deleted)" suffix, and marked unresolved.
    assert (ev.events, ev.path, ev.path_resolved) == (Event.CLOSE_WRITE, str(f), False)


async def test_fid_only_deleted_file_still_yields_its_events(anyfs: Path) -> None:
    f = anyfs / "gone"
    f.write_text("x")
    async with Fanotify(InitFlag.REPORT_FID) as fan:
        fan.mark(f, Event.CLOSE_WRITE | Event.ATTRIB | Event.DELETE_SELF)
        assert sh(f"echo y >> {f} && rm {f}").returncode == 0
        evs = await collect(fan, lambda g: any(e.ev_types & Event.DELETE_SELF for e in g))
    seen = Event(0)
    for e in evs:
        # The handle cannot be opened any more: no path, but the event and its handle arrive.
        assert e.fid is not None and e.path is None and not e.path_resolved
        seen |= e.events
    assert Event.CLOSE_WRITE | Event.DELETE_SELF in seen  # ATTRIB: the link count changed
    assert Event.ATTRIB in seen


async def test_dfid_name_in_a_deleted_directory(anyfs: Path) -> None:
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(anyfs, Event.CREATE | Event.DELETE | Event.ONDIR, "filesystem")
        script = f"cd {anyfs} && mkdir d && touch d/a && rm d/a && rmdir d"
        assert sh(script).returncode == 0
        evs = await collect(fan, lambda g: len(g) >= 4)
    mkdir, create, delete, rmdir = evs
    assert (mkdir.events, mkdir.path, mkdir.path_resolved) == (
        Event.CREATE | Event.ONDIR, f"{anyfs}/d", True
    )
    for ev, bit in ((create, Event.CREATE), (delete, Event.DELETE)):
        # d is gone when we read: its handle does not resolve.  The name and the
        # directory's handle are still reported, the path is only the name.
        assert ev.events == bit
        assert (ev.name, ev.path, ev.dir_path, ev.path_resolved) == ("a", "a", None, False)
        assert ev.dfid is not None and ev.dfid != mkdir.dfid
    assert (rmdir.events, rmdir.path, rmdir.path_resolved) == (
        Event.DELETE | Event.ONDIR, f"{anyfs}/d", True
    )


# -- our own events ------------------------------------------------------------


@pytest.mark.parametrize("ignore_own", [True, False])
async def test_own_events(tmpfs: Path, ignore_own: bool) -> None:
    mine, theirs = tmpfs / "mine", tmpfs / "theirs"
    async with Fanotify(ignore_own=ignore_own) as fan:
        fan.mark(tmpfs, Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        mine.write_text("ours")  # queued first
        assert sh(f"echo x > {theirs}").returncode == 0
        evs = await collect(fan, lambda g: any(e.path == str(theirs) for e in g))
        own = fan.stats.own_events
    if ignore_own:
        assert [e.path for e in evs] == [str(theirs)]
        assert own == 1
    else:
        assert (evs[0].path, evs[0].pid) == (str(mine), os.getpid())
        assert [e.path for e in evs] == [str(mine), str(theirs)]
        assert own == 0


@pytest.mark.parametrize("ignore_own", [True, False])
async def test_own_events_fid_mode(tmpfs: Path, ignore_own: bool) -> None:
    # The decoder fills FID paths in its walk; own events between others
    # must still be dropped (and counted), the rest keep their paths.
    async with Fanotify(InitFlag.REPORT_DFID_NAME, ignore_own=ignore_own) as fan:
        fan.mark(tmpfs, Event.CREATE, kind="filesystem")
        assert sh(f"touch {tmpfs}/t1").returncode == 0
        (tmpfs / "mine").write_text("ours")
        assert sh(f"touch {tmpfs}/t2").returncode == 0
        evs = await collect(fan, lambda g: any(e.name == "t2" for e in g))
        own = fan.stats.own_events
    expected = ["t1", "t2"] if ignore_own else ["t1", "mine", "t2"]
    assert [e.name for e in evs] == expected
    assert [e.path for e in evs] == [f"{tmpfs}/{n}" for n in expected]
    assert all(e.path_resolved and e.dir_path == str(tmpfs) for e in evs)
    assert own == (1 if ignore_own else 0)


async def test_directory_renamed_mid_batch_paths_follow(tmpfs: Path) -> None:
    # d's path is cached from a first batch; then one batch: d renamed to e,
    # a file created in e.  That file must not get d's cached path.
    (tmpfs / "d").mkdir()
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(tmpfs, Event.CREATE | Event.MOVED_TO | Event.ONDIR, kind="filesystem")
        assert sh(f"touch {tmpfs}/d/a").returncode == 0
        first = await collect(fan, lambda g: any(e.name == "a" for e in g))
        assert [e.path for e in first] == [f"{tmpfs}/d/a"]
        assert sh(f"mv {tmpfs}/d {tmpfs}/e && touch {tmpfs}/e/b").returncode == 0
        evs = await collect(fan, lambda g: any(e.name == "b" for e in g))
    assert [(e.name, e.path) for e in evs] == [("e", f"{tmpfs}/e"), ("b", f"{tmpfs}/e/b")]


# -- overflow ------------------------------------------------------------------

_MANY_FILES = """
import os, sys
d = sys.argv[1]
for i in range(int(sys.argv[2])):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
"""


def _max_queued() -> int:
    return int(Path("/proc/sys/fs/fanotify/max_queued_events").read_text())


async def test_overflow_surfaces_as_an_event_and_is_counted(tmpfs: Path) -> None:
    limit = _max_queued()
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(tmpfs, Event.CREATE | Event.EVENT_ON_CHILD)
        # Nothing reads while the child runs: the kernel queue fills up.
        r = run_in_child(_MANY_FILES, str(tmpfs), str(limit + 2000), timeout=60)
        assert r.returncode == 0, r.stderr
        evs = await collect(fan, lambda g: bool(g) and bool(g[-1].ev_types & Event.Q_OVERFLOW))
        stats = fan.stats
    overflow = evs[-1]
    assert overflow.events == Event.Q_OVERFLOW
    assert (overflow.fd, overflow.path, overflow.fid, overflow.dfid) == (-1, None, None, None)
    assert len(evs) == limit + 1  # every queued event, then the overflow marker
    assert [e.name for e in evs[:3]] == ["f0", "f1", "f2"]
    assert stats.overflows == 1 and stats.events_read == limit + 1


async def test_overflow_in_fd_mode(tmpfs: Path) -> None:
    limit = _max_queued()
    async with Fanotify() as fan:
        fan.mark(tmpfs, Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        r = run_in_child(_MANY_FILES, str(tmpfs), str(limit + 100), timeout=60)
        assert r.returncode == 0, r.stderr
        evs = await collect(fan, lambda g: bool(g) and bool(g[-1].ev_types & Event.Q_OVERFLOW))
        assert fan.stats.overflows == 1
    assert len(evs) == limit + 1
    assert all(e.closed for e in evs)  # every event fd was closed


# -- FS_ERROR ------------------------------------------------------------------


@pytest.fixture
def corrupt_ext4() -> Iterator[Path]:
    """An ext4 filesystem with a directory entry whose inode was wiped.

    Built with mkfs, filled, unmounted; debugfs ``clri`` zeroes the inode of
    d/f2 (the entry in d stays), and the image is mounted with
    errors=continue, so looking up d/f2 makes ext4 report an error and keep going.
    """
    work = tempfile.mkdtemp(prefix="afanotify-fserr-")
    image, mnt = os.path.join(work, "fs.img"), os.path.join(work, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    mounted = False
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
        mounted = True
        os.mkdir(f"{mnt}/d")
        for i in range(3):
            Path(f"{mnt}/d/f{i}").write_text("x")
        subprocess.run(["umount", mnt], check=True)
        mounted = False
        subprocess.run(
            ["debugfs", "-w", "-R", "clri d/f2", image], check=True, capture_output=True
        )
        subprocess.run(["mount", "-o", "loop,errors=continue", image, mnt], check=True)
        mounted = True
        yield Path(mnt)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


async def test_fs_error_from_a_corrupted_ext4(corrupt_ext4: Path) -> None:
    async with Fanotify(InitFlag.REPORT_FID) as fan:
        fan.mark(corrupt_ext4, Event.FS_ERROR, "filesystem")
        r = sh(f"stat {corrupt_ext4}/d/f2")
        assert r.returncode != 0 and "Structure needs cleaning" in r.stderr
        (ev,) = await collect(fan, lambda g: len(g) >= 1)
    assert ev.events == Event.FS_ERROR
    assert ev.error == errno.EUCLEAN and ev.error_count is not None and ev.error_count >= 1
    # The record names the inode ext4 blamed: the directory holding the bad entry.
    assert ev.fid is not None and ev.fd == -1
    assert (ev.path, ev.path_resolved) == (f"{corrupt_ext4}/d", True)
