"""Build fanotify event buffers by hand, byte for byte, for the parser's tests.

The layouts are written out here from the kernel's uapi header rather than
taken from ``afanotify._parser``, so a mistake in the parser's structs cannot
hide behind the same mistake in its tests.  Every builder takes overrides for
the length fields, so malformed buffers are as easy to make as good ones.
"""

from __future__ import annotations

import struct

__all__ = [
    "VERSION",
    "META_LEN",
    "FID",
    "DFID_NAME",
    "DFID",
    "PIDFD",
    "ERROR",
    "RANGE",
    "MNT",
    "OLD_DFID_NAME",
    "NEW_DFID_NAME",
    "metadata",
    "record",
    "fid",
    "dfid",
    "dfid_name",
    "old_dfid_name",
    "new_dfid_name",
    "pidfd",
    "error",
    "range_",
    "mnt",
    "event",
]

# Values from include/uapi/linux/fanotify.h (see docs' kernel-fanotify reference).
VERSION = 3
META_LEN = 24
FID = 1
DFID_NAME = 2
DFID = 3
PIDFD = 4
ERROR = 5
RANGE = 6
MNT = 7
OLD_DFID_NAME = 10
NEW_DFID_NAME = 12

_ALIGN = 4  # FANOTIFY_EVENT_ALIGN: the kernel pads file-handle records to 4 bytes


def metadata(
    event_len: int,
    mask: int,
    fd: int = -1,
    pid: int = 0,
    *,
    vers: int = VERSION,
    reserved: int = 0,
    metadata_len: int = META_LEN,
) -> bytes:
    """``struct fanotify_event_metadata``: u32 event_len, u8 vers, u8 reserved,
    u16 metadata_len, u64 mask, s32 fd, s32 pid."""
    return struct.pack("=IBBHQii", event_len, vers, reserved, metadata_len, mask, fd, pid)


def record(info_type: int, body: bytes, *, length: int | None = None, pad: int = 0) -> bytes:
    """An info record: ``{u8 info_type; u8 pad; u16 len}`` then ``body``.

    ``length`` overrides the header's ``len`` (the bytes written stay ``body``).
    """
    rlen = 4 + len(body) if length is None else length
    return struct.pack("=BBH", info_type, pad, rlen) + body


def _fid_body(
    fsid: tuple[int, int],
    handle: bytes,
    handle_type: int,
    handle_bytes: int | None,
    name: bytes | None,
    nul: bool,
    align: bool,
) -> bytes:
    nbytes = len(handle) if handle_bytes is None else handle_bytes
    body = struct.pack("=IIIi", fsid[0], fsid[1], nbytes, handle_type) + handle
    if name is not None:
        body += name + (b"\0" if nul else b"")
    if align:
        body += b"\0" * (-(4 + len(body)) % _ALIGN)
    return body


def fid(
    handle: bytes = b"\x01\x02\x03\x04\x05\x06\x07\x08",
    *,
    fsid: tuple[int, int] = (0x1234, 0x5678),
    handle_type: int = 1,
    handle_bytes: int | None = None,
    info_type: int = FID,
    length: int | None = None,
) -> bytes:
    """A FID record: fsid, ``struct file_handle`` (handle_bytes, handle_type, f_handle)."""
    body = _fid_body(fsid, handle, handle_type, handle_bytes, None, True, True)
    return record(info_type, body, length=length)


def dfid(
    handle: bytes = b"\xd0\xd1\xd2\xd3\xd4\xd5\xd6\xd7",
    *,
    fsid: tuple[int, int] = (0x1234, 0x5678),
    handle_type: int = 1,
) -> bytes:
    """A DFID record (same layout as FID)."""
    return fid(handle, fsid=fsid, handle_type=handle_type, info_type=DFID)


def dfid_name(
    name: bytes,
    handle: bytes = b"\xd0\xd1\xd2\xd3\xd4\xd5\xd6\xd7",
    *,
    fsid: tuple[int, int] = (0x1234, 0x5678),
    handle_type: int = 1,
    handle_bytes: int | None = None,
    info_type: int = DFID_NAME,
    nul: bool = True,
    align: bool = True,
    length: int | None = None,
) -> bytes:
    """A DFID_NAME-like record: as FID, then the name, NUL-terminated unless ``nul=False``."""
    body = _fid_body(fsid, handle, handle_type, handle_bytes, name, nul, align)
    return record(info_type, body, length=length)


def old_dfid_name(name: bytes, handle: bytes = b"\x0a" * 8, **kw: object) -> bytes:
    """The source of a rename (FAN_RENAME)."""
    return dfid_name(name, handle, info_type=OLD_DFID_NAME, **kw)  # type: ignore[arg-type]


def new_dfid_name(name: bytes, handle: bytes = b"\x0c" * 8, **kw: object) -> bytes:
    """The target of a rename (FAN_RENAME)."""
    return dfid_name(name, handle, info_type=NEW_DFID_NAME, **kw)  # type: ignore[arg-type]


def pidfd(fd: int, *, length: int | None = None) -> bytes:
    """A PIDFD record: ``s32 pidfd``."""
    return record(PIDFD, struct.pack("=i", fd), length=length)


def error(err: int, count: int, *, length: int | None = None) -> bytes:
    """An ERROR record: ``s32 error; u32 error_count``."""
    return record(ERROR, struct.pack("=iI", err, count), length=length)


def range_(offset: int, count: int, *, length: int | None = None) -> bytes:
    """A RANGE record: ``u32 pad; u64 offset; u64 count``."""
    return record(RANGE, struct.pack("=IQQ", 0, offset, count), length=length)


def mnt(mnt_id: int, *, length: int | None = None) -> bytes:
    """A MNT record: ``u64 mnt_id`` at offset 8 (4 bytes of padding after the header)."""
    return record(MNT, struct.pack("=IQ", 0, mnt_id), length=length)


def event(
    mask: int,
    *records: bytes,
    fd: int = -1,
    pid: int = 0,
    vers: int = VERSION,
    event_len: int | None = None,
    metadata_len: int = META_LEN,
    extra: bytes = b"",
    meta_extra: bytes = b"",
) -> bytes:
    """One event: metadata, ``meta_extra``, then ``records``, then ``extra`` raw bytes.

    ``event_len`` defaults to the bytes actually written; override it to lie.
    ``meta_extra`` stands for a longer metadata struct (with ``metadata_len``).
    """
    tail = meta_extra + b"".join(records) + extra
    elen = META_LEN + len(tail) if event_len is None else event_len
    return metadata(elen, mask, fd, pid, vers=vers, metadata_len=metadata_len) + tail
