"""afanotify.features(): what the running kernel accepts, probed without side effects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from helpers import CHILD_CWD, child_env

import afanotify
from afanotify import Event, Features, InitFlag, MarkFlag, _ffi
from afanotify._features import _BASE, _mark_ok, _try_init

pytestmark = pytest.mark.kernel



def _fanotify_marks(fd: int) -> list[str]:
    """The marks the kernel lists for group ``fd`` in fdinfo."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return [line for line in f if line.startswith("fanotify ") and "mask:" in line]


def test_features_reports_what_this_kernel_supports() -> None:
    feats = afanotify.features()
    assert isinstance(feats, Features)
    assert feats.available and feats.reason is None
    # The 6.18 test machines have all of these (see the kernel reference).
    assert {
        InitFlag.REPORT_FID, InitFlag.REPORT_DIR_FID, InitFlag.REPORT_NAME,
        InitFlag.REPORT_PIDFD, InitFlag.REPORT_TARGET_FID, InitFlag.REPORT_FD_ERROR,
        InitFlag.REPORT_MNT, InitFlag.CLASS_CONTENT, InitFlag.CLASS_PRE_CONTENT,
    } <= feats.init_flags
    assert feats.mark_types == {
        MarkFlag.INODE, MarkFlag.MOUNT, MarkFlag.FILESYSTEM, MarkFlag.MNTNS
    }
    assert {MarkFlag.EVICTABLE, MarkFlag.IGNORE, MarkFlag.IGNORED_SURV_MODIFY} <= feats.mark_flags
    assert {
        Event.OPEN, Event.CREATE, Event.RENAME, Event.FS_ERROR, Event.OPEN_PERM,
        Event.PRE_ACCESS, Event.MNT_ATTACH, Event.MNT_DETACH,
    } <= feats.events
    # Bits that are not events on their own are not reported as events.
    assert not {Event.ONDIR, Event.EVENT_ON_CHILD, Event.Q_OVERFLOW} & feats.events
    d = feats.as_dict()
    assert d["available"] is True and "REPORT_MNT" in d["init_flags"]  # type: ignore[operator]
    assert "FS_ERROR" in d["events"]  # type: ignore[operator]


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
