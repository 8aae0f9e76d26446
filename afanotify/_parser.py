"""The pure parser: kernel buffers in, :class:`FanotifyData` out.

No I/O happens here: no ``os``, no event loop.  Everything the kernel can put
in a buffer is decoded; anything malformed becomes a :class:`ParseError` for
that event, and the walk goes on whenever the event's length can be trusted.

Layout (``include/uapi/linux/fanotify.h``)::

    struct fanotify_event_metadata { u32 event_len; u8 vers; u8 reserved;
                                     u16 metadata_len; u64 mask; s32 fd; s32 pid; }
    then event_len - metadata_len bytes of info records, each starting with
    struct fanotify_event_info_header { u8 info_type; u8 pad; u16 len; }
"""

from __future__ import annotations

import struct

from .events import OWN_FD, OWN_PIDFD, UNANSWERED, FanotifyData, FileHandle
from .exceptions import MetadataVersionError, ParseError, TruncatedEventError
from .flags import (
    FAN_EVENT_INFO_TYPE_DFID,
    FAN_EVENT_INFO_TYPE_DFID_NAME,
    FAN_EVENT_INFO_TYPE_ERROR,
    FAN_EVENT_INFO_TYPE_FID,
    FAN_EVENT_INFO_TYPE_MNT,
    FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
    FAN_EVENT_INFO_TYPE_PIDFD,
    FAN_EVENT_INFO_TYPE_RANGE,
    FAN_INFO,
    FAN_NOFD,
    FAN_RESPONSE_INFO_AUDIT_RULE,
    FANOTIFY_METADATA_VERSION,
    PERM_EVENTS,
)

__all__ = [
    "METADATA",
    "INFO_HEADER",
    "RESPONSE",
    "AUDIT_RULE",
    "parse",
    "parse_event",
    "parse_lenient",
    "encode_response",
]

BufferLike = bytes | bytearray | memoryview

#: struct fanotify_event_metadata
METADATA = struct.Struct("=IBBHQii")
#: struct fanotify_event_info_header
INFO_HEADER = struct.Struct("=BBH")
#: __kernel_fsid_t followed by struct file_handle's fixed part
_FID = struct.Struct("=IIIi")  # fsid[0], fsid[1], handle_bytes, handle_type
_S32 = struct.Struct("=i")
_ERROR = struct.Struct("=iI")
_RANGE = struct.Struct("=IQQ")  # pad, offset, count
_MNT = struct.Struct("=IQ")  # pad, mnt_id
#: struct fanotify_response
RESPONSE = struct.Struct("=iI")
#: struct fanotify_response_info_audit_rule
AUDIT_RULE = struct.Struct("=BBHIII")

_META_LEN = METADATA.size
_PERM = int(PERM_EVENTS)
_FID_TYPES = (
    FAN_EVENT_INFO_TYPE_FID,
    FAN_EVENT_INFO_TYPE_DFID,
    FAN_EVENT_INFO_TYPE_DFID_NAME,
    FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
    FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
)
_NAMED_TYPES = (
    FAN_EVENT_INFO_TYPE_DFID_NAME,
    FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
    FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
)


def _decode_name(raw: bytes) -> str:
    # Same result as os.fsdecode() on a UTF-8 system, without importing os.
    return raw.decode("utf-8", "surrogateescape")


def _fid_record(
    mv: memoryview, start: int, end: int, info_type: int, ev_off: int, meta: tuple[int, int, int]
) -> tuple[FileHandle, str | None]:
    """Decode a FID-like record body in ``mv[start:end]`` (header excluded)."""
    if end - start < _FID.size:
        raise TruncatedEventError(
            f"file-handle record of type {info_type} is {end - start + 4} bytes, "
            f"shorter than its {_FID.size + 4}-byte fixed part",
            ev_off,
            *meta,
        )
    f0, f1, nbytes, htype = _FID.unpack_from(mv, start)
    hstart = start + _FID.size
    hend = hstart + nbytes
    if hend > end:
        raise TruncatedEventError(
            f"file handle of {nbytes} bytes runs past its record of type {info_type}",
            ev_off,
            *meta,
        )
    handle = FileHandle((f0, f1), htype, bytes(mv[hstart:hend]))
    if info_type not in _NAMED_TYPES:
        return handle, None
    tail = bytes(mv[hend:end])
    nul = tail.find(b"\0")
    if nul < 0:
        raise ParseError(
            f"name in record of type {info_type} is not NUL-terminated", ev_off, *meta
        )
    return handle, _decode_name(tail[:nul])


