"""afanotify.features(): what the running kernel accepts, probed without side effects."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CHILD_CWD, child_env, require_nobody_python

import afanotify
from afanotify import Event, Features, InitFlag, MarkFlag, _ffi
from afanotify._features import _BASE, _mark_ok, _try_init

pytestmark = pytest.mark.kernel



def _fanotify_marks(fd: int) -> list[str]:
    """The marks the kernel lists for group ``fd`` in fdinfo."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return [line for line in f if line.startswith("fanotify ") and "mask:" in line]


#: The raw system calls, through libc: the independent probe uses nothing of afanotify's.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [
    ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p
]
_AT_FDCWD = -100
#: Flags that need companions to be accepted (as in fanotify_init(2)).
_COMPANIONS = {
    InitFlag.REPORT_NAME: InitFlag.REPORT_DIR_FID,
    InitFlag.REPORT_TARGET_FID: InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID,
}


def _raw_init(flags: int) -> int | None:
    fd = _libc.fanotify_init(flags | 0x1 | 0x2, os.O_RDONLY)  # FAN_CLOEXEC | FAN_NONBLOCK
    return fd if fd >= 0 else None


def _raw_mark(fd: int, flags: int, mask: int, path: str) -> bool:
    """A real mark on a real object (then removed): what a user would do."""
    if _libc.fanotify_mark(fd, 0x1 | flags, mask, _AT_FDCWD, path.encode()) != 0:
        return False
    _libc.fanotify_mark(fd, 0x80 | (flags & 0x110), 0, _AT_FDCWD, None)  # FLUSH that kind
    return True


def _independent_probe(root: Path, mntns: str) -> tuple[set[InitFlag], set[MarkFlag], set[Event]]:
    init = set()
    for flag in InitFlag:
        if not flag.value or flag.value & (flag.value - 1) or flag in (
            InitFlag.NONBLOCK, InitFlag.CLOEXEC
        ):
            continue
        fd = _raw_init(flag.value | _COMPANIONS.get(flag, 0))
        if fd is not None:
            os.close(fd)
            init.add(flag)
    groups = {
        "notif": _raw_init(0), "fid": _raw_init(InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID),
        "content": _raw_init(InitFlag.CLASS_CONTENT),
        "pre": _raw_init(InitFlag.CLASS_PRE_CONTENT), "mnt": _raw_init(InitFlag.REPORT_MNT),
    }
    kinds: set[MarkFlag] = set()
    events: set[Event] = set()
    try:
        notif = groups["notif"]
        assert notif is not None
        for kind in (MarkFlag.INODE, MarkFlag.MOUNT, MarkFlag.FILESYSTEM):
            if _raw_mark(notif, kind, Event.OPEN, str(root)):
                kinds.add(kind)
        mnt = groups["mnt"]
        if mnt is not None and _raw_mark(mnt, MarkFlag.MNTNS, Event.MNT_ATTACH, mntns):
            kinds.add(MarkFlag.MNTNS)
        for ev in Event:
            if not ev.value or ev.value & (ev.value - 1) or ev in (
                Event.ONDIR, Event.EVENT_ON_CHILD, Event.Q_OVERFLOW
            ):
                continue
            path, kind = str(root), MarkFlag.INODE
            if ev & (Event.MNT_ATTACH | Event.MNT_DETACH):
                g, path, kind = groups["mnt"], mntns, MarkFlag.MNTNS
            elif ev == Event.PRE_ACCESS:
                g = groups["pre"]
            elif ev & (Event.OPEN_PERM | Event.ACCESS_PERM | Event.OPEN_EXEC_PERM):
                g = groups["content"]
            elif ev == Event.FS_ERROR:
                g, kind = groups["fid"], MarkFlag.FILESYSTEM
            else:
                g = groups["fid"]
            if g is not None and _raw_mark(g, kind, ev, path):
                events.add(ev)
    finally:
        for g in groups.values():
            if g is not None:
                os.close(g)
    return init, kinds, events


