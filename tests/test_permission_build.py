"""The loop server's direct C build of a permission read (``_permloop.build_events``).

It must give what the general ``Decoder._build`` gives for the same bytes,
including the entries the C builder hands back to the reference parser.
Synthetic buffers, no kernel: every event is FAN_NOFD, so nothing owns a
descriptor.
"""

from __future__ import annotations

import struct

import pytest

from afanotify import _fastparse, _permloop
from afanotify._ffi import ffi, lib
from afanotify.flags import Event

pytestmark = pytest.mark.skipif(not _permloop.AVAILABLE, reason="needs the compiled core")

_NOFD = -1


def _meta(mask: int, pid: int, *, vers: int = 3, event_len: int = 24) -> bytes:
    return struct.pack("=IBBHQii", event_len, vers, 0, 24, mask, _NOFD, pid)


def _walk(dec: _fastparse.Decoder, data: bytes) -> tuple[object, int]:
    buf = ffi.new("unsigned char[]", data)
    count = lib.afn_decode_at(buf, len(data), dec._out, dec._cap, 0, dec._arena,
                              dec._arena_size, dec._arena_used, dec._stop, -1)  # fmt: skip
    return ffi.buffer(buf, len(data)), count


def _fields(ev: object) -> tuple[object, ...]:
    return tuple(getattr(ev, name) for name in ("ev_types", "fd", "pid", "path"))


CASES = {
    "one open_perm": _meta(int(Event.OPEN_PERM), 100),
    "three events": _meta(int(Event.OPEN_PERM), 1) + _meta(int(Event.ACCESS_PERM), 2)
    + _meta(int(Event.OPEN_PERM), 3),
    "a bad version in the middle": _meta(int(Event.OPEN_PERM), 1)
    + _meta(int(Event.OPEN_PERM), 2, vers=2) + _meta(int(Event.OPEN_PERM), 3),
    "a bad version first": _meta(int(Event.OPEN_PERM), 2, vers=9) + _meta(int(Event.OPEN_PERM), 3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_build_events_gives_what_the_general_build_gives(name: str) -> None:
    data = CASES[name]
    dec = _fastparse.Decoder(4096)
    src, count = _walk(dec, data)
    assert isinstance(count, int) and count > 0
    events, errors = _permloop.build_events(dec, src, count, False, False, frozenset())
    ref_dec = _fastparse.Decoder(4096)
    ref_src, ref_count = _walk(ref_dec, data)
    ref_events, ref_errors = ref_dec._build(
        ref_src, ref_count, True, False, False, False, None, frozenset(),
        _permloop._DIR_CHANGE, None, None,
    )  # fmt: skip
    assert [_fields(e) for e in events] == [_fields(e) for e in ref_events]
    assert [str(e) for e in errors] == [str(e) for e in ref_errors]
    if "bad" in name:
        assert errors, "a malformed event must be reported, not dropped"
        # ...and the case is one the C builder hands back (the fallback runs).
        probe: list[object] = []
        stop = _permloop._BUILD(
            dec._out_mv, 0, count, src, dec._arena_buf, probe, [None] * _permloop._MAX_DIRS, {},
            None, frozenset(), _permloop._B_OWNED, _permloop._PERM, _permloop._DIR_CHANGE,
            None, None,
        )[0]  # fmt: skip
        assert stop < count


def test_a_finaliser_given_to_the_event_class_after_setup_runs() -> None:
    # The C deallocator installed at setup must not skip a __del__ added
    # later (it runs it as CPython's would), and a finalized object is not
    # reused for a new event.
    import gc

    from afanotify.events import FanotifyData

    dec = _fastparse.Decoder(4096)
    data = _meta(int(Event.OPEN), 7)
    seen: list[int] = []

    def fin(self: FanotifyData) -> None:
        if self.pid == 7:  # not the garbage of other tests, collected meanwhile
            seen.append(self.pid)

    FanotifyData.__del__ = fin  # type: ignore[attr-defined]
    try:
        events, _ = dec.decode(data, len(data))
        assert [e.pid for e in events] == [7]
        del events
        gc.collect()
        assert seen == [7]
        events, _ = dec.decode(data, len(data))
        del events
        gc.collect()
        assert seen == [7, 7]
    finally:
        del FanotifyData.__del__  # type: ignore[attr-defined]
    events, _ = dec.decode(data, len(data))
    del events
    assert seen == [7, 7]
