"""The C builder's renames and FID-only events against the group's Python resolver.

``Decoder.decode(dir_path=..., renames=True, object_path=...)`` fills the
paths of two more shapes before the cut: a file renamed (FAN_RENAME's old
and new directory records) and an event with a FID record alone (MOVE_SELF,
DELETE_SELF).  The reference below is ``Pipeline._resolve_fid``'s rules,
written out on the pure parser's events, so the two are compared field for
field on random batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from test_fastparse_differential import (
    DFID_NAME,
    FID,
    NEW,
    OLD,
    OPTIONS,
    PIDFD,
    SETTINGS,
    _has_records,
    _pidfd_records,
    _plain_fid_shape,
    event,
    event_key,
    events,
    fid_rec,
    rec,
)

from afanotify._dirbatch import scan
from afanotify._dirmap import join
from afanotify._fastparse import Decoder
from afanotify._parser import parse_lenient
from afanotify.events import FanotifyData, FileHandle
from afanotify.flags import DIR_CHANGE_EVENTS, Event

_DIRS = [b"h%d" % i for i in range(5)] + [b"wide%04d" % i for i in range(70)]
_OBJECTS = [b"obj%d" % i for i in range(4)]
_NAMES = [b"a", b"", b".", b"caf\xe9", b"\xff"]
_SELF_MASKS = [
    Event.MOVE_SELF, Event.DELETE_SELF, Event.ATTRIB | Event.DELETE_SELF, Event.ATTRIB,
    Event.MOVE_SELF | Event.ONDIR, Event.DELETE_SELF | Event.ONDIR,
]  # fmt: skip
_RENAME_MASKS = [Event.RENAME, Event.RENAME, Event.RENAME | Event.ONDIR, Event.MOVED_FROM]


@st.composite
def shape_batches(draw: st.DrawFn) -> bytes:
    """Renames, FID-only events, plain FID+name events and others, mixed."""
    out = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["name"] * 3 + ["rename"] * 3 + ["self"] * 4 + ["other"]))
        pid = draw(st.sampled_from([1, 2, 99]))
        obj = fid_rec(FID, draw(st.sampled_from(_OBJECTS)))
        extra = [rec(PIDFD, b"\xff\xff\xff\xff")] if draw(st.booleans()) else []
        if kind == "name":
            d = fid_rec(DFID_NAME, draw(st.sampled_from(_DIRS)), draw(st.sampled_from(_NAMES)))
            out.append(event(d, obj, *extra, fd=-1, mask=int(Event.CREATE), pid=pid))
        elif kind == "rename":
            recs = [
                fid_rec(side, draw(st.sampled_from(_DIRS)), draw(st.sampled_from(_NAMES)))
                for side in draw(st.sampled_from([(OLD, NEW), (OLD, NEW), (OLD,), (NEW,)]))
            ]
            if draw(st.booleans()):
                recs.append(obj)
            mask = int(draw(st.sampled_from(_RENAME_MASKS)))
            out.append(event(*recs, *extra, fd=-1, mask=mask, pid=pid))
        elif kind == "self":
            mask = int(draw(st.sampled_from(_SELF_MASKS)))
            out.append(event(obj, *extra, fd=-1, mask=mask, pid=pid))
        else:
            out.append(draw(events()))
    return b"".join(out)


def _dir_path(h: Any) -> str | None:
    n = (h.handle[-1] if h.handle else 0) % 3
    return None if n == 0 else "/" if n == 1 else "/d/" + h.handle.hex()


def _object_path(h: Any, gone: bool) -> str | None:
    # What a lookup gives depends on gone: the test sees which was asked.
    n = (h.handle[-1] if h.handle else 0) % 2
    if gone:
        return None if n else "/map/" + h.handle.hex()
    return "/now/" + h.handle.hex()


def _only(e: FanotifyData) -> bool:
    """No records but the directory and FID ones this test is about."""
    return (
        e.fd == -1 and e.fd_error is None and e.error is None and e.range_offset is None
        and e.mnt_id is None and not e.unknown_records
    )  # fmt: skip


def _renamed(e: FanotifyData) -> bool:
    return (
        _only(e) and e.dfid is None and (e.old_dfid is not None or e.new_dfid is not None)
        and not e.ev_types & int(Event.ONDIR)
    )  # fmt: skip


def _fid_only(e: FanotifyData) -> bool:
    return _only(e) and e.fid is not None and e.dfid is None and e.old_dfid is None and (
        e.new_dfid is None
    )


def _reference(events: list[FanotifyData], recs: list[bool], skip: Any) -> tuple[list[Any], int]:
    """The events as the group's resolver fills them before the cut, and how many."""
    upto = len(events)
    filled = 0
    out = []
    for i, (e, pidfd_rec) in enumerate(zip(events, recs, strict=True)):
        dir_change = e.ev_types & int(DIR_CHANGE_EVENTS) and e.ev_types & int(Event.ONDIR)
        plain = _plain_fid_shape(e, pidfd_rec)
        if upto == len(events) and (
            (dir_change and _has_records(e, pidfd_rec)) or (e.dfid is not None and not plain)
        ):
            upto = i
        full = e
        if i < upto and e.pid not in skip:
            if plain:
                d = _dir_path(e.dfid)
                path = e.name if d is None else join(d, e.name)
                full = dataclasses.replace(e, dir_path=d, path=path, path_resolved=d is not None)
            elif _renamed(e):
                sides = {}
                resolved = True
                for key, h, name in (("old_path", e.old_dfid, e.old_name),
                                     ("new_path", e.new_dfid, e.new_name)):  # fmt: skip
                    if h is not None:
                        d = _dir_path(h)
                        resolved = resolved and d is not None
                        sides[key] = name if d is None else join(d, name)
                path = sides.get("new_path") or sides.get("old_path")
                full = dataclasses.replace(e, **sides, path=path, path_resolved=resolved)
            elif _fid_only(e):
                gone = bool(e.ev_types & int(Event.DELETE_SELF)) or any(
                    later.fid == e.fid
                    and later.ev_types & int(Event.DELETE_SELF | Event.MOVE_SELF)
                    and not later.unknown_records
                    for later in events[i + 1 :]
                )  # fmt: skip
                p = _object_path(e.fid, gone)
                full = dataclasses.replace(e, path=p, path_resolved=p is not None)
            if full is not e:
                filled += 1
        out.append(event_key(full))
    return out, filled


