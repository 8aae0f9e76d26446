"""Errors say what went wrong and what to do: missing paths, missing privilege,
flags the kernel rejects, and bad arguments."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CHILD_CWD, child_env, require_nobody_python

from afanotify import (
    ClosedResourceError,
    Event,
    Fanotify,
    InitFlag,
    MarkFlag,
    UnsupportedFlagError,
)
from afanotify._errors import init_error, mark_error
from afanotify._open import find_rejected_init_flag as _find_rejected_init_flag

#: anyio: every async test here runs on asyncio and on trio (tests/conftest.py).
pytestmark = pytest.mark.anyio

RELEASE = os.uname().release

# -- missing paths -------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("flags", [InitFlag(0), InitFlag.REPORT_DFID_NAME], ids=["fd", "fid"])
async def test_missing_path_names_the_path(tmpfs: Path, flags: InitFlag) -> None:
    missing = tmpfs / "no" / "such"
    async with Fanotify(flags) as fan:
        with pytest.raises(FileNotFoundError) as info:
            fan.mark(missing, Event.CLOSE_WRITE)
        assert info.value.errno == errno.ENOENT and info.value.filename == str(missing)
        assert str(missing) in str(info.value)
        # Removing a mark that was never added is also ENOENT, with the path.
        with pytest.raises(FileNotFoundError) as info:
            fan.unmark(tmpfs, Event.CLOSE_WRITE)
        assert info.value.filename == str(tmpfs)


@pytest.mark.kernel
async def test_relative_path_with_dirfd(tmpfs: Path) -> None:
    (tmpfs / "sub").mkdir()
    dirfd = os.open(tmpfs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        async with Fanotify() as fan:
            fan.mark("sub", Event.OPEN, dirfd=dirfd)
            with pytest.raises(FileNotFoundError) as info:
                fan.mark("nope", Event.OPEN, dirfd=dirfd)
            assert info.value.filename == "nope"
    finally:
        os.close(dirfd)


@pytest.mark.kernel
async def test_onlydir_on_a_file(tmpfs: Path) -> None:
    (tmpfs / "f").write_text("x")
    async with Fanotify() as fan:
        with pytest.raises(NotADirectoryError, match="ONLYDIR") as info:
            fan.mark(tmpfs / "f", Event.OPEN, onlydir=True)
    assert info.value.filename == str(tmpfs / "f")


# -- missing privilege ---------------------------------------------------------

_UNPRIVILEGED = """
import sys
from afanotify import Fanotify, InitFlag, Event
try:
    Fanotify(InitFlag(int(sys.argv[1]))).close()
except PermissionError as exc:
    print("PermissionError", exc.errno, exc)
else:
    print("created")
