"""The fast path: the C batch decoder (``afanotify/csrc/fastpath.c``) behind the parser's API.

:meth:`Decoder.decode` gives the same :class:`FanotifyData` and the same
:class:`ParseError` s as :func:`afanotify._parser.parse_lenient`, field for
field and message for message; ``tests/test_fastparse_differential.py`` holds
the two to that.  There are two implementations of the format and no third:

- the C walk fills a fixed-size ``struct afn_event`` per event, and the C
  builder (``csrc/fastpath_build.c``) turns every well-formed entry whose
  records it knows into a :class:`FanotifyData`;
- every entry it hands back (a malformed event, a record type the walk does
  not know, a path that did not fit the arena) is decoded by the reference
  parser's per-event function, :func:`afanotify._parser.parse_event`.

Two things the pure parser cannot do, because they are I/O, are done here in
C when asked: resolving an event fd to its path (``readlink`` of
``/proc/self/fd/N``), and the directory paths of FID events (through the
caller's ``dir_path``, once per distinct directory of the batch).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Container
from typing import Any

from . import _ffi
from ._ffi import ffi, lib
from ._parser import BufferLike, parse_event
from .events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData, FileHandle
from .exceptions import ParseError
from .flags import DIR_CHANGE_EVENTS, FAN_EVENT_METADATA_LEN, PERM_EVENTS, Event

__all__ = ["Decoder", "available"]

log = logging.getLogger(__name__)

_META_LEN = FAN_EVENT_METADATA_LEN
_PERM = int(PERM_EVENTS)
_DIR_CHANGE = int(DIR_CHANGE_EVENTS)
_ONDIR = int(Event.ONDIR)
#: Decoder.partial when no build failed: nothing left over.
_NO_PARTIAL: tuple[list[FanotifyData], list[ParseError]] = ([], [])
# The pure core (afanotify._purecore) has no decoder; available() is then False.
_HAS_DFID, _PATH_NONE, _PATH_RETRY, _MAX_DIRS = (
    (lib.AFN_HAS_DFID, lib.AFN_PATH_NONE, lib.AFN_PATH_RETRY, lib.AFN_MAX_DIRS)
    if _ffi.CORE == "c"
    else (0, 0, 0, 0)
)
#: Directory entries kept across decodes at most (see Decoder.decode's dir_version).
_KEPT_MAX = 4096
#: What the kernel appends to the link of an unlinked file.
DELETED_SUFFIX = " (deleted)"


def _c_builder() -> Callable[..., tuple[int, int, int, int, int]] | None:
    """The C event builder (``afanotify/csrc/fastpath_build.c``), or None.

    None when the core predates it or when the event classes are not plain
    slotted classes it can fill; the group then decodes with the pure parser.
    """
    parts = _ffi.event_builder()
    if parts is None:
        return None
    setup, build = parts
    defaults = {f.name: f.default for f in dataclasses.fields(FanotifyData)}
    slots = tuple(FanotifyData.__slots__)
    try:
        setup(
            FanotifyData, FileHandle, slots, tuple(defaults[name] for name in slots),
            tuple(FileHandle.__slots__), OWN_FD, OWN_PIDFD, UNANSWERED,
        )  # fmt: skip
    except (TypeError, ValueError, KeyError) as exc:
        log.debug("C event builder unavailable, using the pure parser: %s", exc)
        return None
    return build


_BUILD = _c_builder()


def available() -> bool:
    """True when this core can decode batches in C (walk and builder)."""
    return _BUILD is not None


def events_iter_factory() -> Callable[..., Any] | None:
    """The C ``async for`` step (``csrc/fastpath_iter.c``), or None without the C builder.

    ``factory(group, queue, items, reader, slow, maxsize)`` makes the
    iterator ``Fanotify.__aiter__`` returns (see ``afanotify/_consume.py``).
    """
    if _BUILD is None:
        return None
    return getattr(_ffi._core, "_events_iter", None)


def strip_deleted(path: str) -> tuple[str, bool]:
    """``path`` without the kernel's " (deleted)" suffix, and whether it had none."""
    if path.endswith(DELETED_SUFFIX):
        return path[: -len(DELETED_SUFFIX)], False
    return path, True


