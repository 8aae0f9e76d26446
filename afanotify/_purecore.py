"""The pure-Python core: what ``afanotify._fanotify`` provides, without a compiler.

An install that could not compile the C core (no compiler, no Python headers)
runs on this module instead.  It calls the C library through cffi's ABI mode
(``ffi.dlopen``, nothing compiled), so :mod:`afanotify._ffi` keeps one set of
wrappers for both cores, and the batch decoding falls to the pure parser
(:mod:`afanotify._parser`).  Everything works; decoding is slower.

The constants are the kernel's uapi values (``include/uapi/linux/fanotify.h``,
``fcntl.h``) and glibc's ``fnmatch.h``: a build has no headers to take them
from at run time.  ``tests/test_purecore.py`` holds every one of them, and every
struct size, to the compiled core's, which takes them from the headers.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Any

import cffi

__all__ = ["ffi", "lib"]

# The values, in build_ffi.CONSTANTS' order.  The kernel never changes a
# published value, so these hold for every kernel that knows the name.
CONSTANTS: dict[str, int] = {
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
    "FAN_CLOSE": 0x18,
    "FAN_MOVE": 0xC0,
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
    "FAN_REPORT_DFID_NAME_TARGET": 0x1E00,
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
    "FAN_MARK_IGNORE_SURV": 0x440,
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
    "FAN_ALLOW": 0x1,
    "FAN_DENY": 0x2,
    "FAN_AUDIT": 0x10,
    "FAN_INFO": 0x20,
    "FAN_RESPONSE_INFO_NONE": 0,
    "FAN_RESPONSE_INFO_AUDIT_RULE": 1,
    "FAN_ERRNO_BITS": 8,
    "FAN_ERRNO_SHIFT": 24,
    "FAN_ERRNO_MASK": 0xFF,
    # glibc's value; musl's fnmatch has no extended patterns and ignores it.
    "FNM_EXTMATCH": 1 << 5,
    "FNM_NOMATCH": 1,
    "MAX_HANDLE_SZ": 128,
    "AT_FDCWD": -100,
    "AT_EMPTY_PATH": 0x1000,
    "AT_SYMLINK_FOLLOW": 0x400,
    "AT_HANDLE_FID": 0x200,
    "FAN_NOFD": -1,
    "FAN_NOPIDFD": -1,
    "FAN_EPIDFD": -2,
}

# The uapi structs, laid out explicitly (ABI mode has no compiler to ask), and
# the C library's functions.  ``struct afn_statfs`` is ``struct statfs64`` up
# to f_fsid: two ``long``-sized words, then five 64-bit counters, on every
# glibc and musl ABI whose ``__fsword_t`` is ``long`` (all but s390x and x32).
_CDEF = """
struct fanotify_event_metadata {
    uint32_t event_len; uint8_t vers; uint8_t reserved; uint16_t metadata_len;
    uint64_t mask; int32_t fd; int32_t pid;
};
struct fanotify_event_info_header { uint8_t info_type; uint8_t pad; uint16_t len; };
struct fanotify_event_info_fid { struct fanotify_event_info_header hdr; int32_t fsid[2]; };
struct fanotify_event_info_pidfd { struct fanotify_event_info_header hdr; int32_t pidfd; };
struct fanotify_event_info_error {
    struct fanotify_event_info_header hdr; int32_t error; uint32_t error_count;
};
struct fanotify_event_info_range {
    struct fanotify_event_info_header hdr; uint32_t pad; uint64_t offset; uint64_t count;
};
struct fanotify_event_info_mnt { struct fanotify_event_info_header hdr; uint64_t mnt_id; };
struct fanotify_response { int32_t fd; uint32_t response; };
struct afn_file_handle { unsigned int handle_bytes; int handle_type; unsigned char f_handle[128]; };
struct afn_statfs {
    long f_type; long f_bsize;
    uint64_t f_blocks; uint64_t f_bfree; uint64_t f_bavail; uint64_t f_files; uint64_t f_ffree;
    uint32_t f_fsid[2];
    long f_spare[16];
};

int fanotify_init(unsigned int flags, unsigned int event_f_flags);
int fanotify_mark(int fanotify_fd, unsigned int flags, uint64_t mask, int dirfd,
                  const char *pathname);