def _parse_one(
    mv: memoryview, off: int, event_len: int, meta_len: int, mask: int, fd: int, pid: int,
    owned: bool, pid_is_tid: bool, fd_error: bool, extra: dict[str, object] | None,
) -> FanotifyData:
    """Decode the info records of one event whose bounds are already checked."""
    meta = (fd, pid, mask)
    kw: dict[str, object] = {} if extra is None else dict(extra)
    unknown: list[tuple[int, bytes]] = []
    owns = 0
    try:
        _records(mv, off, off + meta_len, off + event_len, meta, kw, unknown)
    except ParseError as exc:
        # A pidfd read before the malformed record is open all the same.
        pidfd = kw.get("pidfd", -1)
        if isinstance(pidfd, int) and pidfd >= 0:
            exc.pidfd = pidfd
        raise
    if unknown:
        kw["unknown_records"] = tuple(unknown)
    # Ownership follows the pidfd the event ends up holding: the kernel sends one
    # PIDFD record, and a stray second one must not leave OWN_PIDFD set on -1.
    pidfd = kw.get("pidfd", -1)
    if owned and isinstance(pidfd, int) and pidfd >= 0:
        owns |= OWN_PIDFD
    return _make(fd, pid, mask, owned, pid_is_tid, fd_error, owns, kw)


def _records(
    mv: memoryview, off: int, pos: int, end: int, meta: tuple[int, int, int],
    kw: dict[str, object], unknown: list[tuple[int, bytes]],
) -> None:
    """Decode the info records in ``mv[pos:end]`` into ``kw`` and ``unknown``."""
    while pos < end:
        if end - pos < INFO_HEADER.size:
            raise TruncatedEventError(
                f"{end - pos} stray bytes after the last info record", off, *meta
            )
        info_type, _pad, rlen = INFO_HEADER.unpack_from(mv, pos)
        if rlen < INFO_HEADER.size:
            raise ParseError(
                f"info record of type {info_type} has length {rlen}, below the header size",
                off,
                *meta,
            )
        if pos + rlen > end:
            raise TruncatedEventError(
                f"info record of type {info_type} ({rlen} bytes) runs past the event's end",
                off,
                *meta,
            )
        body = pos + INFO_HEADER.size
        rend = pos + rlen
        if info_type in _FID_TYPES:
            handle, name = _fid_record(mv, body, rend, info_type, off, meta)
            if info_type == FAN_EVENT_INFO_TYPE_FID:
                kw["fid"] = handle
            elif info_type == FAN_EVENT_INFO_TYPE_OLD_DFID_NAME:
                kw["old_dfid"] = handle
                kw["old_name"] = name
            elif info_type == FAN_EVENT_INFO_TYPE_NEW_DFID_NAME:
                kw["new_dfid"] = handle
                kw["new_name"] = name
            else:
                kw["dfid"] = handle
                if name is not None:
                    kw["name"] = name
        elif info_type == FAN_EVENT_INFO_TYPE_PIDFD:
            _need(rlen, 8, "pidfd", off, meta)
            (pidfd,) = _S32.unpack_from(mv, body)
            kw["pidfd"] = pidfd
        elif info_type == FAN_EVENT_INFO_TYPE_ERROR:
            _need(rlen, 12, "error", off, meta)
            kw["error"], kw["error_count"] = _ERROR.unpack_from(mv, body)
        elif info_type == FAN_EVENT_INFO_TYPE_RANGE:
            _need(rlen, 24, "range", off, meta)
            _, kw["range_offset"], kw["range_count"] = _RANGE.unpack_from(mv, body)
        elif info_type == FAN_EVENT_INFO_TYPE_MNT:
            _need(rlen, 16, "mount", off, meta)
            _, kw["mnt_id"] = _MNT.unpack_from(mv, body)
        else:
            # A record type newer than this library: keep it, skip by length.
            unknown.append((info_type, bytes(mv[body:rend])))
        pos = rend


def _need(rlen: int, size: int, what: str, off: int, meta: tuple[int, int, int]) -> None:
    if rlen < size:
        raise TruncatedEventError(
            f"{what} record is {rlen} bytes, shorter than the {size} it needs", off, *meta
        )


def _make(
    fd: int, pid: int, mask: int, owned: bool, pid_is_tid: bool, fd_error: bool, owns: int,
    kw: dict[str, object],
) -> FanotifyData:
    if fd >= 0:
        if owned:
            owns |= OWN_FD
            if mask & _PERM:
                owns |= UNANSWERED
    elif fd_error and fd != FAN_NOFD:
        kw["fd_error"] = -fd
        fd = FAN_NOFD
    return FanotifyData(fd, pid, mask, pid_is_tid=pid_is_tid, _owns=owns, **kw)  # type: ignore[arg-type]


