"""cffi build script (out-of-line API mode) for ``afanotify._fanotify``.

Every constant is declared as ``#define NAME ...`` so that its value is taken
from the C headers at build time.  Constants added to the kernel after the
build machine's headers (linux-libc-dev 6.1 here) are defined in ``_PRELUDE``
behind ``#ifndef`` guards, so newer headers win when they exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

# Constants in the order of the kernel's uapi header.  Each becomes
# ``lib.NAME`` and is re-exported by afanotify.flags.
CONSTANTS = (
    # events
    "FAN_ACCESS FAN_MODIFY FAN_ATTRIB FAN_CLOSE_WRITE FAN_CLOSE_NOWRITE FAN_OPEN "
    "FAN_MOVED_FROM FAN_MOVED_TO FAN_CREATE FAN_DELETE FAN_DELETE_SELF FAN_MOVE_SELF "
    "FAN_OPEN_EXEC FAN_Q_OVERFLOW FAN_FS_ERROR FAN_OPEN_PERM FAN_ACCESS_PERM "
    "FAN_OPEN_EXEC_PERM FAN_PRE_ACCESS FAN_MNT_ATTACH FAN_MNT_DETACH "
    "FAN_EVENT_ON_CHILD FAN_RENAME FAN_ONDIR FAN_CLOSE FAN_MOVE "
    # init flags
    "FAN_CLOEXEC FAN_NONBLOCK FAN_CLASS_NOTIF FAN_CLASS_CONTENT FAN_CLASS_PRE_CONTENT "
    "FAN_UNLIMITED_QUEUE FAN_UNLIMITED_MARKS FAN_ENABLE_AUDIT FAN_REPORT_PIDFD "
    "FAN_REPORT_TID FAN_REPORT_FID FAN_REPORT_DIR_FID FAN_REPORT_NAME "
    "FAN_REPORT_TARGET_FID FAN_REPORT_FD_ERROR FAN_REPORT_MNT FAN_REPORT_DFID_NAME "
    "FAN_REPORT_DFID_NAME_TARGET "
    # mark flags
    "FAN_MARK_ADD FAN_MARK_REMOVE FAN_MARK_DONT_FOLLOW FAN_MARK_ONLYDIR "
    "FAN_MARK_IGNORED_MASK FAN_MARK_IGNORED_SURV_MODIFY FAN_MARK_FLUSH "
    "FAN_MARK_EVICTABLE FAN_MARK_IGNORE FAN_MARK_INODE FAN_MARK_MOUNT "
    "FAN_MARK_FILESYSTEM FAN_MARK_MNTNS FAN_MARK_IGNORE_SURV "
    # the event stream
    "FANOTIFY_METADATA_VERSION FAN_EVENT_METADATA_LEN "
    "FAN_EVENT_INFO_TYPE_FID FAN_EVENT_INFO_TYPE_DFID_NAME FAN_EVENT_INFO_TYPE_DFID "
    "FAN_EVENT_INFO_TYPE_PIDFD FAN_EVENT_INFO_TYPE_ERROR FAN_EVENT_INFO_TYPE_RANGE "
    "FAN_EVENT_INFO_TYPE_MNT FAN_EVENT_INFO_TYPE_OLD_DFID_NAME "
    "FAN_EVENT_INFO_TYPE_NEW_DFID_NAME "
    # responses
    "FAN_ALLOW FAN_DENY FAN_AUDIT FAN_INFO FAN_RESPONSE_INFO_NONE "
    "FAN_RESPONSE_INFO_AUDIT_RULE FAN_ERRNO_BITS FAN_ERRNO_SHIFT FAN_ERRNO_MASK "
    # misc
    "FNM_EXTMATCH FNM_NOMATCH MAX_HANDLE_SZ AT_FDCWD AT_EMPTY_PATH "
    "AT_SYMLINK_FOLLOW AT_HANDLE_FID"
).split()

# Signed constants need an explicit C type so cffi does not reject a
# negative value declared as ``#define X ...``.
SIGNED_CONSTANTS = ("FAN_NOFD", "FAN_NOPIDFD", "FAN_EPIDFD")

CDEF = "\n".join(f"#define {name} ..." for name in CONSTANTS) + "\n" + "\n".join(
    f"static const int {name};" for name in SIGNED_CONSTANTS
) + """