"""


def _as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed for this test"
    require_nobody_python()
    return subprocess.run(
        [
            setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
            sys.executable, "-c", code, *args,
        ],
        env=child_env({"PATH": os.environ.get("PATH", "")}),
        cwd=CHILD_CWD, capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.mark.kernel
def test_unprivileged_fd_group_says_which_capability() -> None:
    r = _as_nobody(_UNPRIVILEGED, "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"PermissionError {errno.EPERM} "), r.stdout
    assert "CAP_SYS_ADMIN" in r.stdout and "run as root" in r.stdout
    assert "REPORT_FID" in r.stdout  # ... and the unprivileged alternative


@pytest.mark.kernel
def test_unprivileged_fid_group_is_allowed() -> None:
    # The alternative the message offers really works without privilege.
    r = _as_nobody(_UNPRIVILEGED, str(int(InitFlag.REPORT_FID)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "created\n"


def test_mark_permission_error_keeps_path() -> None:
    err = mark_error(
        OSError(errno.EPERM, "x"), "/mnt/x", MarkFlag.ADD | MarkFlag.FILESYSTEM, Event.OPEN
    )
    assert isinstance(err, PermissionError) and err.filename == "/mnt/x"
    assert "CAP_SYS_ADMIN" in str(err)


# -- flags the kernel rejects ----------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (InitFlag.REPORT_MNT | InitFlag.REPORT_FID, ("REPORT_FID (added in Linux 5.1)",
                                                     "REPORT_MNT (added in Linux 6.15)")),
        (InitFlag.REPORT_TID | InitFlag.REPORT_PIDFD, ("REPORT_TID", "REPORT_PIDFD (added in")),
        (InitFlag.REPORT_MNT | InitFlag.CLASS_CONTENT, ("CLASS_CONTENT", "REPORT_MNT")),
    ],
)
def test_rejected_flag_combination_names_the_flags(
    flags: InitFlag, named: tuple[str, ...]
) -> None:
    with pytest.raises(UnsupportedFlagError) as info:
        Fanotify(flags).close()
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.EINVAL
    msg = str(err)
    for text in named:
        assert text in msg
    assert f"Linux {RELEASE}" in msg and "together with" in msg


@pytest.mark.kernel
def test_find_rejected_init_flag_probes_the_kernel() -> None:
    base = InitFlag.NONBLOCK | InitFlag.CLOEXEC
    assert _find_rejected_init_flag(base | InitFlag.REPORT_FID, 0) is None
    assert _find_rejected_init_flag(
        base | InitFlag.REPORT_MNT | InitFlag.REPORT_DFID_NAME, 0
    ) == InitFlag.REPORT_DIR_FID | InitFlag.REPORT_MNT


def test_init_error_for_a_flag_an_old_kernel_lacks() -> None:
    # The path a pre-6.15 kernel takes: REPORT_MNT alone is rejected.
    err = init_error(OSError(errno.EINVAL, "x"), InitFlag.REPORT_MNT, InitFlag.REPORT_MNT)
    assert isinstance(err, UnsupportedFlagError) and err.errno == errno.EINVAL
    assert "InitFlag.REPORT_MNT (added in Linux 6.15)" in str(err)
    assert f"Linux {RELEASE}" in str(err) and "upgrade the kernel" in str(err)


def test_init_error_without_a_culprit_lists_newer_flags() -> None:
    err = init_error(OSError(errno.EINVAL, "x"), InitFlag.REPORT_PIDFD | InitFlag.REPORT_FID, None)
    assert err.errno == errno.EINVAL
    assert "REPORT_PIDFD (Linux 5.15)" in str(err) and "REPORT_FID (Linux 5.1)" in str(err)


def test_init_error_other_errnos() -> None:
    assert isinstance(init_error(OSError(errno.EPERM, "x"), 0, None), PermissionError)
    assert "max_user_groups" in str(init_error(OSError(errno.EMFILE, "x"), 0, None))
    assert "CONFIG_FANOTIFY" in str(init_error(OSError(errno.ENOSYS, "x"), 0, None))


def test_mark_error_einval_names_newer_flags_and_events() -> None:
    err = mark_error(
        OSError(errno.EINVAL, "x"), "/p", MarkFlag.ADD | MarkFlag.MNTNS, Event.MNT_ATTACH
    )
    assert isinstance(err, UnsupportedFlagError) and err.filename == "/p"
    assert "MNTNS (Linux 6.15)" in str(err) and "MNT_ATTACH (Linux 6.15)" in str(err)
    assert f"Linux {RELEASE}" in str(err)


@pytest.mark.kernel
async def test_fs_error_on_an_inode_mark_is_rejected_by_the_kernel(tmpfs: Path) -> None:
    async with Fanotify(InitFlag.REPORT_FID) as fan:
        with pytest.raises(UnsupportedFlagError, match="FS_ERROR") as info:
            fan.mark(tmpfs, Event.FS_ERROR)  # FS_ERROR needs a filesystem mark
    assert info.value.filename == str(tmpfs)


# -- bad arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"flags": "REPORT_FID"}, TypeError, "flags"),
        ({"flags": True}, TypeError, "flags"),
        ({"flags": 1 << 30}, ValueError, "flags"),
        ({"flags": InitFlag.CLASS_CONTENT | InitFlag.CLASS_PRE_CONTENT}, ValueError, "class"),
        ({"flags": InitFlag.REPORT_NAME}, ValueError, "REPORT_DFID_NAME"),
        ({"flags": InitFlag.REPORT_TARGET_FID}, ValueError, "REPORT_DFID_NAME_TARGET"),
        ({"event_flags": 1.5}, TypeError, "event_flags"),
        ({"maxsize": 0}, ValueError, "maxsize"),
        ({"maxsize": "8"}, TypeError, "maxsize"),
        ({"buffer_size": 100}, ValueError, "buffer_size"),
        ({"handle_cache_size": -1}, ValueError, "handle_cache_size"),
        ({"default_response": 7}, ValueError, "default_response"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], exc: type, name: str) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(exc, match=name):
        Fanotify(**kwargs)  # type: ignore[arg-type]
    assert len(os.listdir("/proc/self/fd")) == fds  # no group fd was left open


@pytest.mark.kernel
async def test_bad_mark_arguments(tmpfs: Path) -> None:
    async with Fanotify() as fan:
        cases: list[tuple[dict[str, object], type, str]] = [
            ({"events": "OPEN"}, TypeError, "events"),
            ({"events": 0}, ValueError, "events"),
            ({"events": 1 << 29}, ValueError, "events"),
            ({"events": Event.CREATE}, ValueError, "FID group"),
            ({"events": Event.OPEN_PERM}, ValueError, "CLASS_CONTENT"),
            ({"events": Event.MNT_ATTACH}, ValueError, "mntns"),
            ({"events": Event.OPEN, "kind": "bogus"}, ValueError, "kind"),
            ({"events": Event.OPEN, "kind": 3.0}, TypeError, "kind"),
            ({"events": Event.OPEN, "kind": MarkFlag.ONLYDIR}, ValueError, "kind"),
            ({"events": Event.OPEN, "ignore": True, "ignore_style": "x"}, ValueError,
             "ignore_style"),
            ({"events": Event.OPEN, "survive_modify": True}, ValueError, "survive_modify"),
            ({"events": Event.OPEN, "kind": "mount", "evictable": True}, ValueError,
             "evictable"),
            ({"events": Event.OPEN, "dirfd": "3"}, TypeError, "dirfd"),
        ]
        for kwargs, exc, name in cases:
            with pytest.raises(exc, match=name):
                fan.mark(tmpfs, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="path"):
            fan.mark(3.5, Event.OPEN)  # type: ignore[arg-type]
    with pytest.raises(ClosedResourceError):
        fan.mark(tmpfs, Event.OPEN)


@pytest.mark.kernel
async def test_rename_needs_a_name_group(tmpfs: Path) -> None:
    async with Fanotify(InitFlag.REPORT_FID) as fan:
        with pytest.raises(ValueError, match="REPORT_DFID_NAME"):
            fan.mark(tmpfs, Event.RENAME)


_UNPRIVILEGED_PATHS = """
import asyncio, json, os, subprocess, sys
from afanotify import Event, Fanotify, InitFlag

root = sys.argv[1]
sub = os.path.join(root, "sub")
os.mkdir(sub)

async def main():
    out = []
    async with Fanotify(InitFlag.REPORT_DFID_NAME) as fan:
        fan.mark(sub, Event.CREATE | Event.EVENT_ON_CHILD)
        for script in (f"touch {sub}/x", f"mv {sub} {root}/moved && touch {root}/moved/y"):
            subprocess.run(["sh", "-c", script], check=True)
            with await asyncio.wait_for(fan.receive(), 5) as ev:
                out.append([ev.path, ev.path_resolved, ev.dir_path])
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.kernel
def test_unprivileged_fid_group_resolves_marked_directories(tmpfs: Path) -> None:
    # Without CAP_DAC_READ_SEARCH open_by_handle_at() fails; the handles of
    # marked objects still resolve, and only while their path is still theirs.
    r = _as_nobody(_UNPRIVILEGED_PATHS, str(tmpfs))
    assert r.returncode == 0, r.stderr
    (x, y) = json.loads(r.stdout)
    assert x == [f"{tmpfs}/sub/x", True, f"{tmpfs}/sub"]
    assert y == ["y", False, None]  # renamed: not reported under the old path
