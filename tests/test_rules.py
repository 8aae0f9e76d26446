"""FanoRule: construction, value semantics and matching, on synthetic events (no kernel)."""

from __future__ import annotations

import asyncio
import itertools
import pickle
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afanotify import Event, FanotifyData, _ffi
from afanotify._patterns import PatternError, check_pattern
from afanotify.compat import FanoRule as CompatRule
from afanotify.rules import FanoRule, fnmatch

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = pytest.mark.anyio

OPEN = int(Event.OPEN)
CW = int(Event.CLOSE_WRITE)


def ev(**kw: Any) -> FanotifyData:
    base: dict[str, Any] = dict(
        pid=100, ev_types=OPEN, exe="/usr/bin/cat", cwd="/home/u", path="/data/a.txt"
    )
    base.update(kw)
    return FanotifyData(**base)


def is_even_pid(e: FanotifyData) -> bool:
    return e.pid % 2 == 0


async def async_is_even_pid(e: FanotifyData) -> bool:
    await anyio.sleep(0)
    return e.pid % 2 == 0


# -- construction --------------------------------------------------------


@pytest.mark.parametrize("pids", [{1}, [1], (1,), frozenset({1})])
def test_pids_accepts_set_list_tuple(pids: Any) -> None:
    assert FanoRule("r", pids=pids).pids == frozenset({1})


@pytest.mark.parametrize("pids", [1, "12", b"12", range(3), iter([1]), None])
def test_pids_other_types_raise_type_error(pids: Any) -> None:
    with pytest.raises(TypeError, match="pids must be a set, list or tuple"):
        FanoRule("r", pids=pids)


def test_pids_digit_strings_and_bytes_normalise_to_ints() -> None:
    r = FanoRule("r", pids=["12", b"13", 14])
    assert r.pids == frozenset({12, 13, 14})
    assert r.matches(ev(pid=13))
    with pytest.raises(ValueError, match="not a decimal pid"):
        FanoRule("r", pids=["12x"])
    with pytest.raises(TypeError, match="ints or digit strings"):
        FanoRule("r", pids=[1.5])
    with pytest.raises(TypeError, match="bool"):
        FanoRule("r", pids=[True])
    with pytest.raises(ValueError, match="positive"):
        FanoRule("r", pids=[0])


@pytest.mark.parametrize(
    "kw", [{}, {"pass_fd": True}, {"pids": ()}, {"ev_types": 0}, {"pids": [], "pass_fd": True}]
)
def test_no_criterion_raises_value_error(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="at least one criterion"):
        FanoRule("r", **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"pids": [1]}, {"ev_types": OPEN}, {"exe_pattern": "*"}, {"cwd_pattern": "*"},
        {"path_pattern": "*"}, {"predicate": is_even_pid},
    ],
)
def test_each_criterion_alone_is_enough(kw: dict[str, Any]) -> None:
    FanoRule("r", **kw)


