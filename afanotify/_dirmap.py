"""The directory map of a FID group: directory handle -> path, kept right by events.

fanotify names a file by its directory's handle and its name.  Turning the
handle into a path with ``open_by_handle_at`` works only while the directory
exists, and gives its path *now*, not when the event happened.  So a group
that reads an ``rm -r`` after the fact loses every path, and one that reads a
rename late may name the old place by the new one.  Inotify tools avoid both
by keeping a map of the directories they watch; this is that map.

It is a tree: each directory known is a node ``[parent handle, name]`` (a
root holds its absolute path instead), so that moving a directory is one
node changed, and its whole subtree follows.  The tree is learned

- from the marks (the marked object and the top of its filesystem),
- from every directory resolved with ``open_by_handle_at`` (linked to its
  parent with ``name_to_handle_at`` up to a known node),
- from directory creations and moves (CREATE, MOVED_TO, RENAME with ONDIR:
  the parent's handle and the name, plus the new directory's own handle with
  REPORT_FID, else looked up by name),
- within a batch, backwards: the DELETE or MOVED_FROM (with ONDIR and a FID
  record) of a directory names it in its parent, so the events before it in
  that batch get its path even if it is gone when the batch is read,

and kept right by applying, in event order, every directory move (MOVED_FROM
then MOVED_TO, or RENAME) and delete.  The map is bounded (``size``
directories, least recently used evicted); a directory it no longer knows
resolves afresh or not at all, never to a wrong path.

Two rules keep ``open_by_handle_at`` from naming a past event by a later
place: it is used for an event only if no directory moves after that event
in the same batch, and only a group that sees every directory move
(:attr:`tracking`: filesystem marks with MOVED_FROM/MOVED_TO or RENAME and
ONDIR, names reported) keeps what it learned from one batch to the next.
Others start each batch from the marks.  What remains: a directory moved
after the batch was read and before it was resolved (a few microseconds) is
named by its new place.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from . import _ffi
from ._dirbatch import (
    _CREATE,
    _DELETE,
    _MOVE_SELF,
    _MOVED_FROM,
    _MOVED_TO,
    _ONDIR,
    _RENAME,
    CHANGES,
    MOVES,
    Batch,
    Blinds,
    scan,
)
from ._marks import fs_top
from .events import FanotifyData, FileHandle
from .flags import Event, InitFlag, MarkFlag

__all__ = [
    "CHANGES", "DEFAULT_SIZE", "MOVES", "DirMap", "move_mask", "scan",
]

#: Directories kept by default (``Fanotify(handle_cache_size=...)``).
DEFAULT_SIZE = 65536

_OVERFLOW = int(Event.Q_OVERFLOW)
_FILESYSTEM = int(MarkFlag.FILESYSTEM)
_MARK_TYPE = int(MarkFlag.FILESYSTEM | MarkFlag.MOUNT | MarkFlag.MNTNS)
_DELETED = " (deleted)"
#: ``_open_path`` in C (``_handle_path``, installed with the event builder), or None.
_handle_path: Any = getattr(_ffi._core, "_handle_path", None) if _ffi.event_builder() else None
#: A node's parent while its MOVED_FROM waits for the MOVED_TO.
_IN_FLIGHT: Any = object()


def join(directory: str, name: str | None) -> str:
    """``directory/name`` as fanotify's DFID_NAME means it (``.`` is the directory itself)."""
    if not name or name == ".":
        return directory
    if directory == "/":
        return "/" + name
    return directory + "/" + name


