"""The C builder's tree filter (``watch_tree``), on synthetic buffers: no kernel needed."""

from __future__ import annotations

import _buffers as b
import pytest

from afanotify import Event
from afanotify._fastparse import Decoder, available

pytestmark = pytest.mark.skipif(not available(), reason="this core has no C builder")

#: Directory handles and their paths; the tree is /m/w.
DIRS = {b"\x01" * 8: "/m/w", b"\x02" * 8: "/m/w/sub", b"\x03" * 8: "/m/other",
        b"\x04" * 8: "/m", b"\x05" * 8: "/m/wx", b"\x06" * 8: None}
TREE = ("/m/w", "/m", "w", int(Event.CREATE | Event.DELETE))


def _buf(*specs: tuple[int, bytes, bytes]) -> bytes:
    return b"".join(b.event(mask, b.dfid_name(name, handle), pid=7) for mask, handle, name in specs)


def _decode(buf: bytes, tree: tuple[str, str, str, int] | None = TREE) -> tuple[list[str], Decoder]:
    dec = Decoder()
    events, errors = dec.decode(
        buf, len(buf), dir_path=lambda h: DIRS[h.handle], tree=tree
    )
    assert not errors
    return [f"{e.path}:{e.path_resolved}" for e in events], dec


def test_only_the_tree_is_built() -> None:
    c, d = int(Event.CREATE), int(Event.DELETE)
    buf = _buf(
        (c, b"\x01" * 8, b"a"),      # /m/w/a: in
        (c, b"\x03" * 8, b"b"),      # /m/other/b: out
        (d, b"\x02" * 8, b"c"),      # /m/w/sub/c: in
        (c, b"\x05" * 8, b"d"),      # /m/wx/d: a sibling sharing the prefix: out
        (c, b"\x04" * 8, b"w"),      # /m/w itself, named in its parent: in
        (c, b"\x04" * 8, b"v"),      # /m/v: out
        (c, b"\x06" * 8, b"e"),      # a directory with no path: built, unresolved
        (int(Event.ATTRIB), b"\x01" * 8, b"f"),  # in the tree, but not a wanted kind
    )
    got, dec = _decode(buf)
    assert got == ["/m/w/a:True", "/m/w/sub/c:True", "/m/w:True", "e:False"]
    assert dec.skipped == 4


def test_directory_events_come_only_with_ondir_asked_for() -> None:
    c = int(Event.CREATE)
    buf = _buf((c | int(Event.ONDIR), b"\x01" * 8, b"newdir"), (c, b"\x01" * 8, b"file"))
    plain = _buf((int(Event.ATTRIB | Event.ONDIR), b"\x01" * 8, b"x"), (c, b"\x01" * 8, b"y"))
    tree = ("/m/w", "/m", "w", int(Event.CREATE | Event.ATTRIB))
    got, dec = _decode(plain, tree)
    assert got == ["/m/w/y:True"] and dec.skipped == 1
    got, dec = _decode(plain, (*tree[:3], tree[3] | int(Event.ONDIR)))
    assert got == ["/m/w/x:True", "/m/w/y:True"] and dec.skipped == 0
    got, dec = _decode(buf)
    assert got == ["/m/w/file:True"] and dec.skipped == 1


def test_without_a_tree_nothing_is_skipped() -> None:
    c = int(Event.CREATE)
    buf = _buf((c, b"\x03" * 8, b"b"), (c, b"\x01" * 8, b"a"))
    got, dec = _decode(buf, None)
    assert got == ["/m/other/b:True", "/m/w/a:True"] and dec.skipped == 0


def test_a_root_of_slash_takes_everything() -> None:
    c = int(Event.CREATE)
    buf = _buf((c, b"\x03" * 8, b"b"), (c, b"\x04" * 8, b"a"))
    got, dec = _decode(buf, ("/", "/", "", c))
    assert got == ["/m/other/b:True", "/m/a:True"] and dec.skipped == 0


def test_a_bad_tree_argument_is_refused() -> None:
    buf = _buf((int(Event.CREATE), b"\x01" * 8, b"a"))
    with pytest.raises(TypeError, match="tree is"):
        _decode(buf, ("/m/w", "/m"))  # type: ignore[arg-type]


def test_ondir_in_the_wanted_events_does_not_make_every_directory_event_wanted() -> None:
    # ONDIR says what an event is on, not its kind: with CREATE|ONDIR wanted,
    # an ATTRIB on a directory is still of no wanted kind.
    want = int(Event.CREATE | Event.ONDIR)
    buf = _buf((int(Event.ATTRIB | Event.ONDIR), b"\x01" * 8, b"x"),
               (int(Event.CREATE | Event.ONDIR), b"\x01" * 8, b"d"))
    got, dec = _decode(buf, ("/m/w", "/m", "w", want))
    assert got == ["/m/w/d:True"] and dec.skipped == 1
