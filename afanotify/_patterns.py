"""Checking shell patterns before anything trusts them.

afanotify matches patterns with glibc ``fnmatch(3)`` and ``FNM_EXTMATCH``.
glibc never reports a malformed pattern: an unclosed ``[`` or ``@(`` is
matched as literal text, so ``*.@(key|pem`` (a missing ``)``) matches no
real file name and a rule built on it protects nothing, silently.  This
module reads a pattern the way glibc parses it and refuses what glibc would
quietly take literally:

* a ``[`` bracket expression that is never closed by ``]`` (a ``]`` right
  after ``[``, ``[!`` or ``[^`` is a member, not the end);
* a ``[:class:]`` that is not closed or names no POSIX class, and an
  unclosed ``[.`` or ``[=`` inside a bracket;
* an extended group (``@(``, ``!(``, ``+(``, ``*(``, ``?(``) never closed
  by its ``)``;
* a trailing backslash (it escapes nothing);
* an empty pattern, or one holding a NUL character (C strings end there).

A ``(`` that follows none of ``@!+*?`` is a literal character, and so are a
``)`` or a ``|`` outside any group, as in glibc.  :func:`check_pattern`
raises :class:`PatternError` (a ``ValueError``) giving the position.
"""

from __future__ import annotations

import os

__all__ = ["PatternError", "check_pattern"]

_EXTGLOB = frozenset(b"@!+*?")
_CLASSES = frozenset(
    b"alnum alpha blank cntrl digit graph lower print punct space upper xdigit".split()
)


class PatternError(ValueError):
    """A malformed shell pattern; ``position`` is the 0-based index of the fault."""

    def __init__(self, pattern: str | bytes, position: int, reason: str) -> None:
        self.pattern = pattern
        self.position = position
        self.reason = reason
        super().__init__(
            f"malformed pattern {_show(pattern)}: {reason} (at character {position + 1})"
        )

    def pointer(self, indent: str = "  ") -> str:
        """Two lines: the pattern, then a caret under the fault."""
        text = _text(self.pattern)
        # The caret counts characters of the shown text; bytes are shown decoded.
        col = len(os.fsdecode(os.fsencode(self.pattern)[: self.position]))
        return f"{indent}{text}\n{indent}{' ' * col}^"


def _text(pattern: str | bytes) -> str:
    return os.fsdecode(pattern) if isinstance(pattern, bytes) else pattern


def _show(pattern: str | bytes) -> str:
    return repr(_text(pattern))


def check_pattern(pattern: str | bytes) -> None:
    """Raise :class:`PatternError` if ``pattern`` is malformed (see the module docstring).

    :raises PatternError: naming what is wrong and where
    """
    p = os.fsencode(pattern)
    if not p:
        raise PatternError(pattern, 0, "the pattern is empty")
    nul = p.find(0)
    if nul >= 0:
        raise PatternError(pattern, nul, "a NUL character ends the pattern early")
    n = len(p)
    groups: list[int] = []  # where each open extended group starts
    i = 0
    while i < n:
        c = p[i]
        if c == 0x5C:  # backslash
            if i + 1 >= n:
                raise PatternError(
                    pattern, i, "a trailing backslash escapes nothing (write \\\\ for a backslash)"
                )
            i += 2
        elif c == 0x5B:  # [
            i = _bracket_end(pattern, p, i)
        elif c in _EXTGLOB and i + 1 < n and p[i + 1] == 0x28:  # X(
            groups.append(i)
            i += 2
        elif c == 0x29 and groups:  # )
            groups.pop()
            i += 1
        else:
            i += 1
    if groups:
        start = groups[-1]
        opener = chr(p[start]) + "("
        raise PatternError(
            pattern, start, f"{opener!r} is never closed: add ')' where the group ends"
        )


def _bracket_end(pattern: str | bytes, p: bytes, start: int) -> int:
    """The index after the ``]`` closing the bracket expression at ``start``."""
    n = len(p)
    j = start + 1
    if j < n and p[j] in b"!^":
        j += 1
    if j < n and p[j] == 0x5D:  # a leading ] is a member
        j += 1
    while j < n:
        c = p[j]
        if c == 0x5D:
            return j + 1
        if c == 0x5C:
            j += 2
            continue
        if c == 0x5B and j + 1 < n and p[j + 1] in b":.=":
            kind = p[j + 1]
            close = p.find(bytes((kind, 0x5D)), j + 2)
            if close < 0:
                what = "[" + chr(kind)
                raise PatternError(
                    pattern, j, f"{what!r} inside a bracket is never closed by {chr(kind) + ']'!r}"
                )
            if kind == 0x3A and p[j + 2 : close] not in _CLASSES:
                name = os.fsdecode(p[j + 2 : close])
                raise PatternError(
                    pattern, j,
                    f"[:{name}:] is not a character class (alnum, alpha, blank, cntrl, digit, "
                    "graph, lower, print, punct, space, upper, xdigit)",
                )  # fmt: skip
            j = close + 2
            continue
        j += 1
    raise PatternError(
        pattern, start, "'[' is never closed: add ']', or write '\\[' for a literal '['"
    )
