"""``FanoRule``: what one consumer of a shared group wants to see.

A rule is a value: a name plus criteria.  An event matches when every
criterion that was given matches (pyfanotify's semantics):

* ``pids``: the event's pid is one of them;
* ``ev_types``: ``event.ev_types & ev_types`` is nonzero;
* ``exe_pattern`` / ``cwd_pattern`` / ``path_pattern``: glibc
  ``fnmatch(3)`` with ``FNM_EXTMATCH`` matches the event's ``exe`` / ``cwd``
  / ``path``.  A field that is ``None`` (process gone, path not resolved)
  does not match.  For ``FAN_RENAME`` the path pattern matches when either
  the old or the new path matches;
* ``predicate``: a callable (plain or ``async``) returning true.

The predicate runs last, only for events that passed every other criterion,
so it can be as expensive as it needs to be without slowing the common case.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import _ffi
from ._patterns import PatternError, check_pattern
from .events import FanotifyData
from .flags import Event

_ALL_EVENTS = 0
for _e in Event:
    _ALL_EVENTS |= _e.value

__all__ = ["FanoRule", "Predicate", "fnmatch"]

#: ``predicate(event) -> bool``, or an ``async`` function returning bool.
Predicate = Callable[[FanotifyData], bool | Awaitable[bool]]
Pattern = str | bytes

_FNM_FLAGS = int(_ffi.lib.FNM_EXTMATCH)
#: Where :mod:`afanotify.compat`'s rules say that they accepted a malformed pattern.
_lenient_log = logging.getLogger("afanotify.compat")
_RENAME = int(Event.RENAME)


def fnmatch(pattern: Pattern, name: str | bytes) -> bool:
    """True when glibc ``fnmatch(pattern, name, FNM_EXTMATCH)`` matches.

    ``pattern`` and ``name`` may each be str or bytes (str is encoded with
    the filesystem encoding, as ``os.fsencode`` does).  No ``FNM_PATHNAME``:
    ``*`` also matches ``/``.
    """
    return _ffi.fnmatch(os.fsencode(pattern), os.fsencode(name), _FNM_FLAGS)


class _Matcher:
    """One compiled pattern: a cheap literal prefix/suffix test, then fnmatch.

    Without FNM_PATHNAME, FNM_PERIOD or FNM_CASEFOLD, the characters before
    the first special one must appear literally at the start of a matching
    name, so comparing them rejects most names without a C call (a set of
    per-directory rules is the common case).  When the pattern has no
    brackets, escapes or extended groups, the characters after its last
    ``*``/``?`` must likewise end the name.
    """

    __slots__ = ("pattern", "prefix", "suffix", "dir_prefix")

    def __init__(self, pattern: str | bytes) -> None:
        pat = os.fsencode(pattern)
        self.pattern = pat
        end = len(pat)
        for i, ch in enumerate(pat):
            if ch in b"*?[\\" or (ch in b"+@!" and pat[i + 1:i + 2] == b"("):
                end = i
                break
        self.prefix = pat[:end]
        #: The prefix up to its last "/": every matching name is under it.
        self.dir_prefix = self.prefix[: self.prefix.rfind(b"/") + 1]
        self.suffix = b""
        if end < len(pat) and not any(c in pat for c in (b"[", b"\\", b"(")):
            last = max(pat.rfind(b"*"), pat.rfind(b"?"))
            self.suffix = pat[last + 1:]

    def __call__(self, name: str | bytes) -> bool:
        raw = os.fsencode(name)
        if not raw.startswith(self.prefix) or not raw.endswith(self.suffix):
            return False
        return _ffi.fnmatch(self.pattern, raw, _FNM_FLAGS)


def _is_async_callable(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _pid(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError("pids must hold ints or digit strings, not bool")
    if isinstance(value, int):
        pid = value
    elif isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if not text.strip().isdigit():
            raise ValueError(f"pids holds {value!r}, which is not a decimal pid")
        pid = int(text)
    else:
        raise TypeError(f"pids must hold ints or digit strings, not {type(value).__name__}")
    if pid <= 0:
        raise ValueError(f"pids holds {value!r}: a pid is a positive number")
    return pid


def _pattern(argname: str, value: object, lenient: bool) -> Pattern | None:
    if value is None:
        return None
    if not isinstance(value, (str, bytes)):
        raise TypeError(f"{argname} must be str, bytes or None, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{argname} is empty: pass None to accept any value")
    if (isinstance(value, str) and "\0" in value) or (
        isinstance(value, bytes) and b"\0" in value
    ):
        raise ValueError(f"{argname} contains a NUL byte, which no path or name can hold")
    try:
        check_pattern(value)
    except PatternError as exc:
        if not lenient:
            raise ValueError(
                f"{argname}: {exc}; glibc would match it as literal text, so it would "
                "match almost nothing"
            ) from exc
        _lenient_log.warning(
            "%s: %s; accepted for pyfanotify compatibility (glibc matches the malformed "
            "part as literal text)", argname, exc,
        )
    return value


class FanoRule:
    """A rule: a name plus the criteria an event must all meet.

    ``FanoRule(name, pids=(), ev_types=0, exe_pattern=None, cwd_pattern=None,
    path_pattern=None, pass_fd=False, predicate=None)``

    :param name: the rule's name (str or bytes); it does not take part in matching.
    :param pids: a set, list or tuple of pids (ints, or decimal str/bytes).
    :param ev_types: a mask of :class:`~afanotify.Event` bits; any common bit matches.
    :param exe_pattern: shell pattern for the causing process's executable.
    :param cwd_pattern: shell pattern for the causing process's working directory.
    :param path_pattern: shell pattern for the event's path (either side of a rename).
    :param pass_fd: hand the event's descriptors to the consumer (see the client).
    :param predicate: ``f(event) -> bool`` or ``async def f(event) -> bool``,
        asked last.  It must be picklable for the rule to pickle, and hashable
        for the rule to hash (plain functions are both).
    :raises TypeError: if ``pids`` is not a set, list or tuple, or an argument
        has the wrong type
    :raises ValueError: if no criterion besides ``name`` and ``pass_fd`` is given, or
        a pattern is malformed (an unclosed ``[`` or ``@(``...: the message names
        the argument and the position; see :func:`afanotify._patterns.check_pattern`)
    """

    #: Accept malformed patterns with a logged warning instead of raising
    #: (``afanotify.compat.FanoRule``: pyfanotify accepts them).
    _lenient_patterns = False

    __slots__ = (
        "name", "pids", "ev_types", "exe_pattern", "cwd_pattern", "path_pattern", "pass_fd",
        "predicate", "is_async", "needs_proc", "_exe_m", "_cwd_m", "_path_m", "_has_rest",
        "_path_key",
    )

    name: str | bytes
    #: The pids, normalised to ints.
    pids: frozenset[int]
    ev_types: int
    exe_pattern: Pattern | None
    cwd_pattern: Pattern | None
    path_pattern: Pattern | None
    pass_fd: bool
    predicate: Predicate | None
    #: True when the predicate is an ``async`` callable: match with :meth:`amatches`.
    is_async: bool
    #: True when matching needs ``exe`` or ``cwd`` read from /proc.
    needs_proc: bool
    _exe_m: _Matcher | None
    _cwd_m: _Matcher | None
    _path_m: _Matcher | None
    _has_rest: bool
    #: The directory every path this rule matches starts with (ends in "/"),
    #: or None: lets the dispatcher index path rules by directory.
    _path_key: str | None

    def __init__(
        self,
        name: str | bytes,
        pids: Iterable[int | str | bytes] = (),
        ev_types: int = 0,
        exe_pattern: Pattern | None = None,
        cwd_pattern: Pattern | None = None,
        path_pattern: Pattern | None = None,
        pass_fd: bool = False,
        predicate: Predicate | None = None,
    ) -> None:
        if not isinstance(name, (str, bytes)):
            raise TypeError(f"name must be str or bytes, not {type(name).__name__}")
        if not isinstance(pids, (set, frozenset, list, tuple)):
            raise TypeError(f"pids must be a set, list or tuple, not {type(pids).__name__}")
        if isinstance(ev_types, bool) or not isinstance(ev_types, int):
            raise TypeError(f"ev_types must be an int or Event mask, not {type(ev_types).__name__}")
        if ev_types < 0:
            raise ValueError(f"ev_types must be a non-negative mask, got {ev_types}")
        if ev_types & ~_ALL_EVENTS:
            raise ValueError(
                f"ev_types has bits no Event names: {ev_types & ~_ALL_EVENTS:#x} "
                "(build the mask from afanotify.Event members)"
            )
        if predicate is not None and not callable(predicate):
            raise TypeError(f"predicate must be callable, not {type(predicate).__name__}")
        s = object.__setattr__
        s(self, "name", name)
        s(self, "pids", frozenset(_pid(p) for p in pids))
        s(self, "ev_types", int(ev_types))
        s(self, "exe_pattern", _pattern("exe_pattern", exe_pattern, self._lenient_patterns))
        s(self, "cwd_pattern", _pattern("cwd_pattern", cwd_pattern, self._lenient_patterns))
        s(self, "path_pattern", _pattern("path_pattern", path_pattern, self._lenient_patterns))
        s(self, "pass_fd", bool(pass_fd))
        s(self, "predicate", predicate)
        if not (
            self.pids or self.ev_types or self.exe_pattern is not None
            or self.cwd_pattern is not None or self.path_pattern is not None
            or predicate is not None
        ):
            raise ValueError(
                "a FanoRule needs at least one criterion besides name and pass_fd: "
                "pids, ev_types, exe_pattern, cwd_pattern, path_pattern or predicate"
            )
        s(self, "is_async", predicate is not None and _is_async_callable(predicate))
        s(self, "needs_proc", self.exe_pattern is not None or self.cwd_pattern is not None)
        s(self, "_exe_m", None if self.exe_pattern is None else _Matcher(self.exe_pattern))
        s(self, "_cwd_m", None if self.cwd_pattern is None else _Matcher(self.cwd_pattern))
        s(self, "_path_m", None if self.path_pattern is None else _Matcher(self.path_pattern))
        pm = self._path_m
        s(self, "_path_key", os.fsdecode(pm.dir_prefix) if pm and pm.dir_prefix else None)
        s(
            self, "_has_rest",
            self.needs_proc or self.path_pattern is not None or predicate is not None,
        )

    # -- value semantics -------------------------------------------------

    def _key(self) -> tuple[Any, ...]:
        return (
            self.name, self.pids, self.ev_types, self.exe_pattern, self.cwd_pattern,
            self.path_pattern, self.pass_fd, self.predicate,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FanoRule):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.pids:
            parts.append(f"pids={tuple(sorted(self.pids))!r}")
        if self.ev_types:
            parts.append(f"ev_types={Event(self.ev_types)!r}")
        for field in ("exe_pattern", "cwd_pattern", "path_pattern"):
            value = getattr(self, field)
            if value is not None:
                parts.append(f"{field}={value!r}")
        if self.pass_fd:
            parts.append("pass_fd=True")
        if self.predicate is not None:
            parts.append(f"predicate={self.predicate!r}")
        return f"FanoRule({', '.join(parts)})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"FanoRule is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"FanoRule is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (
                self.name, tuple(sorted(self.pids)), self.ev_types, self.exe_pattern,
                self.cwd_pattern, self.path_pattern, self.pass_fd, self.predicate,
            ),
        )

    # -- matching --------------------------------------------------------

    def _match_fast(self, ev: FanotifyData) -> bool:
        """The cheap criteria: ev_types and pids."""
        if self.ev_types and not ev.ev_types & self.ev_types:
            return False
        return not self.pids or ev.pid in self.pids

    def _match_fields(self, ev: FanotifyData) -> bool:
        """The pattern criteria (exe, cwd, path); not the predicate."""
        m = self._exe_m
        if m is not None and (ev.exe is None or not m(ev.exe)):
            return False
        m = self._cwd_m
        if m is not None and (ev.cwd is None or not m(ev.cwd)):
            return False
        m = self._path_m
        if m is not None:
            if ev.ev_types & _RENAME:
                return any(p is not None and m(p) for p in (ev.old_path, ev.new_path, ev.path))
            return ev.path is not None and m(ev.path)
        return True

    def _call_sync(self, ev: FanotifyData) -> bool:
        result = self.predicate(ev)  # type: ignore[misc]
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(
                f"the predicate of rule {self.name!r} returned an awaitable: declare it "
                "'async def' (or give it an async __call__) and match with amatches()"
            )
        return bool(result)

    def matches(self, event: FanotifyData) -> bool:
        """True when ``event`` meets every criterion (the synchronous path).

        :raises TypeError: if the rule has an async predicate (use :meth:`amatches`)
        """
        if self.is_async:
            raise TypeError(
                f"rule {self.name!r} has an async predicate: use 'await rule.amatches(event)'"
            )
        if not self._match_fast(event):
            return False
        if not self._has_rest:
            return True
        if not self._match_fields(event):
            return False
        return self.predicate is None or self._call_sync(event)

    async def amatches(self, event: FanotifyData) -> bool:
        """True when ``event`` meets every criterion; awaits an async predicate.

        A sync predicate is called directly: no task or future is created.

        :raises Exception: whatever the predicate raises (a client counts that
            as no match and logs it; a direct call gets the exception)
        """
        if not self.is_async:
            return self.matches(event)
        # An async rule has a predicate, so there is always more than the fast part to check.
        if not self._match_fast(event) or not self._match_fields(event):
            return False
        return bool(await self.predicate(event))  # type: ignore[misc]
