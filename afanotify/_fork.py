"""Fork safety: a forked child acts on its copy of a group, never on the parent's.

After fork(2) the child holds a copy of every group fd: the same open file,
so the same marks and the same kernel queue.  It also holds the event
loop's epoll fd, which is the same epoll instance as the parent's.  So
whatever the child does through them acts on the parent's group: a read
takes the parent's events, a response answers the parent's permission
events, ``remove_reader`` removes the parent's registration, and a flush
removes the parent's marks.  The child may add marks (pyfanotify's ``fn``
does, in its worker) and close its own copies; nothing else.

Two guards.  An ``os.register_at_fork`` handler marks every live group
inherited in the child, a flag the group checks on the paths that matter;
and the group compares the pid it was made in with ``os.getpid()`` where it
matters most (closing, starting to read), for a fork that skipped Python's
handlers.
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Protocol

from ._marks import MarkKind, do_mark, kind_flag
from ._resource import WarnsUnclosed
from .exceptions import InheritedGroupError
from .flags import MarkFlag

if TYPE_CHECKING:
    from ._dispatch import Dispatcher
    from ._pipeline import Pipeline
    from ._queue import EventQueue
    from ._reader import Reader
    from ._watchdog import Watchdog
    from .events import FanotifyData
    from .permission import PermissionTracker

__all__ = ["ForkGuard", "track"]

_MARK_KINDS: tuple[MarkKind, ...] = ("inode", "mount", "filesystem", "mntns")


class _Inheritable(Protocol):
    def _disown(self) -> None: ...


_groups: weakref.WeakSet[_Inheritable] = weakref.WeakSet()


def track(group: _Inheritable) -> None:
    """Disown ``group`` in every child forked from now on (until it is collected)."""
    _groups.add(group)


def _after_fork_in_child() -> None:
    for group in list(_groups):
        group._disown()
    _groups.clear()  # the child's own groups register again when made


os.register_at_fork(after_in_child=_after_fork_in_child)


class ForkGuard(WarnsUnclosed):
    """The group's side of fork safety (a mixin of :class:`afanotify.group.Fanotify`).

    A copy left open in a child is closed at its exit without a
    ``ResourceWarning``: not closing it is no leak of the child's.
    """

    # Set by Fanotify.__init__.
    _fd: int
    _pid: int
    _inherited: bool
    _closed: bool
    _reader: Reader
    _perm: PermissionTracker
    _pipeline: Pipeline
    _queue: EventQueue
    _held: list[FanotifyData]
    _clients: Dispatcher
    _watchdog: Watchdog | None

    def _release_last(self) -> None:
        raise NotImplementedError

    def _flush_all(self) -> None:
        """Remove every mark: a child's copy of the fd then sees no new events."""
        for kind in _MARK_KINDS:
            try:
                do_mark(self._fd, MarkFlag.FLUSH | kind_flag(kind), 0, None, None)
            except OSError:
                pass  # a mark type this kernel does not have (it has no such marks)

    def _forked(self) -> bool:
        """True in a process other than the one that made the group (a forked child)."""
        if not self._inherited and os.getpid() != self._pid:
            self._disown()  # a fork that skipped Python's at-fork handlers
        return self._inherited

    def _disown(self) -> None:
        """In a forked child: the parent's registration, events and answers are not ours."""
        self._inherited = True
        self._reader.disown()
        self._perm.disown()
        self._watchdog = None  # its thread was not copied

    def _inherited_error(self, what: str) -> InheritedGroupError:
        return InheritedGroupError(
            f"cannot {what} a fanotify group inherited from process {self._pid} through "
            "fork: its events go to the parent.  A child may add marks and close its copy; "
            "make a new Fanotify group in the child to receive events"
        )

    def _close_inherited(self) -> None:
        # Release the child's copies only: answer nothing (the tracker is
        # disowned), drain nothing, flush nothing, unregister nothing.
        self._closed = self._perm.closed = True
        left = self._queue.close() + self._held + self._perm.pending_events()
        left += self._clients.close_all()
        self._held = []
        try:
            for ev in left:
                ev.close()
            self._release_last()
        finally:
            fd, self._fd = self._fd, -1
            self._pipeline.close()
            os.close(fd)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and self._forked():
            self._close_inherited()
            return
        super().__del__()
