"""The C line formatter of ``afanotify watch`` writes the Python formatter's bytes.

``afanotify/csrc/fastpath_format.c`` turns a batch of events into the JSON
lines, the text format or a ``--format`` template; ``_cli_output``'s Python
functions are the reference.  Both run here on hand-made events (every event
kind, renames, overflows, null fields, names that are not UTF-8, control
characters) and on hypothesis' and seeded random ones, for every output form.
"""

from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afanotify import _ffi
from afanotify._cli_output import FORMAT_FIELDS, BatchFormatter, Template, clean
from afanotify.events import FanotifyData
from afanotify.flags import Event

NOW = 1_764_633_600.987654  # 2025-12-02, with a fraction that rounds badly in floats

needs_c = pytest.mark.skipif(
    _ffi.CORE != "c", reason="the C formatter is part of the compiled core"
)

TIME_FORMATS = [
    "%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%d %H:%M:%S",
    "%s",
    "%f%f %%f %%",
    "[%c]",
]

TEMPLATES = [
    "{time} {pid} {comm} {events} {path}",
    "{pid:>7}|{comm:<15.15}|{exe}|{cwd}|{type}|{resolved}",
    "{dir}/{name} ({actions}) {old_path} -> {new_path}",
    "{{literal}} {path!r} {name!a} {dir!s:^12} {events:*>30}",
    "{path:.5}{name:_<3}",
    "no fields at all",
    "",
]

# Path parts: plain, control characters, JSON's specials, non-ASCII, past the
# BMP, bytes that are not UTF-8 (as Python decodes them: lone surrogates).
PIECES = [
    "a", "file.txt", "dir", "", "x" * 40, "tab\there", "new\nline", "cr\r", "\x00nul",
    "\x1f\x7f", 'quote"', "back\\slash", "caf\u00e9", "\u65e5\u672c", "\U0001f600",
    os.fsdecode(b"\xff\xfe"), os.fsdecode(b"caf\xc3\xa9\xe9"), os.fsdecode(b"\x80"),
    "\u2028", " ", "-",
]

MASKS = [
    Event.CREATE, Event.CREATE | Event.ONDIR, Event.DELETE, Event.DELETE | Event.ONDIR,
    Event.RENAME, Event.RENAME | Event.ONDIR, Event.MOVED_FROM, Event.MOVED_TO,
    Event.MODIFY, Event.CLOSE_WRITE, Event.CLOSE_NOWRITE, Event.OPEN, Event.OPEN_EXEC,
    Event.ACCESS, Event.ATTRIB, Event.DELETE_SELF, Event.MOVE_SELF, Event.FS_ERROR,
    Event.Q_OVERFLOW, Event.OPEN | Event.MODIFY | Event.CLOSE_WRITE, Event.OPEN_PERM,
]


def _forms() -> list[dict[str, object]]:
    forms: list[dict[str, object]] = [{"json": True}]
    forms += [{"time_format": f} for f in TIME_FORMATS]
    forms += [{"template": Template(t)} for t in TEMPLATES]
    return forms


FORMS = _forms()


def _ids(form: dict[str, object]) -> str:
    if form.get("json"):
        return "json"
    if "template" in form:
        return "template:" + form["template"].text  # type: ignore[union-attr]
    return "text:" + str(form["time_format"])


def both(
    form: dict[str, object], events: list[FanotifyData], procs: dict[int, tuple[object, ...]]
) -> tuple[bytes, bytes]:
    c = BatchFormatter(**form)  # type: ignore[arg-type]
    py = BatchFormatter(**form, use_c=False)  # type: ignore[arg-type]
    assert c.in_c and not py.in_c
    return c.format(events, procs, NOW), py.format(events, procs, NOW)  # type: ignore[arg-type]


