"""The pure-Python core (afanotify._purecore) against the compiled one.

The pure core cannot read the C headers, so its constants and struct layouts
are written out; here every one is compared with the compiled core's, which
takes them from the headers.  Its helpers are compared call for call.
"""

from __future__ import annotations

import errno
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from helpers import REPO

from afanotify import _fanotify, _purecore


def _build_script() -> ModuleType:
    """build_ffi.py, from the checkout (the repository root is not on sys.path)."""
    spec = importlib.util.spec_from_file_location("build_ffi", REPO / "build_ffi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_ffi = _build_script()

C = _fanotify.lib
P = _purecore.lib


@pytest.mark.parametrize("name", [*build_ffi.CONSTANTS, *build_ffi.SIGNED_CONSTANTS])
def test_constant_matches_the_headers(name: str) -> None:
    assert getattr(P, name) == getattr(C, name)


def test_every_compiled_constant_is_in_the_pure_core() -> None:
    assert set(_purecore.CONSTANTS) == {*build_ffi.CONSTANTS, *build_ffi.SIGNED_CONSTANTS}


@pytest.mark.parametrize(
    "struct",
    [
        "struct fanotify_event_metadata",
        "struct fanotify_event_info_header",
        "struct fanotify_event_info_fid",
        "struct fanotify_event_info_pidfd",
        "struct fanotify_event_info_error",
        "struct fanotify_event_info_range",
        "struct fanotify_event_info_mnt",
        "struct fanotify_response",
    ],
)
def test_struct_size_matches_the_headers(struct: str) -> None:
    assert _purecore.ffi.sizeof(struct) == _fanotify.ffi.sizeof(struct)


def test_fid_layout_helpers() -> None:
    assert P.afn_sizeof_fsid() == C.afn_sizeof_fsid()
    assert P.afn_offsetof_fid_handle() == C.afn_offsetof_fid_handle()


def test_the_decoder_is_not_in_the_pure_core() -> None:
    with pytest.raises(AttributeError, match="needs the compiled core"):
        P.afn_decode  # noqa: B018


def _fsid(lib: object, ffi: object, fd: int) -> tuple[int, int, int]:
    out = ffi.new("uint32_t[2]")  # type: ignore[attr-defined]
    rc = lib.afn_fsid(fd, out)  # type: ignore[attr-defined]
    return rc, int(out[0]), int(out[1])


def test_fsid_and_handles_agree_with_the_compiled_core(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _fsid(P, _purecore.ffi, fd) == _fsid(C, _fanotify.ffi, fd)
        results = []
        for lib, ffi in ((P, _purecore.ffi), (C, _fanotify.ffi)):
            buf = ffi.new("unsigned char[]", 128)
            nbytes, htype, mnt = ffi.new("uint32_t *"), ffi.new("int32_t *"), ffi.new("int *")
            rc = lib.afn_name_to_handle(fd, b"f", buf, nbytes, htype, mnt, 0)
            results.append((rc, bytes(ffi.buffer(buf, nbytes[0])), htype[0], mnt[0]))
        assert results[0] == results[1] and results[0][0] == 0
        _, handle, htype_v, _ = results[0]
        if os.geteuid() == 0:  # open_by_handle_at needs CAP_DAC_READ_SEARCH
            got = P.afn_open_by_handle(fd, handle, len(handle), htype_v, os.O_RDONLY)
            assert got >= 0
            try:
                assert os.read(got, 1) == b"x"
            finally:
                os.close(got)
    finally:
        os.close(fd)


def test_errors_set_errno_as_the_c_helpers_do() -> None:
    r, w = os.pipe()
    os.close(w)
    try:
        # A response written to a read-only pipe end: EBADF, -1, errno set.
        assert P.afn_respond(r, 3, C.FAN_ALLOW) == -1
        assert _purecore.ffi.errno == errno.EBADF
        assert P.afn_open_by_handle(r, b"x" * 129, 129, 1, 0) == -1
        assert _purecore.ffi.errno == errno.EINVAL
    finally:
        os.close(r)


def test_response_bytes_are_the_kernels_structs() -> None:
    r, w = os.pipe()
    try:
        assert P.afn_respond(w, 7, C.FAN_DENY) == 8
        assert os.read(r, 64) == (7).to_bytes(4, "little") + C.FAN_DENY.to_bytes(4, "little")
        assert P.afn_respond_audit(w, 7, C.FAN_ALLOW | C.FAN_AUDIT, 42, 1, 2) == 24
        got = os.read(r, 64)
        assert got[:8] == (7).to_bytes(4, "little") + (
            C.FAN_ALLOW | C.FAN_AUDIT | C.FAN_INFO
        ).to_bytes(4, "little")
        assert got[8:12] == bytes([C.FAN_RESPONSE_INFO_AUDIT_RULE, 0, 16, 0])
        assert [int.from_bytes(got[i : i + 4], "little") for i in (12, 16, 20)] == [42, 1, 2]
    finally:
        os.close(r)
        os.close(w)


def test_fnmatch_extended_patterns() -> None:
    flags = P.FNM_EXTMATCH
    assert P.fnmatch(b"*.+(py|txt)", b"a.py", flags) == 0
    assert P.fnmatch(b"*.+(py|txt)", b"a.c", flags) == P.FNM_NOMATCH