struct fanotify_event_metadata {
    uint32_t event_len;
    uint8_t vers;
    uint8_t reserved;
    uint16_t metadata_len;
    uint64_t mask;
    int32_t fd;
    int32_t pid;
    ...;
};
struct fanotify_event_info_header { uint8_t info_type; uint8_t pad; uint16_t len; ...; };
struct fanotify_event_info_fid { struct fanotify_event_info_header hdr; ...; };
struct fanotify_event_info_pidfd { struct fanotify_event_info_header hdr; int32_t pidfd; ...; };
struct fanotify_event_info_error {
    struct fanotify_event_info_header hdr; int32_t error; uint32_t error_count; ...;
};
struct fanotify_event_info_range {
    struct fanotify_event_info_header hdr; uint32_t pad; uint64_t offset; uint64_t count; ...;
};
struct fanotify_event_info_mnt { struct fanotify_event_info_header hdr; uint64_t mnt_id; ...; };
struct fanotify_response { int32_t fd; uint32_t response; ...; };
struct fanotify_response_info_header { uint8_t type; uint8_t pad; uint16_t len; ...; };
struct fanotify_response_info_audit_rule {
    struct fanotify_response_info_header hdr;
    uint32_t rule_number;
    uint32_t subj_trust;
    uint32_t obj_trust;
    ...;
};

size_t afn_sizeof_fsid(void);
size_t afn_offsetof_fid_handle(void);

int fanotify_init(unsigned int flags, unsigned int event_f_flags);
int fanotify_mark(int fanotify_fd, unsigned int flags, uint64_t mask, int dirfd,
                  const char *pathname);
int fnmatch(const char *pattern, const char *string, int flags);

int afn_respond(int fanotify_fd, int32_t fd, uint32_t response);
int afn_respond_audit(int fanotify_fd, int32_t fd, uint32_t response,
                      uint32_t rule_number, uint32_t subj_trust, uint32_t obj_trust);
int afn_open_by_handle(int mount_fd, const unsigned char *handle, uint32_t handle_bytes,
                       int32_t handle_type, int flags);
int afn_name_to_handle(int dirfd, const char *path, unsigned char *buf,
                       uint32_t *handle_bytes, int32_t *handle_type, int *mount_id,
                       int flags);
