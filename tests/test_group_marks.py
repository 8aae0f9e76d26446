"""Mark variants against the real kernel: ignore masks (both styles), evictable
marks, mount-namespace marks with MNT_ATTACH / MNT_DETACH, unmark() and flush(),
and marks on symbolic links (dont_follow)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from helpers import collect, in_thread, sh

from afanotify import Event, Fanotify, FanotifyData, InitFlag

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

OPEN_CLOSE = Event.OPEN | Event.CLOSE_NOWRITE | Event.EVENT_ON_CHILD


def _fdinfo_marks(fan: Fanotify) -> list[dict[str, str]]:
    """The group's marks as the kernel lists them in /proc/self/fdinfo."""
    marks = []
    with open(f"/proc/self/fdinfo/{fan.fileno()}") as f:
        for line in f:
            if line.startswith("fanotify ") and "mflags:" in line:
                marks.append(dict(w.split(":", 1) for w in line.split()[1:] if ":" in w))
    return marks


def _opens(evs: list[FanotifyData]) -> list[tuple[Event, str | None]]:
    return [(e.events, e.path) for e in evs]


def _per_path(evs: list[FanotifyData]) -> dict[str | None, Event]:
    """The events seen per path (the kernel merges queued events on one file)."""
    out: dict[str | None, Event] = {}
    for e in evs:
        out[e.path] = out.get(e.path, Event(0)) | e.events
    return out


def _until_path(path: Path) -> object:
    return lambda evs: any(e.path == str(path) and e.ev_types & Event.CLOSE_NOWRITE for e in evs)


# -- ignore masks --------------------------------------------------------------


@pytest.mark.parametrize("style", ["new", "old"])
async def test_ignore_mask_on_a_file(tmpfs: Path, style: str) -> None:
    a, b = tmpfs / "a", tmpfs / "b"
    a.write_text("a")
    b.write_text("b")
    async with Fanotify() as fan:
        fan.mark(tmpfs, OPEN_CLOSE)
        fan.mark(a, Event.OPEN, ignore=True, ignore_style=style)  # type: ignore[arg-type]
        expected_flag = "400" if style == "new" else "0"
        assert {m["mflags"] for m in _fdinfo_marks(fan) if m["mask"] == "0"} == {expected_flag}
        assert sh(f"cat {a} {b} >/dev/null").returncode == 0
        evs = await collect(fan, _until_path(b))
    assert _per_path(evs) == {
        str(a): Event.CLOSE_NOWRITE,  # a's OPEN was ignored, its close was not
        str(b): Event.OPEN | Event.CLOSE_NOWRITE,
    }


@pytest.mark.parametrize("survive", [False, True])
async def test_old_style_ignore_mask_and_modification(tmpfs: Path, survive: bool) -> None:
    a, b = tmpfs / "a", tmpfs / "b"
    a.write_text("a")
    b.write_text("b")
    async with Fanotify() as fan:
        fan.mark(tmpfs, Event.OPEN | Event.EVENT_ON_CHILD)
        fan.mark(a, Event.OPEN, ignore=True, ignore_style="old", survive_modify=survive)
        # Read a (ignored), modify it, read it again, then read b as the sentinel.
        script = f"cat {a} >/dev/null; echo x >> {a}; cat {a} >/dev/null; cat {b} >/dev/null"
        assert sh(script).returncode == 0
        evs = await collect(fan, lambda g: any(e.path == str(b) for e in g))
    if survive:
        assert _opens(evs) == [(Event.OPEN, str(b))]
    else:
        # A modification clears an IGNORED_MASK that does not survive it.
        assert _opens(evs) == [(Event.OPEN, str(a)), (Event.OPEN, str(b))]


async def test_new_style_ignore_on_a_directory_covers_its_children(tmpfs: Path) -> None:
    quiet, loud = tmpfs / "quiet", tmpfs / "loud"
    quiet.mkdir()
    loud.mkdir()
    (quiet / "x").write_text("x")
    (loud / "y").write_text("y")
    async with Fanotify() as fan:
        fan.mark(tmpfs, Event.OPEN | Event.CLOSE_NOWRITE, "mount")
        fan.mark(
            quiet,
            Event.OPEN | Event.CLOSE_NOWRITE | Event.ONDIR | Event.EVENT_ON_CHILD,
            ignore=True,
            survive_modify=True,
        )
        script = f"cat {quiet}/x >/dev/null; ls {quiet} >/dev/null; cat {loud}/y >/dev/null"
        assert sh(script).returncode == 0
        evs = await collect(fan, _until_path(loud / "y"))
    assert _per_path(evs) == {f"{loud}/y": Event.OPEN | Event.CLOSE_NOWRITE}