int fnmatch(const char *pattern, const char *string, int flags);
int name_to_handle_at(int dirfd, const char *path, struct afn_file_handle *handle,
                      int *mount_id, int flags);
int open_by_handle_at(int mount_fd, struct afn_file_handle *handle, int flags);
int fstatfs64(int fd, struct afn_statfs *buf);
int fstatfs(int fd, struct afn_statfs *buf);
"""

_RESPONSE = struct.Struct("=iI")
# struct fanotify_response, then struct fanotify_response_info_audit_rule
# (a u8 type, u8 pad, u16 len header and three u32), packed.
_AUDIT = struct.Struct("=iIBBHIII")

ffi = cffi.FFI()
ffi.cdef(_CDEF)
_libc: Any = ffi.dlopen(None)


class _Lib:
    """``lib`` of the pure core: the constants, the C library's calls, and
    Python versions of the compiled core's small helpers (each returns -1 and
    sets ``ffi.errno`` on failure, as the C ones do)."""

    def __init__(self) -> None:
        for name, value in CONSTANTS.items():
            setattr(self, name, value)
        self.fanotify_init = _libc.fanotify_init
        self.fanotify_mark = _libc.fanotify_mark
        self.fnmatch = _libc.fnmatch
        self._fstatfs = _statfs_call()

    def __getattr__(self, name: str) -> Any:
        # Only names that are neither constants nor calls get here.
        raise AttributeError(f"the pure core has no {name!r} (it needs the compiled core)")

    @staticmethod
    def _write(fanotify_fd: int, data: bytes) -> int:
        try:
            # One write(2): the kernel reads the whole response or fails.
            # os.write retries EINTR itself (PEP 475).
            return os.write(fanotify_fd, data)
        except OSError as exc:
            ffi.errno = exc.errno or 0
            return -1

    def afn_respond(self, fanotify_fd: int, fd: int, response: int) -> int:
        return self._write(fanotify_fd, _RESPONSE.pack(fd, response))

    def afn_respond_audit(
        self, fanotify_fd: int, fd: int, response: int, rule_number: int, subj_trust: int,
        obj_trust: int,
    ) -> int:
        msg = _AUDIT.pack(
            fd, response | CONSTANTS["FAN_INFO"], CONSTANTS["FAN_RESPONSE_INFO_AUDIT_RULE"], 0,
            16, rule_number, subj_trust, obj_trust,
        )  # fmt: skip
        return self._write(fanotify_fd, msg)

    def afn_open_by_handle(
        self, mount_fd: int, handle: bytes, handle_bytes: int, handle_type: int, flags: int
    ) -> int:
        if handle_bytes > CONSTANTS["MAX_HANDLE_SZ"]:
            ffi.errno = errno.EINVAL  # as the C helper sets it
            return -1
        fh = ffi.new("struct afn_file_handle *")
        fh.handle_bytes = handle_bytes
        fh.handle_type = handle_type
        ffi.memmove(fh.f_handle, handle, handle_bytes)
        return int(_libc.open_by_handle_at(mount_fd, fh, flags))

    def afn_name_to_handle(
        self, dirfd: int, path: bytes, buf: Any, handle_bytes: Any, handle_type: Any,
        mount_id: Any, flags: int,
    ) -> int:
        fh = ffi.new("struct afn_file_handle *")
        fh.handle_bytes = CONSTANTS["MAX_HANDLE_SZ"]
        if _libc.name_to_handle_at(dirfd, path, fh, mount_id, flags) < 0:
            return -1
        handle_bytes[0] = fh.handle_bytes
        handle_type[0] = fh.handle_type
        ffi.memmove(buf, fh.f_handle, fh.handle_bytes)
        return 0

    def afn_fsid(self, fd: int, out: Any) -> int:
        st = ffi.new("struct afn_statfs *")
        if self._fstatfs(fd, st) < 0:
            return -1
        out[0] = st.f_fsid[0]
        out[1] = st.f_fsid[1]
        return 0

    def afn_sizeof_fsid(self) -> int:
        return 8

    def afn_offsetof_fid_handle(self) -> int:
        return int(ffi.sizeof("struct fanotify_event_info_fid"))


def _statfs_call() -> Any:
    for name in ("fstatfs64", "fstatfs"):
        try:
            return getattr(_libc, name)
        except AttributeError:
            continue
    raise ImportError("the C library has neither fstatfs64 nor fstatfs")


lib = _Lib()