def parse_event(
    mv: memoryview,
    off: int,
    *,
    owned: bool = False,
    pid_is_tid: bool = False,
    fd_error: bool = False,
    extra: dict[str, object] | None = None,
) -> tuple[FanotifyData | ParseError, int]:
    """Decode the one event that starts at ``mv[off]``.

    The per-event step of :func:`parse_lenient`, and the fallback of the C
    decoder (``afanotify/_fastparse.py``) for every event its builder leaves.

    :param extra: fields to build the event with besides those the buffer
        gives (the C decoder's resolved ``path`` and ``path_resolved``)
    :returns: the event, or the :class:`ParseError` that replaces it, and the
        offset of the next event: -1 when the rest of the buffer is abandoned
        (the event's length cannot be trusted)
    """
    total = len(mv)
    if total - off < _META_LEN:
        return TruncatedEventError(
            f"{total - off} bytes left, fewer than the {_META_LEN}-byte metadata; "
            "rest of buffer abandoned",
            off,
        ), -1
    event_len, vers, _res, meta_len, mask, fd, pid = METADATA.unpack_from(mv, off)
    if event_len < _META_LEN or event_len > total - off:
        return TruncatedEventError(
            f"event_len {event_len} is outside [{_META_LEN}, {total - off}]; "
            "rest of buffer abandoned",
            off, fd, pid, mask,
        ), -1  # fmt: skip
    nxt = off + event_len
    if vers != FANOTIFY_METADATA_VERSION:
        return MetadataVersionError(
            f"metadata version {vers}, expected {FANOTIFY_METADATA_VERSION}; "
            "this library is older or newer than the kernel's format",
            off, fd, pid, mask,
        ), nxt  # fmt: skip
    if meta_len < _META_LEN or meta_len > event_len:
        return ParseError(
            f"metadata_len {meta_len} is outside [{_META_LEN}, {event_len}]", off, fd, pid, mask
        ), nxt
    if event_len == meta_len:
        kw = {} if extra is None else dict(extra)
        return _make(fd, pid, mask, owned, pid_is_tid, fd_error, 0, kw), nxt
    try:
        ev = _parse_one(
            mv, off, event_len, meta_len, mask, fd, pid, owned, pid_is_tid, fd_error, extra
        )
    except ParseError as exc:
        # Drop the traceback: its frames hold ``mv``, an export that would
        # keep the caller's bytearray from being resized while the error
        # is kept (and would tie the buffer into a reference cycle).
        return exc.with_traceback(None), nxt
    return ev, nxt


def parse_lenient(
    buf: BufferLike,
    *,
    owned: bool = False,
    pid_is_tid: bool = False,
    fd_error: bool = False,
) -> tuple[list[FanotifyData], list[ParseError]]:
    """Decode every event in ``buf``; malformed events become errors, not exceptions.

    :param owned: the events own their fds and pidfds (True for buffers read
        from a real group; False for synthetic buffers, whose numbers are not
        ours to close)
    :param pid_is_tid: the group was made with FAN_REPORT_TID
    :param fd_error: the group was made with FAN_REPORT_FD_ERROR, so a
        negative ``fd`` other than FAN_NOFD is ``-errno``
    :returns: the good events in order, and one :class:`ParseError` per bad
        event.  After an error whose event length cannot be trusted, the rest
        of the buffer is abandoned (that error says so).
    """
    mv = memoryview(buf).cast("B")
    total = len(mv)
    events: list[FanotifyData] = []
    errors: list[ParseError] = []
    off = 0
    while 0 <= off < total:
        item, off = parse_event(mv, off, owned=owned, pid_is_tid=pid_is_tid, fd_error=fd_error)
        if isinstance(item, ParseError):
            errors.append(item)
        else:
            events.append(item)
    return events, errors


def parse(
    buf: BufferLike, *, owned: bool = False, pid_is_tid: bool = False, fd_error: bool = False
) -> list[FanotifyData]:
    """Decode every event in ``buf``, strictly.

    Meant for synthetic buffers and tests.  For a buffer read from a group,
    use :func:`parse_lenient`: here the first error discards the events
    decoded before it, and with ``owned=True`` their descriptors with them.

    :raises ParseError: for the first malformed event (a subclass of
        ``ValueError``: :class:`TruncatedEventError` or
        :class:`MetadataVersionError` where they apply)
    """
    events, errors = parse_lenient(buf, owned=owned, pid_is_tid=pid_is_tid, fd_error=fd_error)
    if errors:
        raise errors[0]
    return events


def encode_response(
    fd: int, response: int, audit_rule: tuple[int, int, int] | None = None
) -> bytes:
    """Bytes of a ``struct fanotify_response``, with an audit-rule record if given.

    :param audit_rule: ``(rule_number, subj_trust, obj_trust)``; sets FAN_INFO
    """
    if audit_rule is None:
        return RESPONSE.pack(fd, response)
    rule, subj, obj = audit_rule
    return RESPONSE.pack(fd, response | FAN_INFO) + AUDIT_RULE.pack(
        FAN_RESPONSE_INFO_AUDIT_RULE, 0, AUDIT_RULE.size, rule, subj, obj
    )
