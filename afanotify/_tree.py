"""``Fanotify.watch_tree()``: one directory tree, through one filesystem mark.

A filesystem mark sees every change on the filesystem in one call, where an
inotify tool needs a watch per directory.  ``watch_tree`` marks the
filesystem that holds the tree and keeps only the events under its root.
The decision is taken per directory, in the C walk, before any event object
is made: the group's directory map (``afanotify/_dirmap.py``) names each
directory of a batch once, and the events of directories outside the root
are dropped there.  Events after a directory move in the same batch, or of
shapes the C builder leaves, are filtered in Python after they are resolved
(a moved directory's decision is taken again from its new path).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _dirmap, _ffi
from ._marks import PathArg
from .events import FanotifyData, FileHandle
from .flags import CLASS_BITS, PERM_EVENTS, Event, InitFlag, MarkFlag

if TYPE_CHECKING:
    from ._pipeline import Pipeline
    from .group import Fanotify

__all__ = [
    "watch_tree", "MAP_EVENTS", "learn_tree", "filter_read", "tree_filter", "tree_stats", "Pruner",
    "TreeStatistics",
]

log = logging.getLogger(__name__)

#: What the group adds to the mark so that its directory map follows the tree.
MAP_EVENTS = Event.CREATE | Event.DELETE | Event.MOVED_FROM | Event.MOVED_TO | Event.ONDIR
#: Events of one directory outside the tree after which it is pruned (at most
#: 255: the C builder counts up to that).
PRUNE_AFTER = 8
#: Directories pruned at most at once (each is one inode mark in the kernel).
PRUNE_LIMIT = 4096
#: Seconds after its mark before a pruned directory's events make it marked
#: again (the kernel may evict the mark with the inode).
REMARK_AFTER = 1.0
#: The pid of the Q_OVERFLOW event that marks a tree gap (see Pruner); the
#: kernel's have pid 0, a drain thread's gaps -1.
GAP_PID = -2

#: Seconds a directory found inside the tree or above its root when it was to
#: be pruned is not tried again.
SKIP_FOR = 10.0

_OVERFLOW = int(Event.Q_OVERFLOW)
_ONDIR = int(Event.ONDIR)
_OPEN_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_AT_FDCWD = _ffi.lib.AT_FDCWD
_ONLYDIR = int(MarkFlag.ONLYDIR)
_ADD_IGNORE = _ffi.lib.FAN_MARK_ADD | int(MarkFlag.IGNORE_SURV | MarkFlag.EVICTABLE)
_REMOVE_IGNORE = _ffi.lib.FAN_MARK_REMOVE | int(MarkFlag.IGNORE_SURV)
#: A directory's handle that no longer opens: it is gone.
_GONE = (errno.ESTALE, errno.ENOENT, errno.ENOTDIR)
#: fanotify_mark errors that say no directory will be pruned (others skip one).
_GIVE_UP = (errno.EINVAL, errno.ENOSPC, errno.EPERM, errno.EACCES, errno.ENOSYS)
_RENAME = int(Event.RENAME)
_DELETE = int(Event.DELETE)
_PERM = int(PERM_EVENTS)


def learn_tree(dm: _dirmap.DirMap, root: str) -> int:
    """Teach ``dm`` every directory under ``root`` (same filesystem); returns how many."""
    fd = os.open(root, os.O_PATH | os.O_CLOEXEC)
    try:
        fsid = _ffi.fsid_of_fd(fd)
        dev = os.fstat(fd).st_dev
    finally:
        os.close(fd)
    h = _dirmap._handle_at(fsid, root)
    if h is None or not dm.size:
        return 0
    dm._link(h, root)
    stack = [(h, root)]
    n = 0
    while stack:
        h, p = stack.pop()
        try:
            entries = list(os.scandir(p))
        except OSError:
            continue  # gone or unreadable: learned later, or not at all
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False) or entry.stat(
                    follow_symlinks=False
                ).st_dev != dev:
                    continue
            except OSError:
                continue
            ch = _dirmap._handle_at(fsid, entry.path)
            if ch is not None:
                dm._put(ch, h, entry.name)
                stack.append((ch, entry.path))
                n += 1
    return n

def watch_tree(
    group: Fanotify, path: PathArg, events: int, *, scan: bool = False, prune: bool = True
) -> AsyncIterator[FanotifyData]:
    """Watch the directory tree at ``path``: ``async for ev in fan.watch_tree(path, events)``.

    Marks the filesystem holding ``path`` with ``events`` (plus the
    directory events the group's path map needs, which are not delivered
    unless asked for) and yields only events under ``path``, with full
    paths.  An event whose directory cannot be named (``path_resolved``
    False) is delivered too, since it may be inside.  ``scan=True`` first
    walks the tree and learns every directory in it (one
    ``name_to_handle_at`` each, up to ``handle_cache_size`` directories), so
    that even a directory never touched while watched gets full paths, for
    instance when it is deleted before the group reads.  Without ONDIR in
    ``events``, events on directories themselves are not delivered, as
    fanotify would not report them.

    ``prune`` (the default) lets the kernel stop queueing the file events of
    busy directories outside the tree, with an ignore mark each (see
    :class:`Pruner`): a busy filesystem then costs the reader nothing
    elsewhere.  The one price: a pruned directory that moves into the tree
    may lose its events between the move and the reader's next read, and a
    Q_OVERFLOW event whose ``path`` is that directory (pid :data:`GAP_PID`)
    comes before that read's events to say so.  ``prune=False`` reads and
    drops every event elsewhere, and never has such a gap.  Pruning is off
    for permission events, and on kernels without FAN_RENAME (5.17) or
    FAN_MARK_IGNORE (6.0).

    Returns the group itself (its ``async for``); one tree per group.

    :raises ValueError: if the group does not report names
        (``InitFlag.REPORT_DFID_NAME``), does not resolve paths, or already
        watches a tree
    :raises NotADirectoryError: if ``path`` is not a directory
    """
    if not group.flags & InitFlag.REPORT_NAME or not group.resolve_paths:
        raise ValueError(
            "watch_tree needs a group that reports names and resolves paths: "
            "Fanotify(InitFlag.REPORT_DFID_NAME) (or REPORT_DFID_NAME_TARGET)"
        )
    pipeline = group._pipeline
    if pipeline.tree is not None:
        raise ValueError(
            f"this group already watches the tree {pipeline.tree[0]!r}: use one group per tree"
        )
    root = os.path.realpath(os.fsdecode(os.fspath(path)))
    if not os.path.isdir(root):
        raise NotADirectoryError(f"watch_tree: {root!r} is not a directory")
    mask = int(events) | MAP_EVENTS
    prune = prune and not (mask & _PERM or group.flags & CLASS_BITS)
    if prune:
        try:  # a directory's rename says where its pruned places went
            group.mark(root, mask | _RENAME, "filesystem")
            mask |= _RENAME
        except (OSError, ValueError):
            prune = False
    if not prune:
        group.mark(root, mask, "filesystem")
    parent, name = os.path.split(root)
    pipeline.tree = (root, parent, name, int(events))
    if prune:
        pipeline.pruner = Pruner(group.fileno(), pipeline.dirmap, root, mask)
    if scan:
        learn_tree(pipeline.dirmap, root)
    return group


class TreeStatistics(NamedTuple):
    """What ``watch_tree``'s pruning did (:attr:`Fanotify.tree_stats`)."""

    #: Directories outside the tree pruned now (an ignore mark each).
    pruned: int
    #: Ignore marks added since the watch began (a mark the kernel evicted
    #: with its inode is added again once its directory is busy again).
    marks_added: int
    #: Ignore marks removed: a pruned directory moved into the tree, or an
    #: overflow made the pruned places unsure.
    marks_removed: int
    #: Q_OVERFLOW events put in where events under a directory that moved in
    #: from a pruned place may be missing (see the docs: rescan it).
    gaps: int
    #: Prunes the kernel refused (mark limit reached, no support).
    refused: int
    #: False once pruning is off: asked so, unsupported, or refused.
    enabled: bool
    #: Marks that could not be taken off yet (tried again at each read; the
    #: events under those directories stay missing until then, and logged).
    pending: int = 0