def hand_made() -> tuple[list[FanotifyData], dict[int, tuple[object, ...]]]:
    evs = [
        FanotifyData(pid=101, ev_types=int(Event.CREATE), path="/t/d/f", dir_path="/t/d",
                     name="f", path_resolved=True),
        # a path to split: dirname and basename come from it
        FanotifyData(pid=101, ev_types=int(Event.CREATE), path="/t/d/g", path_resolved=True),
        FanotifyData(pid=101, ev_types=int(Event.CREATE), path="g", path_resolved=True),
        FanotifyData(pid=101, ev_types=int(Event.CREATE), path="/t//d//", path_resolved=True),
        FanotifyData(pid=101, ev_types=int(Event.CREATE), path="///", path_resolved=True),
        FanotifyData(pid=101, ev_types=int(Event.CREATE), path="/", path_resolved=True),
        FanotifyData(pid=101, ev_types=int(Event.CREATE), path="", path_resolved=True),
        # unresolved: the kernel's name only
        FanotifyData(pid=102, ev_types=int(Event.DELETE), path="/t/gone", name="gone",
                     path_resolved=False),
        FanotifyData(pid=102, ev_types=int(Event.RENAME | Event.ONDIR), path="/t/new",
                     old_path="/t/old", new_path="/t/new", path_resolved=True, exe="/bin/mv"),
        FanotifyData(pid=103, ev_types=int(Event.RENAME), path="/t/n", old_path="/t/o",
                     path_resolved=True, exe="/usr/bin/"),
        FanotifyData(pid=0, ev_types=int(Event.Q_OVERFLOW)),
        FanotifyData(pid=-1, ev_types=int(Event.OPEN), path=None),
        FanotifyData(pid=104, ev_types=int(Event.FS_ERROR), path=None, error=5),
        FanotifyData(pid=105, ev_types=int(Event.CREATE),
                     path="/t/" + os.fsdecode(b"bad\xff\xc3name") + "\n\"\\\t\x01",
                     path_resolved=True, exe="/usr/bin/" + "long" * 10),
        FanotifyData(pid=106, ev_types=int(Event.MODIFY), path="/t/\U0001f600\u00e9\u65e5",
                     path_resolved=True, exe="/x/caf\u00e9-\u65e5\u672c-proc-name-long"),
        FanotifyData(pid=2**40, ev_types=int(Event.ACCESS), path="/t/big", path_resolved=True),
        FanotifyData(pid=107, ev_types=(1 << 63) | int(Event.OPEN), path="/t/hi",
                     path_resolved=True),
    ]
    procs: dict[int, tuple[object, ...]] = {
        101: ("touch", "/usr/bin/touch", "/root"),
        102: (None, None, None),
        103: ("", "/bin/x", ""),
        105: (os.fsdecode(b"n\xffame"), os.fsdecode(b"/e\xfe"), "/c\u00e9"),
        106: ("a-name-longer-than-fifteen", None, "/"),
    }
    return evs, procs


@needs_c
@pytest.mark.parametrize("form", FORMS, ids=_ids)
def test_hand_made_events_are_formatted_alike(form: dict[str, object]) -> None:
    evs, procs = hand_made()
    c, py = both(form, evs, procs)
    assert c == py
    if form.get("json"):
        # One line per event (text writes a newline in a name as it is).
        assert c.count(b"\n") == len(evs)


@needs_c
def test_the_json_lines_parse_strictly_and_name_bytes_the_documented_way() -> None:
    evs, procs = hand_made()
    c, _ = both({"json": True}, evs, procs)
    lines = [json.loads(line) for line in c.decode("ascii").splitlines()]
    assert lines[13]["file"]["name"].startswith("bad\\xff\\xc3name\n")
    assert lines[13]["process"]["name"] == "n\\xffame"
    assert lines[1]["file"]["directory"] == "/t/d" and lines[1]["file"]["name"] == "g"
    assert lines[8]["fanotify"]["old_path"] == "/t/old"
    assert lines[10]["event"]["kind"] == "pipeline_error"


names = st.one_of(st.none(), st.lists(st.sampled_from(PIECES), max_size=4).map("/".join),
                  st.text(max_size=12))
slashy = st.lists(st.sampled_from([*PIECES, "", "/"]), max_size=5).map("/".join)
paths = st.one_of(st.none(), slashy, slashy.map(lambda p: "/" + p))


@st.composite
def an_event(draw: st.DrawFn) -> FanotifyData:
    mask = draw(st.one_of(st.sampled_from([int(m) for m in MASKS]),
                          st.integers(0, (1 << 64) - 1)))
    return FanotifyData(
        pid=draw(st.one_of(st.integers(-3, 8), st.integers(-(2**70), 2**70))),
        ev_types=mask, path=draw(paths), dir_path=draw(paths), name=draw(names),
        old_path=draw(paths), new_path=draw(paths), path_resolved=draw(st.booleans()),
        exe=draw(paths), cwd=draw(paths),
    )


procs_st = st.dictionaries(
    st.integers(-3, 8), st.tuples(names, paths, paths), max_size=6
)


def _encodable(evs: list[FanotifyData]) -> bool:
    # A lone surrogate that no byte decodes to has no bytes to write (both
    # formatters raise UnicodeEncodeError for it; tested below).
    for ev in evs:
        for v in (ev.path, ev.dir_path, ev.name, ev.old_path, ev.new_path, ev.exe, ev.cwd):
            if v is not None:
                try:
                    v.encode("utf-8", "surrogateescape")
                except UnicodeEncodeError:
                    return False
    return True