@SETTINGS
@given(buf=shape_batches(), opts=st.sampled_from(OPTIONS), skip=st.sampled_from([(), {99}]))
def test_c_builder_fills_renames_and_objects_as_the_resolver(
    buf: bytes, opts: dict[str, bool], skip: Any
) -> None:
    dec = Decoder()
    got, errors = dec.decode(
        buf, len(buf), dir_path=_dir_path, skip_pids=skip, renames=True,
        object_path=_object_path, **opts,
    )  # fmt: skip
    ref, ref_errors = parse_lenient(buf, **opts)
    want, filled = _reference(ref, _pidfd_records(buf, **opts), skip)
    assert [event_key(e) for e in got] == want
    assert len(errors) == len(ref_errors)
    assert dec.resolved_count == filled


def test_a_later_delete_self_in_the_batch_skips_the_lookup() -> None:
    """MOVE_SELF then DELETE_SELF of one object: the lookup is told it is gone."""
    obj, other = fid_rec(FID, b"obj1"), fid_rec(FID, b"obj2")
    buf = (
        event(obj, fd=-1, mask=int(Event.MOVE_SELF))
        + event(other, fd=-1, mask=int(Event.MOVE_SELF))
        + event(obj, fd=-1, mask=int(Event.ATTRIB | Event.DELETE_SELF))
        + event(obj, fd=-1, mask=int(Event.MOVE_SELF))  # after it: looked up
    )
    asked: list[tuple[bytes, bool]] = []

    def object_path(h: Any, gone: bool) -> str | None:
        asked.append((h.handle, gone))
        return None if gone else "/x"

    got, _ = Decoder().decode(buf, len(buf), dir_path=_dir_path, object_path=object_path)
    assert asked == [(b"obj1", True), (b"obj2", False), (b"obj1", True), (b"obj1", False)]
    assert [(e.path, e.path_resolved) for e in got] == [
        (None, False), ("/x", True), (None, False), ("/x", True)
    ]


def test_a_later_move_self_in_the_batch_skips_the_lookup() -> None:
    """An object moved again later in the batch: a lookup now names the later place."""
    obj, other = fid_rec(FID, b"obj1"), fid_rec(FID, b"obj2")
    buf = (
        event(obj, fd=-1, mask=int(Event.ATTRIB))
        + event(obj, fd=-1, mask=int(Event.MOVE_SELF))
        + event(other, fd=-1, mask=int(Event.ATTRIB))
        + event(obj, fd=-1, mask=int(Event.MOVE_SELF))  # its last move: looked up
    )
    asked: list[tuple[bytes, bool]] = []

    def object_path(h: Any, gone: bool) -> str | None:
        asked.append((h.handle, gone))
        return None if gone else "/x"

    got, _ = Decoder().decode(buf, len(buf), dir_path=_dir_path, object_path=object_path)
    assert asked == [(b"obj1", True), (b"obj1", True), (b"obj2", False), (b"obj1", False)]
    assert [(e.path, e.path_resolved) for e in got] == [
        (None, False), (None, False), ("/x", True), ("/x", True)
    ]


