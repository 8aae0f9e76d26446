"""The fast path: the C batch decoder (``afanotify/csrc/fastpath.c``) behind the parser's API.

:func:`decode` gives the same :class:`FanotifyData` and the same
:class:`ParseError` s as :func:`afanotify._parser.parse_lenient`, field for
field and message for message; ``tests/test_fastparse_differential.py`` holds
the two to that.  The C side walks the buffer once and fills a fixed-size
``struct afn_event`` per event.  The C builder (``csrc/fastpath_build.c``)
turns runs of entries of the common shapes into events; :meth:`Decoder._build`
does the same in Python for every shape, and takes the entries the C builder
hands back (with one ``struct.unpack_from`` per entry, reading the buffer
itself only for what becomes Python objects: file handles, names, unknown
records).

Two things the pure parser cannot do, because they are I/O, are done here in
C when asked: resolving an event fd to its path (``readlink`` of
``/proc/self/fd/N``), and closing the fd afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import sys
import threading
from collections.abc import Callable, Container
from typing import Any, TypeVar

from ._ffi import ffi, lib
from ._parser import BufferLike
from .events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData, FileHandle
from .exceptions import MetadataVersionError, ParseError, TruncatedEventError
from .flags import (
    DIR_CHANGE_EVENTS,
    FAN_EVENT_INFO_TYPE_DFID,
    FAN_EVENT_INFO_TYPE_DFID_NAME,
    FAN_EVENT_INFO_TYPE_ERROR,
    FAN_EVENT_INFO_TYPE_FID,
    FAN_EVENT_INFO_TYPE_MNT,
    FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
    FAN_EVENT_INFO_TYPE_PIDFD,
    FAN_EVENT_INFO_TYPE_RANGE,
    FAN_EVENT_METADATA_LEN,
    FAN_NOFD,
    FANOTIFY_METADATA_VERSION,
    PERM_EVENTS,
    Event,
)

__all__ = ["Decoder", "decode", "EVENT"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: ``struct afn_event``, field for field (a test checks it against the C layout):
#: mask, offset, event_len, fd, pid, status, has, pidfd, error, error_count,
#: arg1, arg2, path_off, path_len, reserved, range_offset, range_count, mnt_id,
#: then (rec, handle_len, name_off, name_len) for fid, dfid, old and new,
#: then dir_idx, name_text.
EVENT = struct.Struct("=QIIiiIIiiIIIIiIQQQ" + "IIII" * 4 + "II")
_HEAD = struct.Struct("=QIIiiII")  # the first seven fields
_FID = struct.Struct("=IIIi")  # fsid[0], fsid[1], handle_bytes, handle_type
_INFO_HEADER = struct.Struct("=BBH")
_U16 = struct.Struct("=H")
# The fid and dfid parts of struct afn_event: rec, handle_len, (skip 8), rec,
# handle_len, name_off, name_len.
_FIDREFS = struct.Struct("=II8xIIII")
_FIDREFS_AT = ffi.offsetof("struct afn_event", "fid")
# path_off and path_len of struct afn_event.
_PATHREF = struct.Struct("=Ii")
_PATHREF_AT = ffi.offsetof("struct afn_event", "path_off")
# What the common shapes need, in one unpack: the first seven fields,
# path_off and path_len, the fid and dfid parts as in _FIDREFS, then dir_idx
# and name_text.
_DIRREF_AT = ffi.offsetof("struct afn_event", "dir_idx")
_SHAPE = struct.Struct(
    f"=QIIiiII{_PATHREF_AT - _HEAD.size}xIi{_FIDREFS_AT - _PATHREF_AT - _PATHREF.size}xII8xIIII"
    f"{_DIRREF_AT - _FIDREFS_AT - _FIDREFS.size}xII"
)
# As os.fsdecode(), without its Python-level call per path.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()

_SIZE = EVENT.size
_META_LEN = FAN_EVENT_METADATA_LEN
_PERM = int(PERM_EVENTS)
_DIR_CHANGE = int(DIR_CHANGE_EVENTS)
_ONDIR = int(Event.ONDIR)
_KNOWN_TYPES = frozenset(
    (
        FAN_EVENT_INFO_TYPE_FID,
        FAN_EVENT_INFO_TYPE_DFID,
        FAN_EVENT_INFO_TYPE_DFID_NAME,
        FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
        FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
        FAN_EVENT_INFO_TYPE_PIDFD,
        FAN_EVENT_INFO_TYPE_ERROR,
        FAN_EVENT_INFO_TYPE_RANGE,
        FAN_EVENT_INFO_TYPE_MNT,
    )
)
# The pure parser's wording for a fixed-size record that is too short.
_NEEDS = {
    FAN_EVENT_INFO_TYPE_PIDFD: ("pidfd", 8),
    FAN_EVENT_INFO_TYPE_ERROR: ("error", 12),
    FAN_EVENT_INFO_TYPE_RANGE: ("range", 24),
    FAN_EVENT_INFO_TYPE_MNT: ("mount", 16),
}
_DELETED = " (deleted)"

_HAS_FID = lib.AFN_HAS_FID
_HAS_DFID = lib.AFN_HAS_DFID
_HAS_NAME = lib.AFN_HAS_NAME
_HAS_OLD = lib.AFN_HAS_OLD
_HAS_NEW = lib.AFN_HAS_NEW
_HAS_PIDFD = lib.AFN_HAS_PIDFD
_HAS_ERROR = lib.AFN_HAS_ERROR
_HAS_RANGE = lib.AFN_HAS_RANGE
_HAS_MNT = lib.AFN_HAS_MNT
_HAS_UNKNOWN = lib.AFN_HAS_UNKNOWN
_FD_CLOSED = lib.AFN_FD_CLOSED
_FID_SHAPE = _HAS_FID | _HAS_DFID | _HAS_NAME
_PATH_NONE = lib.AFN_PATH_NONE
_PATH_RETRY = lib.AFN_PATH_RETRY
_NONE = lib.AFN_NONE
_MAX_DIRS = lib.AFN_MAX_DIRS


def _constructor(cls: type[T]) -> Callable[..., T]:
    """An equivalent of ``cls(...)`` for a frozen, slotted dataclass, several times faster.

    Building the event objects is most of a batch's cost once the walk is in
    C.  A frozen dataclass's ``__init__`` sets every field with
    ``object.__setattr__(self, name, value)``, which looks the slot up by name
    each time.  Here the fields are stored into an instance of a plain
    "builder" class with the very same slots (plain attribute stores, which
    the interpreter specialises), and the finished object's ``__class__`` is
    then set to ``cls``: CPython allows that between classes whose instance
    layouts are identical, and the result is an ordinary ``cls`` instance
    (same signature, same defaults, every slot set, still frozen).  Where the
    class swap is refused, each slot's descriptor is called instead.  Any
    shape neither covers (``__post_init__``, ``default_factory``,
    ``init=False`` on the class or a field, no slots) gets ``cls`` itself.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if (
        hasattr(cls, "__post_init__")
        or not cls.__dataclass_params__.init  # type: ignore[attr-defined]
        or "__slots__" not in cls.__dict__
        or any(not f.init or f.default_factory is not dataclasses.MISSING for f in fields)
    ):
        return cls
    slots = cls.__dict__["__slots__"]
    builder = type(f"_{cls.__name__}Builder", cls.__bases__, {"__slots__": slots})
    swapped = _generate(cls, fields, builder)
    try:
        probe = swapped(*[None for f in fields if f.default is dataclasses.MISSING])
    except TypeError:  # "__class__ assignment: ... object layout differs"
        probe = None
    if type(probe) is cls:
        return swapped
    return _generate(cls, fields, None)


