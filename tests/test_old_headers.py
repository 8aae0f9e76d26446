"""The compiled core builds against old kernel headers, as in the wheel images.

The manylinux_2_28 image the wheels are built in has kernel-headers 4.18,
whose <linux/fanotify.h> lacks everything from FID reporting (5.1) on.
build_ffi.py defines what the headers lack; here the core is built with a
<linux/fanotify.h> holding only what Linux 4.14 had, and the result must
have every constant and struct layout of the real build.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from afanotify import _fanotify

# What <linux/fanotify.h> defined in Linux 4.14 (before FAN_ENABLE_AUDIT,
# FAN_REPORT_TID, FAN_MARK_FILESYSTEM, FAN_OPEN_EXEC and every info record).
OLD_HEADER = """\
#ifndef _UAPI_LINUX_FANOTIFY_H
#define _UAPI_LINUX_FANOTIFY_H
#include <linux/types.h>
#define FAN_ACCESS 0x00000001
#define FAN_MODIFY 0x00000002
#define FAN_CLOSE_WRITE 0x00000008
#define FAN_CLOSE_NOWRITE 0x00000010
#define FAN_OPEN 0x00000020
#define FAN_Q_OVERFLOW 0x00004000
#define FAN_OPEN_PERM 0x00010000
#define FAN_ACCESS_PERM 0x00020000
#define FAN_ONDIR 0x40000000
#define FAN_EVENT_ON_CHILD 0x08000000
#define FAN_CLOSE (FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE)
#define FAN_CLOEXEC 0x00000001
#define FAN_NONBLOCK 0x00000002
#define FAN_CLASS_NOTIF 0x00000000
#define FAN_CLASS_CONTENT 0x00000004
#define FAN_CLASS_PRE_CONTENT 0x00000008
#define FAN_UNLIMITED_QUEUE 0x00000010
#define FAN_UNLIMITED_MARKS 0x00000020
#define FAN_MARK_ADD 0x00000001
#define FAN_MARK_REMOVE 0x00000002
#define FAN_MARK_DONT_FOLLOW 0x00000004
#define FAN_MARK_ONLYDIR 0x00000008
#define FAN_MARK_MOUNT 0x00000010
#define FAN_MARK_IGNORED_MASK 0x00000020
#define FAN_MARK_IGNORED_SURV_MODIFY 0x00000040
#define FAN_MARK_FLUSH 0x00000080
#define FAN_MARK_INODE 0x00000000
#define FANOTIFY_METADATA_VERSION 3
struct fanotify_event_metadata {
    __u32 event_len;
    __u8 vers;
    __u8 reserved;
    __u16 metadata_len;
    __aligned_u64 mask;
    __s32 fd;
    __s32 pid;
};
struct fanotify_response {
    __s32 fd;
    __u32 response;
};
#define FAN_ALLOW 0x01
#define FAN_DENY 0x02
#define FAN_NOFD -1
#define FAN_EVENT_METADATA_LEN (sizeof(struct fanotify_event_metadata))
#endif
"""

# In the child: the constants and layouts of the core built with the old
# header, against the pure core's table (itself held to the headers of this
# machine by test_purecore.py) and the sizes the parser uses.
CHECK = """
import json, sys
from afanotify import _ffi, _parser, _purecore
assert _ffi.CORE == "c", _ffi.CORE_ERROR
lib, ffi = _ffi.lib, _ffi.ffi
wrong = {n: (getattr(lib, n), v) for n, v in _purecore.CONSTANTS.items() if getattr(lib, n) != v}
sizes = {s: ffi.sizeof(s) for s in ("struct fanotify_event_info_header",
         "struct fanotify_event_info_fid", "struct fanotify_event_info_pidfd",
         "struct fanotify_event_info_error", "struct fanotify_event_info_range",
         "struct fanotify_event_info_mnt")}
print(json.dumps({"wrong": wrong, "sizes": sizes, "builder": _ffi.event_builder() is not None,
                  "fid_handle": lib.afn_offsetof_fid_handle()}))
"""


@pytest.mark.timeout(240)
def test_core_builds_against_linux_4_14_headers(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("building the core needs gcc (CI has it)")
    include = tmp_path / "include" / "linux"
    include.mkdir(parents=True)
    (include / "fanotify.h").write_text(OLD_HEADER)
    pkg = tmp_path / "afanotify"
    pkg.mkdir()
    for src in (REPO / "afanotify").glob("*.py"):
        shutil.copy2(src, pkg / src.name)
    build = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import build_ffi\n"
        f"args = build_ffi.COMPILE_ARGS + ('-I', {str(tmp_path / 'include')!r})\n"
        f"build_ffi.make_builder(args).compile(tmpdir={str(tmp_path)!r})\n"
    )
    built = subprocess.run(
        [sys.executable, "-c", build], cwd=tmp_path, capture_output=True, text=True,
        check=False, timeout=200,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    # The old header is the one <sys/fanotify.h> reads with this -I: it has
    # no FAN_REPORT_FID, which the build then defined itself.
    probe = tmp_path / "probe.c"
    probe.write_text(
        "#include <sys/fanotify.h>\n#ifdef FAN_REPORT_FID\n#error new header\n#endif\n"
    )
    seen = subprocess.run(
        ["gcc", "-fsyntax-only", "-I", str(tmp_path / "include"), str(probe)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert seen.returncode == 0, seen.stderr
    run = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, check=False, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout)
    assert got["wrong"] == {}
    assert got["sizes"] == {s: _fanotify.ffi.sizeof(s) for s in got["sizes"]}
    assert got["fid_handle"] == _fanotify.lib.afn_offsetof_fid_handle()
    assert got["builder"] is True
