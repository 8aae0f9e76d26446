"""The FID directory map: full paths for deleted trees, right across moves, never wrong.

Each scenario is a shell script run by a child process; every object in it
has a unique name, and each test states the path every event's object had
when the event happened.  "Same batch": the whole script runs before the
group first reads (the reader starts with the first receive), so one read
holds every event and every directory in it is gone or moved by then.
"Across batches": the group reads the events of each step before the next.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from helpers import collect, sh

from afanotify import Event, Fanotify, FanotifyData, InitFlag, _dirmap, _ffi
from afanotify._features import features

pytestmark = pytest.mark.kernel

DFID_NAME = InitFlag.REPORT_DFID_NAME
#: The new directory's own handle comes with dirent events only with TARGET_FID.
WITH_FID = InitFlag.REPORT_DFID_NAME_TARGET
TRACKED = Event.CREATE | Event.DELETE | Event.MOVED_FROM | Event.MOVED_TO | Event.ONDIR
KINDS = (Event.CREATE, Event.DELETE, Event.MOVED_FROM, Event.MOVED_TO)
END = "zz_end"
_SENTINELS = itertools.count()

FLAGS = pytest.mark.parametrize("flags", [DFID_NAME, WITH_FID], ids=["dfid_name", "with_fid"])


def _group(flags: InitFlag, **kw: int) -> Fanotify:
    if flags & InitFlag.REPORT_TARGET_FID and InitFlag.REPORT_TARGET_FID not in _target_probe():
        pytest.skip("this kernel has no FAN_REPORT_TARGET_FID (Linux 5.17)")
    return Fanotify(flags, **kw)


def _target_probe() -> frozenset[InitFlag]:
    return features().init_flags


async def _run(fan: Fanotify, root: Path, *steps: str) -> list[FanotifyData]:
    """Run each step in a child, reading its events (up to a sentinel) before the next."""
    got: list[FanotifyData] = []
    for step in steps:
        end = f"{END}{next(_SENTINELS)}"
        r = sh(f"cd {root} && {step} && touch {end}")
        assert r.returncode == 0, r.stderr
        got += await collect(fan, lambda g, end=end: any(e.name == end for e in g))
    return got


def _check(
    evs: list[FanotifyData], want: dict[tuple[Event, str], str], *, all_resolved: bool
) -> None:
    """Every event's path is the one its object had then; or unresolved, with the name kept.

    ``want`` maps (kind, name) to that path, relative to the root; each must
    come.  ``all_resolved``: none may be unresolved.
    """
    seen = set()
    for ev in evs:
        if ev.name is not None and ev.name.startswith(END):
            continue
        for kind in KINDS:
            if not ev.ev_types & kind:
                continue
            key = (kind, ev.name)
            assert key in want, f"unexpected event {ev!r}"
            seen.add(key)
            if ev.path_resolved:
                assert ev.path == want[key], (key, ev)
            else:
                assert not all_resolved, f"{key} unresolved: {ev!r}"
                assert ev.path == ev.name
    assert seen == set(want), f"missing {set(want) - seen}"


def _abs(root: Path, rel: dict[tuple[Event, str], str]) -> dict[tuple[Event, str], str]:
    return {k: f"{root}/{v}" for k, v in rel.items()}


C, D, MF, MT = Event.CREATE, Event.DELETE, Event.MOVED_FROM, Event.MOVED_TO

MAKE_TREE = "mkdir -p t/a1/b1 t/a2 && touch t/a1/f1 t/a1/b1/f2 t/a2/f3"
TREE_CREATED = {
    (C, "t"): "t", (C, "a1"): "t/a1", (C, "b1"): "t/a1/b1", (C, "a2"): "t/a2",
    (C, "f1"): "t/a1/f1", (C, "f2"): "t/a1/b1/f2", (C, "f3"): "t/a2/f3",
}
TREE_DELETED = {(D, k[1]): v for k, v in TREE_CREATED.items()}


@FLAGS
async def test_rm_r_of_a_tree_created_while_watched_across_batches(
    anyfs: Path, flags: InitFlag
) -> None:
    async with _group(flags) as fan:
        fan.mark(anyfs, TRACKED, "filesystem")
        evs = await _run(fan, anyfs, MAKE_TREE, "rm -r t")
    _check(evs, _abs(anyfs, {**TREE_CREATED, **TREE_DELETED}), all_resolved=True)


@FLAGS
async def test_rm_r_of_a_tree_created_while_watched_in_one_batch(
    anyfs: Path, flags: InitFlag
) -> None:
    async with _group(flags) as fan:
        fan.mark(anyfs, TRACKED, "filesystem")
        evs = await _run(fan, anyfs, f"{MAKE_TREE} && rm -r t")
    # Without REPORT_FID the kernel never gives the handle of a new
    # directory, and these are gone by the time the batch is read: their
    # files stay unresolved (names kept).  With it, every path is full.
    _check(evs, _abs(anyfs, {**TREE_CREATED, **TREE_DELETED}), all_resolved=flags == WITH_FID)
    top = [e for e in evs if e.name == "t"]  # in the marked root
    assert top and all(e.path_resolved for e in top)


@FLAGS
async def test_rm_r_of_a_tree_named_by_earlier_events(anyfs: Path, flags: InitFlag) -> None:
    sh(f"cd {anyfs} && {MAKE_TREE}")
    async with _group(flags) as fan:
        fan.mark(anyfs, TRACKED, "filesystem")
        # Events in each directory name it (the group resolves it while it exists).
        evs = await _run(fan, anyfs, "touch t/a1/b1/n1 t/a2/n2 t/a1/n3", "rm -r t")
    want = {**TREE_DELETED, (C, "n1"): "t/a1/b1/n1", (C, "n2"): "t/a2/n2", (C, "n3"): "t/a1/n3",
            (D, "n1"): "t/a1/b1/n1", (D, "n2"): "t/a2/n2", (D, "n3"): "t/a1/n3"}
    _check(evs, _abs(anyfs, want), all_resolved=True)


async def test_rm_r_of_a_tree_never_seen_is_named_within_the_batch_with_fid(anyfs: Path) -> None:
    sh(f"cd {anyfs} && {MAKE_TREE}")
    async with _group(WITH_FID) as fan:
        fan.mark(anyfs, TRACKED, "filesystem")
        evs = await _run(fan, anyfs, "rm -r t")
    # Each directory's DELETE (with its own handle) names it in its parent.
    _check(evs, _abs(anyfs, TREE_DELETED), all_resolved=True)


async def test_rm_r_of_a_tree_never_seen_says_so_without_fid(anyfs: Path) -> None:
    sh(f"cd {anyfs} && {MAKE_TREE}")
    async with _group(DFID_NAME) as fan:
        fan.mark(anyfs, TRACKED, "filesystem")
        evs = await _run(fan, anyfs, "rm -r t")
    _check(evs, _abs(anyfs, TREE_DELETED), all_resolved=False)
    by_name = {e.name: e for e in evs}
    assert by_name["t"].path_resolved  # its parent is the marked root
    for name in ("f1", "f2", "f3", "b1"):
        assert not by_name[name].path_resolved and by_name[name].path == name


RENAME_STEPS = (
    "mkdir -p d/sub && touch d/sub/f1 d/g1", "mv d e", "rm e/sub/f1 e/g1 && rmdir e/sub",
)
RENAME_WANT = {
    (C, "d"): "d", (C, "sub"): "d/sub", (C, "f1"): "d/sub/f1", (C, "g1"): "d/g1",
    (MF, "d"): "d", (MT, "e"): "e",
    (D, "f1"): "e/sub/f1", (D, "g1"): "e/g1", (D, "sub"): "e/sub",
}


@FLAGS
@pytest.mark.parametrize("batches", ["across", "same"])
async def test_rename_a_directory_then_delete_its_children(
    anyfs: Path, flags: InitFlag, batches: str
) -> None:
    steps = RENAME_STEPS if batches == "across" else (" && ".join(RENAME_STEPS),)
    async with _group(flags) as fan:
        fan.mark(anyfs, TRACKED, "filesystem")
        evs = await _run(fan, anyfs, *steps)
    _check(evs, _abs(anyfs, RENAME_WANT), all_resolved=batches == "across" or flags == WITH_FID)
    if batches == "same":
        # Without FID, d is learned from its MOVED_TO: what happened in it
        # after the move has its new path (sub, gone unseen, does not).
        assert all(e.path_resolved for e in evs if e.ev_types & D and e.name in ("g1", "sub"))


MOVE_STEPS = ("mkdir -p p1/x/y p2 && touch p1/x/f1 p1/x/y/f2", "mv p1/x p2/x2",
              "rm p2/x2/f1 p2/x2/y/f2 && rmdir p2/x2/y")
MOVE_WANT = {
    (C, "p1"): "p1", (C, "p2"): "p2", (C, "x"): "p1/x", (C, "y"): "p1/x/y",
    (C, "f1"): "p1/x/f1", (C, "f2"): "p1/x/y/f2", (MF, "x"): "p1/x", (MT, "x2"): "p2/x2",
    (D, "f1"): "p2/x2/f1", (D, "f2"): "p2/x2/y/f2", (D, "y"): "p2/x2/y",
}


@FLAGS
@pytest.mark.parametrize("batches", ["across", "same"])
async def test_move_a_directory_between_parents(
    anyfs: Path, flags: InitFlag, batches: str
) -> None:
    steps = MOVE_STEPS if batches == "across" else (" && ".join(MOVE_STEPS),)
    async with _group(flags) as fan:
        fan.mark(anyfs, TRACKED, "filesystem")
        evs = await _run(fan, anyfs, *steps)
    _check(evs, _abs(anyfs, MOVE_WANT), all_resolved=batches == "across" or flags == WITH_FID)


@pytest.mark.parametrize("batches", ["across", "same"])
async def test_fan_rename_moves_a_known_directory(tmpfs: Path, batches: str) -> None:
    steps = ("mkdir -p a/b && touch a/b/f1", "mv a/b c", "rm c/f1")
    if batches == "same":
        steps = (" && ".join(steps),)
    async with _group(WITH_FID) as fan:
        fan.mark(tmpfs, Event.CREATE | Event.DELETE | Event.RENAME | Event.ONDIR, "filesystem")
        evs = await _run(fan, tmpfs, *steps)
    ren = [e for e in evs if e.ev_types & Event.RENAME]
    assert len(ren) == 1 and ren[0].path_resolved
    assert (ren[0].old_path, ren[0].new_path) == (f"{tmpfs}/a/b", f"{tmpfs}/c")
    evs = [e for e in evs if not (e.name or "").startswith(END)]
    creates = {e.name: e.path for e in evs if e.ev_types & Event.CREATE}
    deletes = {e.name: e.path for e in evs if e.ev_types & Event.DELETE}
    assert creates == {"a": f"{tmpfs}/a", "b": f"{tmpfs}/a/b", "f1": f"{tmpfs}/a/b/f1"}
    assert deletes == {"f1": f"{tmpfs}/c/f1"}


async def test_an_evicted_directory_is_unresolved_never_wrong(tmpfs: Path) -> None:
    # A map of 3 directories: the root, and two of the four made here.
    async with _group(WITH_FID, handle_cache_size=3) as fan:
        fan.mark(tmpfs, TRACKED, "filesystem")
        evs = await _run(
            fan, tmpfs, "mkdir d1 d2 d3 d4", "mv d1 e1 && mv d2 e2 && mv d3 e3 && mv d4 e4",
            "touch e1/f1 e2/f2 e3/f3 e4/f4",
        )
    files = {e.name: e for e in evs if e.name in ("f1", "f2", "f3", "f4")}
    assert len(files) == 4
    for n, ev in files.items():
        if ev.path_resolved:
            assert ev.path == f"{tmpfs}/e{n[1]}/{n}"
        else:
            assert ev.path == n
    assert len(fan._pipeline.dirmap._nodes) <= 3


async def test_an_overflow_forgets_the_map(tmpfs: Path) -> None:
    async with _group(WITH_FID) as fan:
        fan.mark(tmpfs, TRACKED, "filesystem")
        await _run(fan, tmpfs, "mkdir -p a/b")
        dm = fan._pipeline.dirmap
        assert any(node[1] == "b" for node in dm._nodes.values())
        from afanotify.events import FanotifyData as FD

        dm.apply(FD(ev_types=Event.Q_OVERFLOW), 0)
        assert not any(node[1] == "b" for node in dm._nodes.values())
        evs = await _run(fan, tmpfs, "touch a/b/f")
    (f,) = [e for e in evs if e.name == "f"]
    assert f.path == f"{tmpfs}/a/b/f" and f.path_resolved  # learned afresh


async def test_a_group_that_cannot_see_moves_keeps_nothing_between_batches(tmpfs: Path) -> None:
    async with _group(WITH_FID) as fan:
        fan.mark(tmpfs, Event.CREATE | Event.ONDIR, "filesystem")  # no moves
        assert not fan._pipeline.dirmap.tracking
        evs = await _run(fan, tmpfs, "mkdir d && touch d/f1", "mv d e && touch e/f2")
    got = {e.name: e.path for e in evs if e.name in ("f1", "f2")}
    assert got == {"f1": f"{tmpfs}/d/f1", "f2": f"{tmpfs}/e/f2"}


def test_the_map_is_tracking_only_with_filesystem_marks_that_report_moves() -> None:
    from afanotify._dirmap import DirMap
    from afanotify.flags import MarkFlag

    add_fs = MarkFlag.ADD | MarkFlag.FILESYSTEM
    m = DirMap(10, DFID_NAME)
    assert not m.tracking  # no mark yet
    m.note_mark(add_fs, TRACKED, False)
    assert m.tracking
    m.note_mark(add_fs | MarkFlag.IGNORE, Event.OPEN, True)
    assert m.tracking  # an ignore mask that hides no move
    m.note_mark(MarkFlag.ADD, TRACKED, False)  # an inode mark: moves elsewhere unseen
    assert not m.tracking
    m = DirMap(10, DFID_NAME)
    m.note_mark(add_fs, Event.CREATE | Event.RENAME | Event.ONDIR, False)
    assert m.tracking
    m.note_mark(MarkFlag.REMOVE | MarkFlag.FILESYSTEM, Event.RENAME, False)
    assert not m.tracking
    m = DirMap(10, InitFlag.REPORT_FID)  # no names: moves cannot be followed
    m.note_mark(add_fs, TRACKED, False)
    assert not m.tracking


@FLAGS
async def test_without_a_map_paths_are_looked_up_and_still_never_wrong(
    anyfs: Path, flags: InitFlag
) -> None:
    async with _group(flags, handle_cache_size=0) as fan:
        fan.mark(anyfs, TRACKED, "filesystem")
        evs = await _run(fan, anyfs, " && ".join(RENAME_STEPS))
    _check(evs, _abs(anyfs, RENAME_WANT), all_resolved=False)
    # After the move, the deletes in e itself are looked up safely.
    assert all(e.path_resolved for e in evs if e.ev_types & D and e.name == "g1")


@FLAGS
async def test_c_goes_on_after_a_directory_is_created_in_a_batch_without_moves(
    tmpfs: Path, flags: InitFlag, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFANOTIFY_PURE_PARSER", raising=False)  # this is about the C builder
    async with _group(flags) as fan:
        fan.mark(tmpfs, TRACKED, "filesystem")
        evs = await _run(fan, tmpfs, "mkdir d && touch d/f1 d/f2 && mkdir d/e && touch d/e/f3")
        fast = fan._pipeline.fast
        assert fast is not None and fan.stats.reads == 1
        # No event was left to the in-order Python pass: each mkdir was
        # handed back, applied to the map, and C went on.
        assert fast.resolved_upto == len(evs) and fast.resolved_count == len(evs)
    assert [e.path for e in evs] == [
        f"{tmpfs}/{p}" for p in ("d", "d/f1", "d/f2", "d/e", "d/e/f3", evs[-1].name)
    ]
    assert all(e.path_resolved for e in evs)


# -- the one-call lookup of the compiled core (issue #12) ---------------------


@pytest.mark.parametrize("fs", ["tmpfs", "ext4"])
def test_the_c_handle_lookup_gives_what_the_python_steps_give(
    fs: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_open_path`` in one C call: the same str, or None, for every outcome."""
    if _dirmap._handle_path is None:
        pytest.skip("needs the compiled core")
    root: Path = request.getfixturevalue(fs)
    fd = os.open(root, os.O_PATH)
    try:
        fsid = _ffi.fsid_of_fd(fd)
    finally:
        os.close(fd)
    names = [b"plain", "caf\u00e9".encode(), b"not-utf8-\xff\xfe", b"x" * 250, b"sp ace"]
    (root / "sub").mkdir()
    paths = [os.path.join(os.fsencode(root), b"sub", n) for n in names]
    for p in paths:
        open(p, "w").close()
    moved = os.path.join(os.fsencode(root), b"moved")
    open(moved + b".0", "w").close()
    gone = os.path.join(os.fsencode(root), b"gone")
    open(gone, "w").close()
    held = open(os.path.join(os.fsencode(root), b"held"), "w")
    handles = [_dirmap._handle_at(fsid, os.fsdecode(p)) for p in [*paths, moved + b".0", gone]]
    handles.append(_dirmap._handle_at(fsid, held.name))
    handles.append(_dirmap._handle_at(fsid, str(root / "sub")))
    os.rename(moved + b".0", moved)
    os.unlink(gone)
    os.unlink(held.name)  # open: "(deleted)"
    mount_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        mounts = {fsid: mount_fd}
        got = [_dirmap._open_path(mounts, h) for h in handles]
        monkeypatch.setattr(_dirmap, "_handle_path", None)  # the Python steps
        want = [_dirmap._open_path(mounts, h) for h in handles]
    finally:
        os.close(mount_fd)
        held.close()
    assert got == want
    assert got == [*(os.fsdecode(p) for p in paths), os.fsdecode(moved), None, None,
                   str(root / "sub")]