def _generate(cls: type[T], fields: Any, builder: type | None) -> Callable[..., T]:
    ns: dict[str, Any] = {"__new": object.__new__, "__cls": cls, "__builder": builder}
    params = []
    body = ["    __obj = __new(__builder)" if builder else "    __obj = __new(__cls)"]
    for i, f in enumerate(fields):
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            ns[f"__default{i}"] = f.default
            params.append(f"{f.name}=__default{i}")
        if builder is not None:
            body.append(f"    __obj.{f.name} = {f.name}")
        else:
            ns[f"__set{i}"] = cls.__dict__[f.name].__set__
            body.append(f"    __set{i}(__obj, {f.name})")
    if builder is not None:
        body.append("    __obj.__class__ = __cls")
    src = f"def __init({', '.join(params)}):\n" + "\n".join(body) + "\n    return __obj\n"
    exec(src, ns)
    init: Callable[..., T] = ns["__init"]
    return init


def _positional(cls: type[T], names: tuple[str, ...]) -> Callable[..., T] | None:
    """Like :func:`_constructor`, for one fixed shape: ``names`` positional, the rest defaults.

    Binding a few positional arguments is much cheaper than keyword
    arguments to a 30-parameter function.  None when ``cls`` does not allow
    the class swap (then the caller uses the general constructor).
    """
    if _constructor(cls) is cls:
        return None
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    slots = cls.__dict__["__slots__"]
    builder = type(f"_{cls.__name__}Builder", cls.__bases__, {"__slots__": slots})
    ns: dict[str, Any] = {"__new": object.__new__, "__cls": cls, "__builder": builder}
    body = ["    __obj = __new(__builder)"]
    for i, f in enumerate(fields):
        if f.name in names:
            body.append(f"    __obj.{f.name} = {f.name}")
        else:
            ns[f"__default{i}"] = f.default
            body.append(f"    __obj.{f.name} = __default{i}")
    body.append("    __obj.__class__ = __cls")
    src = f"def __init({', '.join(names)}):\n" + "\n".join(body) + "\n    return __obj\n"
    exec(src, ns)
    init: Callable[..., T] = ns["__init"]
    try:
        probe = init(*[None for _ in names])
    except TypeError:  # "__class__ assignment: ... object layout differs"
        return None
    return init if type(probe) is cls else None