def _readlink_fd(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _take_outside(counted: list[list[Any]]) -> list[list[Any]]:
    """Decoder.outside of a batch: a copy of each entry the C builder counted, once.

    The entries' own counts go back to 0: an entry kept for later batches
    (Decoder.decode's ``dir_version``) must start each with none, and one
    entry may be both numbered and by its bytes (kept by its bytes), so met
    again here.
    """
    out = []
    for e in counted:
        if e[4]:
            out.append(e.copy())
            e[4] = 0
    return out


class Decoder:
    """The C decoder with its cffi buffers, allocated once and reused per batch.

    Not thread-safe: give each reader its own.  The events it returns copy
    what they need, so the buffers are free again as soon as a call returns.
    """

    def __init__(self, bufsize: int = 65536, arena_size: int | None = None) -> None:
        """
        :param bufsize: the batch size to reserve entries for (it grows on demand)
        :param arena_size: bytes for the paths of one batch (default
            ``8 * bufsize``); paths that do not fit are resolved in Python
        :raises RuntimeError: if this core has no C builder (see :func:`available`)
        """
        if _BUILD is None:
            raise RuntimeError("this core has no C event builder: use afanotify._parser")
        if bufsize < _META_LEN:
            raise ValueError(f"bufsize {bufsize} is below the {_META_LEN}-byte event metadata")
        self._arena_size = 8 * bufsize if arena_size is None else arena_size
        self._arena: Any = ffi.new("char[]", max(self._arena_size, 1))
        self._arena_buf: Any = ffi.buffer(self._arena)
        self._arena_used: Any = ffi.new("size_t *")
        self._stop: Any = ffi.new("size_t *")
        #: Leave the events the C builder makes (all but permission events)
        #: untracked by the cyclic garbage collector.  They are frozen and
        #: hold only ints, strs and file handles, so no cycle runs through them.
        self.untrack = False
        #: See :meth:`decode`'s ``dir_path``.
        self.resolved_upto = 0
        #: How many events of the last batch got their paths from ``dir_path``.
        self.resolved_count = 0
        #: Events of the last batch that ``tree`` kept from being built.
        self.skipped = 0
        #: The last batch's directories outside ``tree``, each as the C
        #: builder's entry: [handle, path, path + "/", decision, events kept
        #: out in that batch (at most 255)], for those with events kept out
        #: (copies: see _take_outside).
        self.outside: list[list[Any]] = []
        #: The events and errors of a build that raised, made before it did
        #: (nobody holds them: the caller releases them); else empty.
        self.partial: tuple[list[FanotifyData], list[ParseError]] = _NO_PARTIAL
        # The directory entries of earlier decodes (record bytes -> entry),
        # and the (dir_version, tree) they hold for.
        self._kept: dict[bytes, list[Any]] = {}
        self._kept_for: tuple[int, object] = (-1, None)
        self._cap = 0
        self._out: Any = ffi.NULL
        self._out_mv = memoryview(b"")
        self._reserve(bufsize)
        # /proc/self/fd for the path lookups, opened once (an open costs more
        # than the readlinks of a one-event batch), with the pid that opened
        # it and its inode, to know it after a fork or a stray close.
        self._fddir = -1
        self._fddir_pid = 0
        self._fddir_ino = (0, 0)

    def open_fd_dir(self) -> int:
        """Our descriptor of /proc/self/fd (reopened in a forked child), or -1.

        Called by the first decode that resolves fd paths, or before, so that
        the descriptor is there for the whole life of its group.
        """
        if self._fddir >= 0 and self._fddir_pid == os.getpid():
            return self._fddir
        # A forked child's copy still names the parent's table: drop it.
        self.close()
        try:
            fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_PATH)
        except OSError:
            return -1  # the C walk then reads the full /proc/self/fd/N paths
        st = os.fstat(fd)
        self._fddir, self._fddir_pid, self._fddir_ino = fd, os.getpid(), (st.st_dev, st.st_ino)
        return fd

    def close(self) -> None:
        """Close the descriptor of /proc/self/fd the decoder keeps.  Idempotent;
        the decoder opens it again if it decodes once more."""
        fd, self._fddir = self._fddir, -1
        if fd < 0:
            return
        # Only if that number is still ours: code may have closed it (a
        # child's closerange) and a new file got the number.
        try:
            st = os.fstat(fd)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._fddir_ino:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_fddir", -1) >= 0:
            self.close()

    def _reserve(self, nbytes: int) -> None:
        # One entry per 24-byte event, plus one for a short tail.
        cap = nbytes // _META_LEN + 1
        if cap > self._cap:
            self._out = ffi.new("struct afn_event[]", cap)
            self._out_mv = memoryview(ffi.buffer(self._out))
            self._cap = cap

    def decode(
        self,
        buf: BufferLike | Any,
        nbytes: int,
        *,
        owned: bool = False,
        pid_is_tid: bool = False,
        fd_error: bool = False,
        resolve_fd_paths: bool = False,
        dir_path: Callable[[FileHandle], str | None] | None = None,
        skip_pids: Container[int] = (),
        moves: int = 0,
        on_walk: Callable[[int], None] | None = None,
        dir_change: int = _DIR_CHANGE,
        tree: tuple[str, str, str, int] | None = None,
        on_cut: Callable[[FanotifyData, int], None] | None = None,
        renames: bool = False,
        object_path: Callable[[FileHandle, bool], str | None] | None = None,
        dir_version: int = -1,
    ) -> tuple[list[FanotifyData], list[ParseError]]:
        """Decode the first ``nbytes`` of ``buf``, as :func:`afanotify._parser.parse_lenient`.

        :param buf: bytes, bytearray, memoryview, or a cffi ``unsigned char[]``
        :param resolve_fd_paths: set ``path`` of every event with an fd from
            ``/proc/self/fd``; ``path_resolved`` is False when the file was
            deleted (the kernel's " (deleted)" suffix is removed) or the link
            could not be read
        :param dir_path: the path of a directory handle, or None (the group's
            resolver).  Given, events of the plain FID+name shape (a DFID or
            DFID_NAME record, maybe a FID record, no others) also get
            ``dir_path``, ``path`` and ``path_resolved``, as the group would
            set them, with ``dir_path`` called once per distinct directory of
            the batch (a None answer is asked again).  This stops at the first
            event with a directory record of another shape, or that says a
            directory moved or went away (a DIR_CHANGE_EVENTS bit with ONDIR):
            the caller resolves that event and every later one itself.
            :attr:`resolved_upto` is then that event's index in the returned
            list (else its length).  Events whose pid is in ``skip_pids`` are
            left unresolved.
        :param on_walk: called before any event is built (and ``dir_path``
            asked) with bits: 1 if the batch holds an event with a bit of
            ``moves`` and ONDIR (a directory moved), 2 if it holds a
            Q_OVERFLOW
        :param dir_change: the bits that, with ONDIR, make the cut (default
            DIR_CHANGE_EVENTS)
        :param tree: ``(root, root's parent, root's name, events)``: with
            ``dir_path``, events before the cut whose directory is neither
            ``root`` nor below it (nor the entry ``root`` in its parent), or
            that have no bit of ``events``, are not built at all (decided
            once per distinct directory of the batch); :attr:`skipped`
            counts them.  Events whose directory has no path are built.
        :param on_cut: in a batch without directory moves or overflow (see
            ``on_walk``), the plain FID+name events that make the cut do not
            end the paths: each is handed to ``on_cut(event, index)`` as soon
            as it is built (to resolve it and update the caller's map), and
            C goes on with ``dir_path`` after it.
        :param renames: with ``dir_path``, a file renamed before the cut (a
            FAN_RENAME without ONDIR: old and new directory records, maybe a
            FID record, no others) also gets ``old_path``, ``new_path``,
            ``path`` (the new one, or the old when the new is empty) and
            ``path_resolved`` (both directories known), each directory asked
            of ``dir_path`` as above (a side whose directory is unknown is its
            name alone); ``dir_path`` stays None
        :param object_path: with ``dir_path``, an event before the cut with a
            FID record and no directory record (MOVE_SELF, DELETE_SELF) gets
            ``path = object_path(fid, gone)`` and ``path_resolved`` (whether
            that is a str).  ``gone`` is True when the event is a DELETE_SELF,
            or when a MOVE_SELF or DELETE_SELF later in the same batch has the
            same FID record: after it, ``open_by_handle_at`` could not name
            the object, or would name its later place
        :param dir_version: with ``dir_path``, a number that changes whenever
            an answer of ``dir_path`` may (-1: at any time).  While it stays
            the same from one decode to the next (and ``tree`` too), the
            directories of earlier decodes keep their handle and path, and
            ``dir_path`` is asked only about the others (and about those it
            answered None); not in a batch with a Q_OVERFLOW (see ``on_walk``)
        :raises ValueError: for an ``nbytes`` outside the buffer
        """
        if isinstance(buf, ffi.CData):
            size = ffi.sizeof(buf)
            cbuf = buf
        else:
            mv = memoryview(buf).cast("B")
            size = len(mv)
            cbuf = ffi.from_buffer("unsigned char[]", mv) if size else ffi.NULL
        if not 0 <= nbytes <= size:
            raise ValueError(f"nbytes {nbytes} is outside the {size}-byte buffer")
        self._reserve(nbytes)
        flags = 0
        if resolve_fd_paths:
            flags |= lib.AFN_RESOLVE_FD_PATHS
        if dir_path is not None and not resolve_fd_paths:
            flags |= lib.AFN_FID_BATCH
        fddir = self.open_fd_dir() if resolve_fd_paths and nbytes else -1
        count = lib.afn_decode_at(
            cbuf, nbytes, self._out, self._cap, flags,
            self._arena, self._arena_size, self._arena_used, self._stop, fddir,
        )  # fmt: skip
        if count < 0:
            raise OverflowError(f"a {nbytes}-byte buffer is beyond the decoder's 32-bit offsets")
        if self._stop[0] != nbytes and count == self._cap:  # pragma: no cover
            raise AssertionError("decoder ran out of entries; _reserve is wrong")
        walk = 0
        if on_walk is not None:
            walk = lib.afn_has_move(self._out, count, moves)
            on_walk(walk)
        if walk or dir_path is None:
            on_cut = None
        kept = None
        if dir_path is not None and dir_version >= 0 and not walk & 2:
            # A directory named in every batch costs one dict lookup a batch,
            # not a FileHandle, a dir_path call and its path with a slash.
            if self._kept_for != (dir_version, tree) or len(self._kept) > _KEPT_MAX:
                self._kept, self._kept_for = {}, (dir_version, tree)
            kept = self._kept
        src = ffi.buffer(cbuf, nbytes) if nbytes else b""
        try:
            return self._build(
                src, count, owned, pid_is_tid, fd_error, resolve_fd_paths, dir_path, skip_pids,
                dir_change, tree, on_cut, renames, object_path, kept,
            )
        except BaseException:
            # Kept entries may hold this batch's counts of events kept out
            # (see _take_outside), which no later batch must see.
            self._kept, self._kept_for = {}, (-1, None)
            raise

    def _build(
        self,
        src: Any,
        count: int,
        owned: bool,
        pid_is_tid: bool,
        fd_error: bool,
        resolve: bool,
        dir_path: Callable[[FileHandle], str | None] | None,
        skip_pids: Container[int],
        dir_change: int,
        tree: tuple[str, str, str, int] | None,
        on_cut: Callable[[FanotifyData, int], None] | None,
        renames: bool = False,
        object_path: Callable[[FileHandle, bool], str | None] | None = None,
        kept: dict[bytes, list[Any]] | None = None,
    ) -> tuple[list[FanotifyData], list[ParseError]]:
        events: list[FanotifyData] = []
        errors: list[ParseError] = []
        # What a build that raises leaves: the caller releases it (see
        # Pipeline.decode).  Cleared on the way out, not to keep a batch alive.
        self.partial = (events, errors)
        upto = -1
        filled = skipped = 0
        build: Callable[..., tuple[int, int, int, int, int]] = _BUILD  # type: ignore[assignment]
        # Per distinct directory record: [its FileHandle, its path or None,
        # that path with a trailing slash, its tree decision, its events kept
        # out] (see ``outside``), by the record's bytes, or by its number
        # from the C walk.  Shared by every builder call of the batch.
        dirs: dict[bytes, list[Any]] = {}
        numbered: list[Any] = [None] * _MAX_DIRS
        counted: list[list[Any]] = []  # entries with events kept out (see outside)
        cflags = (
            (lib.AFN_B_PID_IS_TID if pid_is_tid else 0)
            | (lib.AFN_B_OWNED if owned else 0)
            | (lib.AFN_B_FD_ERROR if fd_error else 0)
            | (lib.AFN_B_RESOLVE if resolve else 0)
            | (lib.AFN_B_UNTRACK if self.untrack else 0)
            | (lib.AFN_B_STOP_AT_CUT if on_cut is not None else 0)
            | (lib.AFN_B_RENAMES if renames else 0)
        )
        out = self._out
        mv: memoryview | None = None
        i = 0
        while i < count:
            # The C builder takes every entry it can, up to the first it hands
            # back; the reference parser decodes that one; then C again.
            i, nfilled, cut, nskipped, stopped = build(
                self._out_mv, i, count, src, self._arena_buf, events, numbered, dirs, dir_path,
                skip_pids, cflags, _PERM, dir_change, tree, object_path, kept, counted,
            )  # fmt: skip
            filled += nfilled
            skipped += nskipped
            if stopped and on_cut is not None:
                ev = events[cut]
                on_cut(ev, cut)
                if ev.pid not in skip_pids:
                    filled += 1  # resolved by the caller
                if i >= count:
                    break
                continue  # C goes on after it, with the caller's map updated
            if cut >= 0:
                dir_path = None
                upto = cut
            if i >= count:
                break
            if mv is None:
                mv = memoryview(src).cast("B")
            entry = out[i]
            i += 1
            extra = self._fd_path(entry) if resolve and not entry.status else None
            item, _ = parse_event(
                mv, entry.offset, owned=owned, pid_is_tid=pid_is_tid, fd_error=fd_error,
                extra=extra,
            )  # fmt: skip
            if isinstance(item, ParseError):
                errors.append(item)
                continue
            mask = item.ev_types
            if dir_path is not None and (
                entry.has & _HAS_DFID or (mask & dir_change and mask & _ONDIR)
            ):
                # A directory event the builder left: the caller resolves it,
                # and the rest, in order.
                dir_path = None
                upto = len(events)
            events.append(item)
        self.resolved_upto = len(events) if upto < 0 else upto
        self.resolved_count = filled
        self.skipped = skipped
        self.outside = _take_outside(counted) if counted else []
        self.partial = _NO_PARTIAL
        return events, errors

    def _fd_path(self, entry: Any) -> dict[str, object] | None:
        """``path`` and ``path_resolved`` of an fd-mode entry the builder handed back."""
        plen = entry.path_len
        if entry.fd < 0 or plen == _PATH_NONE:
            return None
        if plen >= 0:
            start = entry.path_off
            path: str | None = os.fsdecode(self._arena_buf[start : start + plen])
        elif plen == _PATH_RETRY:
            path = _readlink_fd(entry.fd)  # the arena was full
        else:
            path = None
        if path is None:
            return {"path": None, "path_resolved": False}
        path, ok = strip_deleted(path)
        return {"path": path, "path_resolved": ok}
