"""afanotify.pyfanotify: afanotify.compat's names with pyfanotify 0.3.0's runtime types."""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_compat import Held

import afanotify.compat as compat
import afanotify.pyfanotify as legacy
from afanotify._compat_data import from_native
from afanotify.events import OWN_FD
from afanotify.events import FanotifyData as NativeData


@pytest.fixture
def held() -> Iterator[Held]:
    h = Held()
    yield h
    h.release()


def _event(**kw: object) -> compat.FanotifyData:
    return from_native(NativeData(**kw))  # type: ignore[arg-type]


def test_module_has_every_name_compat_has() -> None:
    names = {n for n in vars(compat) if n.startswith("FAN") or n == "AT_FDCWD"}
    assert names
    for n in names:
        assert getattr(legacy, n) == getattr(compat, n), n
    for n in ("Fanotify", "FanoRule", "FanotifyClient", "FanotifyData", "evt_to_str"):
        assert hasattr(legacy, n), n
    # The same class but for where fn runs (FN_IN: a forked child, as in 0.3.0).
    assert legacy.Fanotify.__bases__ == (compat.Fanotify,)
    # (Dunder names aside: Python 3.13 adds __firstlineno__ and __static_attributes__.)
    assert {n for n in vars(legacy.Fanotify) if not n.startswith("__")} == {"FN_IN"}
    assert issubclass(legacy.FanotifyClient, compat.FanotifyClient)


def test_fanotify_data_is_a_dict_with_attribute_access() -> None:
    ev = legacy.FanotifyData()
    assert isinstance(ev, dict)
    assert dict(ev) == {"fd": -1, "pid": 0, "ev_types": 0, "exe": None, "cwd": None,
                        "path": ()}
    ev.ev_types = "open"
    assert ev["ev_types"] == "open"
    with pytest.raises(AttributeError):
        _ = ev.nothing


def test_no_pattern_gives_empty_bytes() -> None:
    rule = legacy.FanoRule(b"r", ev_types=compat.FAN_OPEN)
    ev = _event(pid=7, ev_types=compat.FAN_OPEN, exe="/bin/cat", cwd="/", path="/m/f")
    out = legacy.to_legacy(ev, rule)
    assert out == {"fd": -1, "pid": 7, "ev_types": compat.FAN_OPEN, "exe": b"", "cwd": b"",
                   "path": (b"",)}


def test_patterns_give_bytes() -> None:
    rule = legacy.FanoRule(b"r", exe_pattern="*", cwd_pattern="*", path_pattern="*")
    ev = _event(pid=7, ev_types=compat.FAN_OPEN, exe="/bin/cat", cwd="/", path="/m/f")
    out = legacy.to_legacy(ev, rule)
    assert (out.exe, out.cwd, out.path) == (b"/bin/cat", b"/", (b"/m/f",))
    assert out.path[0].decode() == "/m/f"


def test_rename_gives_two_paths() -> None:
    rule = legacy.FanoRule(b"r", path_pattern="*")
    ev = _event(ev_types=compat.FAN_RENAME, path="/m/b", old_path="/m/a", new_path="/m/b")
    assert legacy.to_legacy(ev, rule).path == (b"/m/a", b"/m/b")


def test_pass_fd_hands_the_fd_over_else_closes_it() -> None:
    r, w = os.pipe()
    os.close(w)
    try:
        ev = _event(fd=r, _owns=OWN_FD)
        out = legacy.to_legacy(ev, legacy.FanoRule(b"r", ev_types=1, pass_fd=True))
        assert out.fd == r
        os.fstat(r)  # still open: the receiver owns it
    finally:
        os.close(r)
    r, w = os.pipe()
    os.close(w)
    ev = _event(fd=r, _owns=OWN_FD)
    out = legacy.to_legacy(ev, legacy.FanoRule(b"r", ev_types=1))
    assert out.fd == -1
    with pytest.raises(OSError):
        os.fstat(r)


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        (compat.FAN_OPEN | compat.FAN_CLOSE_NOWRITE, "close_nowrite|open"),
        (compat.FAN_CREATE | compat.FAN_ONDIR | compat.FAN_EVENT_ON_CHILD,
         "create|ondir|on_child"),
        (compat.FAN_Q_OVERFLOW, ""),
        (0, ""),
    ],
)
def test_evt_to_str_is_0_3_0s(mask: int, text: str) -> None:
    assert legacy.evt_to_str(mask) == text


def test_evt_to_str_rejects_non_int() -> None:
    with pytest.raises(TypeError):
        legacy.evt_to_str("open")  # type: ignore[arg-type]


@pytest.mark.kernel
def test_private_debug_logs_to_the_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.pyfanotify.debug")
    fan = legacy.Fanotify(log=logger)
    try:
        with caplog.at_level(logging.DEBUG, logger="test.pyfanotify.debug"):
            fan._debug("NS errors: %s", {1: "x"})
    finally:
        fan.stop()
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("test.pyfanotify.debug", logging.DEBUG, "NS errors: {1: 'x'}")
    ]


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_exe_and_cwd_are_read_when_the_engine_reads_the_event(tmpfs: Path, held: Held) -> None:
    # As 0.3.0's worker does: before the event waits in the client's mailbox,
    # not when get_events() takes it (by then the process may be gone).
    fan = legacy.Fanotify()
    fan.mark(str(tmpfs), ev_types=compat.FAN_CLOSE_WRITE, is_type="mp")
    fan.start()
    try:
        cli = legacy.FanotifyClient(fan, exe_pattern="*", cwd_pattern="*")
        try:
            pid = held.run(f"cd {tmpfs} && echo x > f")
            deadline = time.monotonic() + 10
            while cli.statistics().queued == 0:  # in the mailbox, not taken yet
                assert time.monotonic() < deadline, "the event never reached the mailbox"
                time.sleep(0.01)
            pidfd = os.pidfd_open(pid)
            try:
                held.release()
                assert select.select([pidfd], [], [], 10)[0], "the held shell did not exit"
            finally:
                os.close(pidfd)
            with pytest.raises(FileNotFoundError):
                os.readlink(f"/proc/{pid}/exe")  # gone: nobody can read it now
            evs = [ev for ev in cli.get_events() if ev.pid == pid]
        finally:
            cli.close()
    finally:
        fan.stop()
    assert evs, "the event was dropped"
    assert all(ev.exe.endswith(b"sh") and ev.cwd == os.fsencode(tmpfs) for ev in evs), evs
