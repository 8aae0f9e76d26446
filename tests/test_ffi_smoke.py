"""The compiled core and the pure parser agree: struct layouts, constants, wire bytes.

C's view comes from ``afanotify._fanotify`` (``ffi.sizeof``/``ffi.offsetof`` and
two helpers compiled from the real headers); Python's from the parser's
``struct.Struct`` formats.  Constant values are checked against the table in
the project's kernel reference (docs: kernel-fanotify.md), written out below.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import struct
from pathlib import Path
from types import ModuleType

import pytest

from afanotify import _parser, flags
from afanotify._ffi import ffi, lib  # the compiled core's ffi and lib, re-exported

# -- struct layouts ----------------------------------------------------------


def _field_offsets(st: struct.Struct) -> list[int]:
    """Offsets of each field of a ``=``-prefixed (packed, native order) format."""
    fmt = st.format
    assert fmt[0] == "=", fmt
    codes = fmt[1:]
    return [struct.calcsize("=" + codes[:i]) for i in range(len(codes))]


HDR = _parser.INFO_HEADER.size


def test_metadata_layout() -> None:
    c = "struct fanotify_event_metadata"
    assert _parser.METADATA.size == ffi.sizeof(c) == lib.FAN_EVENT_METADATA_LEN == 24
    names = ["event_len", "vers", "reserved", "metadata_len", "mask", "fd", "pid"]
    assert _field_offsets(_parser.METADATA) == [ffi.offsetof(c, n) for n in names]
    sizes = [ffi.sizeof(field.type) for _name, field in ffi.typeof(c).fields]
    assert sizes == [4, 1, 1, 2, 8, 4, 4]


def test_info_header_layout() -> None:
    c = "struct fanotify_event_info_header"
    assert HDR == ffi.sizeof(c) == 4
    assert _field_offsets(_parser.INFO_HEADER) == [
        ffi.offsetof(c, n) for n in ("info_type", "pad", "len")
    ]


def test_fid_record_layout() -> None:
    # struct fanotify_event_info_fid { hdr; __kernel_fsid_t fsid; unsigned char handle[]; }
    # where handle holds a struct file_handle { u32 handle_bytes; s32 handle_type; ... }.
    assert lib.afn_sizeof_fsid() == 8
    assert lib.afn_offsetof_fid_handle() == HDR + lib.afn_sizeof_fsid() == 12
    assert ffi.sizeof("struct fanotify_event_info_fid") == lib.afn_offsetof_fid_handle()
    assert _parser._FID.size == lib.afn_sizeof_fsid() + 4 + 4
    assert _field_offsets(_parser._FID) == [0, 4, 8, 12]


@pytest.mark.parametrize(
    ("c_struct", "py_struct", "fields"),
    [
        pytest.param("struct fanotify_event_info_pidfd", _parser._S32, ["pidfd"], id="pidfd"),
        pytest.param(
            "struct fanotify_event_info_error", _parser._ERROR, ["error", "error_count"], id="error"
        ),
        pytest.param(
            "struct fanotify_event_info_range",
            _parser._RANGE,
            ["pad", "offset", "count"],
            id="range",
        ),
        # The parser reads MNT's 4 alignment bytes as an explicit pad field.
        pytest.param("struct fanotify_event_info_mnt", _parser._MNT, [None, "mnt_id"], id="mnt"),
    ],
)
def test_record_layouts(c_struct: str, py_struct: struct.Struct, fields: list[str | None]) -> None:
    assert ffi.sizeof(c_struct) == HDR + py_struct.size
    assert ffi.offsetof(c_struct, "hdr") == 0
    for name, off in zip(fields, _field_offsets(py_struct), strict=True):
        if name is not None:
            assert ffi.offsetof(c_struct, name) == HDR + off, name


def test_record_sizes_the_parser_demands() -> None:
    # _parse_one rejects a record shorter than these; they must be the C sizes.
    assert ffi.sizeof("struct fanotify_event_info_pidfd") == 8
    assert ffi.sizeof("struct fanotify_event_info_error") == 12
    assert ffi.sizeof("struct fanotify_event_info_range") == 24
    assert ffi.sizeof("struct fanotify_event_info_mnt") == 16
    assert ffi.offsetof("struct fanotify_event_info_mnt", "mnt_id") == 8


def test_response_layout() -> None:
    c = "struct fanotify_response"
    assert _parser.RESPONSE.size == ffi.sizeof(c) == 8
    assert _field_offsets(_parser.RESPONSE) == [ffi.offsetof(c, n) for n in ("fd", "response")]


def test_audit_rule_layout() -> None:
    c = "struct fanotify_response_info_audit_rule"
    assert _parser.AUDIT_RULE.size == ffi.sizeof(c) == 16
    assert ffi.sizeof("struct fanotify_response_info_header") == 4
    h = "struct fanotify_response_info_header"
    assert _field_offsets(_parser.AUDIT_RULE) == [
        ffi.offsetof(h, "type"),
        ffi.offsetof(h, "pad"),
        ffi.offsetof(h, "len"),
        ffi.offsetof(c, "rule_number"),
        ffi.offsetof(c, "subj_trust"),
        ffi.offsetof(c, "obj_trust"),
    ]


# -- wire bytes: C's response writers and encode_response() agree -------------


def _written_by(call: object, *args: int) -> bytes:
    """What a C response writer writes, captured through a pipe."""
    r, w = os.pipe()
    try:
        n = call(w, *args)  # type: ignore[operator]
        assert n > 0
        return os.read(r, 4096)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    ("fd", "response"),
    [(7, flags.FAN_ALLOW), (12, flags.FAN_DENY), (2**31 - 1, flags.deny_errno(5)), (-1, 0x11)],
)
def test_respond_bytes_match(fd: int, response: int) -> None:
    got = _written_by(lib.afn_respond, fd, response)
    assert got == _parser.encode_response(fd, response)


@pytest.mark.parametrize(
    ("fd", "response", "rule"),
    [(7, flags.FAN_ALLOW, (1, 2, 3)), (9, flags.FAN_DENY | flags.FAN_AUDIT, (2**32 - 1, 0, 7))],
)
def test_respond_audit_bytes_match(fd: int, response: int, rule: tuple[int, int, int]) -> None:
    got = _written_by(lib.afn_respond_audit, fd, response, *rule)
    assert got == _parser.encode_response(fd, response, rule)
    assert len(got) == ffi.sizeof("struct fanotify_response") + ffi.sizeof(
        "struct fanotify_response_info_audit_rule"
    )


# -- constants ---------------------------------------------------------------

# Written out from the tables in kernel-fanotify.md (the project's reference).
# "derived" marks a composite the reference defines in words, not as a number.
REFERENCE: dict[str, int] = {
    # event bits
    "FAN_ACCESS": 0x1,
    "FAN_MODIFY": 0x2,
    "FAN_ATTRIB": 0x4,
    "FAN_CLOSE_WRITE": 0x8,
    "FAN_CLOSE_NOWRITE": 0x10,
    "FAN_OPEN": 0x20,
    "FAN_MOVED_FROM": 0x40,
    "FAN_MOVED_TO": 0x80,
    "FAN_CREATE": 0x100,
    "FAN_DELETE": 0x200,
    "FAN_DELETE_SELF": 0x400,
    "FAN_MOVE_SELF": 0x800,
    "FAN_OPEN_EXEC": 0x1000,
    "FAN_Q_OVERFLOW": 0x4000,
    "FAN_FS_ERROR": 0x8000,
    "FAN_OPEN_PERM": 0x10000,
    "FAN_ACCESS_PERM": 0x20000,
    "FAN_OPEN_EXEC_PERM": 0x40000,
    "FAN_PRE_ACCESS": 0x100000,
    "FAN_MNT_ATTACH": 0x1000000,
    "FAN_MNT_DETACH": 0x2000000,
    "FAN_EVENT_ON_CHILD": 0x8000000,
    "FAN_RENAME": 0x10000000,
    "FAN_ONDIR": 0x40000000,
    "FAN_CLOSE": 0x8 | 0x10,  # derived: CLOSE_WRITE | CLOSE_NOWRITE
    "FAN_MOVE": 0x40 | 0x80,  # derived: MOVED_FROM | MOVED_TO
    # fanotify_init flags
    "FAN_CLOEXEC": 0x1,
    "FAN_NONBLOCK": 0x2,
    "FAN_CLASS_NOTIF": 0x0,
    "FAN_CLASS_CONTENT": 0x4,
    "FAN_CLASS_PRE_CONTENT": 0x8,
    "FAN_UNLIMITED_QUEUE": 0x10,
    "FAN_UNLIMITED_MARKS": 0x20,
    "FAN_ENABLE_AUDIT": 0x40,
    "FAN_REPORT_PIDFD": 0x80,
    "FAN_REPORT_TID": 0x100,
    "FAN_REPORT_FID": 0x200,
    "FAN_REPORT_DIR_FID": 0x400,
    "FAN_REPORT_NAME": 0x800,
    "FAN_REPORT_TARGET_FID": 0x1000,
    "FAN_REPORT_FD_ERROR": 0x2000,
    "FAN_REPORT_MNT": 0x4000,
    "FAN_REPORT_DFID_NAME": 0xC00,
    "FAN_REPORT_DFID_NAME_TARGET": 0xC00 | 0x200 | 0x1000,  # derived: DFID_NAME|FID|TARGET_FID
    # fanotify_mark flags
    "FAN_MARK_ADD": 0x1,
    "FAN_MARK_REMOVE": 0x2,
    "FAN_MARK_DONT_FOLLOW": 0x4,
    "FAN_MARK_ONLYDIR": 0x8,
    "FAN_MARK_IGNORED_MASK": 0x20,
    "FAN_MARK_IGNORED_SURV_MODIFY": 0x40,
    "FAN_MARK_FLUSH": 0x80,
    "FAN_MARK_EVICTABLE": 0x200,
    "FAN_MARK_IGNORE": 0x400,
    "FAN_MARK_INODE": 0x0,
    "FAN_MARK_MOUNT": 0x10,
    "FAN_MARK_FILESYSTEM": 0x100,
    "FAN_MARK_MNTNS": 0x110,
    "FAN_MARK_IGNORE_SURV": 0x400 | 0x40,  # derived: IGNORE | IGNORED_SURV_MODIFY
    # the event stream
    "FANOTIFY_METADATA_VERSION": 3,
    "FAN_EVENT_METADATA_LEN": 24,
    "FAN_EVENT_INFO_TYPE_FID": 1,
    "FAN_EVENT_INFO_TYPE_DFID_NAME": 2,
    "FAN_EVENT_INFO_TYPE_DFID": 3,
    "FAN_EVENT_INFO_TYPE_PIDFD": 4,
    "FAN_EVENT_INFO_TYPE_ERROR": 5,
    "FAN_EVENT_INFO_TYPE_RANGE": 6,
    "FAN_EVENT_INFO_TYPE_MNT": 7,
    "FAN_EVENT_INFO_TYPE_OLD_DFID_NAME": 10,
    "FAN_EVENT_INFO_TYPE_NEW_DFID_NAME": 12,
    # responses
    "FAN_ALLOW": 0x1,
    "FAN_DENY": 0x2,
    "FAN_AUDIT": 0x10,
    "FAN_INFO": 0x20,
    "FAN_RESPONSE_INFO_NONE": 0,  # the uapi header's "no info" type; audit rule is 1
    "FAN_RESPONSE_INFO_AUDIT_RULE": 1,
    "FAN_ERRNO_BITS": 8,  # derived: FAN_DENY_ERRNO(e) = FAN_DENY | ((e & 0xff) << 24)
    "FAN_ERRNO_SHIFT": 24,
    "FAN_ERRNO_MASK": 0xFF,
    # signed
    "FAN_NOFD": -1,
    "FAN_NOPIDFD": -1,
    "FAN_EPIDFD": -2,
}

# Not fanotify constants (not in the reference, not re-exported by flags): the
# build uses them for handles and fnmatch.  Values from Linux / glibc headers.
NON_FANOTIFY: dict[str, int] = {
    "FNM_EXTMATCH": 1 << 5,
    "FNM_NOMATCH": 1,
    "MAX_HANDLE_SZ": 128,
    "AT_FDCWD": -100,
    "AT_EMPTY_PATH": 0x1000,
    "AT_SYMLINK_FOLLOW": 0x400,
    "AT_HANDLE_FID": 0x200,
}


def _load_build_script() -> ModuleType:
    """build_ffi.py lives at the repository root, which is not on sys.path under pytest."""
    path = Path(__file__).resolve().parent.parent / "build_ffi.py"
    spec = importlib.util.spec_from_file_location("build_ffi", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_ffi = _load_build_script()

BUILD_NAMES = [*build_ffi.CONSTANTS, *build_ffi.SIGNED_CONSTANTS]


def test_every_build_constant_is_in_a_table() -> None:
    assert len(BUILD_NAMES) == len(set(BUILD_NAMES))
    assert set(BUILD_NAMES) == set(REFERENCE) | set(NON_FANOTIFY)
    assert not set(REFERENCE) & set(NON_FANOTIFY)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_fanotify_constant(name: str) -> None:
    assert getattr(lib, name) == REFERENCE[name]
    value = getattr(flags, name)
    assert type(value) is int
    assert value == REFERENCE[name]


@pytest.mark.parametrize("name", sorted(NON_FANOTIFY))
def test_non_fanotify_constant(name: str) -> None:
    assert getattr(lib, name) == NON_FANOTIFY[name]


# -- the typed boundary ----------------------------------------------------------


def _stub_lib_names() -> tuple[set[str], set[str]]:
    """The constants and the functions that afanotify/_fanotify.pyi declares on ``lib``."""
    stub = Path(__file__).resolve().parent.parent / "afanotify" / "_fanotify.pyi"
    tree = ast.parse(stub.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Lib"]
    consts = {
        n.target.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    funcs = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    declared = {
        ast.unparse(n.target): ast.unparse(n.annotation)
        for n in tree.body
        if isinstance(n, ast.AnnAssign)
    }
    assert declared["lib"] == "_Lib"
    return consts, funcs


def test_stub_declares_exactly_what_lib_has() -> None:
    consts, funcs = _stub_lib_names()
    assert not consts & funcs
    compiled = set(dir(lib))
    assert consts | funcs == compiled, (
        f"only in the stub: {sorted((consts | funcs) - compiled)}, "
        f"only in the compiled lib: {sorted(compiled - consts - funcs)}"
    )
    # What the stub calls a constant is an int, what it calls a function is callable.
    assert all(type(getattr(lib, name)) is int for name in consts)
    assert all(callable(getattr(lib, name)) for name in funcs)