@needs_c
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    form=st.sampled_from(FORMS), evs=st.lists(an_event(), max_size=12), procs=procs_st,
)
def test_random_batches_are_formatted_alike(
    form: dict[str, object], evs: list[FanotifyData], procs: dict[int, tuple[object, ...]]
) -> None:
    if not _encodable(evs) or not _encodable([FanotifyData(name=p[0], exe=p[1], cwd=p[2])
                                              for p in procs.values()]):
        return
    c, py = both(form, evs, procs)
    assert c == py


@needs_c
@settings(max_examples=150, deadline=None)
@given(
    fields=st.lists(
        st.tuples(
            st.text(alphabet="ab {}%-|", max_size=3),
            st.sampled_from(list(FORMAT_FIELDS)),
            st.sampled_from(["", ":>7", ":<15.15", ":^9", ":.3", ":*<20", "!r", "!a", "!s:>4"]),
        ),
        max_size=6,
    ),
    evs=st.lists(an_event(), max_size=6), procs=procs_st,
)
def test_random_templates_are_formatted_alike(
    fields: list[tuple[str, str, str]], evs: list[FanotifyData],
    procs: dict[int, tuple[object, ...]],
) -> None:
    text = "".join(lit.replace("{", "{{").replace("}", "}}") + "{" + f + spec + "}"
                   for lit, f, spec in fields)
    if not _encodable(evs):
        return
    c, py = both({"template": Template(text)}, evs, procs)
    assert c == py


@needs_c
@pytest.mark.parametrize("form", FORMS, ids=_ids)
def test_large_seeded_batches_are_formatted_alike(form: dict[str, object]) -> None:
    rnd = random.Random(12)
    for _ in range(20):
        evs = []
        for _ in range(rnd.randrange(1, 600)):
            d = "/".join(rnd.choice(PIECES) for _ in range(rnd.randrange(0, 4)))
            n = rnd.choice(PIECES)
            full = "/t/" + d + "/" + n
            mask = int(rnd.choice(MASKS))
            resolved = rnd.random() < 0.8
            if mask & Event.RENAME:
                evs.append(FanotifyData(
                    pid=rnd.randrange(0, 9), ev_types=mask, path=full, old_path=full + ".old",
                    new_path=full, path_resolved=resolved))
            else:
                evs.append(FanotifyData(
                    pid=rnd.randrange(0, 9), ev_types=mask, path=full if resolved else None,
                    dir_path=rnd.choice([None, "/t/" + d]), name=rnd.choice([None, n]),
                    path_resolved=resolved, exe=rnd.choice([None, "/usr/bin/" + n])))
        procs: dict[int, tuple[object, ...]] = {
            p: (rnd.choice([None, "p" + str(p), "\u00e9" * 20]), rnd.choice([None, "/bin/x"]),
                rnd.choice([None, "/"]))
            for p in range(0, 9, 2)
        }
        c, py = both(form, evs, procs)
        assert c == py


@needs_c
@pytest.mark.parametrize("form", [{"json": True}, {}, {"template": Template("{path}")}], ids=str)
def test_a_surrogate_no_byte_decodes_to_is_refused_by_both(form: dict[str, object]) -> None:
    evs = [FanotifyData(pid=1, ev_types=int(Event.CREATE), path="/t/\ud800", path_resolved=True)]
    c = BatchFormatter(**form)  # type: ignore[arg-type]
    py = BatchFormatter(**form, use_c=False)  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        py.format(evs, {}, NOW)
    with pytest.raises(UnicodeEncodeError):
        c.format(evs, {}, NOW)


@needs_c
def test_the_watch_uses_the_c_formatter_on_the_compiled_core() -> None:
    assert BatchFormatter(json=True).in_c
    assert BatchFormatter().in_c
    assert BatchFormatter(template=Template("{path}")).in_c
    # A nested field in a spec is str.format's alone: Python formats it.
    assert not BatchFormatter(template=Template("{path:{comm}<}")).in_c
    assert clean(os.fsdecode(b"a\xff")) == "a\\xff"


def test_the_pure_core_keeps_the_python_formatter() -> None:
    if _ffi.CORE == "c":
        assert BatchFormatter(json=True).in_c
    else:
        assert not BatchFormatter(json=True).in_c
    evs, procs = hand_made()
    out = BatchFormatter(json=True, use_c=False).format(evs, procs, NOW)  # type: ignore[arg-type]
    assert out.count(b"\n") == len(evs)
    assert BatchFormatter(json=True, use_c=False).format([], {}, NOW) == b""
