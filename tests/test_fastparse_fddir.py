"""The C decoder's descriptor of /proc/self/fd: kept across batches, right
after a fork, and never mistaken for a file that took its number."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from _buffers import event
from helpers import is_open

from afanotify import _fastparse
from afanotify._fastparse import Decoder
from afanotify.flags import Event

pytestmark = pytest.mark.skipif(
    not _fastparse.available(), reason="this core has no C decoder"
)

_OPEN = int(Event.OPEN)


def _path_of(dec: Decoder, fd: int) -> str | None:
    buf = event(_OPEN, fd=fd)
    events, errors = dec.decode(buf, len(buf), resolve_fd_paths=True)
    assert not errors and len(events) == 1
    return events[0].path


def _fd_dir(dec: Decoder) -> int:
    fd = dec._fddir
    assert fd >= 0 and os.path.samestat(os.fstat(fd), os.stat(f"/proc/{os.getpid()}/fd"))
    return fd


def test_one_descriptor_serves_every_batch_until_close(tmp_path: Path) -> None:
    dec = Decoder()
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        assert _path_of(dec, a.fileno()) == str(tmp_path / "a")
        kept = _fd_dir(dec)
        assert _path_of(dec, b.fileno()) == str(tmp_path / "b")
        assert _fd_dir(dec) == kept  # not reopened per batch
    dec.close()
    assert not is_open(kept)
    dec.close()  # idempotent


def test_a_forked_child_reads_its_own_descriptor_table(tmp_path: Path) -> None:
    dec = Decoder()
    dec.open_fd_dir()
    inherited = _fd_dir(dec)
    (tmp_path / "child").write_text("")
    # A number the parent does not use: through the parent's table it would
    # not resolve, or resolve to the parent's file.
    number = 900
    assert not is_open(number)
    r, w = os.pipe()
    with warnings.catch_warnings():
        # 3.12 warns about fork() with threads alive; the child only decodes.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover (the child reports through the pipe)
        status = 1
        try:
            os.dup2(os.open(tmp_path / "child", os.O_RDONLY), number)
            path = _path_of(dec, number)
            fresh = dec._fddir
            ok = (
                path == str(tmp_path / "child")
                and fresh >= 0
                and os.path.samestat(os.fstat(fresh), os.stat(f"/proc/{os.getpid()}/fd"))
            )
            os.write(w, f"{path}|{ok}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode()
    _, code = os.waitpid(pid, 0)
    assert code == 0
    assert report == f"{tmp_path / 'child'}|True"
    assert _fd_dir(dec) == inherited  # the parent's own is untouched
    dec.close()


def test_a_file_that_took_the_number_is_neither_read_nor_closed(tmp_path: Path) -> None:
    dec = Decoder()
    dec.open_fd_dir()
    number = _fd_dir(dec)
    os.close(number)  # closed behind the decoder's back
    stranger = os.open(tmp_path / "stranger", os.O_CREAT | os.O_RDONLY)
    try:
        if stranger != number:
            os.dup2(stranger, number)
            os.close(stranger)
        with open(tmp_path / "a", "w") as a:
            # readlinkat on a regular file fails (ENOTDIR): the full path is read.
            assert _path_of(dec, a.fileno()) == str(tmp_path / "a")
        dec.close()
        assert is_open(number)
        assert os.path.samestat(os.fstat(number), os.stat(tmp_path / "stranger"))
    finally:
        os.close(number)