def test_bad_argument_types_name_the_argument() -> None:
    with pytest.raises(TypeError, match="name"):
        FanoRule(1, ev_types=OPEN)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ev_types"):
        FanoRule("r", ev_types="OPEN")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exe_pattern"):
        FanoRule("r", exe_pattern=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path_pattern is empty"):
        FanoRule("r", path_pattern="")
    with pytest.raises(TypeError, match="predicate"):
        FanoRule("r", predicate=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ev_types"):
        FanoRule("r", ev_types=-1)


# -- value semantics -----------------------------------------------------


def test_equality_hash_repr_from_fields() -> None:
    a = FanoRule("r", pids=[2, 1], ev_types=Event.OPEN, path_pattern="/x/*", pass_fd=True)
    b = FanoRule("r", pids=("1", 2), ev_types=OPEN, path_pattern="/x/*", pass_fd=True)
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != FanoRule("other", pids=[1, 2], ev_types=OPEN, path_pattern="/x/*", pass_fd=True)
    assert a != FanoRule("r", pids=[1, 2], ev_types=OPEN, path_pattern="/x/*")
    assert a != FanoRule("r", pids=[1, 2], ev_types=OPEN, path_pattern="/x/*", pass_fd=True,
                         predicate=is_even_pid)
    assert repr(a) == (
        "FanoRule('r', pids=(1, 2), ev_types=<Event.OPEN: 32>, path_pattern='/x/*', pass_fd=True)"
    )
    assert a != "r"


def test_rules_are_immutable() -> None:
    r = FanoRule("r", ev_types=OPEN)
    with pytest.raises(AttributeError, match="immutable"):
        r.ev_types = 0  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del r.name


@pytest.mark.parametrize(
    "rule",
    [
        FanoRule("r", pids=[3, "4"], ev_types=OPEN | CW, exe_pattern=b"/bin/*",
                 cwd_pattern="/h*", path_pattern="+(a|b).txt", pass_fd=True),
        FanoRule(b"bytes-name", predicate=is_even_pid),
        FanoRule("async", predicate=async_is_even_pid),
    ],
)
def test_rules_pickle_round_trip(rule: FanoRule) -> None:
    back = pickle.loads(pickle.dumps(rule))
    assert back == rule and hash(back) == hash(rule)
    assert back.is_async == rule.is_async
    e = ev(pid=4, path="a.txt", exe="/bin/ls", cwd="/home", ev_types=CW)
    if rule.is_async:
        assert asyncio.run(back.amatches(e)) == asyncio.run(rule.amatches(e))
    else:
        assert back.matches(e) == rule.matches(e)


def test_unpicklable_predicate_fails_to_pickle() -> None:
    rule = FanoRule("r", predicate=lambda e: True)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(rule)


# -- single criteria -----------------------------------------------------


def test_pids_criterion() -> None:
    r = FanoRule("r", pids=[100, 7])
    assert r.matches(ev(pid=100)) and r.matches(ev(pid=7))
    assert not r.matches(ev(pid=8))


def test_ev_types_criterion_is_any_common_bit() -> None:
    r = FanoRule("r", ev_types=Event.OPEN | Event.CLOSE_WRITE)
    assert r.matches(ev(ev_types=OPEN))
    assert r.matches(ev(ev_types=CW | int(Event.MODIFY)))
    assert not r.matches(ev(ev_types=int(Event.MODIFY)))


@pytest.mark.parametrize("field", ["exe", "cwd", "path"])
def test_pattern_criteria(field: str) -> None:
    r = FanoRule("r", **{f"{field}_pattern": "*/a*"})
    assert r.matches(ev(**{field: "/x/abc"}))
    assert not r.matches(ev(**{field: "/x/bcd"}))
    # A field that could not be read never matches a pattern on it.
    assert not r.matches(ev(**{field: None}))


def test_exe_none_does_not_match_even_a_star_pattern() -> None:
    assert not FanoRule("r", exe_pattern="*").matches(ev(exe=None))
    assert FanoRule("r", exe_pattern="*").matches(ev(exe=""))


def test_predicate_criterion_sync() -> None:
    r = FanoRule("r", predicate=is_even_pid)
    assert not r.is_async
    assert r.matches(ev(pid=4)) and not r.matches(ev(pid=5))


async def test_predicate_criterion_async() -> None:
    r = FanoRule("r", predicate=async_is_even_pid)
    assert r.is_async
    assert await r.amatches(ev(pid=4))
    assert not await r.amatches(ev(pid=5))
    with pytest.raises(TypeError, match="amatches"):
        r.matches(ev(pid=4))


async def test_async_callable_object_is_detected() -> None:
    class Pred:
        async def __call__(self, e: FanotifyData) -> bool:
            return e.pid == 1

    r = FanoRule("r", predicate=Pred())
    assert r.is_async
    assert await r.amatches(ev(pid=1))


async def test_sync_predicate_in_amatches_creates_no_task() -> None:
    calls: list[int] = []

    def pred(e: FanotifyData) -> bool:
        calls.append(e.pid)
        return True

    r = FanoRule("r", predicate=pred)
    coro = r.amatches(ev(pid=9))
    # A coroutine that never suspends finishes on its first send(): no
    # scheduling round trip, no task, no future.
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value is True
    assert calls == [9]


def test_sync_predicate_returning_coroutine_is_an_error() -> None:
    def sneaky(e: FanotifyData) -> Any:
        return async_is_even_pid(e)

    r = FanoRule("r", predicate=sneaky)
    with pytest.raises(TypeError, match="async def"):
        r.matches(ev())


async def test_predicate_runs_only_after_other_criteria_pass() -> None:
    seen: list[int] = []

    def pred(e: FanotifyData) -> bool:
        seen.append(e.pid)
        return True

    r = FanoRule("r", pids=[1], path_pattern="/ok/*", predicate=pred)
    assert not r.matches(ev(pid=2, path="/ok/x"))
    assert not r.matches(ev(pid=1, path="/no/x"))
    assert r.matches(ev(pid=1, path="/ok/x"))
    assert await r.amatches(ev(pid=1, path="/ok/y"))
    assert seen == [1, 1]


# -- combinations --------------------------------------------------------

CRITERIA: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # name: (rule kwargs, event fields that match, event fields that do not)
    "pids": ({"pids": [100]}, {"pid": 100}, {"pid": 101}),
    "ev_types": ({"ev_types": OPEN}, {"ev_types": OPEN}, {"ev_types": CW}),
    "exe": ({"exe_pattern": "*/cat"}, {"exe": "/usr/bin/cat"}, {"exe": "/usr/bin/dog"}),
    "cwd": ({"cwd_pattern": "/home/*"}, {"cwd": "/home/u"}, {"cwd": "/root"}),
    "path": ({"path_pattern": "*.txt"}, {"path": "/d/a.txt"}, {"path": "/d/a.bin"}),
    "predicate": ({"predicate": is_even_pid}, {"pid": 100}, {"pid": 101}),
}


def _combos() -> list[tuple[str, ...]]:
    names = list(CRITERIA)
    return [c for n in range(1, len(names) + 1) for c in itertools.combinations(names, n)]


@pytest.mark.parametrize("combo", _combos(), ids=lambda c: "+".join(c))
async def test_every_combination_needs_every_criterion(combo: tuple[str, ...]) -> None:
    kw: dict[str, Any] = {}
    good: dict[str, Any] = {}
    for name in combo:
        kw.update(CRITERIA[name][0])
        good.update(CRITERIA[name][1])
    # predicate and pids both look at pid: keep the matching pid consistent.
    rule = FanoRule("r", **kw)
    assert rule.matches(ev(**good))
    assert await rule.amatches(ev(**good))
    for name in combo:
        bad = dict(good)
        bad.update(CRITERIA[name][2])
        assert not rule.matches(ev(**bad)), name
        assert not await rule.amatches(ev(**bad)), name


def test_criteria_not_given_are_ignored() -> None:
    r = FanoRule("r", ev_types=OPEN)
    assert r.matches(ev(pid=1, exe=None, cwd=None, path=None))


# -- patterns ------------------------------------------------------------

PATTERN_TABLE = [
    # pattern, name, glibc fnmatch(FNM_EXTMATCH) result
    ("*.txt", "a.txt", True),
    ("*.txt", "dir/a.txt", True),  # no FNM_PATHNAME: * crosses /
    ("?.txt", "ab.txt", False),
    ("[ab].txt", "b.txt", True),
    ("[!ab].txt", "b.txt", False),
    ("+(a|b).txt", "abba.txt", True),
    ("+(a|b).txt", ".txt", False),
    ("*(a|b).txt", ".txt", True),
    ("*(a|b).txt", "abc.txt", False),
    ("?(a|b).txt", "a.txt", True),
    ("?(a|b).txt", "ab.txt", False),
    ("@(a|b).txt", "b.txt", True),
    ("@(a|b).txt", "c.txt", False),
    ("!(a|b).txt", "c.txt", True),
    ("!(a|b).txt", "a.txt", False),
    ("/usr/bin/@(cat|tac)", "/usr/bin/tac", True),
    ("/data/!(*.tmp)", "/data/x.tmp", False),
    ("/data/!(*.tmp)", "/data/x.log", True),
    ("\\*", "*", True),
    ("\\*", "a", False),
]


@pytest.mark.parametrize("pattern,name,expected", PATTERN_TABLE)
@pytest.mark.parametrize("kind", ["str", "bytes", "str-pattern-bytes-name", "bytes-pattern"])
def test_extended_patterns_str_and_bytes(
    pattern: str, name: str, expected: bool, kind: str
) -> None:
    p: str | bytes = pattern
    n: str | bytes = name
    if kind == "bytes":
        p, n = pattern.encode(), name.encode()
    elif kind == "str-pattern-bytes-name":
        n = name.encode()
    elif kind == "bytes-pattern":
        p = pattern.encode()
    assert fnmatch(p, n) is expected
    rule = FanoRule("r", path_pattern=p)
    assert rule.matches(ev(path=name)) is expected


def test_non_utf8_names_match_through_surrogateescape() -> None:
    raw = b"/d/\xff.txt"
    name = raw.decode("utf-8", "surrogateescape")
    assert FanoRule("r", path_pattern=b"/d/\xff.*").matches(ev(path=name))
    assert FanoRule("r", path_pattern="*.txt").matches(ev(path=name))


def test_rename_path_matches_old_or_new_side() -> None:
    r = FanoRule("r", path_pattern="/src/*")
    rename = int(Event.RENAME)
    assert r.matches(ev(ev_types=rename, old_path="/src/a", new_path="/dst/a", path="/dst/a"))
    assert r.matches(ev(ev_types=rename, old_path="/dst/a", new_path="/src/a", path="/src/a"))
    assert not r.matches(ev(ev_types=rename, old_path="/x/a", new_path="/y/a", path="/y/a"))
    # Only FAN_RENAME looks at both sides; other events use path.
    assert not r.matches(ev(ev_types=OPEN, old_path="/src/a", path="/dst/a"))


# -- the literal prefix/suffix shortcut never changes a result -----------

_FNM = int(_ffi.lib.FNM_EXTMATCH)


@settings(max_examples=3000, deadline=None)
@given(
    st.text(alphabet="ab/.*?[]!+@()|\\", max_size=10),
    st.text(alphabet="ab/.()|!", max_size=10),
)
def test_rule_patterns_agree_with_raw_fnmatch(pattern: str, name: str) -> None:
    if not pattern:
        return
    raw = _ffi.fnmatch(pattern.encode(), name.encode(), _FNM)
    rule_type: type[FanoRule] = FanoRule
    try:
        check_pattern(pattern)
    except PatternError:
        # Refused by the native rule; the compat rule takes it, matching as glibc does.
        with pytest.raises(ValueError, match="path_pattern: malformed pattern"):
            FanoRule("r", path_pattern=pattern)
        rule_type = CompatRule
    assert rule_type("r", path_pattern=pattern).matches(ev(path=name)) is raw
    assert rule_type("r", exe_pattern=pattern.encode()).matches(ev(exe=name)) is raw
