"""Directory entries kept from one decode to the next (``Decoder.decode``'s ``dir_version``).

While the number the caller passes stays the same, a directory the C
builder met in an earlier batch keeps its handle and path, and ``dir_path``
is asked only about new ones (and those it answered None); a new number, no
number (-1), a change of ``tree`` or a batch with a Q_OVERFLOW asks again.
The group passes its directory map's ``version``, which every change to the
map changes; the kernel test checks a kept directory renamed between batches.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from helpers import collect, sh

from afanotify import Event, Fanotify, InitFlag
from afanotify._dirmap import DirMap
from afanotify._fastparse import Decoder
from afanotify._parser import METADATA
from afanotify.events import FanotifyData, FileHandle
from afanotify.flags import FAN_EVENT_INFO_TYPE_DFID_NAME


def named(directory: int, name: bytes, mask: int = int(Event.CREATE)) -> bytes:
    """A plain FID+name event in directory number ``directory``."""
    fsid = struct.pack("=II", 0x1234, 0x5678)
    handle = struct.pack("=Q", 0xD1D0000 + directory)
    rec = fsid + struct.pack("=Ii", len(handle), 1) + handle + name + b"\0"
    rec += b"\0" * (-(len(rec) + 4) % 4)
    rec = struct.pack("=BBH", FAN_EVENT_INFO_TYPE_DFID_NAME, 0, len(rec) + 4) + rec
    return METADATA.pack(24 + len(rec), 3, 0, 24, mask, -1, 42) + rec


class Paths:
    """``dir_path``: ``/d<number>`` for each handle, counting the questions."""

    def __init__(self, unknown: frozenset[int] = frozenset()) -> None:
        self.asked: list[int] = []
        self.unknown = set(unknown)

    def __call__(self, h: FileHandle) -> str | None:
        n = struct.unpack("=Q", h.handle)[0] - 0xD1D0000
        self.asked.append(n)
        return None if n in self.unknown else f"/d{n}"


def decode(dec: Decoder, buf: bytes, paths: Paths, version: int,
           **kw: object) -> list[FanotifyData]:
    got, err = dec.decode(buf, len(buf), dir_path=paths, dir_version=version, **kw)  # type: ignore[arg-type]
    assert not err
    return got


def check(got: list[FanotifyData], dirs: list[int]) -> None:
    assert [(e.path, e.path_resolved) for e in got] == [
        (f"/d{d}/f{k}", True) for k, d in enumerate(dirs)
    ]


@pytest.mark.parametrize("ndirs", [3, 600], ids=["numbered", "past_the_numbered"])
def test_a_directory_is_asked_once_while_the_version_stays(ndirs: int) -> None:
    # 600: more directories than the C walk numbers; kept by their records.
    dirs = [k % ndirs for k in range(2 * ndirs)]
    buf = b"".join(named(d, b"f%d" % k) for k, d in enumerate(dirs))
    dec, paths = Decoder(), Paths()
    first = decode(dec, buf, paths, 7)
    second = decode(dec, buf, paths, 7)
    check(first, dirs)
    check(second, dirs)
    assert sorted(paths.asked) == list(range(ndirs))
    # The same handle object from batch to batch, as within one.
    assert all(a.dfid is b.dfid for a, b in zip(first, second, strict=True))
    decode(dec, buf, paths, 8)
    assert sorted(paths.asked) == sorted(2 * list(range(ndirs)))


def test_without_a_version_every_batch_asks() -> None:
    buf = named(1, b"f0") + named(2, b"f1")
    dec, paths = Decoder(), Paths()
    for _ in range(3):
        check(decode(dec, buf, paths, -1), [1, 2])
    assert paths.asked == [1, 2] * 3


def test_a_directory_without_a_path_is_asked_again() -> None:
    buf = named(1, b"f0") + named(2, b"f1")
    dec, paths = Decoder(), Paths(frozenset({2}))
    got = decode(dec, buf, paths, 0)
    assert [e.path_resolved for e in got] == [True, False]
    paths.unknown.clear()
    check(decode(dec, buf, paths, 0), [1, 2])
    assert paths.asked == [1, 2, 2]


def test_another_tree_asks_again() -> None:
    buf = named(1, b"f0")
    dec, paths = Decoder(), Paths()
    tree = ("/d1", "/", "d1", int(Event.CREATE))
    for t in (None, tree, tree, None):
        check(decode(dec, buf, paths, 0, tree=t), [1])
    assert paths.asked == [1, 1, 1]


def test_a_batch_with_an_overflow_asks_again() -> None:
    overflow = METADATA.pack(24, 3, 0, 24, int(Event.Q_OVERFLOW), -1, 0)
    buf = named(1, b"f0")
    dec, paths = Decoder(), Paths()
    walks: list[int] = []
    decode(dec, buf, paths, 0, on_walk=walks.append)
    decode(dec, buf + overflow, paths, 0, on_walk=walks.append)
    assert walks == [0, 2] and paths.asked == [1, 1]


@pytest.mark.parametrize("ndirs", [3, 600], ids=["numbered", "past_the_numbered"])
def test_a_kept_directory_counts_only_this_batchs_events_kept_out(ndirs: int) -> None:
    # watch_tree's Pruner adds the counts of every batch up: an entry kept
    # from the batch before must not bring that batch's count along.
    tree = ("/in", "/", "in", int(Event.CREATE))
    dirs = [k % ndirs for k in range(5 * ndirs)]
    buf = b"".join(named(d, b"f%d" % k) for k, d in enumerate(dirs))
    dec, paths = Decoder(), Paths()
    for _ in range(3):
        assert decode(dec, buf, paths, 4, tree=tree) == []
        assert dec.skipped == len(dirs)
        got = sorted((struct.unpack("=Q", e[0].handle)[0] - 0xD1D0000, e[4]) for e in dec.outside)
        assert got == [(d, 5) for d in range(ndirs)]
    assert sorted(paths.asked) == list(range(ndirs))  # kept all along


def test_every_change_to_the_map_changes_its_version() -> None:
    dm = DirMap(flags=InitFlag.REPORT_DFID_NAME)
    top, sub = FileHandle((1, 2), 1, b"top"), FileHandle((1, 2), 1, b"sub")
    seen = [dm.version]

    def changed() -> None:
        assert dm.version not in seen
        seen.append(dm.version)

    dm._put(top, None, "/t")
    changed()
    dm._put(sub, top, "s")
    changed()
    assert dm.path(sub) == "/t/s" and dm.version == seen[-1]  # a lookup changes nothing
    mv = Event.ONDIR
    dm.apply(FanotifyData(ev_types=Event.MOVED_FROM | mv, dfid=top, name="s", fid=sub), 0)
    changed()
    dm.apply(FanotifyData(ev_types=Event.MOVED_TO | mv, dfid=top, name="s2", fid=sub), 1)
    changed()
    assert dm.path(sub) == "/t/s2"
    dm.apply(FanotifyData(ev_types=Event.DELETE | mv, dfid=top, name="s2", fid=sub), 2)
    changed()
    dm.forget()
    changed()


@pytest.mark.kernel
async def test_a_kept_directory_renamed_between_batches_has_its_new_path(tmpfs: Path) -> None:
    mask = Event.CREATE | Event.MOVED_FROM | Event.MOVED_TO | Event.ONDIR
    steps = ["mkdir d && touch d/f1", "touch d/f2", "mv d e", "touch e/f3", "touch e/f4"]
    paths: dict[str, str | None] = {}
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(tmpfs, mask, "filesystem")
        assert fan._pipeline.dirmap.tracking
        for k, step in enumerate(steps):
            r = sh(f"cd {tmpfs} && {step} && touch end{k}")
            assert r.returncode == 0, r.stderr
            for ev in await collect(fan, lambda g, k=k: any(e.name == f"end{k}" for e in g)):
                if ev.path_resolved and ev.name is not None:
                    paths[ev.name] = ev.path
            if k == 1:
                assert fan._pipeline.fast is not None and fan._pipeline.fast._kept
    assert paths == {
        "d": f"{tmpfs}/d", "f1": f"{tmpfs}/d/f1", "f2": f"{tmpfs}/d/f2", "e": f"{tmpfs}/e",
        "f3": f"{tmpfs}/e/f3", "f4": f"{tmpfs}/e/f4",
        **{f"end{k}": f"{tmpfs}/end{k}" for k in range(len(steps))},
    }  # fmt: skip
