"""``Fanotify.watch_tree()``: one filesystem mark, only the events under one directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import collect, sh

from afanotify import Event, Fanotify, FanotifyData, InitFlag

pytestmark = pytest.mark.kernel

DFID_NAME = InitFlag.REPORT_DFID_NAME
END = "zz_end"


async def _step(fan: Fanotify, w: Path, script: str, tag: str) -> list[FanotifyData]:
    """Run ``script`` in a child, then a sentinel in the watched root; the events up to it."""
    end = f"{END}{tag}"
    r = sh(f"cd {w.parent} && {script} && touch {w}/{end}")
    assert r.returncode == 0, r.stderr
    return await collect(fan, lambda g: any(e.name == end for e in g))


def _setup(root: Path) -> Path:
    (root / "w").mkdir()
    (root / "other").mkdir()
    return root / "w"


async def test_only_events_under_the_root_come_and_the_rest_is_dropped_in_c(
    anyfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFANOTIFY_PURE_PARSER", raising=False)  # this is about the C builder
    w = _setup(anyfs)
    async with Fanotify(DFID_NAME) as fan:
        it = fan.watch_tree(w, Event.CREATE | Event.DELETE)
        assert it is fan
        script = (
            "for i in $(seq 50); do : > other/o$i; done && mkdir w/sub && : > w/sub/in1 "
            "&& for i in $(seq 50); do rm other/o$i; done && : > w/in2 && rm w/sub/in1"
        )
        evs = await _step(fan, w, script, "0")
    got = [(e.ev_types & ~Event.ONDIR, e.path) for e in evs if not e.name.startswith(END)]
    assert got == [
        (Event.CREATE, f"{w}/sub/in1"), (Event.CREATE, f"{w}/in2"),
        (Event.DELETE, f"{w}/sub/in1"),
    ]
    # Without ONDIR asked for, the directory's own CREATE is not delivered.
    assert all(e.path_resolved for e in evs)
    assert fan._pipeline.filtered == 101  # the 100 events in other/, and mkdir (no ONDIR)
    # The 100 events in other/ were dropped in C, never built, also those
    # after mkdir (the batch has no move: C goes on once the map has w/sub).
    assert fan._pipeline.fast is not None and fan._pipeline.c_filtered == 100


@pytest.mark.parametrize("batches", ["across", "same"])
async def test_a_tree_renamed_out_of_and_into_the_watched_directory(
    anyfs: Path, batches: str
) -> None:
    w = _setup(anyfs)
    sh(f"cd {anyfs} && mkdir -p w/a/deep other/b/deep")
    steps = [
        "mv w/a other/a2 && : > other/a2/out1 && : > other/a2/deep/out2",
        "mv other/b w/b2 && : > w/b2/in1 && : > w/b2/deep/in2",
    ]
    if batches == "same":
        steps = [" && ".join(steps)]
    async with Fanotify(DFID_NAME) as fan:
        fan.watch_tree(w, Event.CREATE | Event.MOVE | Event.ONDIR)
        evs = []
        for n, step in enumerate(steps):
            evs += await _step(fan, w, step, str(n))
    got = [(e.ev_types, e.path, e.path_resolved) for e in evs if not e.name.startswith(END)]
    assert got == [
        (Event.MOVED_FROM | Event.ONDIR, f"{w}/a", True),
        (Event.MOVED_TO | Event.ONDIR, f"{w}/b2", True),
        (Event.CREATE, f"{w}/b2/in1", True),
        (Event.CREATE, f"{w}/b2/deep/in2", True),
    ]


@pytest.mark.parametrize("scan", [True, False])
async def test_scan_learns_a_tree_never_touched_so_its_rm_r_has_full_paths(
    anyfs: Path, scan: bool
) -> None:
    w = _setup(anyfs)
    sh(f"cd {w} && mkdir -p t/a/b && : > t/a/f1 && : > t/a/b/f2")
    async with Fanotify(DFID_NAME) as fan:
        fan.watch_tree(w, Event.CREATE | Event.DELETE | Event.ONDIR, scan=scan)
        evs = await _step(fan, w, "rm -r w/t", "0")
    dels = {e.name: (e.path, e.path_resolved) for e in evs if e.ev_types & Event.DELETE}
    want = {"f1": "t/a/f1", "f2": "t/a/b/f2", "b": "t/a/b", "a": "t/a", "t": "t"}
    assert set(dels) == set(want)  # unresolved ones are delivered too: they may be inside
    for name, rel in want.items():
        path, resolved = dels[name]
        if scan or name == "t":
            assert (path, resolved) == (f"{w}/{rel}", True)
        else:
            assert (path, resolved) == (name, False)


async def test_watch_tree_refuses_what_it_cannot_do(tmpfs: Path) -> None:
    w = _setup(tmpfs)
    async with Fanotify(InitFlag.REPORT_FID) as fan:
        with pytest.raises(ValueError, match="REPORT_DFID_NAME"):
            fan.watch_tree(w, Event.CREATE)
    async with Fanotify(DFID_NAME) as fan:
        with pytest.raises(NotADirectoryError):
            fan.watch_tree(w / "missing", Event.CREATE)
        fan.watch_tree(w, Event.CREATE)
        with pytest.raises(ValueError, match="already watches the tree"):
            fan.watch_tree(tmpfs / "other", Event.CREATE)


async def test_batches_of_a_tree_watch_hold_only_its_events(tmpfs: Path) -> None:
    w = _setup(tmpfs)
    async with Fanotify(DFID_NAME) as fan:
        fan.watch_tree(w, Event.CREATE)
        script = f"cd {tmpfs} && for i in $(seq 30); do : > other/o$i; done && : > w/in1"
        assert sh(script).returncode == 0
        async with fan.batches() as it:
            batch = await it.__anext__()
    assert [e.path for e in batch] == [f"{w}/in1"]