def test_features_agree_with_an_independent_probe(ext4: Path) -> None:
    # The independent probe places real marks on a private ext4 (FS_ERROR and
    # PRE_ACCESS need it) and on a child's mount namespace, through libc.
    child = subprocess.Popen(["unshare", "-m", "sleep", "30"])
    try:
        ns = f"/proc/{child.pid}/ns/mnt"
        deadline = time.monotonic() + 10
        while os.readlink(ns) == os.readlink("/proc/self/ns/mnt"):
            assert time.monotonic() < deadline, "unshare -m did not make a namespace"
            time.sleep(0.01)
        init, kinds, events = _independent_probe(ext4, ns)
    finally:
        child.kill()
        child.wait()
    feats = afanotify.features()
    assert isinstance(feats, Features)
    assert feats.available and feats.reason is None
    assert set(feats.init_flags) == init
    assert set(feats.mark_types) == kinds
    assert set(feats.events) == events
    # Bits that are not events on their own are not reported as events.
    assert not {Event.ONDIR, Event.EVENT_ON_CHILD, Event.Q_OVERFLOW} & feats.events
    d = feats.as_dict()
    assert d["available"] is True
    assert sorted(d["init_flags"]) == sorted(f.name for f in init)  # type: ignore[arg-type]
    assert sorted(d["events"]) == sorted(e.name for e in events)  # type: ignore[arg-type]


def test_the_probe_rejects_what_the_kernel_rejects() -> None:
    # The probing method (a mark on a missing path: EINVAL = unsupported) must
    # not call everything supported.  These are invalid on every kernel.
    groups = {
        "notif": _try_init(_BASE),
        "fid": _try_init(_BASE | InitFlag.REPORT_FID),
        "mnt": _try_init(_BASE | InitFlag.REPORT_MNT),
    }
    try:
        fd = {k: v for k, v in groups.items() if v is not None}
        assert len(fd) == 3
        missing = "/nonexistent-afanotify-probe/x"
        assert not _mark_ok(fd["fid"], MarkFlag.INODE, Event.FS_ERROR, missing)
        assert not _mark_ok(fd["mnt"], MarkFlag.INODE, Event.MNT_ATTACH, missing)
        assert not _mark_ok(fd["notif"], MarkFlag.MOUNT | MarkFlag.EVICTABLE, Event.OPEN, missing)
        assert not _mark_ok(fd["notif"], MarkFlag.INODE, Event.CREATE, missing)
        assert not _mark_ok(fd["notif"], MarkFlag.INODE, Event.OPEN_PERM, missing)
        assert not _mark_ok(fd["fid"], MarkFlag.INODE, Event.RENAME, missing)
        assert _mark_ok(fd["fid"], MarkFlag.FILESYSTEM, Event.FS_ERROR, missing)
    finally:
        for v in groups.values():
            if v is not None:
                os.close(v)


@pytest.fixture
def watched_ffi(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int, bool]]]:
    """Record every fanotify_mark call, checking fdinfo for marks after each."""
    calls: list[tuple[int, int, bool]] = []
    real = _ffi.fanotify_mark

    def mark(fan_fd: int, flags: int, mask: int, dirfd: int, path: str | bytes | None) -> None:
        try:
            real(fan_fd, flags, mask, dirfd, path)
        except OSError:
            calls.append((flags, mask, False))
            raise
        finally:
            assert _fanotify_marks(fan_fd) == [], "a probe left a mark behind"
        calls.append((flags, mask, True))

    monkeypatch.setattr(_ffi, "fanotify_mark", mark)
    yield calls


def test_probing_adds_no_marks(watched_ffi: list[tuple[int, int, bool]]) -> None:
    fds_before = sorted(os.listdir("/proc/self/fd"))
    feats = afanotify.features()
    assert feats.available
    assert len(watched_ffi) > 20  # it did probe, through the wrapper we watched
    assert not [c for c in watched_ffi if c[2]], "a probe mark was accepted"
    # and every probe group was closed
    assert sorted(os.listdir("/proc/self/fd")) == fds_before


def test_features_without_privilege() -> None:
    require_nobody_python()
    code = (
        "import json, afanotify; f = afanotify.features(); "
        "print(json.dumps([f.available, f.reason, len(f.events)]))"
    )
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", code],
        env=child_env({"PATH": os.environ.get("PATH", "")}),
        cwd=CHILD_CWD, capture_output=True, text=True, timeout=30, check=False,
    )
    assert r.returncode == 0, r.stderr
    available, reason, n_events = json.loads(r.stdout)
    assert available is False and n_events == 0
    assert "CAP_SYS_ADMIN" in reason