def test_a_later_move_self_with_an_unknown_record_still_counts() -> None:
    """A record the parser does not know beside the later MOVE_SELF changes nothing."""
    obj = fid_rec(FID, b"obj1")
    buf = event(obj, fd=-1, mask=int(Event.ATTRIB)) + event(
        obj, rec(200, b"\0\0\0\0"), fd=-1, mask=int(Event.MOVE_SELF)
    )
    asked: list[tuple[bytes, bool]] = []

    def object_path(h: Any, gone: bool) -> str | None:
        asked.append((h.handle, gone))
        return None if gone else "/x"

    got, errors = Decoder().decode(buf, len(buf), dir_path=_dir_path, object_path=object_path)
    assert not errors and got[1].unknown_records
    # (the MOVE_SELF itself, with a record C does not build, is left to Python)
    assert (got[0].path, got[0].path_resolved) == (None, False)
    assert asked[0] == (b"obj1", True)
    assert scan(got)[3] == {got[0].fid: 1}  # the Python pass says the same


def test_a_directory_moved_out_of_sight_makes_earlier_lookups_unsure() -> None:
    """A MOVED_FROM with ONDIR and no MOVED_TO after it: scan() says it went out of sight."""
    d, sub = FileHandle((1, 2), 1, b"dir"), FileHandle((1, 2), 1, b"sub")
    f = FileHandle((1, 2), 1, b"file")
    attrib = FanotifyData(fd=-1, pid=1, ev_types=int(Event.ATTRIB), fid=f)
    away = FanotifyData(fd=-1, pid=1, ev_types=int(Event.MOVED_FROM | Event.ONDIR),
                        fid=sub, dfid=d, name="sub")  # fmt: skip
    arrive = FanotifyData(fd=-1, pid=1, ev_types=int(Event.MOVED_TO | Event.ONDIR),
                          fid=sub, dfid=d, name="sub2")  # fmt: skip
    assert scan([attrib, away])[4] == {sub: 1}
    assert scan([attrib, away, arrive])[4] == {}
    assert scan([attrib, away, away, arrive])[4] == {sub: 1}  # the first never arrived


def test_later_self_events_are_known_across_cuts() -> None:
    """Cuts between FID-only events: the events built after each cut are still told.

    Each directory create is a cut, after which the builder is called again
    on the rest of the batch; the marks of later MOVE_SELF/DELETE_SELF
    events are made once, at the first event that asks, and must still be
    right for every event built after a cut.
    """
    d = fid_rec(DFID_NAME, b"h1\x02", b"sub")
    parts = []
    for k in range(300):
        parts.append(event(fid_rec(FID, b"o%04d" % k), fd=-1, mask=int(Event.MOVE_SELF)))
        parts.append(event(d, fd=-1, mask=int(Event.CREATE | Event.ONDIR)))
    parts.append(event(fid_rec(FID, b"o0000"), fd=-1, mask=int(Event.DELETE_SELF)))
    buf = b"".join(parts)
    asked: list[tuple[bytes, bool]] = []

    def object_path(h: Any, gone: bool) -> str | None:
        asked.append((h.handle, gone))
        return None if gone else "/x"

    cuts: list[int] = []
    got, _ = Decoder().decode(
        buf, len(buf), dir_path=_dir_path, object_path=object_path, dir_change=int(Event.CREATE),
        on_cut=lambda ev, i: cuts.append(i),
    )  # fmt: skip
    assert len(cuts) == 300
    assert asked[0] == (b"o0000", True)  # its DELETE_SELF is 600 events later
    assert asked[1:-1] == [(b"o%04d" % k, False) for k in range(1, 300)]
    assert asked[-1] == (b"o0000", True)  # the DELETE_SELF itself
    assert len(got) == 601


def test_renamed_file_shares_the_directory_entries() -> None:
    """A rename in one directory asks for it once and names both sides from it."""
    d = b"h1\x02"  # _dir_path: "/d/..."
    buf = b"".join(
        event(fid_rec(OLD, d, b"f%d" % i), fid_rec(NEW, d, b"g%d" % i), fd=-1,
              mask=int(Event.RENAME))
        for i in range(3)
    )  # fmt: skip
    asked: list[Any] = []

    def dir_path(h: Any) -> str | None:
        asked.append(h)
        return "/top/sub"

    dec = Decoder()
    got, _ = dec.decode(buf, len(buf), dir_path=dir_path, renames=True)
    assert [(e.old_path, e.new_path, e.path, e.path_resolved, e.dir_path) for e in got] == [
        (f"/top/sub/f{i}", f"/top/sub/g{i}", f"/top/sub/g{i}", True, None) for i in range(3)
    ]
    assert len(asked) == 1 and dec.resolved_count == dec.resolved_upto == 3
    # Without renames=True they are left to the caller, as before.
    plain, _ = Decoder().decode(buf, len(buf), dir_path=dir_path)
    assert all(e.path is None and e.old_path is None for e in plain)
