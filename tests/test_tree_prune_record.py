"""``watch_tree`` pruning: the record of pruned places, against synthetic events (no kernel).

Every check of a record against the filesystem (``name_to_handle_at`` of its
path) is answered from ``_NOW``, the directories where the test puts them.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from afanotify import Event, FanotifyData, _tree
from afanotify._tree import GAP_PID, PRUNE_AFTER, Pruner
from afanotify.events import FileHandle

#: Where each directory is "now", for the records' checks (name_to_handle_at).
_NOW: dict[str, FileHandle] = {}


@pytest.fixture(autouse=True)
def _now(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FileHandle]]:
    _NOW.clear()
    monkeypatch.setattr(_tree._dirmap, "_handle_at", lambda fsid, p: _NOW.get(p))
    yield _NOW


def _pruner(root: str = "/m/w") -> Pruner:
    dm = SimpleNamespace(_mounts={}, live=True)
    return Pruner(-1, dm, root, int(Event.CREATE))  # type: ignore[arg-type]


def _handle(n: int) -> FileHandle:
    return FileHandle((1, 2), 1, bytes([n]) * 8)


def _with(p: Pruner, *paths: str) -> Pruner:
    for n, path in enumerate(paths):
        p._paths[_handle(n)] = path
        p._by_path[path] = _handle(n)
        p._when[_handle(n)] = 0.0
    return p


def _rename(old: str | None, new: str | None, resolved: bool = True) -> FanotifyData:
    return FanotifyData(
        ev_types=int(Event.RENAME | Event.ONDIR), old_path=old, new_path=new,
        path=new, path_resolved=resolved,
    )  # fmt: skip


def test_a_rename_elsewhere_moves_the_pruned_places_below_it() -> None:
    p = _with(_pruner(), "/m/o/a", "/m/o/a/b", "/m/o/ab", "/m/x")
    _NOW.update({"/m/z": _handle(0), "/m/z/b": _handle(1)})
    assert p.seen(_rename("/m/o/a", "/m/z")) == []
    assert sorted(p._by_path) == ["/m/o/ab", "/m/x", "/m/z", "/m/z/b"]
    assert p._paths[_handle(1)] == "/m/z/b"
    assert p.statistics().gaps == 0


def test_a_rename_into_the_tree_drops_the_places_below_it_and_says_a_gap() -> None:
    p = _with(_pruner(), "/m/o/a", "/m/o/a/b", "/m/x")
    [gap] = p.seen(_rename("/m/o", "/m/w/o"))
    assert (gap.ev_types, gap.pid, gap.path, gap.path_resolved) == (
        Event.Q_OVERFLOW, GAP_PID, "/m/w/o", True,
    )  # fmt: skip
    assert list(p._by_path) == ["/m/x"] and list(p._paths.values()) == ["/m/x"]
    assert p.statistics().gaps == 1


def test_a_rename_into_the_tree_of_nothing_pruned_says_nothing() -> None:
    p = _with(_pruner(), "/m/x")
    assert p.seen(_rename("/m/o", "/m/w/o")) == []
    assert list(p._by_path) == ["/m/x"]


def test_a_rename_that_puts_a_pruned_place_above_the_root_drops_it_with_a_gap() -> None:
    p = _with(_pruner("/m/a/w"), "/m/o/p", "/m/x")
    [gap] = p.seen(_rename("/m/o/p", "/m/a"))
    assert gap.path == "/m/a"
    assert list(p._by_path) == ["/m/x"]


def test_a_rename_over_a_pruned_empty_directory_forgets_it() -> None:
    p = _with(_pruner(), "/m/o/y", "/m/x")
    _NOW["/m/o/y"] = _handle(9)  # z, renamed over y
    assert p.seen(_rename("/m/o/z", "/m/o/y")) == []
    assert list(p._by_path) == ["/m/x"] and list(p._paths.values()) == ["/m/x"]


def test_a_record_a_rename_names_but_whose_directory_is_there_is_kept() -> None:
    # The read placed it at its path after the rename (it was looked up
    # afresh, the rename still queued): the rename's replay does not drop it.
    p = _with(_pruner(), "/m/o/y")
    _NOW["/m/o/y"] = _handle(0)
    assert p.seen(_rename("/m/o/z", "/m/o/y")) == []
    assert list(p._by_path) == ["/m/o/y"]


def test_a_swap_read_as_two_renames_is_found_out() -> None:
    # RENAME_EXCHANGE of a and c: a->c then c->a, which replayed as moves
    # would leave a's record where c's directory is now.
    p = _with(_pruner(), "/m/o/a", "/m/x")
    _NOW.update({"/m/o/c": _handle(0), "/m/o/a": _handle(7)})
    assert p.seen(_rename("/m/o/a", "/m/o/c")) == []
    assert p._paths[_handle(0)] == "/m/o/c"
    assert p.seen(_rename("/m/o/c", "/m/o/a")) == []
    assert list(p._by_path) == ["/m/x"]  # unsure, so unpruned


def test_an_unresolved_rename_drops_every_place() -> None:
    p = _with(_pruner(), "/m/x", "/m/y")
    [gap] = p.seen(_rename(None, "/m/w/o", resolved=False))
    assert gap.path == "/m/w/o"
    assert p._by_path == {} and p._paths == {}


def test_an_overflow_drops_every_place_without_a_gap() -> None:
    p = _with(_pruner(), "/m/x", "/m/y")
    assert p.seen(FanotifyData(ev_types=int(Event.Q_OVERFLOW))) == []
    assert p._by_path == {} and p.statistics().gaps == 0


def test_a_removed_directory_is_dropped() -> None:
    p = _with(_pruner(), "/m/x", "/m/y")
    ev = FanotifyData(ev_types=int(Event.DELETE | Event.ONDIR), path="/m/x", path_resolved=True)
    assert p.seen(ev) == []
    assert list(p._by_path) == ["/m/y"]


def test_a_directory_is_pruned_after_enough_events_and_not_when_a_move_makes_paths_unsure(
) -> None:
    p = _pruner()
    tried: list[FileHandle] = []
    p._prune = lambda h, path, now: tried.append(h)  # type: ignore[method-assign]
    h = _handle(1)
    p.note([[h, "/m/x", "/m/x/", 0, PRUNE_AFTER - 1]])
    assert tried == []
    p._dm.live = False  # type: ignore[attr-defined]
    p.note([[h, "/m/x", "/m/x/", 0, 1]])
    assert tried == []  # counted, not pruned, in a read with a directory move
    p._dm.live = True  # type: ignore[attr-defined]
    p.note([[h, "/m/x", "/m/x/", 0, 1]])
    assert tried == [h]