class DirMap:
    """A FID group's directory handles and their paths (see the module docstring).

    :param size: directories kept at most; 0 keeps none (every lookup is fresh)
    :param flags: the group's InitFlag bits (names are needed to track moves)
    """

    def __init__(self, size: int = DEFAULT_SIZE, flags: int = 0) -> None:
        self.size = size
        #: fsid -> an fd on the top directory of that filesystem, and its path.
        self._mounts: dict[tuple[int, int], int] = {}
        self._tops: dict[tuple[int, int], str] = {}
        #: The handles of those top directories (mount roots never move).
        self._fixed: dict[FileHandle, str] = {}
        #: Marked objects, by the path they were marked by.
        self._marked: dict[FileHandle, str] = {}
        #: handle -> [parent handle or None, name (absolute path for a root)]
        self._nodes: OrderedDict[FileHandle, list[Any]] = OrderedDict()
        #: (parent handle, name) -> the handle of that directory entry.
        self._child: dict[tuple[FileHandle, str], FileHandle] = {}
        #: Full paths computed from the tree; dropped whenever a directory moves.
        self._paths: dict[FileHandle, str] = {}
        #: The nodes that hold an absolute path.
        self._roots: set[FileHandle] = set()
        self._names = bool(flags & InitFlag.REPORT_NAME)
        self._marks_ok = True
        self._marks = 0
        # Per batch: the last directory move, failed handles, later events' facts.
        self.last_move = -1
        self.live = True
        self.c_off = False
        self.missed = 0
        self._dead: set[FileHandle] = set()
        #: Looked up, not yet sure: handle -> (path now, first event it holds for).
        self._looked: dict[FileHandle, tuple[str, int]] = {}
        self._facts: dict[FileHandle, list[Any]] = {}
        self._targets: dict[tuple[FileHandle, str], int] = {}
        self._selfs: dict[FileHandle, int] = {}  # object -> its last MOVE_SELF/DELETE_SELF
        self._blinds: Blinds = {}  # directories moved where the batch does not say
        self._moving: FileHandle | None = None
        #: A batch without directory moves in a map that forgets it (see
        #: _fresh); the directories it looked up, by path.
        self._flat = False
        self._flat_at: dict[str, FileHandle] = {}
        self.hits = 0
        self.misses = 0
        #: Changed by every change to the map: while it is the same, so is
        #: each answer of path() (the C builder keeps directories by it).
        self.version = 0

    # -- setup -------------------------------------------------------------

    @property
    def caching(self) -> bool:
        """True when directory paths are kept (a size above 0)."""
        return self.size > 0

    @property
    def tracking(self) -> bool:
        """True when the group sees every directory move, so the map outlives a batch."""
        return self._names and self._marks_ok and self._marks > 0 and self.size > 0

    def note_mark(self, mflags: int, mask: int, ignore: bool) -> None:
        """Called for each mark change: does the group still see every directory move?"""
        add = bool(mflags & MarkFlag.ADD)
        if add and not ignore:
            moves = mask & (_MOVED_FROM | _MOVED_TO) == _MOVED_FROM | _MOVED_TO or mask & _RENAME
            if mflags & _MARK_TYPE == _FILESYSTEM and moves and mask & _ONDIR:
                self._marks += 1
                return
            # An inode or mount mark: a move elsewhere (another mount, an
            # unmarked directory) goes unseen.
            self._marks_ok = False
        elif add and not mask & (MOVES | _ONDIR):
            return  # an ignore mask that hides no directory move
        else:
            self._marks_ok = False  # removed marks, or ignored moves: trust nothing
        self.forget()

    def add_mount(self, path: str | bytes, *, dont_follow: bool = False) -> None:
        """Learn the marked ``path``; keep an fd on the top directory of its filesystem."""
        _add_mount(self, path, dont_follow)

    # -- the tree ------------------------------------------------------------

    def path(self, h: FileHandle) -> str | None:
        """The path the map knows for ``h`` (at the event being decoded), or None."""
        p = self._paths.get(h)
        if p is not None:
            return p
        nodes = self._nodes
        chain: list[tuple[FileHandle, str]] = []
        k = h
        while True:
            node = nodes.get(k)
            if node is None:
                return None
            nodes.move_to_end(k)
            parent = node[0]
            if parent is None:
                p = node[1]
                break
            if parent is _IN_FLIGHT:
                return None
            chain.append((k, node[1]))
            k = parent
            p = self._paths.get(k)
            if p is not None:
                break
            if len(chain) > 4096:
                return None  # a cycle (a corrupt map): never a path
        for k, name in reversed(chain):
            p = join(p, name)
            self._paths[k] = p
        if not chain:
            self._paths[h] = p
        return p

    def _put(self, h: FileHandle, parent: FileHandle | None, name: str) -> None:
        self.version += 1
        nodes = self._nodes
        old = nodes.get(h)
        if old is not None and old[0] is not None and old[0] is not _IN_FLIGHT:
            if self._child.get((old[0], old[1])) == h:
                del self._child[(old[0], old[1])]
        if parent is not None:
            other = self._child.get((parent, name))
            if other is not None and other != h:
                self._drop(other)
            self._child[(parent, name)] = h
            self._roots.discard(h)
        else:
            self._roots.add(h)
        nodes[h] = [parent, name]
        nodes.move_to_end(h)
        self._paths.pop(h, None)
        while len(nodes) > self.size:
            k, node = nodes.popitem(last=False)
            self._unlink(k, node)

    def _drop(self, h: FileHandle) -> None:
        node = self._nodes.pop(h, None)
        if node is not None:
            self._unlink(h, node)

    def _unlink(self, h: FileHandle, node: list[Any]) -> None:
        self.version += 1
        self._roots.discard(h)
        parent = node[0]
        if parent is not None and parent is not _IN_FLIGHT:
            if self._child.get((parent, node[1])) == h:
                del self._child[(parent, node[1])]
        # Paths computed through h are still right until a move; the next
        # move clears them all, and then h's subtree no longer resolves.
        self._paths.pop(h, None)

    def forget(self) -> None:
        """Forget every directory learned (an overflow lost events; marks changed)."""
        self.version += 1
        self._nodes.clear()
        self._child.clear()
        self._paths.clear()
        self._roots.clear()
        self._moving = None
        if self.size:
            for h, top in self._fixed.items():
                self._put(h, None, top)

    invalidate = forget

    # -- a batch -------------------------------------------------------------

    def begin(self) -> None:
        """Start a batch: only a tracking map keeps what earlier batches taught it."""
        if not self.tracking:
            self.forget()
        self.last_move = -1
        self.live = True
        self.c_off = False
        self.missed = 0
        self._dead.clear()
        self._looked.clear()
        self._facts = {}
        self._targets = {}
        self._selfs = {}
        self._blinds = {}
        self._flat = False
        if self._flat_at:
            self._flat_at = {}

    def set_batch(self, batch: Batch) -> None:
        """What :func:`scan` found in the batch being decoded."""
        self.last_move, self._targets, self._facts, self._selfs, blinds = batch
        # (a map that sees every move saw the one that explains it)
        self._blinds = {} if self.tracking else blinds
        self.last_move = max(self.last_move, *self._blinds.values(), -1)

    def walked(self, flags: int) -> None:
        """The C walk's verdict on the batch (``Decoder.decode``'s ``on_walk``)."""
        # A directory moved somewhere in the batch: no path looked up now is
        # sure for the events before the cut.  An overflow: nothing the map
        # knows is sure past it, so C names nothing and the events go in order.
        self.live = not flags & 1
        self.c_off = bool(flags & 2)
        self._flat = self.live and not self.tracking

    def object_at(self, h: FileHandle, i: int, *, gone: bool = False,
                  moved_to: str | None = None) -> str | None:
        """The path of the object ``h`` (a FID record alone) at event ``i``, or None.

        ``gone``: the event is a DELETE_SELF, sent once the last link is gone; a
        handle never names another object, so no lookup is made (in a burst of
        deletes each failed).  After a later MOVE_SELF or DELETE_SELF of it, a
        lookup would give a later place.  ``moved_to``: for a MOVE_SELF right
        after a file's rename, its new path, taken if ``h`` is there now (afn_is_at).
        """
        p = self.path(h)
        if p is None and not gone and self._selfs.get(h, -1) <= i:
            sure = moved_to is not None and _handle_at(h.fsid, moved_to) == h
            p = moved_to if sure else self._fresh(h, learn=False, i=i)
        return p

    def c_lookup(self, h: FileHandle) -> str | None:
        """``dir_path`` for the C builder: the events before the batch's first change."""
        if self.c_off:
            self.missed += 1
            return None
        p = self._paths.get(h)
        if p is None:
            p = self.path(h)
            if p is None:
                p = self._fresh(h) if self.live else None
                if p is None:
                    self.missed += 1
                    return None
        self.hits += 1
        return p

    def c_object(self, h: FileHandle, gone: bool) -> str | None:
        """``object_path`` for the C builder: :meth:`object_at` for the events before the cut.

        Before the batch's first change the map is as it was at the event,
        and with no directory move in the batch (:attr:`live`) a lookup now
        is the lookup :meth:`object_at` would make; otherwise the event is
        counted in :attr:`missed`, to be tried again once the batch is known.
        ``gone``: see :meth:`object_at` (the C builder also says so for an
        object whose MOVE_SELF or DELETE_SELF comes later in the batch).
        """
        if self.c_off:
            self.missed += 1
            return None
        p = self.path(h)
        if p is None and not gone:
            if not self.live:
                self.missed += 1
                return None
            p = self._fresh(h, learn=False)
        return p

    def dir_at(self, h: FileHandle, i: int) -> str | None:
        """The path of directory ``h`` at event ``i`` of the batch, or None."""
        p = self._paths.get(h)
        if p is None:
            p = self.path(h)
        if p is not None:
            self.hits += 1
            return p
        fact = self._facts.get(h)
        if fact is not None and fact[0] > i and fact[1] != h:
            # Its later DELETE or MOVED_FROM names it: it was there until then.
            parent_path = self.dir_at(fact[1], i)
            if parent_path is not None and fact[2]:
                self._put(h, fact[1], fact[2])
                return join(parent_path, fact[2])
        return self._fresh(h, i=i)

    def resolve(self, h: FileHandle, *, cache: bool = True) -> str | None:
        """The current path of ``h``'s object, outside any batch (None if unknown)."""
        if cache and self.size:
            p = self.path(h)
            if p is not None:
                self.hits += 1
                return p
        return self._fresh(h, learn=cache)

    def _fresh(self, h: FileHandle, *, learn: bool = True, i: int = -1) -> str | None:
        """``h``'s path from ``open_by_handle_at`` (or its mark), learned into the map.

        ``i``: for event ``i`` of the batch, None unless :func:`_safe` says
        the path now was its path then.
        """
        if h in self._dead:
            return None
        seen = self._looked.get(h)
        if seen is not None:
            # Looked up earlier in this batch: its path now, and from which
            # event on that is also its path then.
            if i < seen[1]:
                return None
            p: str | None = seen[0]
            del self._looked[h]
        else:
            self.misses += 1
            p = _open_path(self._mounts, h)
            if p is None:
                p = _marked_path(self._marked, h)
            if p is None:
                self._dead.add(h)
                return None
            if 0 <= i < self.last_move:
                since = _since(self, h.fsid, p)
                if i < since:
                    self._looked[h] = (p, since)
                    return None
        assert p is not None
        if learn and self.size:
            if self._flat:
                # Linked under its parent, it would follow a move of an
                # ancestor; this batch has none, and the map is forgotten
                # after it: a root with its absolute path saves the parents'
                # name_to_handle_at calls (one per level, every batch).
                self._put(h, None, p)
                self._flat_at[p] = h
            else:
                self._link(h, p)
        return p

    def _link(self, h: FileHandle, p: str, depth: int = 0) -> None:
        """Attach ``h`` (now at ``p``) to the tree under its parent's node."""
        top = self._tops.get(h.fsid)
        parent_path, name = os.path.split(p)
        if top is None or p == top or not p.startswith(top) or depth > 64 or not name:
            self._put(h, None, p)
            return
        ph = _handle_at(h.fsid, parent_path)
        if ph is None:
            self._put(h, None, p)
            return
        if self.path(ph) != parent_path:
            self._link(ph, parent_path, depth + 1)
        self._put(h, ph, name)

    # -- events, in order ------------------------------------------------------

    def apply(self, ev: FanotifyData, i: int) -> None:
        """Keep the map right after event ``i`` (a directory created, moved or deleted)."""
        mask = ev.ev_types
        if mask & _OVERFLOW:
            self.forget()  # events were lost: what the map knows may be stale
            return
        if not mask & _ONDIR:
            return
        fid = ev.fid
        if mask & _RENAME:
            if self._moving is not None:
                self._drop(self._moving)
                self._moving = None
            k = self._entry(fid, ev.old_dfid, ev.old_name)
            self._moved(k, ev.old_dfid, ev.old_name)
            if k is not None and fid is not None and k != fid:
                self._drop(k)
            self._arrived(fid if fid is not None else k, ev.new_dfid, ev.new_name, i)
        elif mask & _MOVED_FROM:
            if self._moving is not None:
                self._drop(self._moving)  # its MOVED_TO never came: ambiguous
            self._moving = None
            k = self._entry(fid, ev.dfid, ev.name)
            self._moved(k, ev.dfid, ev.name)
            if k is not None:
                self._nodes[k][0] = _IN_FLIGHT
                self._moving = k
        elif mask & _MOVED_TO:
            self.version += 1
            self._paths.clear()
            k, self._moving = self._moving, None
            if k is not None and (fid is None or fid == k) and k in self._nodes:
                fid = k
            elif k is not None:
                self._drop(k)  # a MOVED_FROM whose MOVED_TO is not this one
            self._arrived(fid, ev.dfid, ev.name, i)
        elif mask & _CREATE:
            self._arrived(fid, ev.dfid, ev.name, i)
        elif mask & _DELETE:
            k = self._entry(fid, ev.dfid, ev.name)
            if k is not None:
                self._drop(k)
        elif mask & _MOVE_SELF and not self.tracking:
            self.forget()  # a directory moved, the group does not say where

    def _entry(self, fid: FileHandle | None, dfid: FileHandle | None, name: str | None
               ) -> FileHandle | None:
        """The handle of the directory entry ``dfid/name`` if the map has it."""
        if fid is not None and fid in self._nodes:
            return fid
        if dfid is None or not name:
            return None
        k = self._child.get((dfid, name))
        return k if k is not None or not self._flat_at else _flat_entry(self, dfid, name)

    def _moved(self, k: FileHandle | None, dfid: FileHandle | None, name: str | None) -> None:
        """A directory left ``dfid/name``: every computed path may change."""
        old = None
        if dfid is not None and name:
            d = self.path(dfid)
            old = None if d is None else join(d, name)
        self.version += 1
        self._paths.clear()
        if k is not None:
            node = self._nodes[k]
            if node[0] is not None and self._child.get((node[0], node[1])) == k:
                del self._child[(node[0], node[1])]
        # Roots hold absolute paths: those below the old place go, unless it
        # is known (then they are few, and dropped all the same: they are
        # learned again, by handle, when needed).
        for r in list(self._roots):
            if r not in self._marked and r.fsid in self._tops:
                p = self._nodes[r][1]
                if p != self._tops[r.fsid] and (
                    old is None or p == old or p.startswith(old + "/")
                ):  # fmt: skip
                    self._drop(r)

    def _arrived(self, fid: FileHandle | None, dfid: FileHandle | None, name: str | None,
                 i: int) -> None:
        """A directory appeared at ``dfid/name`` (created, or moved there)."""
        if dfid is None or not name:
            if fid is not None:
                self._drop(fid)
            return
        d = self.dir_at(dfid, i)
        if d is None:
            if fid is not None:
                self._drop(fid)
            return
        if fid is None:
            # Looked up by name now: the directory there may have come later.
            p = join(d, name)
            fid = _handle_at(dfid.fsid, p)
            if fid is None or not _safe(self, dfid.fsid, p, i):
                return
        self._put(fid, dfid, name)

    def close(self) -> None:
        """Close the mount fds.  Idempotent."""
        mounts, self._mounts = self._mounts, {}
        for fd in mounts.values():
            os.close(fd)
        self._marked.clear()
        self._fixed.clear()
        self.forget()


