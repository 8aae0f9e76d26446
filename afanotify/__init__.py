"""afanotify: Linux fanotify for asyncio.

Every file event on a file, directory, mount or whole filesystem, delivered
to asyncio code with nothing lost silently, and permission events that are
always answered::

    import asyncio
    from afanotify import Event, Fanotify, InitFlag

    async def main() -> None:
        async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
            fan.mark("/tmp/watched", Event.CREATE | Event.DELETE | Event.EVENT_ON_CHILD)
            async for event in fan:
                print(event.events, event.path)

    asyncio.run(main())

The names, by job:

- :class:`Fanotify`: a group (the kernel fd): ``mark()``, ``unmark()``,
  ``flush()``, ``async for``, ``receive()``, ``stats``.  Events are
  :class:`FanotifyData` (with :class:`FileHandle` in FID modes); an event
  that carries an fd owns it.
- :class:`Event`, :class:`InitFlag`, :class:`MarkFlag`, :class:`Response`,
  :class:`InfoType`: the kernel's flags as enums; :mod:`afanotify.flags` also
  has the ``FAN_*`` integers.  :func:`evt_to_str` names the bits of a mask.
- :class:`FanoRule` and :class:`FanotifyClient`: many consumers of one group,
  each with its own filter and bounded queue (:class:`ClientOverflow`,
  :class:`ClientStatistics`, :class:`DispatchStatistics`).
- Permission events: ``event.allow()`` / ``event.deny()`` or
  ``Fanotify.on_permission``; :data:`ALLOW`, :data:`DENY`, :class:`Verdict`,
  :class:`AuditRule`, :class:`PermissionStatistics`.
- :func:`features` (a :class:`Features`): what the running kernel accepts,
  probed, and which core (compiled or pure-Python) this install runs on.
- Errors derive from :class:`AfanotifyError`: :class:`ClosedResourceError`,
  :class:`WouldBlock`, :class:`AlreadyAnsweredError`,
  :class:`UnsupportedFlagError`, and :class:`ParseError` with
  :class:`MetadataVersionError` and :class:`TruncatedEventError`.
- ``afanotify.compat`` and ``afanotify.pyfanotify``: pyfanotify's API, for
  legacy code.  The ``afanotify`` command (``watch``, ``guard``,
  ``features``) is ``afanotify.cli``.

The documentation (guides and the API reference) is in ``docs/``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import flags as flags
    from ._features import Features as Features
    from ._features import features as features
    from .client import ClientOverflow as ClientOverflow
    from .client import ClientStatistics as ClientStatistics
    from .client import DispatchStatistics as DispatchStatistics
    from .client import FanotifyClient as FanotifyClient
    from .events import FanotifyData as FanotifyData
    from .events import FileHandle as FileHandle
    from .exceptions import AfanotifyError as AfanotifyError
    from .exceptions import AlreadyAnsweredError as AlreadyAnsweredError
    from .exceptions import ClosedResourceError as ClosedResourceError
    from .exceptions import InheritedGroupError as InheritedGroupError
    from .exceptions import MetadataVersionError as MetadataVersionError
    from .exceptions import ParseError as ParseError
    from .exceptions import TruncatedEventError as TruncatedEventError
    from .exceptions import UnsupportedFlagError as UnsupportedFlagError
    from .exceptions import WouldBlock as WouldBlock
    from .flags import Event as Event
    from .flags import InfoType as InfoType
    from .flags import InitFlag as InitFlag
    from .flags import MarkFlag as MarkFlag
    from .flags import Response as Response
    from .flags import evt_to_str as evt_to_str
    from .group import Fanotify as Fanotify
    from .group import GroupStatistics as GroupStatistics
    from .permission import ALLOW as ALLOW
    from .permission import DENY as DENY
    from .permission import AuditRule as AuditRule
    from .permission import PermissionStatistics as PermissionStatistics
    from .permission import Verdict as Verdict
    from .rules import FanoRule as FanoRule

# The names are imported on first use (PEP 562): ``afanotify watch`` needs the
# group and its decoder, not the client, permission or probing machinery, and
# importing all of it was most of an idle watch's CPU.  A name's module, with
# "" for a submodule of the same name.
_LAZY = {
    "flags": "",
    "Features": "_features",
    "features": "_features",
    "ClientOverflow": "client",
    "ClientStatistics": "client",
    "DispatchStatistics": "client",
    "FanotifyClient": "client",
    "FanotifyData": "events",
    "FileHandle": "events",
    "AfanotifyError": "exceptions",
    "AlreadyAnsweredError": "exceptions",
    "ClosedResourceError": "exceptions",
    "InheritedGroupError": "exceptions",
    "MetadataVersionError": "exceptions",
    "ParseError": "exceptions",
    "TruncatedEventError": "exceptions",
    "UnsupportedFlagError": "exceptions",
    "WouldBlock": "exceptions",
    "Event": "flags",
    "InfoType": "flags",
    "InitFlag": "flags",
    "MarkFlag": "flags",
    "Response": "flags",
    "evt_to_str": "flags",
    "Fanotify": "group",
    "GroupStatistics": "group",
    "ALLOW": "permission",
    "DENY": "permission",
    "AuditRule": "permission",
    "PermissionStatistics": "permission",
    "Verdict": "permission",
    "FanoRule": "rules",
}


# Outside type checking only: seen by a type checker, a module __getattr__
# makes every unknown name of the package Any (a misspelt import passes).
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        if module:
            value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        else:
            value = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = value
        return value


    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = (
    "ALLOW",
    "DENY",
    "AfanotifyError",
    "AlreadyAnsweredError",
    "InheritedGroupError",
    "AuditRule",
    "ClientOverflow",
    "ClientStatistics",
    "ClosedResourceError",
    "DispatchStatistics",
    "Event",
    "FanoRule",
    "Fanotify",
    "FanotifyClient",
    "Features",
    "GroupStatistics",
    "FanotifyData",
    "FileHandle",
    "InfoType",
    "InitFlag",
    "MarkFlag",
    "MetadataVersionError",
    "ParseError",
    "PermissionStatistics",
    "Response",
    "TruncatedEventError",
    "UnsupportedFlagError",
    "Verdict",
    "WouldBlock",
    "__version__",
    "evt_to_str",
    "features",
    "flags",
)
