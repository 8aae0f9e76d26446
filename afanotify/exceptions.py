"""afanotify's exceptions: one base class, the rest derive from it."""

from __future__ import annotations

__all__ = [
    "AfanotifyError",
    "ParseError",
    "MetadataVersionError",
    "TruncatedEventError",
    "UnsupportedFlagError",
    "ClosedResourceError",
    "AlreadyAnsweredError",
    "InheritedGroupError",
    "WouldBlock",
]


class AfanotifyError(Exception):
    """Base class of every exception afanotify raises on its own."""


class ParseError(AfanotifyError, ValueError):
    """A buffer from the kernel (or a test) holds a malformed event.

    ``offset`` is where the event starts in the buffer; ``fd``, ``pid`` and
    ``mask`` are the event's metadata when it could be read (else -1, 0, 0), so
    a reader can still close the fd or answer a permission event.  ``pidfd``
    is the pidfd of a PIDFD record read before the malformed part (else -1):
    for a buffer read from the kernel, the reader owns it and closes it too.
    """

    def __init__(
        self, message: str, offset: int = 0, fd: int = -1, pid: int = 0, mask: int = 0
    ) -> None:
        super().__init__(f"{message} (event at offset {offset})")
        self.offset = offset
        self.fd = fd
        self.pid = pid
        self.mask = mask
        self.pidfd = -1


class MetadataVersionError(ParseError):
    """The event's metadata version is not the one this library understands."""


class TruncatedEventError(ParseError):
    """An event or an info record runs past the end of its buffer or event."""


class UnsupportedFlagError(AfanotifyError, OSError):
    """The running kernel rejected a flag; the message names it and its kernel version."""


class ClosedResourceError(AfanotifyError):
    """The group, client or event was already closed."""


class AlreadyAnsweredError(AfanotifyError, RuntimeError):
    """A permission event was answered a second time."""


class InheritedGroupError(AfanotifyError, RuntimeError):
    """A forked child tried to read or answer for the group its parent owns."""


class WouldBlock(AfanotifyError):
    """A ``*_nowait`` call found nothing ready."""
