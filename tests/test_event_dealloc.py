"""Freeing events: the C builder's deallocator and free list (csrc/fastpath_build.c).

``_builder_setup`` gives FanotifyData (and FileHandle) a deallocator of its
own, which releases the slots and keeps a freed event for the builder's
next one.  These tests check what that must not change: every value an
event held is released exactly once, a reused event carries only its new
fields, Python subclasses (with a dict, weak references, ``__del__``)
still free what they added, the collector still finds cycles, deep
chains do not overflow the C stack, and freeing never closes a descriptor
(that is :meth:`FanotifyData.close`'s job).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import pickle
import sys
import weakref
from typing import ClassVar

import pytest
from test_fastparse_differential import _dir_events

from afanotify import _fastparse
from afanotify._fastparse import Decoder
from afanotify.events import OWN_FD, FanotifyData, FileHandle

pytestmark = pytest.mark.skipif(not _fastparse.available(), reason="this core has no C builder")

SLOTS: tuple[str, ...] = tuple(FanotifyData.__slots__)  # type: ignore[attr-defined]


class Marker:
    """A value whose release a weak reference shows."""


def _decode(n: int, prefix: bytes = b"f") -> list[FanotifyData]:
    buf = _dir_events(*(prefix + b"%d" % i for i in range(n)))
    events, errors = Decoder().decode(buf, len(buf), dir_path=lambda h: "/d")
    assert not errors and len(events) == n
    return events


def _fields(ev: FanotifyData) -> dict[str, object]:
    return {n: getattr(ev, n) for n in SLOTS}


def test_freeing_an_event_releases_every_value_it_held() -> None:
    marks = [Marker() for _ in SLOTS]
    ev = FanotifyData()
    for n, m in zip(SLOTS, marks, strict=True):
        object.__setattr__(ev, n, m)
    refs = [weakref.ref(m) for m in marks]
    counts = [sys.getrefcount(m) for m in marks]
    del ev
    # One reference less each: released once, not twice (a second release
    # would free the marker under `marks`).
    assert [sys.getrefcount(m) for m in marks] == [c - 1 for c in counts]
    del marks, m
    assert all(r() is None for r in refs)


def test_a_reused_event_carries_only_its_new_fields() -> None:
    first = _decode(50)
    expected = [_fields(e) for e in first]
    tracked = [gc.is_tracked(e) for e in first]
    # Freed events of every origin: built in C, made in Python, owning an fd
    # (freeing closes nothing: _owns is a plain field here).
    made = [FanotifyData(fd=123456, pid=7, path="/old", exe="x", _owns=OWN_FD,
                         unknown_records=((99, b"r"),)) for _ in range(50)]  # fmt: skip
    del first, made
    again = _decode(50)
    assert [_fields(e) for e in again] == expected
    assert [gc.is_tracked(e) for e in again] == tracked
    assert all(e._owns == 0 and e.closed for e in again)
    defaults = _fields(FanotifyData())
    for ev in again:
        for n in SLOTS:
            if n not in ("pid", "ev_types", "dfid", "name", "dir_path", "path", "path_resolved"):
                assert getattr(ev, n) == defaults[n], n


def test_reused_events_copy_pickle_and_replace_as_new_ones() -> None:
    del _decode(10)[:]
    ev = _decode(1, b"p")[0]
    assert pickle.loads(pickle.dumps(ev)) == ev
    assert copy.copy(ev) == ev
    other = dataclasses.replace(ev, name="q")
    assert other.name == "q" and other.path == ev.path == "/d/p0"
    assert type(other) is type(ev) is FanotifyData


def test_freeing_does_not_close_the_fd() -> None:
    r, w = os.pipe()
    try:
        ev = FanotifyData(fd=r, _owns=OWN_FD)
        del ev
        os.fstat(r)  # still open: only close() releases what an event owns
    finally:
        os.close(r)
        os.close(w)


@dataclasses.dataclass(frozen=True)
class WithDict(FanotifyData):
    """A subclass of the kind users write: a dict, weak references, more fields."""

    extra: object = None


class WithSlotsAndDel(FanotifyData):
    __slots__ = ("more", "__weakref__")

    finalised: ClassVar[list[str]] = []

    def __del__(self) -> None:
        WithSlotsAndDel.finalised.append(self.name or "")


def test_subclass_instances_free_what_they_added_and_what_the_base_held() -> None:
    base_m, extra_m, attr_m, slot_m = Marker(), Marker(), Marker(), Marker()
    a = WithDict(exe=base_m, extra=extra_m)
    object.__setattr__(a, "attr", attr_m)
    b = WithSlotsAndDel(name="b", cwd=base_m)
    object.__setattr__(b, "more", slot_m)
    refs = [weakref.ref(x) for x in (base_m, extra_m, attr_m, slot_m)]
    ra, rb = weakref.ref(a), weakref.ref(b)
    del base_m, extra_m, attr_m, slot_m
    assert all(r() is not None for r in refs)
    del a, b
    assert ra() is None and rb() is None
    assert WithSlotsAndDel.finalised == ["b"]
    assert all(r() is None for r in refs)
    # The builder's events are still plain FanotifyData, built right.
    ev = _decode(1)[0]
    assert type(ev) is FanotifyData and ev.path == "/d/f0"


def test_the_collector_frees_an_event_in_a_cycle() -> None:
    m = Marker()
    ev = FanotifyData(cwd=m)
    object.__setattr__(ev, "exe", [ev])
    ref = weakref.ref(m)
    del ev, m
    assert ref() is not None
    gc.collect()
    assert ref() is None


def test_a_deep_chain_of_events_frees_without_overflowing() -> None:
    ev: FanotifyData | None = None
    for _ in range(200_000):
        ev = FanotifyData(exe=ev)
    del ev  # one recursive free per link without the trashcan: a crash


def test_file_handles_free_their_values() -> None:
    m = Marker()
    h = FileHandle((1, 2), 1, b"h")
    object.__setattr__(h, "handle", m)
    ref = weakref.ref(m)
    del m, h
    assert ref() is None


# -- FileHandle's hash and equality (the C ones _builder_setup installs) --


def _generated_eq(a: object, b: object) -> object:
    """What the dataclass's own __eq__ answers, called as a plain function."""
    return FileHandle.__eq__(a, b)  # type: ignore[arg-type]


