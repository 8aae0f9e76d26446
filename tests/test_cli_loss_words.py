"""Loss is said in words that name its cause: the kernel's queue, the drain's bound, the reader.

Kernel tests on private mounts.  The drain thread marks a gap of its own
with a Q_OVERFLOW record of pid -1 (the kernel's have pid 0), so the decoder's
warning blames the drain's bound and names ``--max-backlog``, never the
kernel (the summary's and ``--stats-interval``'s words for it are
test_cli_capture.py's test_backlog_loss_is_said_in_words).  A slow reader of stdout
(``watch ... | (sleep 3; cat)``) costs lines that are counted and said.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import child_env
from test_cli import CHILD_CWD, CLI, ENV, json_lines

from afanotify import Event, Fanotify, FanotifyData, InitFlag, WouldBlock, _drain
from afanotify._pipeline import DRAIN_GAP_PID

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

needs_drain = pytest.mark.skipif(not _drain.available(), reason="the pure core has no drain")

BURST = r"""
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for j in range(n):
    p = os.path.join(root, f"f{j:05d}")
    with open(p, "w") as f:
        f.write("x")
    os.unlink(p)
"""


def _burst(root: Path, n: int) -> None:
    subprocess.run([sys.executable, "-c", BURST, str(root), str(n)], cwd=CHILD_CWD,
                   env=child_env(), check=True, timeout=60)


@needs_drain
def test_drain_gap_is_blamed_on_the_drain_once(tmpfs: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # Nobody takes the batches until the 2 MiB bound made the drain drop
    # reads; then every batch is taken and decoded by the group.
    caplog.set_level(logging.DEBUG, logger="afanotify._pipeline")
    with Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID) as fan:
        fan.mark(str(tmpfs), Event.CREATE | Event.DELETE, "filesystem")
        drain = _drain.Drain(fan, limit=2 << 20, paths=False)
        drain.start()
        try:
            deadline = time.monotonic() + 60
            while drain.stats.dropped == 0:
                assert time.monotonic() < deadline, drain.stats
                _burst(tmpfs, 3000)
            # A sentinel read while the first batch is still held is dropped
            # too: write them until one is kept (after the gap record).
            gap_pids: list[int] = []
            seen_end = False
            k = 0
            while not seen_end:
                assert time.monotonic() < deadline, drain.stats
                subprocess.run(["touch", f"zz{k}"], cwd=tmpfs, check=True)
                k += 1
                while True:
                    try:
                        events, _procs = drain.read_batch()
                    except WouldBlock:
                        break
                    for ev in events:
                        if ev.ev_types & Event.Q_OVERFLOW:
                            gap_pids.append(ev.pid)
                        seen_end |= bool(ev.name and ev.name.startswith("zz"))
                        ev.close()
                time.sleep(0.01)
            st = drain.stats
        finally:
            drain.close()
    assert st.gaps >= 1 and len(gap_pids) == st.gaps, (gap_pids, st)
    assert set(gap_pids) == {DRAIN_GAP_PID}
    recs = [r for r in caplog.records if r.name == "afanotify._pipeline"]
    warned = [r.getMessage() for r in recs if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "drain thread dropped" in warned[0] and "--max-backlog" in warned[0]
    assert not any("kernel" in r.getMessage() for r in recs)
    later = [r for r in recs if r.levelno == logging.DEBUG and "drain thread" in r.getMessage()]
    assert len(later) == st.gaps - 1


def test_shell_pipe_with_a_sleeping_reader_loses_nothing_silently(tmpfs: Path,
                                                                  tmp_path: Path) -> None:
    # ``afanotify watch ... | (sleep 3; cat > FILE)``, every option at its
    # default: what the reader got plus what the summary says was dropped for
    # it is every line shown, and a drop is said in words.
    got = tmp_path / "got.json"
    cmd = " ".join([*CLI, "watch", "--json", "--events", "create,delete", str(tmpfs)])
    sh = subprocess.Popen(["sh", "-c", f"{cmd} | (sleep 3; cat > {got})"], env=ENV,
                          cwd=CHILD_CWD, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert sh.stderr is not None
        err = b""
        fd = sh.stderr.fileno()
        deadline = time.monotonic() + 20
        while b"watching" not in err:
            left = deadline - time.monotonic()
            assert left > 0, err
            if select.select([fd], [], [], left)[0]:
                err += os.read(fd, 65536)
        _burst(tmpfs, 20000)
        subprocess.run(["touch", "zz_end"], cwd=tmpfs, check=True)
        deadline = time.monotonic() + 60
        while not (got.exists() and b"zz_end" in got.read_bytes()[-4096:]):
            assert time.monotonic() < deadline, err[-400:]
            time.sleep(0.05)
        os.killpg(sh.pid, signal.SIGINT)
        err += sh.communicate(timeout=60)[1] or b""
    finally:
        if sh.poll() is None:
            os.killpg(sh.pid, signal.SIGKILL)
            sh.wait()
    text = err.decode()
    summary = next(x for x in text.splitlines() if "events seen" in x)
    shown = int(summary.split(" shown")[0].rsplit(" ", 1)[1])
    dropped = 0
    if " dropped for a slow reader" in summary:
        dropped = int(summary.split(" dropped for a slow reader")[0].rsplit(" ", 1)[1])
        assert f"LINES LOST: {dropped} line(s) dropped" in summary, summary
    else:
        assert "nothing lost" in summary, summary
    lines = json_lines(got.read_text())
    assert len(lines) + dropped == shown, (len(lines), summary)
    # (a create and the delete of the same name may be one event: the kernel
    # merges them while they wait in its queue)
    names = {r["file"]["name"] for r in lines}  # type: ignore[index]
    if not dropped:
        assert {f"f{j:05d}" for j in range(20000)} | {"zz_end"} <= names


@pytest.mark.parametrize("json", [True, False])
def test_a_drain_gap_line_does_not_blame_the_kernel(json: bool) -> None:
    from afanotify._cli_output import BatchFormatter

    fmt = BatchFormatter(json=json)
    gap = fmt.marker(FanotifyData(pid=DRAIN_GAP_PID, ev_types=int(Event.Q_OVERFLOW)), 0.0)
    kernel = FanotifyData(pid=0, ev_types=int(Event.Q_OVERFLOW))
    said = fmt.marker(kernel, 0.0)
    assert b"kernel" not in gap and b"backlog" in gap, gap
    assert b"the kernel dropped events" in said, said
    assert said == fmt.format([kernel], {}, 0.0)  # the kernel's line is as it was


def test_marker_lines_are_written_and_counted_in_no_count(tmp_path: Path) -> None:
    # A pipe that takes 4096 bytes at a time: the writes end mid-line, and
    # each partial write counts the event lines that got out, markers not.
    from afanotify._cli_sink import Sink

    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    try:
        sink = Sink(f"/proc/self/fd/{w}")  # the pipe, opened again (non-blocking)
        line = b"e" * 999 + b"\n"
        mark = b"m" * 999 + b"\n"
        sink.add(line * 3, 3)
        sink.add(mark, 0, marker=True)
        sink.add(line * 2, 2)
        sink.add(mark, 0, marker=True)
        sink.flush()
        got = b""
        seen = []
        while len(got) < 7000:
            seen.append(sink.written)
            got += os.read(r, 65536)
            sink._drain()
        sink.close()
    finally:
        os.close(w)
    assert got == line * 3 + mark + line * 2 + mark
    assert seen[0] == 3  # 4096 bytes: three lines and part of the marker
    assert sink.written == 5 and sink.unwritten == 0 and sink.dropped == 0
    os.close(r)
