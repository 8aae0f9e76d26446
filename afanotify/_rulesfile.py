"""The guard's rules file: one rule a line, checked as a whole before use.

The format (documented in docs/permissions.md, "The guard's rules file")::

    # a comment; blank lines are ignored
    deny  path=/srv/secrets/*.@(key|pem)
    allow exe=/usr/bin/@(cat|less) uid=root,1000
    deny  exe=*/curl event=open,exec audit name=no-curl
    deny  event=pre_access path=/data/cold/* range=0-4095 errno=EAGAIN
    allow

Each line is a verdict (``allow`` or ``deny``) and ``key=value`` criteria,
all of which must hold for the rule to match; the first rule that matches
decides.  A value may be quoted with ``'`` or ``"`` (no escapes inside)
when it holds spaces or a ``#``; an unquoted ``#`` after whitespace starts a
comment.  Plain line splitting, so it parses the same on every Python this
project supports (3.10 has no ``tomllib``).

:func:`parse_rules` reads all of it or raises :class:`RulesError` naming
the line (and the character, for a pattern); nothing half-read is used.
"""

from __future__ import annotations

import errno as _errno
import pwd
from collections.abc import Iterable

from ._patterns import PatternError, check_pattern
from ._static import EVENT_NAMES, StaticRule
from .flags import DENY_ERRNOS

__all__ = ["RulesError", "parse_rules", "read_rules"]

_KEYS = ("path", "exe", "uid", "event", "range", "errno", "audit", "name")


class RulesError(ValueError):
    """A rules file (or one rule) that cannot be used; says where and why."""


def read_rules(path: str, *, pre_content: bool, audit: bool) -> list[StaticRule]:
    """Read and check the rules file at ``path`` (see :func:`parse_rules`).

    :raises RulesError: for a bad rule, naming ``path`` and the line
    :raises OSError: if the file cannot be read
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RulesError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None
    return parse_rules(text.splitlines(), path, pre_content=pre_content, audit=audit)


def parse_rules(
    lines: Iterable[str], source: str, *, pre_content: bool, audit: bool
) -> list[StaticRule]:
    """The rules of ``lines``, in order.

    :param source: the name used in labels and errors (the file's path)
    :param pre_content: the group is a pre-content one (``errno=`` allowed)
    :param audit: the group has FAN_ENABLE_AUDIT (``audit`` allowed)
    :raises RulesError: at the first bad line: ``SOURCE:LINE: what is wrong``
    """
    rules: list[StaticRule] = []
    for lineno, raw in enumerate(lines, 1):
        where = f"{source}:{lineno}"
        try:
            words = _split(raw)
            if words:
                rules.append(parse_rule(words, where, pre_content=pre_content, audit=audit))
        except RulesError as exc:
            raise RulesError(f"{where}: {exc}") from None
    return rules


def parse_rule(
    words: list[tuple[int, str, str]], label: str, *, pre_content: bool, audit: bool
) -> StaticRule:
    """One rule from its words (column, text, text as written); ``label`` names it."""
    (_, verdict, _), rest = words[0], words[1:]
    if verdict not in ("allow", "deny"):
        raise RulesError(f"a rule starts with 'allow' or 'deny', not {verdict!r}")
    kw: dict[str, object] = {}
    for col, word, raw in rest:
        key, eq, value = word.partition("=")
        if key == "audit" and not eq:
            value = "yes"
        elif not eq:
            raise RulesError(f"{word!r} (character {col + 1}) is not key=value; keys: "
                             + ", ".join(_KEYS))
        if key not in _KEYS:
            raise RulesError(f"unknown key {key!r} (character {col + 1}); keys: "
                             + ", ".join(_KEYS))
        if key in kw:
            raise RulesError(f"{key}= is given twice")
        at = raw.find("=") + 1
        kw[key] = _value(key, value, col + at + int(raw[at : at + 1] in ("'", '"')))
    if "errno" in kw:
        if verdict != "deny":
            raise RulesError("errno= only goes with deny")
        if not pre_content:
            raise RulesError(
                "errno= needs a pre-content group (FAN_DENY_ERRNO): run the guard with "
                "--pre-content or --pre-access"
            )
    if kw.get("audit") and not audit:
        raise RulesError(
            "audit needs a group made with FAN_ENABLE_AUDIT: run the guard with --audit"
        )
    name = kw.pop("name", None)
    text = " ".join(raw for _, _, raw in words)
    return StaticRule(
        allowed=verdict == "allow", label=f"{label} ({name})" if name else label, text=text,
        **kw,  # type: ignore[arg-type]
    )


def _value(key: str, value: str, col: int) -> object:
    if not value:
        raise RulesError(f"{key}= has no value")
    if key in ("path", "exe"):
        try:
            check_pattern(value)
        except PatternError as exc:
            raise RulesError(
                f"{key}=: {exc.reason} (character {col + exc.position + 1})"
            ) from None
        return value
    if key == "uid":
        return frozenset(_uid(u) for u in value.split(","))
    if key == "event":
        mask = 0
        for name in value.split(","):
            bit = EVENT_NAMES.get(name)
            if bit is None:
                raise RulesError(f"unknown event {name!r}; events: " + ", ".join(EVENT_NAMES))
            mask |= bit
        return mask
    if key == "range":
        start, dash, end = value.partition("-")
        try:
            lo = int(start)
            hi = int(end) if end else (1 << 64) - 1
        except ValueError:
            raise RulesError(f"range={value!r} is not START-END (bytes, END inclusive)") from None
        if not dash or lo < 0 or hi < lo:
            raise RulesError(f"range={value!r} is not START-END with 0 <= START <= END")
        return (lo, hi)
    if key == "errno":
        num = getattr(_errno, value.upper(), None) if not value.isdigit() else int(value)
        if num not in DENY_ERRNOS:
            raise RulesError(
                f"errno={value} cannot be returned by a permission response; use one of "
                "EPERM, EIO, EBUSY, ETXTBSY, EAGAIN, ENOSPC, EDQUOT"
            )
        return num
    if key == "audit":
        if value not in ("yes", "no"):
            raise RulesError(f"audit={value!r}: write 'audit' (or audit=yes / audit=no)")
        return value == "yes"
    return value  # name


def _uid(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise RulesError(f"uid={text!r}: no such user (give a number or a user name)") from None


def _split(line: str) -> list[tuple[int, str, str]]:
    """Words of ``line``: (column, text, text as written); quotes hold spaces and ``#``."""
    words: list[tuple[int, str, str]] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        if line[i] == "#":
            break
        start = i
        word: list[str] = []
        while i < n and not line[i].isspace():
            c = line[i]
            if c in "'\"":
                close = line.find(c, i + 1)
                if close < 0:
                    raise RulesError(f"the quote at character {i + 1} is never closed")
                word.append(line[i + 1 : close])
                i = close + 1
            else:
                word.append(c)
                i += 1
        words.append((start, "".join(word), line[start:i]))
    return words


def rules_from_args(
    deny: Iterable[str], deny_exe: Iterable[str], allow_exe: Iterable[str]
) -> list[StaticRule]:
    """The command line's rules, in their order: --allow-exe, --deny-exe, --deny."""
    out: list[StaticRule] = []
    for flag, allowed, values in (
        ("--allow-exe", True, allow_exe),
        ("--deny-exe", False, deny_exe),
        ("--deny", False, deny),
    ):
        for v in values:
            label = f"{flag} {v!r}"
            exe, path = (None, v) if flag == "--deny" else (v, None)
            out.append(StaticRule(allowed=allowed, label=label, text=label, exe=exe, path=path))
    return out
