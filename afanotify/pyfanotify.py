"""pyfanotify 0.3.0's runtime types on afanotify, for code written against the real library.

``afanotify.compat`` follows pyfanotify's documentation (``exe``, ``cwd`` and
``path`` are ``str``).  The released pyfanotify 0.3.0 gives ``bytes``
instead, and code written against it relies on that (``event.path[0].decode()``).
This module has the same names as :mod:`afanotify.compat` and the same
engine; the one difference is the conversion step in
:meth:`FanotifyClient.get_events`, which turns each event into what 0.3.0's
client builds from its datagram:

* ``FanotifyData`` is a ``dict`` subclass with attribute access;
* ``path`` is a tuple of bytes: ``(old, new)`` for a rename, else one path,
  which is ``b''`` unless the rule has a ``path_pattern`` (or the event names
  a directory entry, which 0.3.0 always resolves);
* ``exe`` / ``cwd`` are the bytes 0.3.0 read for the rule's ``exe_pattern`` /
  ``cwd_pattern``, and ``b''`` when the rule has no such pattern;
* ``fd`` is the passed descriptor with ``pass_fd=True`` (the receiver closes
  it), else -1.

And, as in 0.3.0, :class:`Fanotify` runs ``fn`` in a forked single-threaded
child process that shares the group (``fn_in="process"``), where
``setns(2)`` into another mount namespace works.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal

from . import compat as _compat
from ._compat_data import FanotifyData as _CompatData
from .compat import CompatStatistics as CompatStatistics
from .compat import FanoRule as FanoRule

__all__ = ["Fanotify", "FanoRule", "FanotifyClient", "FanotifyData", "evt_to_str"]

__version__ = "0.3.0"

# The FAN_* names and AT_FDCWD, the same objects as afanotify.compat's.
globals().update(
    {k: v for k, v in vars(_compat).items() if k.startswith("FAN") or k == "AT_FDCWD"}
)

# 0.3.0 names these bits, in this order, and drops any other bit silently.
_NAMED = (
    "ACCESS", "MODIFY", "ATTRIB", "CLOSE_WRITE", "CLOSE_NOWRITE", "OPEN", "MOVED_FROM",
    "MOVED_TO", "CREATE", "DELETE", "DELETE_SELF", "MOVE_SELF", "OPEN_EXEC", "OPEN_PERM",
    "ACCESS_PERM", "OPEN_EXEC_PERM", "RENAME", "ONDIR", "EVENT_ON_CHILD",
)
_EVT_NAMES: tuple[tuple[int, str], ...] = tuple(
    (int(getattr(_compat, "FAN_" + n)), "on_child" if n == "EVENT_ON_CHILD" else n.lower())
    for n in _NAMED
)


def evt_to_str(evt: int) -> str:
    """0.3.0's ``evt_to_str``: the names of the bits it knows, joined by ``|``."""
    if isinstance(evt, bool) or not isinstance(evt, int):
        raise TypeError(f"evt_to_str() takes an int mask, not {type(evt).__name__}")
    return "|".join(name for bit, name in _EVT_NAMES if bit & evt)


class Fanotify(_compat.Fanotify):
    """:class:`afanotify.compat.Fanotify`, with ``fn`` in a forked child process as in 0.3.0."""

    FN_IN: Literal["thread", "process"] = "process"


class FanotifyData(dict[str, Any]):
    """0.3.0's event: a dict of ``fd, pid, ev_types, exe, cwd, path`` read as attributes too."""

    def __init__(
        self,
        fd: int = -1,
        pid: int = 0,
        ev_types: int = 0,
        exe: bytes | None = None,
        cwd: bytes | None = None,
        path: tuple[bytes, ...] = (),
    ) -> None:
        super().__init__(fd=fd, pid=pid, ev_types=ev_types, exe=exe, cwd=cwd, path=path)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


def _raw(text: str | None) -> bytes:
    return os.fsencode(text) if text else b""


def to_legacy(ev: _CompatData, rule: FanoRule) -> FanotifyData:
    """The 0.3.0 event for ``ev`` as delivered to ``rule``'s client; takes over ``ev``'s fd.

    This is the one conversion between :mod:`afanotify.compat` and this module.
    """
    fd = -1
    if rule.pass_fd and ev.fd >= 0:
        try:
            fd = ev.detach_fd()
        except ValueError:  # released already
            fd = -1
    ev.close()
    if ev.old_path is not None and ev.new_path is not None:
        path: tuple[bytes, ...] = (_raw(ev.old_path), _raw(ev.new_path))
    elif rule.path_pattern is not None or ev.name is not None:
        path = (_raw(ev.path),)
    else:
        path = (b"",)
    return FanotifyData(
        fd=fd,
        pid=int(ev.pid),
        ev_types=int(ev.ev_types),
        exe=_raw(ev.exe) if rule.exe_pattern is not None else b"",
        cwd=_raw(ev.cwd) if rule.cwd_pattern is not None else b"",
        path=path,
    )


class FanotifyClient(_compat.FanotifyClient):
    """:class:`afanotify.compat.FanotifyClient` whose events have 0.3.0's types."""

    def get_events(self) -> Iterator[FanotifyData]:  # type: ignore[override]
        """Yield the waiting events as 0.3.0's :class:`FanotifyData`, without blocking."""
        rule = self.rule
        for ev in super().get_events():
            yield to_legacy(ev, rule)
