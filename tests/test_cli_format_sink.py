"""The watch's sink takes a batch's lines as one bytes buffer and still counts line by line."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from afanotify._cli_sink import Sink


def _batch(i: int, n: int, width: int = 100) -> bytes:
    return b"".join(b"%d-%d " % (i, k) + b"x" * width + b"\n" for k in range(n))


def test_a_file_gets_every_buffer_in_order_and_the_count(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = Sink(str(out))
    sink.add(_batch(0, 3), 3)
    sink.write("plain")
    sink.extend(["a", "b"])
    sink.add(b"", 0)
    sink.close()
    assert out.read_bytes() == _batch(0, 3) + b"plain\na\nb\n"
    assert (sink.written, sink.dropped, sink.unwritten) == (6, 0, 0)


def _stdout_pipe(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """A pipe as the sink's standard output: (read end, write end)."""
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdout", open(w, "w", closefd=False))
    return r, w


def test_a_slow_pipe_reader_loses_whole_batches_counted_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r, w = _stdout_pipe(monkeypatch)
    try:
        sink = Sink(None, pending_max=100_000)
        total = 0
        for i in range(100):  # about 550 kB: far past the pipe and pending_max
            sink.add(_batch(i, 50), 50)
            total += 50
            sink.flush()
        assert sink.dropped > 0 and sink.dropped % 50 == 0
        got = bytearray()

        def read_all() -> None:
            while chunk := os.read(r, 1 << 16):
                got.extend(chunk)

        reader = threading.Thread(target=read_all)
        reader.start()
        sink.finish(wait=10)
    finally:
        os.close(w)
    reader.join(10)
    os.close(r)
    assert sink.unwritten == 0
    assert sink.written + sink.dropped == total
    assert got.count(b"\n") == sink.written
    # What got out is whole batches, in order, none cut.
    lines = bytes(got).splitlines()
    assert all(line.endswith(b"x" * 100) for line in lines)
    batches = sorted({int(line.split(b"-")[0]) for line in lines})
    assert lines[0].startswith(b"0-0 ") and len(lines) == 50 * len(batches)


def test_a_closed_pipe_leaves_the_unwritten_lines_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r, w = _stdout_pipe(monkeypatch)
    try:
        sink = Sink(None)
        os.close(r)
        sink.add(_batch(0, 7), 7)
        sink.flush()
        assert sink.broken
        sink.add(_batch(1, 5), 5)
        sink.finish(wait=0)
    finally:
        os.close(w)
    assert (sink.written, sink.unwritten, sink.dropped) == (0, 12, 0)
