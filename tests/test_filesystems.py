"""Filesystems FID groups cannot fully serve: btrfs subvolumes, FUSE, overlayfs.

Each gets a clear error that names the fix, or events whose paths resolve,
or a warning that they will not.  btrfs needs mkfs.btrfs (btrfs-progs) and
FUSE needs bindfs; without them the test skips, saying so (.ci/run installs
both where it can).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import collect, sh

from afanotify import Event, Fanotify, InitFlag

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60), pytest.mark.anyio]


@pytest.fixture
def btrfs_subvolume() -> Iterator[Path]:
    """A subvolume on a loop-mounted btrfs image; unmounted and deleted afterwards."""
    mkfs = shutil.which("mkfs.btrfs")
    btrfs = shutil.which("btrfs")
    if mkfs is None or btrfs is None:
        pytest.skip("btrfs-progs (mkfs.btrfs) is not installed")
    work = Path(tempfile.mkdtemp(prefix="afanotify-btrfs-"))
    image, mnt = work / "fs.img", work / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(160 * 1024 * 1024)
    subprocess.run([mkfs, "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        subprocess.run([btrfs, "subvolume", "create", str(mnt / "sub")], check=True,
                       capture_output=True)
        yield mnt / "sub"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("kind", ["mount", "filesystem"])
def test_btrfs_subvolume_mount_or_filesystem_mark_advises_inode_marks(
    btrfs_subvolume: Path, kind: str
) -> None:
    # Issue 15: "use a mount mark" was advised, and the mount mark failed the same way.
    with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        with pytest.raises(OSError) as info:
            fan.mark(btrfs_subvolume, Event.CLOSE_WRITE, kind)  # type: ignore[arg-type]
    text = str(info.value)
    assert f"with a {kind} mark" in text and "kind='inode'" in text, text


async def test_btrfs_subvolume_inode_marks_work_as_advised(btrfs_subvolume: Path) -> None:
    (btrfs_subvolume / "d").mkdir()
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(btrfs_subvolume / "d", Event.CREATE | Event.EVENT_ON_CHILD)
        assert sh(f"touch {btrfs_subvolume}/d/new").returncode == 0
        (ev,) = await collect(fan, lambda g: len(g) >= 1)
    assert ev.path == f"{btrfs_subvolume}/d/new" and ev.path_resolved


def test_a_mount_mark_with_directory_events_is_refused_before_the_kernel(tmpfs: Path) -> None:
    # The kernel's EINVAL read as "too old a kernel"; the mark kind is the reason.
    with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        with pytest.raises(ValueError, match="cannot be watched through a mount mark"):
            fan.mark(tmpfs, Event.CREATE, "mount")


@pytest.fixture
def fuse_dir(tmpfs: Path) -> Iterator[Path]:
    """A bindfs (FUSE) view of a directory of the private tmpfs; unmounted afterwards."""
    bindfs = shutil.which("bindfs")
    if bindfs is None:
        pytest.skip("bindfs (a FUSE filesystem) is not installed")
    (tmpfs / "src").mkdir()
    (tmpfs / "view").mkdir()
    subprocess.run([bindfs, str(tmpfs / "src"), str(tmpfs / "view")], check=True)
    try:
        yield tmpfs / "view"
    finally:
        subprocess.run(["umount", "-l", str(tmpfs / "view")], check=False)


async def test_fuse_fd_mode_reports_paths(fuse_dir: Path) -> None:
    async with Fanotify() as fan:
        fan.mark(fuse_dir, Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        assert sh(f"echo x > {fuse_dir}/f").returncode == 0
        (ev,) = await collect(fan, lambda g: len(g) >= 1)
    assert ev.path == f"{fuse_dir}/f"


async def test_fuse_fid_mark_resolves_paths_or_warns(
    fuse_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="afanotify"):
        async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
            try:
                fan.mark(fuse_dir, Event.CREATE | Event.EVENT_ON_CHILD)
            except OSError as exc:
                # Refused: the message must name the way out.
                assert "without FID flags" in str(exc), exc
                return
            assert sh(f"touch {fuse_dir}/a").returncode == 0
            (ev,) = await collect(fan, lambda g: len(g) >= 1)
    warned = "cannot be resolved" in caplog.text
    assert warned is not ev.path_resolved, (ev, caplog.text)
