"""The guard's rules file, checked whole before start (issue 14).  No kernel."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import afanotify._cli_guard
import afanotify.cli
from afanotify import Event, FanotifyData
from afanotify._rulesfile import RulesError, parse_rules, read_rules
from afanotify._static import StaticRule, StaticRules


def parse(text: str, pre_content: bool = False, audit: bool = False) -> list[StaticRule]:
    return parse_rules(text.splitlines(), "g.rules", pre_content=pre_content, audit=audit)


def test_the_documented_example_parses() -> None:
    rules = parse(
        "# a comment\n"
        "\n"
        "deny  path=/srv/secrets/*.@(key|pem)\n"
        "allow exe=/usr/bin/@(cat|less) uid=root,1000   # trailing comment\n"
        "deny  exe=*/curl event=open,exec audit name=no-curl\n"
        "deny  event=pre_access path='/data/cold dir/*' range=0-4095 errno=EAGAIN\n"
        "allow\n",
        pre_content=True, audit=True,
    )
    assert [r.label for r in rules] == [
        "g.rules:3", "g.rules:4", "g.rules:5 (no-curl)", "g.rules:6", "g.rules:7",
    ]
    deny_keys, cat, curl, cold, rest = rules
    assert not deny_keys.allowed and deny_keys.path == "/srv/secrets/*.@(key|pem)"
    assert cat.allowed and cat.exe == "/usr/bin/@(cat|less)" and cat.uid == {0, 1000}
    assert curl.event == Event.OPEN_PERM | Event.OPEN_EXEC_PERM and curl.audit
    assert cold.path == "/data/cold dir/*" and cold.range == (0, 4095)
    assert cold.errno == errno.EAGAIN and cold.event == Event.PRE_ACCESS
    assert rest.allowed and rest.path is None and rest.exe is None and not rest.uid
    assert cold.response() == 2 | (errno.EAGAIN << 24)
    assert curl.response() == 2 | 0x10


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("permit path=*", "starts with 'allow' or 'deny', not 'permit'"),
        ("deny colour=red", "unknown key 'colour' (character 6)"),
        ("deny path", "'path' (character 6) is not key=value"),
        ("deny path=", "path= has no value"),
        ("deny path=a path=b", "path= is given twice"),
        ("deny uid=nosuchuser_afanotify", "no such user"),
        ("deny event=write", "unknown event 'write'"),
        ("deny range=10", "is not START-END"),
        ("deny range=9-3", "0 <= START <= END"),
        ("deny errno=ENOENT", "errno=ENOENT cannot be returned"),
        ("allow errno=EIO", "errno= only goes with deny"),
        ("deny errno=EIO", "needs a pre-content group"),
        ("deny audit", "run the guard with --audit"),
        ("deny audit=maybe", "write 'audit'"),
        ("deny path='abc", "the quote at character 11 is never closed"),
        ("deny path=*.@(key", "where the group ends (character 13)"),
    ],
)
def test_a_bad_line_is_named_with_what_is_wrong(line: str, words: str) -> None:
    with pytest.raises(RulesError) as info:
        parse("# first line is fine\ndeny path=*.key\n" + line + "\nallow\n")
    msg = str(info.value)
    assert msg.startswith("g.rules:3: "), msg
    assert words in msg, msg


def test_errno_and_audit_are_accepted_when_the_group_can_send_them() -> None:
    (r,) = parse("deny path=* errno=EIO audit", pre_content=True, audit=True)
    assert r.errno == errno.EIO and r.audit


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "r"
    f.write_bytes(b"deny path=*.key\ndeny path=\xff\n")
    with pytest.raises(RulesError, match=r":2: not UTF-8"):
        read_rules(str(f), pre_content=False, audit=False)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("deny uid=0\n", "g.rules:1"),
        ("bogus\n", "g.rules:1: a rule starts with"),
    ],
)
def test_guard_checks_the_whole_file_before_marking(
    text: str, expect: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rules = tmp_path / "g.rules"
    rules.write_text("allow exe=*/cat\n" + text + "deny path=*.@(a\n")
    made: list[object] = []
    monkeypatch.setattr(afanotify._cli_guard, "Fanotify", lambda *a, **k: made.append(a))
    assert afanotify.cli.main(["guard", "--rules", str(rules), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "guard: error:" in err and "g.rules:" in err
    assert not made, "a group was made although the rules file is bad"


def test_guard_names_a_missing_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.rules"
    assert afanotify.cli.main(["guard", "--rules", str(missing), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "No such file" in err


def test_pre_access_rules_need_pre_access(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "g.rules"
    rules.write_text("deny event=pre_access range=0-10 errno=EIO\n")
    argv = ["guard", "--pre-content", "--rules", str(rules), str(tmp_path)]
    assert afanotify.cli.main(argv) == 2
    assert "needs --pre-access" in capsys.readouterr().err


def test_json_needs_a_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert afanotify.cli.main(["guard", "--json", str(tmp_path)]) == 2
    assert "--log FILE" in capsys.readouterr().err


# -- the decision, in Python (the C path is held to it in test_guard_kernel.py) ----


def _ev(**kw: object) -> FanotifyData:
    kw.setdefault("ev_types", int(Event.OPEN_PERM))
    return FanotifyData(**kw)  # type: ignore[arg-type]


def test_first_match_decides_then_the_default() -> None:
    rules = StaticRules(parse("allow exe=*/cat\ndeny path=*.key\ndeny uid=7\n"), True)
    cat_key = rules.decide(_ev(path="/s/a.key", exe="/usr/bin/cat", pid=1))
    py_key = rules.decide(_ev(path="/s/a.key", exe="/usr/bin/python3", pid=1))
    other = rules.decide(_ev(path="/s/a.txt", exe="/usr/bin/python3", pid=1))
    assert cat_key is not None and cat_key.allowed and cat_key.rule is rules.rules[0]
    assert py_key is not None and not py_key.allowed and py_key.rule is rules.rules[1]
    assert other is not None and other.allowed and other.rule is None
    assert rules.hits() == [("g.rules:1", 1), ("g.rules:2", 1), ("g.rules:3", 0),
                            ("default allow", 1)]


def test_unknown_facts_match_no_rule_that_needs_them() -> None:
    rules = StaticRules(parse("deny exe=*\ndeny path=*\n"), None)
    assert rules.decide(_ev(path=None, exe=None, pid=1)) is None


def test_range_rules_match_overlapping_pre_access_ranges() -> None:
    (r,) = parse("deny event=pre_access range=4096-8191 errno=EIO", pre_content=True)

    def pre(off: int, count: int) -> FanotifyData:
        return _ev(ev_types=int(Event.PRE_ACCESS), range_offset=off, range_count=count)

    def no_uid(pid: int) -> int | None:
        return None

    assert r.matches(pre(4000, 200), no_uid)
    assert r.matches(pre(8191, 1), no_uid)
    assert not r.matches(pre(0, 4096), no_uid)
    assert not r.matches(pre(8192, 100), no_uid)
    assert not r.matches(_ev(), no_uid)  # an open has no range


# -- the examples -------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_example_rules_file_parses() -> None:
    rules = read_rules(str(EXAMPLES / "guard.rules"), pre_content=False, audit=True)
    assert [r.label.split(" ", 1)[-1] for r in rules if "(" in r.label] == [
        "(nginx-keys)", "(keys)", "(no-exec-uploads)"
    ]


def test_the_systemd_unit_runs_a_guard_the_parser_accepts() -> None:
    unit = (EXAMPLES / "afanotify-guard.service").read_text()
    command_line = ""
    for line in unit.split("ExecStart=", 1)[1].splitlines():
        command_line += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            break
    exe, command, *argv = command_line.split()
    assert exe.endswith("/afanotify") and command == "guard"
    args = afanotify.cli.build_parser().parse_args([command, *argv])
    assert args.rules == "/etc/afanotify/guard.rules" and args.json and args.audit
    assert "Restart=always" in unit and "fails open" in unit.lower()
