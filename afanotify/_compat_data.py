"""afanotify.compat's ``FanotifyData``: an event assignable and indexable as in pyfanotify."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any

from .events import FanotifyData as _NativeData

_LEGACY_FIELDS = frozenset({"fd", "pid", "ev_types", "exe", "cwd", "path"})


class FanotifyData(_NativeData):
    """A native :class:`afanotify.FanotifyData` as pyfanotify code expects it.

    pyfanotify's events are dicts: code assigns to them
    (``event.ev_types = evt_to_str(event.ev_types)``) and indexes them
    (``event["path"]``).  This subclass allows both for the six documented
    fields; every other field stays read-only.  It adds no fields: an event
    from the engine only changes class on its way to a client.

    With ``pass_fd=True`` the event's ``fd`` belongs to the receiver: close it
    with ``os.close(event.fd)`` (as pyfanotify code does) or ``event.close()``,
    not both.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _LEGACY_FIELDS:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __getitem__(self, key: str) -> Any:
        if key not in _LEGACY_FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in _LEGACY_FIELDS:
            raise KeyError(key)
        object.__setattr__(self, key, value)

    def keys(self) -> tuple[str, ...]:
        """The pyfanotify field names (events were dicts there)."""
        return ("fd", "pid", "ev_types", "exe", "cwd", "path")


def _as_compat(ev: _NativeData) -> FanotifyData:
    # Same slots, no new fields: a class swap instead of a copy.
    object.__setattr__(ev, "__class__", FanotifyData)
    return ev  # type: ignore[return-value]


_NATIVE_SLOTS = tuple(
    name for cls in _NativeData.__mro__ for name in getattr(cls, "__slots__", ())
    if name != "__weakref__"
)


def _own_copy(ev: _NativeData) -> FanotifyData:
    """A compat copy that takes over what ``ev`` owns.

    The native fan-out hands one immutable object to several clients when it
    owns nothing; compat events are mutable, so each client needs its own.
    """
    new = object.__new__(FanotifyData)
    for name in _NATIVE_SLOTS:
        object.__setattr__(new, name, getattr(ev, name))
    object.__setattr__(ev, "_owns", 0)
    return new