async def test_new_style_ignore_on_a_directory_needs_survive_modify(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        with pytest.raises(IsADirectoryError, match="survive_modify=True") as info:
            fan.mark(tmpfs, Event.OPEN | Event.ONDIR, ignore=True)
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmpfs)


async def test_mixing_ignore_styles_is_explained(tmpfs: Path) -> None:
    (tmpfs / "f").write_text("x")
    async with Fanotify() as fan:
        fan.mark(tmpfs / "f", Event.OPEN, ignore=True)
        with pytest.raises(FileExistsError, match="ignore_style") as info:
            fan.mark(tmpfs / "f", Event.OPEN, ignore=True, ignore_style="old")
    assert info.value.errno == errno.EEXIST


# -- evictable marks -----------------------------------------------------------


async def test_evictable_mark_reports_events_and_is_evictable(anyfs: Path) -> None:
    f = anyfs / "f"
    f.write_text("x")
    async with Fanotify() as fan:
        fan.mark(f, Event.CLOSE_WRITE, evictable=True)
        (mark,) = _fdinfo_marks(fan)
        assert int(mark["mflags"], 16) & 0x200  # FAN_MARK_EVICTABLE, as the kernel keeps it
        assert sh(f"echo y >> {f}").returncode == 0
        (ev,) = await collect(fan, lambda g: len(g) >= 1)
        assert (ev.events, ev.path) == (Event.CLOSE_WRITE, str(f))
        # The kernel will not turn a pinned mark into an evictable one or back.
        fan.mark(anyfs, Event.OPEN)
        with pytest.raises(FileExistsError, match="evictable"):
            fan.mark(anyfs, Event.CLOSE_WRITE, evictable=True)
        with pytest.raises(ValueError, match="evictable"):
            fan.mark(anyfs, Event.OPEN, "filesystem", evictable=True)


# -- mount namespace marks -----------------------------------------------------

_MNT_CHILD = """
set -e
echo ready
read cmd
mount -t tmpfs afanotify-child "$1"
echo mounted
read cmd
umount "$1"
echo unmounted
read cmd
"""


async def test_mntns_mark_reports_attach_and_detach(tmpfs: Path) -> None:
    target = tmpfs / "inner"
    target.mkdir()
    # A child in its own mount namespace (private propagation, so nothing leaks
    # into ours) mounts and unmounts a tmpfs when told to on stdin.
    child = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _MNT_CHILD, "sh", str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout

    async def step(expect: str) -> None:
        stdin.write("go\n")
        stdin.flush()
        line = await in_thread(stdout.readline, timeout=10)
        assert line == expect + "\n"

    try:
        line = await in_thread(stdout.readline, timeout=10)
        assert line == "ready\n"
        async with Fanotify(InitFlag.REPORT_MNT) as fan:
            fan.mark(f"/proc/{child.pid}/ns/mnt", Event.MNT_ATTACH | Event.MNT_DETACH, "mntns")
            await step("mounted")
            (attach,) = await collect(fan, lambda g: len(g) >= 1)
            await step("unmounted")
            (detach,) = await collect(fan, lambda g: len(g) >= 1)
        assert attach.events == Event.MNT_ATTACH and detach.events == Event.MNT_DETACH
        assert attach.mnt_id is not None and attach.mnt_id == detach.mnt_id
        # Caused by the child's mount(8) and umount(8), not by us; no fd.
        assert attach.pid not in (0, os.getpid()) and attach.fd == -1 and attach.path is None
    finally:
        stdin.close()
        assert child.wait(timeout=10) in (0, 1)
        stdout.close()
    # The child's mount never appeared in our namespace.
    assert str(target) not in Path("/proc/self/mounts").read_text()


# -- removing marks --------------------------------------------------------------
#
# "No event" is proven without sleeping: after the action whose event must not
# come, a second action on a still-marked sentinel is made by the same process.
# The kernel queues a group's events in order, so once the sentinel's event
# is here, an event for the first action would already have arrived.


