"""``watch_tree`` pruning: ignore marks on busy directories outside the tree.

These kernel tests check what the kernel queues (``stats.events_read``), so a
pruned directory is shown to cost nothing, and that a pruned directory moved
into the tree (directly, or after its parent moved elsewhere first) has its
mark removed and a gap event said.  tests/test_tree_prune_record.py checks
the record of pruned places against synthetic events.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from helpers import collect, sh

from afanotify import Event, Fanotify, FanotifyData, InitFlag, features
from afanotify._tree import GAP_PID, PRUNE_AFTER
from afanotify.exceptions import WouldBlock
from afanotify.flags import MarkFlag

DFID_NAME = InitFlag.REPORT_DFID_NAME
END = "zz_end"
#: More events than make a directory busy.
BUSY = PRUNE_AFTER + 8


def _can_prune() -> bool:
    f = features()
    return (
        MarkFlag.IGNORE in f.mark_flags and MarkFlag.EVICTABLE in f.mark_flags
        and Event.RENAME in f.events
    )  # fmt: skip


async def _step(
    fan: Fanotify, w: Path, script: str, tag: str, cwd: Path | None = None
) -> list[FanotifyData]:
    """Run ``script`` in a child (from ``cwd``, else ``w``'s parent), then a sentinel in ``w``."""
    end = f"{END}{tag}"
    r = sh(f"cd {cwd or w.parent} && {script} && touch {w}/{end}")
    assert r.returncode == 0, r.stderr
    return await collect(fan, lambda g: any(e.name == end for e in g))


def _busy(d: str, tag: str = "f") -> str:
    return f"for i in $(seq {BUSY}); do : > {d}/{tag}$i; done"


def _need_pruning() -> None:
    if not _can_prune():
        pytest.skip("the kernel has no FAN_MARK_IGNORE, FAN_MARK_EVICTABLE or FAN_RENAME")


async def _watch_pruned(fan: Fanotify, w: Path, busy: str, events: int) -> None:
    """``fan.watch_tree(w, events)``, and the directory ``busy`` (outside ``w``) pruned."""
    fan.watch_tree(w, events)
    await _step(fan, w, _busy(busy), "0")
    assert fan.tree_stats is not None and fan.tree_stats.pruned == 1


def _mine(evs: list[FanotifyData]) -> list[tuple[int, int, str | None]]:
    return [
        (e.ev_types, e.pid, e.path) for e in evs if not (e.name or "").startswith(END)
    ]


def _prepared(root: Path, *dirs: str) -> Path:
    (root / "w").mkdir()
    for d in dirs:
        (root / d).mkdir(parents=True)
    return root / "w"


@pytest.mark.kernel
async def test_a_busy_directory_elsewhere_is_pruned_and_the_kernel_stops_queueing_it(
    anyfs: Path,
) -> None:
    w = _prepared(anyfs, "other")
    async with Fanotify(DFID_NAME) as fan:
        fan.watch_tree(w, Event.CREATE | Event.DELETE)
        await _step(fan, w, _busy("other"), "0")
        st = fan.tree_stats
        assert st is not None
        if not _can_prune():
            assert st.pruned == 0
            return
        assert (st.pruned, st.marks_added, st.refused, st.enabled) == (1, 1, 0, True)
        read = fan.stats.events_read
        evs = await _step(fan, w, f"rm other/f* && {_busy('other', 'g')} && : > w/in1", "1")
        # The 2 * BUSY events in other/ were never queued: only w's two.
        assert fan.stats.events_read - read == 2
        assert [e.path for e in evs] == [f"{w}/in1", f"{w}/{END}1"]


@pytest.mark.kernel
async def test_busy_directories_past_the_walks_numbered_ones_are_counted_too(
    tmpfs: Path,
) -> None:
    # The C walk numbers the first 64 directories of a read; the rest are
    # counted through their entries.  One read holds all 70 here.
    dirs = [f"other/d{n}" for n in range(70)]
    w = _prepared(tmpfs, *dirs)
    async with Fanotify(DFID_NAME, buffer_size=1 << 20) as fan:
        fan.watch_tree(w, Event.CREATE)
        await _step(fan, w, " && ".join(_busy(d) for d in dirs), "0")
        assert fan.stats.reads == 1
        st = fan.tree_stats
        assert st is not None
        assert st.pruned == (70 if _can_prune() else 0)


@pytest.mark.kernel
async def test_prune_false_reads_every_event_elsewhere(tmpfs: Path) -> None:
    w = _prepared(tmpfs, "other")
    async with Fanotify(DFID_NAME) as fan:
        fan.watch_tree(w, Event.CREATE | Event.DELETE, prune=False)
        await _step(fan, w, _busy("other"), "0")
        read = fan.stats.events_read
        evs = await _step(fan, w, "rm other/f* && : > w/in1", "1")
        assert fan.tree_stats is None
        assert fan.stats.events_read - read == BUSY + 2
        assert [e.path for e in evs] == [f"{w}/in1", f"{w}/{END}1"]


@pytest.mark.kernel
@pytest.mark.parametrize("via", ["direct", "parent renamed first"])
async def test_a_pruned_directory_moved_into_the_tree_is_unpruned_with_a_gap_event(
    anyfs: Path, via: str
) -> None:
    _need_pruning()
    w = _prepared(anyfs, "other/a/p")
    async with Fanotify(DFID_NAME) as fan:
        await _watch_pruned(fan, w, "other/a/p", Event.CREATE | Event.MOVED_TO | Event.ONDIR)
        src = "other/a"
        if via != "direct":
            # Out of sight of the tree: the record of the pruned place follows.
            evs = await _step(fan, w, "mv other/a other/b", "1")
            assert _mine(evs) == []
            assert fan.tree_stats.pruned == 1 and fan.tree_stats.gaps == 0
            src = "other/b"
        evs = await _step(fan, w, f"mv {src} w/a", "2")
        assert _mine(evs) == [
            (Event.Q_OVERFLOW, GAP_PID, f"{w}/a"),
            (Event.MOVED_TO | Event.ONDIR, evs[1].pid, f"{w}/a"),
        ]
        st = fan.tree_stats
        assert (st.pruned, st.marks_removed, st.gaps) == (0, 1, 1)
        assert fan.stats.overflows == 0  # the gap is not the kernel's overflow
        # The mark is gone: the moved directory's events come again.
        evs = await _step(fan, w, ": > w/a/p/in1", "3")
        assert _mine(evs) == [(Event.CREATE, evs[0].pid, f"{w}/a/p/in1")]


async def _read_until(fan: Fanotify, check: Callable[[], bool]) -> None:
    """Read batches until ``check()`` holds (5 s deadline), for reads with nothing inside."""
    with anyio.fail_after(5):
        while not check():
            try:
                for ev in fan.read_batch():
                    ev.close()
            except WouldBlock:
                await anyio.sleep(0.01)


@pytest.mark.kernel
async def test_a_directory_removed_and_made_again_in_one_read_stays_recorded(
    tmpfs: Path,
) -> None:
    # The removal of the old other/d is seen before the new one is pruned.
    _need_pruning()
    w = _prepared(tmpfs, "other/d")
    async with Fanotify(DFID_NAME) as fan:
        fan.watch_tree(w, Event.CREATE | Event.MOVED_TO | Event.ONDIR)
        await _step(fan, w, f"rmdir other/d && mkdir other/d && {_busy('other/d')}", "0")
        assert fan.tree_stats is not None and fan.tree_stats.pruned == 1
        evs = await _step(fan, w, "mv other/d w/d", "1")
        assert [(e.ev_types, e.path) for e in evs][:2] == [
            (Event.Q_OVERFLOW, f"{w}/d"), (Event.MOVED_TO | Event.ONDIR, f"{w}/d"),
        ]  # fmt: skip
        evs = await _step(fan, w, ": > w/d/in1", "2")
        assert _mine(evs) == [(Event.CREATE, evs[0].pid, f"{w}/d/in1")]


@pytest.mark.kernel
async def test_a_rename_that_brings_a_pruned_directory_back_under_the_root_unprunes_it(
    tmpfs: Path,
) -> None:
    # The root's parent renamed away and back: nothing moved *into* the
    # root, yet a directory pruned meanwhile is inside again.
    _need_pruning()
    (tmpfs / "a" / "w" / "sub").mkdir(parents=True)
    w = tmpfs / "a" / "w"
    async with Fanotify(DFID_NAME) as fan:
        fan.watch_tree(w, Event.CREATE)
        assert sh(f"cd {tmpfs} && mv a b").returncode == 0
        # The rename's RENAME, MOVED_FROM and MOVED_TO, read first: a read
        # with a directory move prunes nothing.
        await _read_until(fan, lambda: fan.stats.events_read >= 3)
        assert sh(f"cd {tmpfs} && {_busy('b/w/sub')}").returncode == 0
        await _read_until(fan, lambda: fan.tree_stats is not None and fan.tree_stats.pruned == 1)
        evs = await _step(fan, w, "mv b a", "0", cwd=tmpfs)
        assert [(e.ev_types, e.pid, e.path) for e in evs][:1] == [
            (Event.Q_OVERFLOW, GAP_PID, f"{tmpfs}/a")
        ]
        assert fan.tree_stats.pruned == 0
        evs = await _step(fan, w, ": > w/sub/in1", "1")
        assert _mine(evs) == [(Event.CREATE, evs[0].pid, f"{w}/sub/in1")]


@pytest.mark.kernel
@pytest.mark.parametrize("end", ["inside", "back out"])
async def test_a_pruned_directory_renamed_twice_in_one_read_into_the_tree_says_a_gap(
    tmpfs: Path, end: str
) -> None:
    # When the first rename is replayed the directory is at its second place
    # already: the record's check fails, and its mark comes off with a gap
    # where it is found, not silently.
    _need_pruning()
    w = _prepared(tmpfs, "other/a")
    async with Fanotify(DFID_NAME) as fan:
        await _watch_pruned(fan, w, "other/a", Event.CREATE | Event.MOVED_TO | Event.ONDIR)
        script = "mv other/a other/b && mv other/b w/b && : > w/b/x1"
        if end != "inside":
            script += " && mv w/b other/c"
        evs = await _step(fan, w, script, "1")
        gaps = [e.path for e in evs if e.ev_types & Event.Q_OVERFLOW]
        st = fan.tree_stats
        assert (st.pruned, st.marks_removed) == (0, 1)
        if end == "inside":
            assert gaps == [f"{w}/b"]
            evs = await _step(fan, w, ": > w/b/x2", "2")
            assert _mine(evs) == [(Event.CREATE, evs[0].pid, f"{w}/b/x2")]
        else:
            # Out again when the read is taken: no events of it are missing
            # now, but those while it was inside may be, and a gap says so
            # (the second rename's replay finds it inside: the record moved).
            assert len(gaps) == 1 and gaps[0] == f"{w}/b"


#: Swaps two paths with renameat2(RENAME_EXCHANGE), in a child.
EXCHANGE = (
    "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
    "a, b = (p.encode() for p in sys.argv[1:]); "
    "sys.exit(libc.renameat2(-100, a, -100, b, 2) and ctypes.get_errno())"
)


@pytest.mark.kernel
async def test_a_pruned_directory_swapped_with_another_is_unpruned(tmpfs: Path) -> None:
    # A swap reads as two renames that cancel out: a->c, c->a.
    _need_pruning()
    w = _prepared(tmpfs, "other/a", "other/c")
    async with Fanotify(DFID_NAME) as fan:
        await _watch_pruned(fan, w, "other/a", Event.CREATE | Event.MOVED_TO | Event.ONDIR)
        swap = f"{sys.executable} -c '{EXCHANGE}' other/a other/c"
        await _step(fan, w, swap, "1")
        assert fan.tree_stats.pruned == 0  # unsure where it is: unpruned
        await _step(fan, w, "mv other/c w/x", "2")  # the busy one, after the swap
        evs = await _step(fan, w, ": > w/x/in1", "3")
        assert _mine(evs) == [(Event.CREATE, evs[0].pid, f"{w}/x/in1")]


@pytest.mark.kernel
async def test_a_mark_that_cannot_come_off_yet_is_tried_again_at_the_next_read(
    tmpfs: Path,
) -> None:
    _need_pruning()
    w = _prepared(tmpfs, "other/p")
    async with Fanotify(DFID_NAME) as fan:
        fan.watch_tree(w, Event.CREATE | Event.MOVED_TO | Event.ONDIR)
        await _step(fan, w, _busy("other/p"), "0")
        pruner = fan._pipeline.pruner
        assert pruner is not None and pruner.statistics().pruned == 1

        def no_fd_left(h: object) -> int:
            raise OSError(errno.EMFILE, "Too many open files")

        pruner._open = no_fd_left  # type: ignore[method-assign]
        evs = await _step(fan, w, "mv other/p w/p", "1")
        assert (evs[0].ev_types, evs[0].pid) == (Event.Q_OVERFLOW, GAP_PID)
        st = pruner.statistics()
        assert (st.pruned, st.pending, st.marks_removed) == (0, 1, 0)
        del pruner._open  # descriptors again
        await _step(fan, w, ": > w/p/lost", "2")  # the read that takes the mark off
        st = pruner.statistics()
        assert (st.pending, st.marks_removed) == (0, 1)
        evs = await _step(fan, w, ": > w/p/in1", "3")
        assert _mine(evs) == [(Event.CREATE, evs[0].pid, f"{w}/p/in1")]


@pytest.mark.kernel
async def test_a_directory_the_group_marked_itself_is_skipped_not_the_pruning(
    tmpfs: Path,
) -> None:
    _need_pruning()
    w = _prepared(tmpfs, "other/d", "other/e")
    async with Fanotify(DFID_NAME) as fan:
        fan.watch_tree(w, Event.CREATE)
        fan.mark(tmpfs / "other/d", Event.CLOSE_WRITE)  # not evictable: EEXIST for ours
        await _step(fan, w, _busy("other/d"), "0")
        st = fan.tree_stats
        assert st is not None and (st.pruned, st.refused, st.enabled) == (0, 0, True)
        await _step(fan, w, _busy("other/e"), "1")
        assert fan.tree_stats.pruned == 1


@pytest.mark.kernel
async def test_a_pruned_directory_removed_is_dropped_from_the_record(tmpfs: Path) -> None:
    _need_pruning()
    w = _prepared(tmpfs, "other/p")
    async with Fanotify(DFID_NAME) as fan:
        await _watch_pruned(fan, w, "other/p", Event.CREATE)
        await _step(fan, w, "rm -r other/p", "1")
        st = fan.tree_stats
        assert (st.pruned, st.marks_removed, st.gaps) == (0, 0, 0)


@pytest.mark.kernel
async def test_a_kernel_overflow_removes_every_prune_mark(tmpfs: Path) -> None:
    _need_pruning()
    w = _prepared(tmpfs, "other/p", "other/q")
    # The default queue (16,384 events): the flood below overflows it while
    # the loop is blocked in sh().
    async with Fanotify(DFID_NAME) as fan:
        await _watch_pruned(fan, w, "other/p", Event.CREATE)
        r = sh(f"cd {tmpfs} && for i in $(seq 17000); do : > other/q/f$i; done", timeout=60)
        assert r.returncode == 0, r.stderr
        evs = await collect(fan, lambda g: any(e.ev_types & Event.Q_OVERFLOW for e in g))
        assert [e.pid for e in evs if e.ev_types & Event.Q_OVERFLOW] == [0]
        st = fan.tree_stats
        # other/q may have been pruned too, while its queued events were read.
        assert st.pruned == 0 and st.marks_removed == st.marks_added >= 1
        read = fan.stats.events_read
        await _step(fan, w, ": > other/p/again", "1")
        assert fan.stats.events_read - read == 2  # other/p/again was queued