_event = _constructor(FanotifyData)
_file_handle = _constructor(FileHandle)
#: The resolved FID+name shape (see Decoder.decode's ``dir_path``).
_FID_FIELDS = (
    "fd", "pid", "ev_types", "pid_is_tid", "fid", "dfid", "name", "dir_path", "path",
    "path_resolved",
)


def _fid_event_slow(*args: Any) -> FanotifyData:
    return FanotifyData(**dict(zip(_FID_FIELDS, args, strict=True)))


_fid_event = _positional(FanotifyData, _FID_FIELDS) or _fid_event_slow


def _c_builder() -> Callable[..., tuple[int, int, int]] | None:
    """The C event builder (``afanotify/csrc/fastpath_build.c``), or None.

    None when the core predates it, when ``AFANOTIFY_PY_BUILDER`` is set (the
    Python builder below then does everything; the differential tests use
    it), or when the event classes are not plain slotted classes it can fill.
    """
    if os.environ.get("AFANOTIFY_PY_BUILDER"):
        return None
    from ._ffi import event_builder

    builder = event_builder()
    if builder is None:
        return None
    setup, build = builder
    defaults = {f.name: f.default for f in dataclasses.fields(FanotifyData)}
    slots = tuple(FanotifyData.__slots__)
    try:
        setup(
            FanotifyData, FileHandle, slots, tuple(defaults[name] for name in slots),
            tuple(FileHandle.__slots__), OWN_FD, OWN_PIDFD, UNANSWERED,
        )  # fmt: skip
    except (TypeError, ValueError, KeyError) as exc:
        log.debug("C event builder unavailable, building events in Python: %s", exc)
        return None
    return build


_BUILD = _c_builder()