def _open_path(mounts: dict[tuple[int, int], int], h: FileHandle) -> str | None:
    """The current path of ``h``'s object (``open_by_handle_at`` on its mount), or None.

    The compiled core opens, reads the link and closes in one call (None for
    any failure: in a burst of deletes most lookups fail, the object gone).
    """
    mount_fd = mounts.get(h.fsid)
    if mount_fd is None:
        return None
    if _handle_path is not None:
        p: str | None = _handle_path(mount_fd, h.handle, h.handle_type)
        return p
    try:
        fd = _ffi.open_by_handle(mount_fd, h.handle, h.handle_type, os.O_PATH)
    except OSError:
        return None
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if path.endswith(_DELETED) else path


def _marked_path(marked: dict[FileHandle, str], h: FileHandle) -> str | None:
    """The path a marked object was marked by, if it still names that object."""
    path = marked.get(h)
    if path is None or _handle_at(h.fsid, path) != h:
        return None
    return path


def _add_mount(dm: DirMap, path: str | bytes, dont_follow: bool) -> None:
    """Learn the marked ``path``; keep an fd on the top directory of its filesystem.

    The fd is on the mount's root, never on the marked object: an open fd
    on a marked file would keep its inode alive (no DELETE_SELF), and make
    the group see its own opens.  Without CAP_DAC_READ_SEARCH (an
    unprivileged group) ``open_by_handle_at`` fails, and a marked object
    still resolves to the path it was marked by, while that path has its
    handle.
    """
    p = os.path.abspath(os.fsdecode(path))
    if not dont_follow:
        p = os.path.realpath(p)
    fd = os.open(p, os.O_PATH | os.O_CLOEXEC | (os.O_NOFOLLOW if dont_follow else 0))
    try:
        fsid = _ffi.fsid_of_fd(fd)  # fstatfs works on O_PATH descriptors
    finally:
        os.close(fd)
    h = _handle_at(fsid, p)
    if h is not None:
        dm._marked[h] = p
    if fsid in dm._mounts:
        if h is not None and dm.size:
            dm._link(h, p)
        return
    top = fs_top(p, dont_follow)
    # open_by_handle_at() refuses O_PATH descriptors (EBADF), so this is a
    # real read-only open of a directory.
    try:
        mount_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        if any(k.fsid == fsid for k in dm._marked):
            return  # marked objects still resolve
        raise
    dm._mounts[fsid] = mount_fd
    dm._tops[fsid] = top
    th = _handle_at(fsid, top)
    if th is not None:
        dm._fixed[th] = top
        dm._put(th, None, top)
    if h is not None and dm.size:
        dm._link(h, p)