HANDLES = [
    FileHandle((1, 2), 1, b"x"), FileHandle((1, 2), 1, b"x"), FileHandle((1, 3), 1, b"x"),
    FileHandle((1, 2), 2, b"x"), FileHandle((1, 2), 1, b"y"), FileHandle((1, 2), 1, b""),
    FileHandle((1.0, 2), 1, b"x"),  # type: ignore[arg-type]  # equal to the first
]  # fmt: skip


@pytest.mark.parametrize("a", HANDLES)
@pytest.mark.parametrize("b", HANDLES)
def test_handle_equality_and_hash_are_the_dataclass_ones(a: FileHandle, b: FileHandle) -> None:
    assert hash(a) == FileHandle.__hash__(a) == hash((a.fsid, a.handle_type, a.handle))
    expected = _generated_eq(a, b)
    assert (a == b) is expected and (a != b) is (not expected)
    if expected:
        assert hash(a) == hash(b)


def test_handle_hash_and_equality_run_in_c() -> None:
    """The C methods are installed: hashing and comparing run no Python frame."""
    a, b = FileHandle((1, 2), 1, b"x"), FileHandle((1, 2), 1, b"x")
    called: list[str] = []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "call":
            called.append(frame.f_code.co_name)  # type: ignore[attr-defined]

    sys.setprofile(profile)
    try:
        same = a == b
        hashed = hash(a)
    finally:
        sys.setprofile(None)
    assert same and hashed == FileHandle.__hash__(b)
    assert "__eq__" not in called and "__hash__" not in called, called


def test_handles_of_other_classes_are_not_equal_and_do_not_order() -> None:
    h = FileHandle((1, 2), 1, b"x")

    @dataclasses.dataclass(frozen=True)
    class Sub(FileHandle):
        pass

    s = Sub((1, 2), 1, b"x")
    assert h != s and s != h and h != (h.fsid, h.handle_type, h.handle) and h != 1
    assert {h: 1}.get(FileHandle((1, 2), 1, b"x")) == 1
    with pytest.raises(TypeError):
        _ = h < h  # type: ignore[operator]


def test_a_handle_with_a_deleted_field_raises_as_the_dataclass_would() -> None:
    h = FileHandle((1, 2), 1, b"x")
    object.__delattr__(h, "handle")
    with pytest.raises(AttributeError):
        hash(h)
    with pytest.raises(AttributeError):
        _ = h == FileHandle((1, 2), 1, b"x")
