"""What every object that owns something shares: ``with`` / ``async with``
closing it, and a ``ResourceWarning`` when it is collected still open.

A class using these mixins defines ``close()`` and keeps ``_closed``, set to
True first thing in ``__init__`` and to False once it owns something, so a
constructor that raised leaves nothing to warn about.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

_C = TypeVar("_C", bound="ClosingContext")


def warn_and_close(obj: object, close: Callable[[], object], word: str = "unclosed") -> None:
    """Warn that ``obj`` was collected without being closed, then call ``close``.

    For ``__del__``: an exception from ``close`` is swallowed, as there is
    nobody left to raise it to.
    """
    warnings.warn(f"{word} {obj!r}", ResourceWarning, stacklevel=1, source=obj)
    try:
        close()
    except Exception:
        pass


class ClosingContext:
    """``with obj:`` calls ``obj.close()`` on the way out."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClosingContext(ClosingContext):
    """Adds ``aclose()`` and ``async with obj:``; closing itself never awaits."""

    __slots__ = ()

    async def aclose(self) -> None:
        """Close (see :meth:`close`)."""
        self.close()

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class WarnsUnclosed:
    """Collected while still open: warn with ``ResourceWarning`` and close."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        warn_and_close(self, self.close)