int afn_fsid(int fd, uint32_t out[2]);
"""

_PRELUDE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/vfs.h>
#include <unistd.h>

/* Added between Linux 4.15 and 6.1: absent from older headers, such as the
 * kernel-headers 4.18 of the manylinux_2_28 image the wheels are built in
 * (glibc's <sys/fanotify.h> includes <linux/fanotify.h>).  Each struct comes
 * with the info type that introduced it. */
#ifndef FAN_ENABLE_AUDIT
#define FAN_ENABLE_AUDIT 0x00000040
#endif
#ifndef FAN_AUDIT
#define FAN_AUDIT 0x10
#endif
#ifndef FAN_REPORT_TID
#define FAN_REPORT_TID 0x00000100
#endif
#ifndef FAN_REPORT_FID
#define FAN_REPORT_FID 0x00000200
#endif
#ifndef FAN_REPORT_DIR_FID
#define FAN_REPORT_DIR_FID 0x00000400
#endif
#ifndef FAN_REPORT_NAME
#define FAN_REPORT_NAME 0x00000800
#endif
#ifndef FAN_REPORT_TARGET_FID
#define FAN_REPORT_TARGET_FID 0x00001000
#endif
#ifndef FAN_REPORT_DFID_NAME
#define FAN_REPORT_DFID_NAME (FAN_REPORT_DIR_FID | FAN_REPORT_NAME)
#endif
#ifndef FAN_REPORT_DFID_NAME_TARGET
#define FAN_REPORT_DFID_NAME_TARGET (FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID)
#endif
#ifndef FAN_REPORT_PIDFD
#define FAN_REPORT_PIDFD 0x00000080
#endif
#ifndef FAN_ATTRIB
#define FAN_ATTRIB 0x00000004
#endif
#ifndef FAN_MOVED_FROM
#define FAN_MOVED_FROM 0x00000040
#endif
#ifndef FAN_MOVED_TO
#define FAN_MOVED_TO 0x00000080
#endif
#ifndef FAN_CREATE
#define FAN_CREATE 0x00000100
#endif
#ifndef FAN_DELETE
#define FAN_DELETE 0x00000200
#endif
#ifndef FAN_DELETE_SELF
#define FAN_DELETE_SELF 0x00000400
#endif
#ifndef FAN_MOVE_SELF
#define FAN_MOVE_SELF 0x00000800
#endif
#ifndef FAN_MOVE
#define FAN_MOVE (FAN_MOVED_FROM | FAN_MOVED_TO)
#endif
#ifndef FAN_OPEN_EXEC
#define FAN_OPEN_EXEC 0x00001000
#endif
#ifndef FAN_OPEN_EXEC_PERM
#define FAN_OPEN_EXEC_PERM 0x00040000
#endif
#ifndef FAN_FS_ERROR
#define FAN_FS_ERROR 0x00008000
#endif
#ifndef FAN_RENAME
#define FAN_RENAME 0x10000000
#endif
#ifndef FAN_MARK_FILESYSTEM
#define FAN_MARK_FILESYSTEM 0x00000100
#endif
#ifndef FAN_MARK_EVICTABLE
#define FAN_MARK_EVICTABLE 0x00000200
#endif
#ifndef FAN_MARK_IGNORE
#define FAN_MARK_IGNORE 0x00000400
#endif
#ifndef FAN_MARK_IGNORE_SURV
#define FAN_MARK_IGNORE_SURV (FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY)
#endif
#ifndef FAN_EVENT_INFO_TYPE_FID
#define FAN_EVENT_INFO_TYPE_FID 1
struct fanotify_event_info_header {
    __u8 info_type;
    __u8 pad;
    __u16 len;
};
struct fanotify_event_info_fid {
    struct fanotify_event_info_header hdr;
    __kernel_fsid_t fsid;
    unsigned char handle[0];
};
#endif
#ifndef FAN_EVENT_INFO_TYPE_DFID_NAME
#define FAN_EVENT_INFO_TYPE_DFID_NAME 2
#define FAN_EVENT_INFO_TYPE_DFID 3
#endif
#ifndef FAN_EVENT_INFO_TYPE_PIDFD
#define FAN_EVENT_INFO_TYPE_PIDFD 4
struct fanotify_event_info_pidfd {
    struct fanotify_event_info_header hdr;
    __s32 pidfd;
};
#endif
#ifndef FAN_EVENT_INFO_TYPE_ERROR
#define FAN_EVENT_INFO_TYPE_ERROR 5
struct fanotify_event_info_error {
    struct fanotify_event_info_header hdr;
    __s32 error;
    __u32 error_count;
};
#endif
#ifndef FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
#define FAN_EVENT_INFO_TYPE_OLD_DFID_NAME 10
#define FAN_EVENT_INFO_TYPE_NEW_DFID_NAME 12
#endif

/* Added after Linux 6.1: absent from the build machine's headers. */
#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000
#endif
#ifndef FAN_MNT_ATTACH
#define FAN_MNT_ATTACH 0x01000000
#endif
#ifndef FAN_MNT_DETACH
#define FAN_MNT_DETACH 0x02000000
#endif
#ifndef FAN_REPORT_FD_ERROR
#define FAN_REPORT_FD_ERROR 0x00002000
#endif
#ifndef FAN_REPORT_MNT
#define FAN_REPORT_MNT 0x00004000
#endif
#ifndef FAN_MARK_MNTNS
#define FAN_MARK_MNTNS 0x00000110
#endif
#ifndef FAN_EVENT_INFO_TYPE_RANGE
#define FAN_EVENT_INFO_TYPE_RANGE 6
struct fanotify_event_info_range {
    struct fanotify_event_info_header hdr;
    __u32 pad;
    __u64 offset;
    __u64 count;
};
#endif
#ifndef FAN_EVENT_INFO_TYPE_MNT
#define FAN_EVENT_INFO_TYPE_MNT 7
struct fanotify_event_info_mnt {
    struct fanotify_event_info_header hdr;
    __u64 mnt_id;
};
#endif
#ifndef FAN_INFO
#define FAN_INFO 0x20
#endif
#ifndef FAN_RESPONSE_INFO_NONE
#define FAN_RESPONSE_INFO_NONE 0
#define FAN_RESPONSE_INFO_AUDIT_RULE 1
struct fanotify_response_info_header {
    __u8 type;
    __u8 pad;
    __u16 len;
};
struct fanotify_response_info_audit_rule {
    struct fanotify_response_info_header hdr;
    __u32 rule_number;
    __u32 subj_trust;
    __u32 obj_trust;
};
#endif
#ifndef FAN_ERRNO_BITS
#define FAN_ERRNO_BITS 8
#define FAN_ERRNO_SHIFT (32 - FAN_ERRNO_BITS)
#define FAN_ERRNO_MASK ((1 << FAN_ERRNO_BITS) - 1)
#endif
#ifndef FAN_NOPIDFD
#define FAN_NOPIDFD FAN_NOFD
#endif
#ifndef FAN_EPIDFD
#define FAN_EPIDFD -2
#endif
#ifndef AT_HANDLE_FID
#define AT_HANDLE_FID AT_REMOVEDIR
#endif
#ifndef MAX_HANDLE_SZ
#define MAX_HANDLE_SZ 128
#endif

size_t afn_sizeof_fsid(void) { return sizeof(__kernel_fsid_t); }
size_t afn_offsetof_fid_handle(void) { return offsetof(struct fanotify_event_info_fid, handle); }

/* One write(2) per response: the kernel reads the whole struct or fails. */
int afn_respond(int fanotify_fd, int32_t fd, uint32_t response)
{
    struct fanotify_response r = { .fd = fd, .response = response };
    ssize_t n;
    do {
        n = write(fanotify_fd, &r, sizeof r);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -1 : (int)n;
}

int afn_respond_audit(int fanotify_fd, int32_t fd, uint32_t response,
                      uint32_t rule_number, uint32_t subj_trust, uint32_t obj_trust)
{
    struct {
        struct fanotify_response r;
        struct fanotify_response_info_audit_rule a;
    } __attribute__((packed)) msg;
    ssize_t n;
    memset(&msg, 0, sizeof msg);
    msg.r.fd = fd;
    msg.r.response = response | FAN_INFO;
    msg.a.hdr.type = FAN_RESPONSE_INFO_AUDIT_RULE;
    msg.a.hdr.len = sizeof msg.a;
    msg.a.rule_number = rule_number;
    msg.a.subj_trust = subj_trust;
    msg.a.obj_trust = obj_trust;
    do {
        n = write(fanotify_fd, &msg, sizeof msg);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -1 : (int)n;
}

int afn_open_by_handle(int mount_fd, const unsigned char *handle, uint32_t handle_bytes,
                       int32_t handle_type, int flags)
{
    union {
        struct file_handle fh;
        unsigned char raw[sizeof(struct file_handle) + MAX_HANDLE_SZ];
    } u;
    if (handle_bytes > MAX_HANDLE_SZ) {
        errno = EINVAL;
        return -1;
    }
    u.fh.handle_bytes = handle_bytes;
    u.fh.handle_type = handle_type;
    memcpy(u.fh.f_handle, handle, handle_bytes);
    return open_by_handle_at(mount_fd, &u.fh, flags);
}

int afn_name_to_handle(int dirfd, const char *path, unsigned char *buf,
                       uint32_t *handle_bytes, int32_t *handle_type, int *mount_id,
                       int flags)
{
    union {
        struct file_handle fh;
        unsigned char raw[sizeof(struct file_handle) + MAX_HANDLE_SZ];
    } u;
    u.fh.handle_bytes = MAX_HANDLE_SZ;
    if (name_to_handle_at(dirfd, path, &u.fh, mount_id, flags) < 0)
        return -1;
    *handle_bytes = u.fh.handle_bytes;
    *handle_type = u.fh.handle_type;
    memcpy(buf, u.fh.f_handle, u.fh.handle_bytes);
    return 0;
}

/* The fsid fanotify reports is statfs()'s f_fsid, two 32-bit words. */
int afn_fsid(int fd, uint32_t out[2])
{
    struct statfs st;
    if (fstatfs(fd, &st) < 0)
        return -1;
    memcpy(out, &st.f_fsid, 2 * sizeof(uint32_t));
    return 0;
}
"""


