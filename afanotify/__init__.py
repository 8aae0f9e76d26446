"""afanotify: Linux fanotify for asyncio."""

from __future__ import annotations

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