def _error(
    status: int, off: int, event_len: int, fd: int, pid: int, mask: int, a1: int, a2: int
) -> ParseError:
    """The pure parser's exception for a C status, with the same message."""
    meta = (off, fd, pid, mask)
    if status == lib.AFN_E_SHORT_BUFFER:
        return TruncatedEventError(
            f"{a1} bytes left, fewer than the {_META_LEN}-byte metadata; rest of buffer abandoned",
            off,
        )
    if status == lib.AFN_E_EVENT_LEN:
        return TruncatedEventError(
            f"event_len {a1} is outside [{_META_LEN}, {a2}]; rest of buffer abandoned", *meta
        )
    if status == lib.AFN_E_VERSION:
        return MetadataVersionError(
            f"metadata version {a1}, expected {FANOTIFY_METADATA_VERSION}; "
            "this library is older or newer than the kernel's format",
            *meta,
        )
    if status == lib.AFN_E_META_LEN:
        return ParseError(f"metadata_len {a1} is outside [{_META_LEN}, {event_len}]", *meta)
    if status == lib.AFN_E_STRAY_BYTES:
        return TruncatedEventError(f"{a1} stray bytes after the last info record", *meta)
    if status == lib.AFN_E_RECORD_LEN:
        return ParseError(f"info record of type {a1} has length {a2}, below the header size", *meta)
    if status == lib.AFN_E_RECORD_PAST_END:
        return TruncatedEventError(
            f"info record of type {a1} ({a2} bytes) runs past the event's end", *meta
        )
    if status == lib.AFN_E_FID_SHORT:
        return TruncatedEventError(
            f"file-handle record of type {a1} is {a2} bytes, "
            f"shorter than its {_FID.size + 4}-byte fixed part",
            *meta,
        )
    if status == lib.AFN_E_HANDLE_PAST_END:
        return TruncatedEventError(
            f"file handle of {a2} bytes runs past its record of type {a1}", *meta
        )
    if status == lib.AFN_E_NAME_NUL:
        return ParseError(f"name in record of type {a1} is not NUL-terminated", *meta)
    if status == lib.AFN_E_RECORD_SHORT:
        what, size = _NEEDS[a1]
        return TruncatedEventError(
            f"{what} record is {a2} bytes, shorter than the {size} it needs", *meta
        )
    raise AssertionError(f"unknown decoder status {status}")  # pragma: no cover


# In the functions below, ``src`` is the batch as a cffi buffer: slicing it
# gives bytes in one step, where a memoryview slice would need a second copy.


def _handle(src: Any, rec: int, hlen: int) -> FileHandle:
    f0, f1, _, htype = _FID.unpack_from(src, rec)
    start = rec + _FID.size
    return _file_handle((f0, f1), htype, src[start : start + hlen])


def _name(src: Any, off: int, n: int) -> str:
    # As _parser._decode_name: os.fsdecode() on a UTF-8 system.
    return str(src[off : off + n], "utf-8", "surrogateescape")


def _unknown(src: Any, off: int, event_len: int) -> tuple[tuple[int, bytes], ...]:
    """Records of unknown types, in order; the C walk has checked every bound."""
    meta_len = _U16.unpack_from(src, off + 6)[0]
    pos = off + meta_len
    end = off + event_len
    found = []
    while pos < end:
        info_type, _, rlen = _INFO_HEADER.unpack_from(src, pos)
        if info_type not in _KNOWN_TYPES:
            found.append((info_type, src[pos + _INFO_HEADER.size : pos + rlen]))
        pos += rlen
    return tuple(found)


