# The compiled cffi core, afanotify._fanotify, built by build_ffi.py.  Only
# afanotify._ffi imports it.  ``lib`` is declared here name for name as the
# cdef exposes it (tests/test_ffi_smoke.py checks the two sets agree): the
# kernel's constants, the decoder's, and the C functions with their
# argument types as cffi converts them.
from typing import Any, TypeAlias

#: A cffi pointer or array (``ffi.new``, ``ffi.from_buffer``) or ``ffi.NULL``.
_CData: TypeAlias = Any
#: A ``char *`` argument: bytes are passed as a NUL-terminated copy.
_CStr: TypeAlias = bytes | _CData

ffi: Any

class _Lib:
    # build_ffi.py: the kernel's constants, from the C headers.
    FAN_ACCESS: int
    FAN_MODIFY: int
    FAN_ATTRIB: int
    FAN_CLOSE_WRITE: int
    FAN_CLOSE_NOWRITE: int
    FAN_OPEN: int
    FAN_MOVED_FROM: int
    FAN_MOVED_TO: int
    FAN_CREATE: int
    FAN_DELETE: int
    FAN_DELETE_SELF: int
    FAN_MOVE_SELF: int
    FAN_OPEN_EXEC: int
    FAN_Q_OVERFLOW: int
    FAN_FS_ERROR: int
    FAN_OPEN_PERM: int
    FAN_ACCESS_PERM: int
    FAN_OPEN_EXEC_PERM: int
    FAN_PRE_ACCESS: int
    FAN_MNT_ATTACH: int
    FAN_MNT_DETACH: int
    FAN_EVENT_ON_CHILD: int
    FAN_RENAME: int
    FAN_ONDIR: int
    FAN_CLOSE: int
    FAN_MOVE: int
    FAN_CLOEXEC: int
    FAN_NONBLOCK: int
    FAN_CLASS_NOTIF: int
    FAN_CLASS_CONTENT: int
    FAN_CLASS_PRE_CONTENT: int
    FAN_UNLIMITED_QUEUE: int
    FAN_UNLIMITED_MARKS: int
    FAN_ENABLE_AUDIT: int
    FAN_REPORT_PIDFD: int
    FAN_REPORT_TID: int
    FAN_REPORT_FID: int
    FAN_REPORT_DIR_FID: int
    FAN_REPORT_NAME: int
    FAN_REPORT_TARGET_FID: int
    FAN_REPORT_FD_ERROR: int
    FAN_REPORT_MNT: int
    FAN_REPORT_DFID_NAME: int
    FAN_REPORT_DFID_NAME_TARGET: int
    FAN_MARK_ADD: int
    FAN_MARK_REMOVE: int
    FAN_MARK_DONT_FOLLOW: int
    FAN_MARK_ONLYDIR: int
    FAN_MARK_IGNORED_MASK: int
    FAN_MARK_IGNORED_SURV_MODIFY: int
    FAN_MARK_FLUSH: int
    FAN_MARK_EVICTABLE: int
    FAN_MARK_IGNORE: int
    FAN_MARK_INODE: int
    FAN_MARK_MOUNT: int
    FAN_MARK_FILESYSTEM: int
    FAN_MARK_MNTNS: int
    FAN_MARK_IGNORE_SURV: int
    FANOTIFY_METADATA_VERSION: int
    FAN_EVENT_METADATA_LEN: int
    FAN_EVENT_INFO_TYPE_FID: int
    FAN_EVENT_INFO_TYPE_DFID_NAME: int
    FAN_EVENT_INFO_TYPE_DFID: int
    FAN_EVENT_INFO_TYPE_PIDFD: int
    FAN_EVENT_INFO_TYPE_ERROR: int
    FAN_EVENT_INFO_TYPE_RANGE: int
    FAN_EVENT_INFO_TYPE_MNT: int
    FAN_EVENT_INFO_TYPE_OLD_DFID_NAME: int
    FAN_EVENT_INFO_TYPE_NEW_DFID_NAME: int
    FAN_ALLOW: int
    FAN_DENY: int
    FAN_AUDIT: int
    FAN_INFO: int
    FAN_RESPONSE_INFO_NONE: int
    FAN_RESPONSE_INFO_AUDIT_RULE: int
    FAN_ERRNO_BITS: int
    FAN_ERRNO_SHIFT: int
    FAN_ERRNO_MASK: int
    FNM_EXTMATCH: int
    FNM_NOMATCH: int
    MAX_HANDLE_SZ: int
    AT_FDCWD: int
    AT_EMPTY_PATH: int
    AT_SYMLINK_FOLLOW: int
    AT_HANDLE_FID: int
    FAN_NOFD: int
    FAN_NOPIDFD: int
    FAN_EPIDFD: int

    # csrc/fastpath.cdef: the batch decoder's statuses, record bits and flags.
    AFN_OK: int
    AFN_E_SHORT_BUFFER: int
    AFN_E_EVENT_LEN: int
    AFN_E_VERSION: int
    AFN_E_META_LEN: int
    AFN_E_STRAY_BYTES: int
    AFN_E_RECORD_LEN: int
    AFN_E_RECORD_PAST_END: int
    AFN_E_FID_SHORT: int
    AFN_E_HANDLE_PAST_END: int
    AFN_E_NAME_NUL: int
    AFN_E_RECORD_SHORT: int
    AFN_HAS_FID: int
    AFN_HAS_DFID: int
    AFN_HAS_NAME: int
    AFN_HAS_OLD: int
    AFN_HAS_NEW: int
    AFN_HAS_PIDFD: int
    AFN_HAS_ERROR: int
    AFN_HAS_RANGE: int
    AFN_HAS_MNT: int
    AFN_HAS_UNKNOWN: int
    AFN_RESOLVE_FD_PATHS: int
    AFN_FID_BATCH: int
    AFN_NONE: int
    AFN_MAX_DIRS: int
    AFN_PATH_NONE: int
    AFN_PATH_RETRY: int
    AFN_PATH_FAILED: int

    # csrc/fastpath_build.cdef: the event builder's flags.
    AFN_B_PID_IS_TID: int
    AFN_B_OWNED: int
    AFN_B_FD_ERROR: int
    AFN_B_RESOLVE: int
    AFN_B_UNTRACK: int
    AFN_B_STOP_AT_CUT: int
    AFN_B_RENAMES: int

    # csrc/fastpath_rules.cdef: static permission decisions.
    AFR_DEFAULT_RULE: int
    AFR_WOKEN: int

    # build_ffi.py: the syscalls and their wrappers.
    def afn_sizeof_fsid(self) -> int: ...
    def afn_offsetof_fid_handle(self) -> int: ...
    def fanotify_init(self, flags: int, event_f_flags: int, /) -> int: ...
    def fanotify_mark(
        self, fanotify_fd: int, flags: int, mask: int, dirfd: int, pathname: _CStr, /
    ) -> int: ...
    def fnmatch(self, pattern: _CStr, string: _CStr, flags: int, /) -> int: ...
    def afn_respond(self, fanotify_fd: int, fd: int, response: int, /) -> int: ...
    def afn_respond_audit(
        self, fanotify_fd: int, fd: int, response: int, rule_number: int, subj_trust: int,
        obj_trust: int, /,
    ) -> int: ...
    def afn_open_by_handle(
        self, mount_fd: int, handle: _CStr, handle_bytes: int, handle_type: int, flags: int, /
    ) -> int: ...
    def afn_name_to_handle(
        self, dirfd: int, path: _CStr, buf: _CData, handle_bytes: _CData, handle_type: _CData,
        mount_id: _CData, flags: int, /,
    ) -> int: ...
    def afn_fsid(self, fd: int, out: _CData, /) -> int: ...

    # csrc/fastpath.cdef
    def afn_decode(
        self, buf: _CData, nbytes: int, out: _CData, cap: int, flags: int, arena: _CData,
        arena_cap: int, arena_used: _CData, stop: _CData, /,
    ) -> int: ...
    def afn_has_move(self, ev: _CData, n: int, moves: int, /) -> int: ...
    def afn_decode_at(
        self, buf: _CData, nbytes: int, out: _CData, cap: int, flags: int, arena: _CData,
        arena_cap: int, arena_used: _CData, stop: _CData, fddir: int, /,
    ) -> int: ...

    # csrc/fastpath_build.cdef
    def afn_install_builder(self) -> int: ...

    # csrc/fastpath_drain.cdef
    def afd_init(self, d: _CData, /) -> int: ...
    def afd_run(self, d: _CData, /) -> int: ...
    def afd_take(self, d: _CData, /) -> _CData: ...
    def afd_free(self, d: _CData, c: _CData, /) -> None: ...
    def afd_counts(self, d: _CData, out: _CData, /) -> None: ...
    def afd_exit_counts(self, d: _CData, out: _CData, /) -> None: ...
    def afd_exit_open(self, d: _CData, /) -> int: ...
    def afd_exit_probe(self, /) -> int: ...
    def afd_destroy(self, d: _CData, /) -> None: ...

    # csrc/fastpath_format.cdef
    def aff_install_formatter(self) -> int: ...

    # csrc/fastpath_rules.cdef
    def afr_apply(
        self, rs: _CData, group_fd: int, buf: _CData, nbytes: int, out: _CData, cap: int,
        arena: _CData, arena_cap: int, kept: _CData, /,
    ) -> int: ...
    def afr_release(self, rs: _CData, /) -> None: ...
    def afr_serve(
        self, rs: _CData, group_fd: int, wake_fd: int, buf: _CData, bufsize: int, out: _CData,
        cap: int, arena: _CData, arena_cap: int, /,
    ) -> int: ...
    def afp_read_walk(
        self, group_fd: int, wake_fd: int, timeout_ms: int, buf: _CData, bufsize: int,
        nread: _CData, out: _CData, cap: int, flags: int, arena: _CData, arena_cap: int,
        arena_used: _CData, stop: _CData, fddir: int, /,
    ) -> int: ...
    def afp_answer(self, group_fd: int, fd: int, response: int, close_fd: int, /) -> int: ...
    def afp_read_walk_now(
        self, group_fd: int, buf: _CData, bufsize: int, nread: _CData, walk: int,
        out: _CData, cap: int, flags: int, arena: _CData, arena_cap: int, arena_used: _CData,
        stop: _CData, fddir: int, /,
    ) -> int: ...
    def afp_read_walk_args(self, a: _CData, /) -> int: ...

    # csrc/fastpath_thread.cdef
    def aft_init(self, r: _CData, /) -> int: ...
    def aft_run(self, r: _CData, /) -> int: ...
    def aft_request(self, r: _CData, /) -> int: ...
    def aft_take(self, r: _CData, result: _CData, /) -> _CData: ...
    def aft_wait(self, r: _CData, /) -> None: ...
    def aft_stop(self, r: _CData, /) -> None: ...
    def aft_reads(self, r: _CData, /) -> int: ...
    def aft_destroy(self, r: _CData, /) -> None: ...

lib: _Lib

# Added by lib.afn_install_builder() (afanotify/csrc/fastpath_build.c).
def _builder_setup(
    event_type: type, handle_type: type, slots: tuple[str, ...], defaults: tuple[Any, ...],
    handle_slots: tuple[str, ...], own_fd: int, own_pidfd: int, unanswered: int, /,
) -> None: ...
def _build(
    out: Any, start: int, count: int, src: Any, arena: Any, events: list[Any],
    dirs: list[Any], by_record: dict[bytes, list[Any]], dir_path: Any, skip_pids: Any,
    flags: int, perm_mask: int, dir_change_mask: int, tree: Any = None, /,
) -> tuple[int, int, int, int, int]: ...

# Added by lib.aff_install_formatter() (afanotify/csrc/fastpath_format.c).
def _format_batch(
    mode: int, events: list[Any], procs: dict[int, tuple[Any, ...]], stamp: str,
    masks: dict[int, tuple[str, ...]], mask_parts: Any, proc_part: Any, clean: Any,
    steps: list[tuple[str, int, str | None, str | None]] | None, /,
) -> bytes: ...
def _format_fields() -> tuple[str, ...]: ...
