"""afanotify.compat's ``FanotifyData``: an event assignable and indexable as in pyfanotify."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any, cast

from .events import FanotifyData as _NativeData

_LEGACY_FIELDS = frozenset({"fd", "pid", "ev_types", "exe", "cwd", "path"})


class FanotifyData(_NativeData):
    """A native :class:`afanotify.FanotifyData` as pyfanotify code expects it.

    pyfanotify's events are dicts: code assigns to them
    (``event.ev_types = evt_to_str(event.ev_types)``) and indexes them
    (``event["path"]``).  This subclass allows both for the six documented
    fields; every other field stays read-only.  It adds no fields: each event
    a client receives is a new one, copied from the engine's native event by
    :func:`from_native`, which hands its descriptors over.

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


_NATIVE_SLOTS = tuple(
    name for cls in _NativeData.__mro__ for name in getattr(cls, "__slots__", ())
    if name != "__weakref__"
)


def _slot(name: str) -> Any:
    for cls in _NativeData.__mro__:
        if name in vars(cls):
            return vars(cls)[name]
    raise AttributeError(name)


def _make_from_native() -> Callable[[_NativeData], FanotifyData]:
    # One straight-line function, written once: per slot one call of the
    # slot's own setter, which neither class's __setattr__ sees (the native
    # one is frozen, ours admits only the legacy fields).  It costs about a
    # third of a loop of object.__setattr__ calls by name.
    env: dict[str, Any] = {
        "_new": object.__new__, "_cls": FanotifyData, "_set_owns": _slot("_owns").__set__,
    }
    lines = ["def from_native(ev):", "    new = _new(_cls)"]
    for i, name in enumerate(_NATIVE_SLOTS):
        env[f"_set{i}"] = _slot(name).__set__
        lines.append(f"    _set{i}(new, ev.{name})")
    lines += ["    _set_owns(ev, 0)", "    return new"]
    exec("\n".join(lines), env)
    return cast("Callable[[_NativeData], FanotifyData]", env["from_native"])


#: ``from_native(ev)``: a new compat event with ``ev``'s fields, which takes
#: over what ``ev`` owns (its fd); ``ev`` then owns nothing.  The engine's
#: native events stay frozen: the native fan-out may hand one of them to
#: several clients (when it owns nothing), and every compat client gets an
#: object of its own to mutate.
from_native = _make_from_native()
