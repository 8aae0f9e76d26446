"""Malformed patterns are refused before anything is guarded (issue 14).

glibc's fnmatch(3) takes an unclosed ``[`` or ``@(`` as literal text, so a
rule built on one matches nothing real.  The native library and the guard
refuse them, pointing at the position; afanotify.compat accepts them with
a warning, as pyfanotify does.  No kernel needed.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

import afanotify.cli
from afanotify import FanoRule
from afanotify._patterns import PatternError, check_pattern
from afanotify._rulesfile import RulesError, parse_rules
from afanotify.compat import FanoRule as CompatRule
from afanotify.rules import fnmatch

# (pattern, 0-based position of the fault, words the message must contain)
MALFORMED = [
    ("*.@(key|pem", 2, "'@(' is never closed"),
    ("!(", 0, "'!(' is never closed"),
    ("+(a|b", 0, "'+(' is never closed"),
    ("*(x", 0, "'*(' is never closed"),
    ("/srv/?(a", 5, "'?(' is never closed"),
    ("[", 0, "'[' is never closed"),
    ("*.[ch", 2, "'[' is never closed"),
    ("[]", 0, "'[' is never closed"),  # a ] right after [ is a member
    ("[!]", 0, "'[' is never closed"),
    ("@(a|[b)", 4, "'[' is never closed"),  # the bracket swallows the )
    ("@(a|@(b)", 0, "'@(' is never closed"),  # the outer group
    ("[[:alpha]", 1, "'[:' inside a bracket is never closed"),
    ("[[:letter:]]", 1, "not a character class"),
    ("a\\", 1, "trailing backslash"),
    ("", 0, "empty"),
    ("a\0b", 1, "NUL"),
]

WELL_FORMED = [
    "*.key", "*.@(key|pem)", "!(*.txt)", "+(a|b)c", "*(x)", "?(a)b", "[abc]", "[!a-z]",
    "[]]", "[!]]", "@([)])", "[[:alpha:]_]", "a\\[b", "(plain)", "a)b|c", "/srv/**.key",
    "@(a|@(b|c))", "[\\]]", "[[.-.]]", "[[=a=]]",
]


@pytest.mark.parametrize(("pattern", "pos", "words"), MALFORMED)
def test_malformed_pattern_is_refused_at_its_position(pattern: str, pos: int, words: str) -> None:
    with pytest.raises(PatternError) as info:
        check_pattern(pattern)
    assert info.value.position == pos
    assert words in str(info.value)
    assert f"at character {pos + 1}" in str(info.value)


@pytest.mark.parametrize("pattern", WELL_FORMED)
def test_well_formed_pattern_is_accepted(pattern: str) -> None:
    check_pattern(pattern)
    check_pattern(pattern.encode())


def test_why_it_matters_glibc_matches_a_malformed_pattern_literally() -> None:
    # The typo: the pattern matches only its own text, never a key file.
    assert not fnmatch("*.@(key|pem", "a.key")
    assert fnmatch("*.@(key|pem", "*.@(key|pem")
    assert fnmatch("*.@(key|pem)", "a.key")


def test_pointer_puts_the_caret_under_the_fault() -> None:
    with pytest.raises(PatternError) as info:
        check_pattern("*.@(key|pem")
    text, caret = info.value.pointer("").splitlines()
    assert text == "*.@(key|pem"
    assert caret == "  ^"


@pytest.mark.parametrize("arg", ["path_pattern", "exe_pattern", "cwd_pattern"])
@pytest.mark.parametrize(("pattern", "pos", "words"), MALFORMED[:12])
def test_fanorule_raises_valueerror_naming_the_argument(
    arg: str, pattern: str, pos: int, words: str
) -> None:
    with pytest.raises(ValueError) as info:
        FanoRule("r", **{arg: pattern})  # type: ignore[arg-type]
    msg = str(info.value)
    assert msg.startswith(f"{arg}: malformed pattern")
    assert words in msg and f"at character {pos + 1}" in msg


def test_compat_rule_accepts_a_malformed_pattern_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="afanotify.compat"):
        rule = CompatRule("legacy", path_pattern="*.@(key|pem")
    assert rule.path_pattern == "*.@(key|pem"
    (rec,) = [r for r in caplog.records if r.name == "afanotify.compat"]
    assert rec.levelno == logging.WARNING
    assert "path_pattern" in rec.getMessage() and "'@(' is never closed" in rec.getMessage()
    # It matches as pyfanotify's glibc call would: the text literally.
    assert isinstance(rule, FanoRule)
    again = pickle.loads(pickle.dumps(rule))
    assert type(again) is CompatRule and again == rule


def test_compat_rule_with_a_good_pattern_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="afanotify.compat"):
        CompatRule("ok", path_pattern="*.@(key|pem)")
    assert not caplog.records


@pytest.mark.parametrize(
    ("flag", "pattern", "caret"),
    [("--deny", "*.@(key|pem", "    ^"), ("--deny", "[", "  ^"), ("--deny-exe", "!(", "  ^"),
     ("--allow-exe", "/usr/bin/@(cat|less", "           ^")],
)
def test_guard_refuses_a_malformed_pattern_with_exit_2(
    flag: str, pattern: str, caret: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert afanotify.cli.main(["guard", flag, pattern, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: malformed pattern" in err
    lines = err.splitlines()
    assert lines[-2] == "  " + pattern
    assert lines[-1] == caret
    assert "guarding" not in err


def test_guard_refuses_a_malformed_pattern_in_the_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "guard.rules"
    rules.write_text("# keys\ndeny path=*.key\ndeny path=*.@(key|pem\n")
    assert afanotify.cli.main(["guard", "--rules", str(rules), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{rules}:3: path=: '@(' is never closed" in err
    assert "(character 13)" in err  # the "@" of "deny path=*.@(key|pem"
    assert "guarding" not in err


@pytest.mark.parametrize(("line", "pos"), [("deny exe=[abc", 9), ("allow path='a b[' uid=0", 15)])
def test_rules_file_pattern_error_gives_the_character(line: str, pos: int) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules([line], "f", pre_content=False, audit=False)
    assert str(info.value).startswith("f:1: ")
    assert f"(character {pos + 1})" in str(info.value)
