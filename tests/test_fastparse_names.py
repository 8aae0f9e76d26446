"""Names and their NUL, at every length the C decoder and builder treat apart.

The C walk finds a name's NUL a word at a time and the builder copies an
ASCII name a word at a time (lengths below 4, 4 to 7, 8 and more, a word
boundary or not), falling back to the UTF-8 decoder for any other byte.
Each case is compared with the pure parser (afanotify/_parser.py), also
with a directory resolver (the FID batch path, where directory records are
numbered), and with the name at the very end of the buffer.
"""

from __future__ import annotations

import struct

import pytest

from afanotify._fastparse import Decoder
from afanotify._parser import METADATA, parse_lenient
from afanotify.events import FileHandle
from afanotify.flags import FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_FID, Event


def letters(n: int) -> bytes:
    return bytes(ord("a") + k % 26 for k in range(n))


NAMES = [letters(n) for n in range(26)] + [
    # a non-ASCII byte (a bad UTF-8 one, then a valid sequence) at each place
    letters(n)[:at] + bad + letters(n)[at:]
    for n in (0, 2, 3, 5, 7, 8, 9, 15, 16, 17)
    for at in sorted({0, n // 2, n})
    for bad in (b"\xff", "é".encode(), b"\x80\x01")
]


def fid_event(name: bytes, *, pad: bool = True) -> bytes:
    fsid = struct.pack("=II", 0x1234, 0x5678)
    handle = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    dfid = fsid + struct.pack("=Ii", len(handle), 1) + handle + name + b"\0"
    if pad:
        dfid += b"\0" * (-(len(dfid) + 4) % 4)
    dfid = struct.pack("=BBH", FAN_EVENT_INFO_TYPE_DFID_NAME, 0, len(dfid) + 4) + dfid
    fid = fsid + struct.pack("=Ii", len(handle), 1) + b"\x09" * len(handle)
    fid = struct.pack("=BBH", FAN_EVENT_INFO_TYPE_FID, 0, len(fid) + 4) + fid
    body = dfid + fid
    return METADATA.pack(24 + len(body), 3, 0, 24, int(Event.CREATE), -1, 42) + body


def unpadded(name: bytes) -> bytes:
    """The DFID_NAME record last, ending at its NUL: the buffer's last byte."""
    fsid = struct.pack("=II", 0x1234, 0x5678)
    handle = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    dfid = fsid + struct.pack("=Ii", len(handle), 1) + handle + name + b"\0"
    dfid = struct.pack("=BBH", FAN_EVENT_INFO_TYPE_DFID_NAME, 0, len(dfid) + 4) + dfid
    return METADATA.pack(24 + len(dfid), 3, 0, 24, int(Event.CREATE), -1, 42) + dfid


@pytest.mark.parametrize("name", NAMES, ids=lambda n: n.hex() or "empty")
def test_names_agree_with_the_parser(name: bytes) -> None:
    for buf in (fid_event(name), unpadded(name), fid_event(name) * 3):
        ref, ref_err = parse_lenient(buf)
        got, err = Decoder().decode(buf, len(buf))
        assert [e.name for e in got] == [e.name for e in ref]
        assert got == ref and not err and not ref_err


@pytest.mark.parametrize("name", NAMES, ids=lambda n: n.hex() or "empty")
def test_names_with_a_directory_resolver(name: bytes) -> None:
    buf = fid_event(name) + fid_event(b"x" + name)

    def dir_path(h: FileHandle) -> str:
        return "/d"

    got, err = Decoder().decode(buf, len(buf), dir_path=dir_path)
    ref, _ = parse_lenient(buf)
    assert not err
    assert [e.name for e in got] == [e.name for e in ref]
    assert [e.path for e in got] == [f"/d/{e.name}" if e.name else "/d" for e in ref]
    assert all(e.path_resolved for e in got)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16])
def test_a_name_without_its_nul_is_an_error(n: int) -> None:
    fsid = struct.pack("=II", 1, 2)
    handle = b"\x01" * 8
    body = fsid + struct.pack("=Ii", len(handle), 1) + handle + b"n" * n
    dfid = struct.pack("=BBH", FAN_EVENT_INFO_TYPE_DFID_NAME, 0, len(body) + 4) + body
    buf = METADATA.pack(24 + len(dfid), 3, 0, 24, int(Event.CREATE), -1, 42) + dfid
    ref, ref_err = parse_lenient(buf)
    got, err = Decoder().decode(buf, len(buf))
    assert not got and not ref
    assert [str(e) for e in err] == [str(e) for e in ref_err]
    assert len(err) == 1