def _readlink_fd(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class Decoder:
    """The C decoder with its cffi buffers, allocated once and reused per batch.

    Not thread-safe: give each reader its own.  The events it returns copy
    what they need, so the buffers are free again as soon as a call returns.
    """

    def __init__(self, bufsize: int = 65536, arena_size: int | None = None) -> None:
        """
        :param bufsize: the size of the buffer :meth:`read` reads into
        :param arena_size: bytes for the paths of one batch (default
            ``8 * bufsize``); paths that do not fit are resolved in Python
        """
        if bufsize < _META_LEN:
            raise ValueError(f"bufsize {bufsize} is below the {_META_LEN}-byte event metadata")
        self._bufsize = bufsize
        self._readbuf: Any = ffi.new("unsigned char[]", bufsize)
        self._arena_size = 8 * bufsize if arena_size is None else arena_size
        self._arena: Any = ffi.new("char[]", max(self._arena_size, 1))
        self._arena_buf: Any = ffi.buffer(self._arena)
        self._arena_used: Any = ffi.new("size_t *")
        self._stop: Any = ffi.new("size_t *")
        #: Build the common shapes with the C builder (when the core has it);
        #: False builds every event in Python.
        self.c_builder = _BUILD is not None
        #: Leave the events the C builder makes (all but permission events)
        #: untracked by the cyclic garbage collector.  They hold only ints,
        #: strs and file handles, so no cycle runs through them, as long as
        #: nobody stores other objects in them: a group that hands its events
        #: out as mutable objects (afanotify.compat) keeps this False.
        self.untrack = False
        #: See :meth:`decode`'s ``dir_path``.
        self.resolved_upto = 0
        #: How many events of the last batch got their paths from ``dir_path``:
        #: equal to :attr:`resolved_upto` when every event before the cut did.
        self.resolved_count = 0
        self._cap = 0
        self._out: Any = ffi.NULL
        self._out_mv = memoryview(b"")
        self._reserve(bufsize)

    def _reserve(self, nbytes: int) -> None:
        # One entry per 24-byte event, plus one for a short tail.
        cap = nbytes // _META_LEN + 1
        if cap > self._cap:
            self._out = ffi.new("struct afn_event[]", cap)
            self._out_mv = memoryview(ffi.buffer(self._out))
            self._cap = cap

    def read(
        self,
        fd: int,
        *,
        pid_is_tid: bool = False,
        fd_error: bool = False,
        resolve_fd_paths: bool = False,
        close_fds: bool = False,
    ) -> tuple[list[FanotifyData], list[ParseError]]:
        """Read one batch from the group ``fd`` and decode it; the events own their fds.

        :raises BlockingIOError: when a non-blocking group has nothing to read
        :raises OSError: when ``read(2)`` fails otherwise
        """
        n = lib.afn_read(fd, self._readbuf, self._bufsize)
        if n < 0:
            raise OSError(-n, f"reading the fanotify group failed: {os.strerror(-n)}")
        return self.decode(
            self._readbuf,
            n,
            owned=True,
            pid_is_tid=pid_is_tid,
            fd_error=fd_error,
            resolve_fd_paths=resolve_fd_paths,
            close_fds=close_fds,
        )

    def decode(
        self,
        buf: BufferLike | Any,
        nbytes: int,
        *,
        owned: bool = False,
        pid_is_tid: bool = False,
        fd_error: bool = False,
        resolve_fd_paths: bool = False,
        close_fds: bool = False,
        dir_path: Callable[[FileHandle], str | None] | None = None,
        skip_pids: Container[int] = (),
    ) -> tuple[list[FanotifyData], list[ParseError]]:
        """Decode the first ``nbytes`` of ``buf``, as :func:`afanotify._parser.parse_lenient`.

        :param buf: bytes, bytearray, memoryview, or a cffi ``unsigned char[]``
        :param resolve_fd_paths: set ``path`` of every event with an fd from
            ``/proc/self/fd``; ``path_resolved`` is False when the file was
            deleted (the kernel's " (deleted)" suffix is removed) or the link
            could not be read
        :param close_fds: close each event's fd once decoded (and resolved), and
            report ``fd`` as FAN_NOFD; permission events keep theirs, since the
            answer names the fd, and so do malformed events, whose errors carry
            it.  Needs ``owned``.
        :param dir_path: the path of a directory handle, or None (the group's
            resolver).  Given, events of the plain FID+name shape (a DFID or
            DFID_NAME record, maybe a FID record, no others) also get
            ``dir_path``, ``path`` and ``path_resolved``, as the group would
            set them, with ``dir_path`` called once per distinct directory of
            the batch (a None answer is asked again).  This stops at the first
            event with a directory record of another shape, or that says a
            directory moved or went away (a DIR_CHANGE_EVENTS bit with ONDIR):
            the caller resolves that event and every later one itself.  :attr:`resolved_upto` is
            then that event's index in the returned list (else its length).
            Events whose pid is in ``skip_pids`` are left unresolved.
        :raises ValueError: for an ``nbytes`` outside the buffer, or
            ``close_fds`` without ``owned``
        """
        if close_fds and not owned:
            raise ValueError(
                "close_fds needs owned=True: the fds of a synthetic buffer are not ours"
            )
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
        if close_fds:
            flags |= lib.AFN_CLOSE_FDS
        if dir_path is not None and not resolve_fd_paths:
            flags |= lib.AFN_FID_BATCH
        count = lib.afn_decode(
            cbuf, nbytes, self._out, self._cap, flags, _PERM,
            self._arena, self._arena_size, self._arena_used, self._stop,
        )  # fmt: skip
        if count < 0:
            raise OverflowError(f"a {nbytes}-byte buffer is beyond the decoder's 32-bit offsets")
        if self._stop[0] != nbytes and count == self._cap:  # pragma: no cover
            raise AssertionError("decoder ran out of entries; _reserve is wrong")
        src = ffi.buffer(cbuf, nbytes) if nbytes else b""
        return self._build(
            src, count, owned, pid_is_tid, fd_error, resolve_fd_paths, close_fds, dir_path,
            skip_pids,
        )  # fmt: skip

    def _arena_text(self) -> str | None:
        """The batch's resolved paths as one str, when byte offsets are also str offsets.

        Decoding the arena once and slicing the str is cheaper than a bytes
        slice and a decode per path; it is right only for ASCII, where each
        byte is one character.
        """
        used = self._arena_used[0]
        if not used:
            return None
        blob = self._arena_buf[0:used]
        return blob.decode("ascii") if blob.isascii() else None

    def _build(
        self,
        src: Any,
        count: int,
        owned: bool,
        pid_is_tid: bool,
        fd_error: bool,
        resolve: bool,
        close_fds: bool,
        dir_path: Callable[[FileHandle], str | None] | None,
        skip_pids: Container[int],
    ) -> tuple[list[FanotifyData], list[ParseError]]:
        events: list[FanotifyData] = []
        upto = -1
        filled = 0
        errors: list[ParseError] = []
        out = self._out_mv
        full = EVENT.unpack_from
        append = events.append
        perm = _PERM
        arena = self._arena_buf
        # The batch's paths (resolve), or its names (AFN_FID_BATCH), decoded
        # at the first event this loop takes (the C builder decodes its own).
        text: str | None = None
        want_text = resolve or dir_path is not None
        # Per distinct directory record: [its FileHandle, its path or None,
        # that path with a trailing slash], by the record's bytes, or by its
        # number from the C walk.
        dirs: dict[bytes, list[Any]] = {}
        numbered: list[Any] = [None] * _MAX_DIRS
        shape = _SHAPE.unpack_from
        build = _BUILD if self.c_builder else None
        cflags = 0
        if build is not None:
            cflags = (
                (lib.AFN_B_PID_IS_TID if pid_is_tid else 0)
                | (lib.AFN_B_OWNED if owned else 0)
                | (lib.AFN_B_FD_ERROR if fd_error else 0)
                | (lib.AFN_B_RESOLVE if resolve else 0)
                | (lib.AFN_B_UNTRACK if self.untrack else 0)
            )
        i = 0
        while i < count:
            if build is not None:
                # The C builder takes every event of the common shapes, the
                # loop below the one it hands back, then the C builder again.
                i, nfilled, cut = build(
                    out, i, count, src, arena, events, numbered, dirs, dir_path, skip_pids,
                    cflags, perm, _DIR_CHANGE,
                )  # fmt: skip
                filled += nfilled
                if cut >= 0:
                    dir_path = None
                    upto = cut
                if i >= count:
                    break
            if want_text:
                text = self._arena_text()
                want_text = False
            pos = i * _SIZE
            i += 1
            (
                mask, off, event_len, fd, pid, status, has, path_off, path_len,
                fid_rec, fid_len, dfid_rec, dfid_len, name_off, name_len, dir_idx, name_text,
            ) = shape(out, pos)  # fmt: skip
            if resolve and fd >= 0 and not (status or has):
                # fd mode with paths resolved in C: the common shape there.
                if path_len >= 0:
                    end = path_off + path_len
                    if text is not None:
                        fpath = text[path_off:end]
                    else:
                        fpath = str(arena[path_off:end], _FS_ENCODING, _FS_ERRORS)
                    ok = True
                    if fpath.endswith(_DELETED):
                        fpath = fpath[: -len(_DELETED)]
                        ok = False
                    owns = ((OWN_FD | UNANSWERED) if mask & perm else OWN_FD) if owned else 0
                    append(
                        _event(
                            fd, pid, mask, path=fpath, pid_is_tid=pid_is_tid,
                            path_resolved=ok, _owns=owns,
                        )
                    )  # fmt: skip
                    continue
            if not (status or has or resolve):
                # The common shape (fd mode, no records): no dict, no second unpack.
                if fd >= 0:
                    owns = ((OWN_FD | UNANSWERED) if mask & perm else OWN_FD) if owned else 0
                    append(_event(fd, pid, mask, pid_is_tid=pid_is_tid, _owns=owns))
                elif fd_error and fd != FAN_NOFD:
                    append(_event(FAN_NOFD, pid, mask, pid_is_tid=pid_is_tid, fd_error=-fd))
                else:
                    append(_event(fd, pid, mask, pid_is_tid=pid_is_tid))
                continue
            if fd == FAN_NOFD and has and not (status or resolve or has & ~_FID_SHAPE):
                # The common FID-group shape: a DFID_NAME record, maybe a FID.
                dfid = entry = None
                if has & _HAS_DFID:
                    # Events of one batch mostly share a few directories: one
                    # FileHandle per distinct record, so equal handles are
                    # also the same object (HandleResolver uses that).  The C
                    # walk numbers the first few distinct ones.
                    entry = None if dir_idx == _NONE else numbered[dir_idx]
                    if entry is None:
                        if dir_idx == _NONE:
                            key = src[dfid_rec : dfid_rec + _FID.size + dfid_len]
                            entry = dirs.get(key)
                            if entry is None:
                                entry = dirs[key] = [_handle(src, dfid_rec, dfid_len), None, ""]
                        else:
                            entry = numbered[dir_idx] = [
                                _handle(src, dfid_rec, dfid_len), None, ""
                            ]  # fmt: skip
                    dfid = entry[0]
                fid = _handle(src, fid_rec, fid_len) if has & _HAS_FID else None
                if not has & _HAS_NAME:
                    name = None
                elif name_text != _NONE and text is not None:
                    name = text[name_text : name_text + name_len]
                else:
                    name = str(src[name_off : name_off + name_len], "utf-8", "surrogateescape")
                if dir_path is not None:
                    if mask & _DIR_CHANGE and mask & _ONDIR:
                        # Cached directory paths may be stale from here on:
                        # the caller invalidates and resolves the rest.
                        dir_path = None
                        upto = len(events)
                    elif entry is not None and pid not in skip_pids:
                        d = entry[1]
                        if d is None:
                            d = entry[1] = dir_path(dfid)  # type: ignore[arg-type]
                            if d is not None:
                                entry[2] = d if d == "/" else d + "/"
                        jp: str | None
                        if d is None:
                            jp, ok = name, False
                        elif not name or name == ".":
                            jp, ok = d, True
                        else:
                            jp, ok = entry[2] + name, True
                        append(_fid_event(fd, pid, mask, pid_is_tid, fid, dfid, name, d, jp, ok))
                        filled += 1
                        continue
                append(_event(fd, pid, mask, pid_is_tid=pid_is_tid, fid=fid, dfid=dfid, name=name))
                continue
            (
                _, _, _, _, _, _, _,
                pidfd, error, error_count, a1, a2, path_off, path_len, _,
                range_offset, range_count, mnt_id,
                fid_rec, fid_len, _, _,
                dfid_rec, dfid_len, name_off, name_len,
                old_rec, old_len, old_name_off, old_name_len,
                new_rec, new_len, new_name_off, new_name_len, _, _,
            ) = full(out, pos)  # fmt: skip
            if status:
                err = _error(status, off, event_len, fd, pid, mask, a1, a2)
                if has & _HAS_PIDFD and pidfd >= 0:
                    err.pidfd = pidfd  # read before the malformed part: open all the same
                errors.append(err)
                continue
            if dir_path is not None and (has & _HAS_DFID or (mask & _DIR_CHANGE and mask & _ONDIR)):
                # A directory event of another shape (a PIDFD record), or a
                # directory renamed: the caller resolves it, and the rest, in order.
                dir_path = None
                upto = len(events)
            kw: dict[str, Any] = {}
            owns = 0
            if has:
                if has & _HAS_FID:
                    kw["fid"] = _handle(src, fid_rec, fid_len)
                if has & _HAS_DFID:
                    kw["dfid"] = _handle(src, dfid_rec, dfid_len)
                if has & _HAS_NAME:
                    kw["name"] = _name(src, name_off, name_len)
                if has & _HAS_OLD:
                    kw["old_dfid"] = _handle(src, old_rec, old_len)
                    kw["old_name"] = _name(src, old_name_off, old_name_len)
                if has & _HAS_NEW:
                    kw["new_dfid"] = _handle(src, new_rec, new_len)
                    kw["new_name"] = _name(src, new_name_off, new_name_len)
                if has & _HAS_PIDFD:
                    kw["pidfd"] = pidfd
                    if pidfd >= 0 and owned:
                        owns = OWN_PIDFD
                if has & _HAS_ERROR:
                    kw["error"] = error
                    kw["error_count"] = error_count
                if has & _HAS_RANGE:
                    kw["range_offset"] = range_offset
                    kw["range_count"] = range_count
                if has & _HAS_MNT:
                    kw["mnt_id"] = mnt_id
                if has & _HAS_UNKNOWN:
                    kw["unknown_records"] = _unknown(src, off, event_len)
            if resolve and path_len != _PATH_NONE:
                if path_len >= 0:
                    path: str | None = os.fsdecode(self._arena_buf[path_off : path_off + path_len])
                elif path_len == _PATH_RETRY:
                    # The arena was full: resolve (and close) here instead.
                    path = _readlink_fd(fd)
                    if close_fds and not mask & perm:
                        os.close(fd)
                        has |= _FD_CLOSED
                else:
                    path = None
                if path is not None and path.endswith(_DELETED):
                    path = path[: -len(_DELETED)]
                    kw["path_resolved"] = False
                else:
                    kw["path_resolved"] = path is not None
                kw["path"] = path
            if has & _FD_CLOSED:
                fd = FAN_NOFD
            elif fd >= 0:
                if owned:
                    owns |= (OWN_FD | UNANSWERED) if mask & perm else OWN_FD
            elif fd_error and fd != FAN_NOFD:
                kw["fd_error"] = -fd
                fd = FAN_NOFD
            append(_event(fd, pid, mask, pid_is_tid=pid_is_tid, _owns=owns, **kw))
        self.resolved_upto = len(events) if upto < 0 else upto
        self.resolved_count = filled
        return events, errors


_local = threading.local()


def decode(
    buf: BufferLike | Any,
    nbytes: int,
    *,
    owned: bool,
    pid_is_tid: bool,
    fd_error: bool,
    resolve_fd_paths: bool = False,
    close_fds: bool = False,
) -> tuple[list[FanotifyData], list[ParseError]]:
    """Decode ``buf[:nbytes]`` with this thread's :class:`Decoder`; see :meth:`Decoder.decode`.

    :raises ValueError: for an ``nbytes`` outside the buffer, or ``close_fds``
        without ``owned``
    """
    decoder: Decoder | None = getattr(_local, "decoder", None)
    if decoder is None:
        decoder = _local.decoder = Decoder()
    return decoder.decode(
        buf,
        nbytes,
        owned=owned,
        pid_is_tid=pid_is_tid,
        fd_error=fd_error,
        resolve_fd_paths=resolve_fd_paths,
        close_fds=close_fds,
    )
