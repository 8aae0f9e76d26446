"""The C builder's template fill (afanotify/csrc/fastpath_build.c, afn_make_event).

A new event is one copy of its class's defaults, the fields set over it,
and a reference taken for each slot that keeps its default, counted per
default object.  These tests give every slot a default of its own (some
shared by many slots, as None is) and check that each event holds exactly
the fields the builder sets, the default elsewhere, and that the defaults'
reference counts rise by one per slot filled and fall back when the events
go: a count off by one either way would leak or free a live object.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from test_fastparse_differential import _dir_events

from afanotify import _fanotify, _fastparse
from afanotify._fastparse import Decoder
from afanotify.events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData, FileHandle

pytestmark = pytest.mark.skipif(not _fastparse.available(), reason="this core has no C builder")

SLOTS: tuple[str, ...] = tuple(FanotifyData.__slots__)  # type: ignore[attr-defined]


class Marker:
    """A default nobody else holds, so its reference count is exact."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Marker({self.name})"


@pytest.fixture
def marked() -> Iterator[dict[str, Marker]]:
    """Every slot's default a Marker: one shared by the even slots, one each for the odd."""
    shared = Marker("shared")
    defaults = {n: shared if i % 2 == 0 else Marker(n) for i, n in enumerate(SLOTS)}
    _fanotify._builder_setup(
        FanotifyData, FileHandle, SLOTS, tuple(defaults[n] for n in SLOTS),
        tuple(FileHandle.__slots__), OWN_FD, OWN_PIDFD, UNANSWERED,
    )  # fmt: skip
    try:
        yield defaults
    finally:
        assert _fastparse._c_builder() is not None  # the real defaults again


def _decode(n: int) -> list[FanotifyData]:
    buf = _dir_events(*(b"f%d" % i for i in range(n)))
    events, errors = Decoder().decode(buf, len(buf), dir_path=lambda h: "/d")
    assert not errors and len(events) == n
    return events


def test_each_slot_holds_its_field_or_its_default() -> None:
    real = _decode(3)
    assert [e.path for e in real] == ["/d/f0", "/d/f1", "/d/f2"]
    set_by_builder = {"fd", "pid", "ev_types", "dfid", "name", "dir_path", "path",
                      "path_resolved"}  # fmt: skip
    defaults = FanotifyData()
    for ev in real:
        for n in SLOTS:
            if n not in set_by_builder:
                assert getattr(ev, n) == getattr(defaults, n), n


def test_defaults_are_counted_once_per_slot_they_fill(marked: dict[str, Marker]) -> None:
    real_defaults = FanotifyData()
    before = {id(m): sys.getrefcount(m) for m in marked.values()}
    events = _decode(5)
    holds: dict[int, int] = {}
    for ev in events:
        for n in SLOTS:
            v = getattr(ev, n)
            if v is marked[n]:
                holds[id(v)] = holds.get(id(v), 0) + 1
            else:
                # A field the builder set: never one left at its default here.
                assert n in ("fd", "pid", "ev_types", "dfid", "name", "dir_path", "path",
                             "path_resolved"), n  # fmt: skip
                assert v != getattr(real_defaults, n) or n == "fd", (n, v)
        del v
    assert holds  # most slots keep their defaults
    for m in marked.values():
        assert sys.getrefcount(m) == before[id(m)] + holds.get(id(m), 0), m
    del events, ev
    for m in marked.values():
        assert sys.getrefcount(m) == before[id(m)], m


def test_a_failed_build_leaves_the_counts_as_they_were(marked: dict[str, Marker]) -> None:
    before = {id(m): sys.getrefcount(m) for m in marked.values()}

    def broken(h: Any) -> str:
        raise LookupError("resolver failed")

    buf = _dir_events(b"a", b"b")
    with pytest.raises(LookupError):
        Decoder().decode(buf, len(buf), dir_path=broken)
    for m in marked.values():
        assert sys.getrefcount(m) == before[id(m)], m