class Pruner:
    """Ignore marks on busy directories outside a watched tree.

    The filesystem mark makes the kernel queue every event of the filesystem,
    and reading one costs about as much as the C walk's whole decision, so
    a busy directory elsewhere would cost the tree's reader for every event.
    A directory whose events the walk kept out :data:`PRUNE_AFTER` times gets
    an evictable ignore mark (FAN_MARK_IGNORE with EVENT_ON_CHILD, Linux 6.0)
    for everything but directory events (ONDIR) and FAN_RENAME, so the kernel
    stops queueing its files' events while every directory move and removal
    still comes.  Those keep the record of pruned places right:

    - a rename moves the pruned directories under its old path to the new;
    - one that moves into the tree has its marks removed, and the events
      under it between the move and the removal are lost: a Q_OVERFLOW event
      with ``path`` the moved directory (pid :data:`GAP_PID`) says so;
    - an unresolved rename, or a Q_OVERFLOW from the kernel, removes every
      mark (the record may be wrong then), with a gap for the former.

    A directory is marked through an fd from ``open_by_handle_at``, never by
    path, and its path is read from that fd: what the map said may be older.
    """

    def __init__(
        self, fd: int, dm: _dirmap.DirMap, root: str, mask: int, *,
        after: int = PRUNE_AFTER, limit: int = PRUNE_LIMIT,
    ) -> None:  # fmt: skip
        self._fd = fd
        self._dm = dm
        self._root = root
        self._below = root.rstrip("/") + "/"
        #: Everything marked but directory events and renames, for children
        #: too (and but the events only a filesystem or namespace mark takes).
        keep = _ONDIR | _RENAME | int(Event.FS_ERROR | Event.MNT_ATTACH | Event.MNT_DETACH)
        self._mask = (int(mask) & ~keep) | int(Event.EVENT_ON_CHILD)
        self.after = after
        self.limit = limit
        self.enabled = True
        self._counts: dict[FileHandle, int] = {}
        #: The pruned directories: path -> handle, and handle -> path.
        self._by_path: dict[str, FileHandle] = {}
        self._paths: dict[FileHandle, str] = {}
        self._when: dict[FileHandle, float] = {}  # when each was marked
        self._skip: dict[FileHandle, float] = {}  # not tried until then
        #: Marks that could not be taken off yet (no fd to spare, say).
        self.pending: dict[FileHandle, bool] = {}
        #: Directories found inside the tree or above its root as their marks
        #: came off, since the last gaps were made.
        self._found: list[str] = []
        #: Places records were found not to be, by the read that found it.
        self._ghosts: dict[str, int] = {}
        self._reads = 0
        self.added = self.removed = self.gaps = self.refused = 0

    def statistics(self) -> TreeStatistics:
        return TreeStatistics(
            len(self._paths), self.added, self.removed, self.gaps, self.refused, self.enabled,
            len(self.pending),
        )  # fmt: skip

    def inside(self, p: str) -> bool:
        return p == self._root or p.startswith(self._below)

    def _above(self, p: str) -> bool:
        return self._root.startswith(p.rstrip("/") + "/")

    def _in_reach(self, p: str) -> bool:
        """Inside the tree or above its root: never pruned there."""
        return self.inside(p) or self._above(p)

    @staticmethod
    def _place(dfd: int) -> str | None:
        """Where the directory of ``dfd`` is now, or None."""
        try:
            return os.readlink(f"/proc/self/fd/{dfd}")
        except OSError:
            return None

    # -- pruning -----------------------------------------------------------

    def note(self, outside: list[list[Any]]) -> None:
        """The directories the C walk kept events of out, with how many (Decoder.outside).

        Called once the read's directory events went through :meth:`seen`.
        """
        if not self.enabled:
            return
        # After a directory moved in this read, the walk's paths before the
        # move may be old ones: only counted then.
        sure = self._dm.live
        counts = self._counts
        now = time.monotonic()
        for entry in outside:
            h, p, n = entry[0], entry[1], entry[4]
            c = counts.get(h, 0) + n
            if c < self.after or not sure or p is None:
                if len(counts) >= 4 * self.limit:
                    counts.clear()  # a bound; busy directories count up again
                counts[h] = c
                continue
            counts.pop(h, None)
            if now < self._skip.get(h, 0.0):
                continue  # refused lately
            if h in self._paths:
                # Its events queued before the mark are still read for a
                # while; a mark the kernel evicted is added again after that.
                if now - self._when[h] < REMARK_AFTER:
                    continue
            elif len(self._paths) >= self.limit:
                continue
            self._prune(h, p, now)

    def _open(self, h: FileHandle) -> int:
        """An O_PATH fd on ``h`` (opening it so makes no event); raises OSError."""
        mount_fd = self._dm._mounts.get(h.fsid)
        if mount_fd is None:
            raise OSError(errno.ESTALE, "no mount fd for its filesystem")
        return _ffi.open_by_handle(mount_fd, h.handle, h.handle_type, _OPEN_DIR)

    def _mark(self, flags: int, dfd: int) -> None:
        # fanotify_mark() refuses an O_PATH fd as the object, but takes the
        # path of its /proc link (ONLYDIR: it must still be a directory).
        link = f"/proc/self/fd/{dfd}"
        _ffi.fanotify_mark(self._fd, flags | _ONLYDIR, self._mask, _AT_FDCWD, link)

    def _prune(self, h: FileHandle, p: str, now: float) -> None:
        """Mark ``h``, which the read placed at ``p``, if it is there now."""
        try:
            dfd = self._open(h)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                self._refuse(exc)  # no CAP_DAC_READ_SEARCH: never will
            return  # else gone meanwhile (or no fd to spare): not pruned now
        try:
            # The record is where the read placed it, and the renames read
            # later move it: a directory moved since the read is not marked
            # now (its next events count again, from its new place).
            if self._place(dfd) != p:
                return
            if self._in_reach(p):
                self._skip_for(h, now + SKIP_FOR)
                return
            try:
                self._mark(_ADD_IGNORE, dfd)
            except OSError as exc:
                if exc.errno in _GIVE_UP:
                    self._refuse(exc)
                else:  # EEXIST: a mark of the group's own that is not evictable
                    self._skip_for(h, now + 10 * SKIP_FOR)
                return
        finally:
            os.close(dfd)
        old = self._paths.pop(h, None)
        if old is not None:
            del self._by_path[old]
        if p in self._by_path:
            self._unprune([p])  # another directory recorded there is not
        self._paths[h] = p
        self._by_path[p] = h
        self._when[h] = now
        self.pending.pop(h, None)  # marked again where it is now: this one stays
        self.added += 1

    def _skip_for(self, h: FileHandle, until: float) -> None:
        if len(self._skip) >= self.limit:
            self._skip.clear()
        self._skip[h] = until

    def _refuse(self, exc: OSError) -> None:
        self.refused += 1
        self.enabled = False
        fix = {
            errno.ENOSPC: "; raise fs.fanotify.max_user_marks, or use InitFlag.UNLIMITED_MARKS",
            errno.EINVAL: "; pruning needs FAN_MARK_IGNORE and FAN_MARK_EVICTABLE (Linux 6.0)",
        }.get(exc.errno or 0, "")
        log.warning(
            "watch_tree stopped pruning busy directories outside %s (%s): their events are "
            "read and dropped from now on%s", self._root, exc, fix,
        )  # fmt: skip

    def _forget(self, p: str) -> FileHandle:
        h = self._by_path.pop(p)
        del self._paths[h], self._when[h]
        return h

    def _unprune(self, paths: list[str]) -> None:
        for p in paths:
            self._remove_mark(self._forget(p))

    def _remove_mark(self, h: FileHandle) -> None:
        """Take the ignore mark off ``h``; kept in :attr:`pending` until that works."""
        try:
            dfd = self._open(h)
        except OSError as exc:
            if exc.errno not in _GONE:
                self._stuck(h, exc)
            else:
                self.pending.pop(h, None)  # gone, and its mark with it
            return
        try:
            self._mark(_REMOVE_IGNORE, dfd)
            self.removed += 1
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, *_GONE):
                self._stuck(h, exc)
                return
            # ENOENT: no such mark, the kernel evicted it already
        else:
            # Where it is now: inside the tree or above its root, its events
            # since it got there were ignored (whatever the record said).
            here = self._place(dfd)
            if here is not None and self._in_reach(here):
                self._found.append(here)
        finally:
            os.close(dfd)
        self.pending.pop(h, None)

    def _stuck(self, h: FileHandle, exc: OSError) -> None:
        if h not in self.pending:
            log.warning(
                "watch_tree could not take the prune mark off a directory (%s): its events "
                "stay missing until it can; tried again at each read", exc,
            )  # fmt: skip
        self.pending[h] = True

    def retry(self) -> list[FanotifyData]:
        """Try again the marks :meth:`_remove_mark` could not take off; the gaps they make."""
        for h in list(self.pending):
            self._remove_mark(h)
        return self._gaps(None)

    def _gaps(self, path: str | None) -> list[FanotifyData]:
        """A gap at ``path`` (if any), then at each directory found in the tree unpruning."""
        out = [] if path is None else [self._gap(path or None)]
        under = path.rstrip("/") + "/" if path else None
        for p in self._found:
            if under is None or not (p == path or p.startswith(under)):
                out.append(self._gap(p))
        self._found.clear()
        return out

    # -- what a read says of the pruned places ------------------------------

    def seen(self, ev: FanotifyData) -> list[FanotifyData]:
        """Follow a directory event (or an overflow); the gap events to go before it.

        A record is checked against the directory found at its path
        (``name_to_handle_at``) whenever an event names that path: a record
        found wrong is unpruned, as one that moved in would be, and a
        directory found inside the tree or above its root as its mark comes
        off gets a gap at the place it is now (a later rename in the same
        read may have taken it there already).
        """
        if not self._paths and not self._ghosts:
            return []
        gap = self._seen(ev)
        return self._gaps(gap)

    def begin_read(self) -> None:
        """A read begins: ghosts older than the read before are dropped."""
        self._reads += 1
        if self._ghosts:
            keep = self._reads - 1
            self._ghosts = {p: n for p, n in self._ghosts.items() if n >= keep}

    def _seen(self, ev: FanotifyData) -> str | None:
        mask = ev.ev_types
        if mask & _OVERFLOW:
            self._unprune(list(self._by_path))
            return None
        if mask & _DELETE and ev.path_resolved and ev.path in self._by_path:
            self._recheck(ev.path)  # gone, its mark with it; or another was removed there
            return None
        if not mask & _RENAME:
            return None
        old, new = ev.old_path, ev.new_path
        if not ev.path_resolved or old is None or new is None:
            # Where the pruned places below ``old`` went is not known.
            self._unprune(list(self._by_path))
            unsure = new is None or self._in_reach(new)
            return (new or "") if unsure else None
        under = old.rstrip("/") + "/"
        ghost_gap = False
        if self._ghosts:
            # A place a record was found not to be (see _recheck): the rename
            # that took its directory away may come after, in this read or
            # the next, and a move of it into the tree is a gap all the same.
            for g in [g for g in self._ghosts if g == old or g.startswith(under)]:
                n = self._ghosts.pop(g)
                q = new + g[len(old) :]
                if self._in_reach(q):
                    ghost_gap = True
                else:
                    self._ghosts[q] = n
        moved = [p for p in self._by_path if p == old or p.startswith(under)]
        if new in self._by_path and new not in moved:
            self._recheck(new)  # an empty directory renamed over
        gap = False
        for p in moved:
            q = new + p[len(old) :]
            if self._in_reach(q):
                self._unprune([p])
                gap = True
                continue
            h = self._by_path.pop(p)
            if q in self._by_path:
                self._unprune([q])
            self._by_path[q] = h
            self._paths[h] = q
            # Not there (a swap, RENAME_EXCHANGE, reads as two renames that
            # cancel out; or a later rename already moved it): unsure.
            self._recheck(q)
        return new if gap or ghost_gap else None

    def _recheck(self, p: str) -> None:
        """Keep the record at ``p`` only if its directory is there now (else a ghost)."""
        h = self._by_path[p]
        if _dirmap._handle_at(h.fsid, p) != h:
            found = len(self._found)
            self._unprune([p])
            # Found inside (a gap is made) or not: then its way may go there.
            if len(self._found) == found and len(self._ghosts) < self.limit:
                self._ghosts[p] = self._reads

    def _gap(self, path: str | None) -> FanotifyData:
        self.gaps += 1
        log.warning(
            "watch_tree: %s moved into %s from a pruned place: events under it between the "
            "move and now may be missing (a Q_OVERFLOW event with its path says so)",
            path or "a directory", self._root,
        )  # fmt: skip
        return FanotifyData(
            pid=GAP_PID, ev_types=_OVERFLOW, path=path, path_resolved=path is not None
        )