def _handle_at(fsid: tuple[int, int], path: str) -> FileHandle | None:
    """The handle of ``path`` (``name_to_handle_at``, no privilege needed), or None."""
    try:
        htype, raw, _mnt = _ffi.name_to_handle(_ffi.lib.AT_FDCWD, path)
    except OSError:
        return None
    return FileHandle(fsid, htype, raw)


def move_mask(dm: DirMap) -> int:
    """With ONDIR, the events after which a path looked up now may be wrong (C's walk)."""
    return MOVES if dm.tracking else MOVES | _MOVE_SELF


def _flat_entry(dm: DirMap, dfid: FileHandle, name: str) -> FileHandle | None:
    """The root of a flat batch (see ``DirMap._fresh``) at ``dfid/name``: no child of its parent.

    With ``dfid``'s path unknown it cannot be told which: every root of that
    name is dropped, to be looked up again if an event needs it (in a batch
    without directory moves, a lookup now names it as it was).
    """
    d = dm.path(dfid)
    if d is not None:
        return dm._flat_at.pop(join(d, name), None)
    for p in [p for p in dm._flat_at if p.rpartition("/")[2] == name]:
        dm._drop(dm._flat_at.pop(p))
    return None


def _safe(dm: DirMap, fsid: tuple[int, int], p: str, i: int) -> bool:
    """Whether ``p``, a path looked up now, was already the path at event ``i``.

    It was, unless a later event of the batch moved a directory above it
    (or it): the last such move put that directory where it is now, so
    no ancestor of ``p`` as they are now, with the name below it on the
    way to ``p``, may be the place a later move went to.
    """
    return i >= dm.last_move or i >= _since(dm, fsid, p)


def _since(dm: DirMap, fsid: tuple[int, int], p: str) -> int:
    """The index of the batch's last move onto ``p``'s way (-1: none): see :func:`_safe`."""
    targets = dm._targets
    if not targets:
        return _blind_since(dm, p, -1)
    top = dm._tops.get(fsid)
    last = -1
    while top is not None and p != top and p.startswith(top):
        p, name = os.path.split(p)
        a = _handle_at(fsid, p)
        if a is None:
            return dm.last_move
        last = max(last, targets.get((a, name), -1))
    return _blind_since(dm, p, last)


def _blind_since(dm: DirMap, p: str, last: int) -> int:
    """``last``, or a later directory move the batch does not place that ``p`` lies under.

    Where that directory is now is looked up: a path ``p`` looked up now
    below it may not be where the object was before the move.  A directory
    that cannot be looked up (or is not known) may be anywhere.
    """
    for h, i in dm._blinds.items():
        if i <= last:
            continue
        q = None if h is None else _open_path(dm._mounts, h)
        if q is None or p == q or p.startswith(q.rstrip("/") + "/"):
            last = i
    return last
