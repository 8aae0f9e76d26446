"""Bad input gets a TypeError or ValueError naming the argument, before any kernel call.

The cases of issue 15 (item 7 and 8).  Those without the ``kernel`` marker
make no group: conftest refuses fanotify_init in them, so each error is
raised before the kernel is asked.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

import pytest
from helpers import collect, sh

from afanotify import Event, FanoRule, Fanotify, FanotifyClient, InitFlag, MarkFlag
from afanotify._errors import mark_error

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = pytest.mark.anyio


def test_an_event_mask_as_init_flags_is_refused() -> None:
    # Event.OPEN is 0x20, which is FAN_UNLIMITED_MARKS as an init flag.
    with pytest.raises(TypeError, match=r"flags must be InitFlag bits.*events go to mark\(\)"):
        Fanotify(Event.OPEN)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="flags must be InitFlag bits"):
        Fanotify(MarkFlag.MOUNT)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, 1 << 32, 1 << 70])
def test_event_flags_out_of_range_are_refused(value: int) -> None:
    with pytest.raises(ValueError, match="event_flags must be a non-negative 32-bit value"):
        Fanotify(event_flags=value)
    with pytest.raises(ValueError, match="flags must be a non-negative 32-bit value"):
        Fanotify(value)


def test_a_client_needs_a_group() -> None:
    with pytest.raises(TypeError, match="fan must be a Fanotify group, not str"):
        FanotifyClient("x", ev_types=Event.OPEN)  # type: ignore[arg-type]


def test_rule_event_bits_must_be_events() -> None:
    with pytest.raises(ValueError, match="ev_types has bits no Event names: 0x1000000000000000"):
        FanoRule("r", ev_types=1 << 60)


@pytest.mark.parametrize("arg", ["exe_pattern", "cwd_pattern", "path_pattern"])
@pytest.mark.parametrize("value", ["/a\0b", b"/a\0b"])
def test_rule_patterns_with_a_nul_byte_are_refused(arg: str, value: str | bytes) -> None:
    with pytest.raises(ValueError, match=f"{arg} contains a NUL byte"):
        FanoRule("r", **{arg: value})


def test_unmark_of_an_unmarked_path_says_unmark() -> None:
    err = mark_error(
        OSError(errno.ENOENT, "x"), "/t/f", int(MarkFlag.REMOVE), int(Event.OPEN)
    )
    assert isinstance(err, FileNotFoundError)
    assert "cannot unmark '/t/f'" in str(err) and "cannot mark" not in str(err)


@pytest.mark.parametrize(("kind", "word"), [(MarkFlag.MOUNT, "mount"),
                                            (MarkFlag.FILESYSTEM, "filesystem")])
def test_exdev_on_a_mount_or_filesystem_mark_advises_inode_marks(
    kind: MarkFlag, word: str
) -> None:
    # A btrfs subvolume: issue 15 advised "use a mount mark", which fails the same way.
    err = mark_error(OSError(errno.EXDEV, "x"), "/sub", int(MarkFlag.ADD | kind), 1)
    text = str(err)
    assert f"with a {word} mark" in text and "kind='inode'" in text
    assert "use an inode or mount mark" not in text


def test_exdev_on_an_inode_mark_does_not_advise_a_mount_mark() -> None:
    err = mark_error(OSError(errno.EXDEV, "x"), "/sub/f", int(MarkFlag.ADD), 1)
    assert "mount mark" not in str(err) and "without FID flags" in str(err)


# -- with a group (the kernel is only asked for the group itself) -----------------------


@pytest.mark.kernel
@pytest.mark.parametrize("flags", [InitFlag(0), InitFlag.REPORT_DFID_NAME], ids=["fd", "fid"])
async def test_a_nul_byte_in_a_path_marks_nothing(tmpfs: Path, flags: InitFlag) -> None:
    # Issue 15: fd mode marked ".../ba"; FID mode placed the mark, then raised.
    (tmpfs / "ba").mkdir()
    async with Fanotify(flags) as fan:
        for path in (f"{tmpfs}/ba\0x", os.fsencode(f"{tmpfs}/ba\0x")):
            with pytest.raises(ValueError, match="path contains a NUL byte"):
                fan.mark(path, Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        # Nothing was marked: the next event comes from a sentinel mark.
        fan.mark(tmpfs, Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        assert sh(f"touch {tmpfs}/ba/inside {tmpfs}/sentinel").returncode == 0
        evs = await collect(fan, lambda g: any("sentinel" in (e.path or "") for e in g))
        assert [e.path for e in evs] == [f"{tmpfs}/sentinel"]


@pytest.mark.kernel
async def test_mark_none_is_a_type_error(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        for call in (fan.mark, fan.unmark):
            with pytest.raises(TypeError, match=r"os\.PathLike, not NoneType"):
                call(None, Event.OPEN)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="events must be Event bits"):
            fan.mark(tmpfs, InitFlag.REPORT_FID)
        with pytest.raises(ValueError, match="dirfd must be an open directory fd"):
            fan.mark("x", Event.OPEN, dirfd=-5)


@pytest.mark.kernel
async def test_unmark_of_an_unmarked_path_is_explained(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        with pytest.raises(FileNotFoundError, match=r"cannot unmark .*has no mark of this kind"):
            fan.unmark(tmpfs, Event.OPEN)


@pytest.fixture
def overlay(tmpfs: Path) -> Path:
    """An overlayfs over two directories of the private tmpfs; unmounted afterwards."""
    for d in ("lower", "upper", "work", "merged"):
        (tmpfs / d).mkdir()
    merged = tmpfs / "merged"
    subprocess.run(
        ["mount", "-t", "overlay", "afanotify-ovl", "-o",
         f"lowerdir={tmpfs}/lower,upperdir={tmpfs}/upper,workdir={tmpfs}/work", str(merged)],
        check=True,
    )
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


@pytest.mark.kernel
async def test_overlayfs_fid_mark_warns_that_paths_stay_unresolved(
    overlay: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 15: every path stayed unresolved, with no warning.
    with caplog.at_level(logging.WARNING, logger="afanotify"):
        async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
            try:
                fan.mark(overlay, Event.CREATE | Event.EVENT_ON_CHILD)
            except OSError as exc:  # a kernel that cannot report overlayfs handles at all
                pytest.skip(f"this kernel refuses FID marks on overlayfs: {exc}")
            assert sh(f"touch {overlay}/a").returncode == 0
            (ev,) = await collect(fan, lambda g: len(g) >= 1)
    resolvable = ev.path_resolved
    warned = "cannot be resolved" in caplog.text
    # The warning is given exactly when the kernel's handles cannot be opened.
    assert warned is not resolvable, (ev, caplog.text)
    if warned:
        assert str(overlay) in caplog.text and "overlay" in caplog.text