def _extra_sources() -> str:
    """C files under afanotify/csrc are appended to the module's source, in name order."""
    csrc = _HERE / "afanotify" / "csrc"
    parts = [p.read_text() for p in sorted(csrc.glob("*.c"))] if csrc.is_dir() else []
    return "\n".join(parts)


def _extra_cdef() -> str:
    csrc = _HERE / "afanotify" / "csrc"
    parts = [p.read_text() for p in sorted(csrc.glob("*.cdef"))] if csrc.is_dir() else []
    return "\n".join(parts)


#: The compiler flags of the shipped build.
COMPILE_ARGS = ("-O2", "-Wall", "-Wno-unused-function")


def make_builder(
    compile_args: tuple[str, ...] = COMPILE_ARGS, link_args: tuple[str, ...] = ()
) -> FFI:
    """The cffi builder of ``afanotify._fanotify``; tests/test_sanitizers.py builds it
    again with sanitizer flags."""
    builder = FFI()
    builder.cdef(CDEF + _extra_cdef())
    builder.set_source(
        "afanotify._fanotify",
        _PRELUDE + _extra_sources(),
        extra_compile_args=list(compile_args),
        extra_link_args=list(link_args),
        # The event builder (afanotify/csrc/fastpath_build.c) uses documented
        # CPython API beyond the limited one: type-object fields (tp_members,
        # tp_alloc, ...) and str accessors.
        py_limited_api=False,
        define_macros=[("_CFFI_NO_LIMITED_API", None)],
    )
    return builder


ffibuilder = make_builder()



def build_in_place(verbose: bool = True) -> Path:
    """Compile the core into ``afanotify/`` (``python build_ffi.py``); returns its path.

    The compile runs in a temporary directory: cffi's build reads the
    setuptools configuration of the directory it runs in, and the project's
    pyproject.toml needs a newer setuptools (77, for the SPDX license) than
    a fresh virtualenv brings, while ``pip install`` gets its own.
    """
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="afanotify-build-") as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp, verbose=verbose))
        target = _HERE / "afanotify" / built.name
        # A new file renamed over the old one: a process that has the old
        # one loaded keeps its (unchanged) mapping.
        partial = target.with_name(target.name + ".tmp")
        shutil.copyfile(built, partial)
        os.replace(partial, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