async def test_unmark_removes_only_the_named_events(tmpfs: Path) -> None:
    a, sentinel = tmpfs / "a", tmpfs / "sentinel"
    a.write_text("a")
    sentinel.write_text("s")
    async with Fanotify() as fan:
        fan.mark(a, Event.OPEN | Event.CLOSE_NOWRITE)
        fan.mark(sentinel, Event.CLOSE_NOWRITE)
        assert sh(f"cat {a} >/dev/null").returncode == 0
        evs = await collect(fan, _until_path(a))
        assert _per_path(evs) == {str(a): Event.OPEN | Event.CLOSE_NOWRITE}

        fan.unmark(a, Event.OPEN)
        assert sh(f"cat {a} >/dev/null").returncode == 0
        evs = await collect(fan, _until_path(a))
        assert _per_path(evs) == {str(a): Event.CLOSE_NOWRITE}  # the OPEN is gone

        fan.unmark(a, Event.CLOSE_NOWRITE)  # the mask is empty: the mark goes
        assert [m["mask"] for m in _fdinfo_marks(fan)] == [f"{int(Event.CLOSE_NOWRITE):x}"]
        assert sh(f"cat {a} >/dev/null; cat {sentinel} >/dev/null").returncode == 0
        evs = await collect(fan, _until_path(sentinel))
        assert _per_path(evs) == {str(sentinel): Event.CLOSE_NOWRITE}
        with pytest.raises(FileNotFoundError):
            fan.unmark(a, Event.CLOSE_NOWRITE)  # no mark left to remove from


# The other kind for the sentinel: flush() must leave it in place.
_SENTINEL_KIND = {"inode": "mount", "mount": "inode", "filesystem": "inode"}


@pytest.mark.parametrize("kind", ["inode", "mount", "filesystem"])
async def test_flush_removes_every_mark_of_its_kind_only(
    tmpfs: Path, ext4: Path, kind: str
) -> None:
    a, b, sentinel = tmpfs / "a", tmpfs / "b", ext4 / "sentinel"
    for f in (a, b, sentinel):
        f.write_text("x")
    flushed = [a, b] if kind == "inode" else [tmpfs]
    async with Fanotify() as fan:
        for target in flushed:
            fan.mark(target, Event.CLOSE_NOWRITE, kind)  # type: ignore[arg-type]
        fan.mark(sentinel, Event.CLOSE_NOWRITE, _SENTINEL_KIND[kind])  # type: ignore[arg-type]
        assert len(_fdinfo_marks(fan)) == len(flushed) + 1
        assert sh(f"cat {a} {b} >/dev/null").returncode == 0
        evs = await collect(fan, lambda g: {str(a), str(b)} <= {e.path for e in g})
        assert _per_path(evs) == {str(a): Event.CLOSE_NOWRITE, str(b): Event.CLOSE_NOWRITE}

        fan.flush(kind)  # type: ignore[arg-type]
        assert len(_fdinfo_marks(fan)) == 1  # the sentinel's
        assert sh(f"cat {a} {b} >/dev/null; cat {sentinel} >/dev/null").returncode == 0
        evs = await collect(fan, _until_path(sentinel))
        assert _per_path(evs) == {str(sentinel): Event.CLOSE_NOWRITE}


# -- symbolic links ---------------------------------------------------------------


@pytest.mark.parametrize("dont_follow", [True, False])
async def test_dont_follow_marks_the_link_not_its_target(tmpfs: Path, dont_follow: bool) -> None:
    target, link = tmpfs / "target", tmpfs / "link"
    target.write_text("x")
    link.symlink_to(target)
    # ATTRIB is an event a symbolic link has itself: ``touch -h`` sets its times.
    async with Fanotify(InitFlag.REPORT_FID) as fan:
        fan.mark(link, Event.ATTRIB, dont_follow=dont_follow)
        marked, other = (link, target) if dont_follow else (target, link)
        # The unmarked one changes first, then the marked one (the sentinel).
        assert sh(f"touch -h {other}; touch -h {marked}").returncode == 0
        evs = await collect(fan, lambda g: any(e.path == str(marked) for e in g))
    assert [(e.events, e.path) for e in evs] == [(Event.ATTRIB, str(marked))]