def tree_stats(group: Fanotify) -> TreeStatistics | None:
    """What :meth:`Fanotify.watch_tree`'s pruning did, or None without it."""
    pruner = group._pipeline.pruner
    return None if pruner is None else pruner.statistics()


def filter_read(
    pipeline: Pipeline, events: list[FanotifyData], done: int, outside: list[list[Any]]
) -> tuple[list[FanotifyData], int]:
    """A read's events of the tree, and how many of them come first all filled in.

    ``events[:done]`` are filled in already (the C builder's), ``outside`` is
    ``Decoder.outside``.  Gap events (see :class:`Pruner`) are filled in too.
    """
    pruner = pipeline.pruner
    head: list[FanotifyData] = []
    if pruner is not None:
        pruner.begin_read()
        if pruner.pending:
            head = pruner.retry()
    head += tree_filter(pipeline, events[:done]) if done else []
    events = head + tree_filter(pipeline, events[done:])
    if pruner is not None and outside:
        pruner.note(outside)  # after the read's directory events went through seen()
    return events, len(head)


def tree_filter(pipeline: Pipeline, events: list[FanotifyData]) -> list[FanotifyData]:
    """The events of ``watch_tree``'s root (and those that cannot be placed)."""
    assert pipeline.tree is not None
    root, _parent, _name, want = pipeline.tree
    below = root.rstrip("/") + "/"
    pruner = pipeline.pruner
    out = []
    dropped = 0
    for ev in events:
        mask = ev.ev_types
        if pruner is not None and mask & (_ONDIR | _OVERFLOW):
            out.extend(pruner.seen(ev))
        if mask & _OVERFLOW:
            out.append(ev)
            continue
        # ONDIR says what the event is on, not what kind it is: a wanted
        # kind is one of the other bits.
        if mask & want & ~_ONDIR and (want & _ONDIR or not mask & _ONDIR):
            if not ev.path_resolved:
                out.append(ev)  # unknown place: it may be inside
                continue
            for p in (ev.path, ev.old_path, ev.new_path):
                if p is not None and (p == root or p.startswith(below)):
                    out.append(ev)
                    break
            else:
                ev.close()
                dropped += 1
            continue
        ev.close()
        dropped += 1
    pipeline.filtered += dropped
    return out
