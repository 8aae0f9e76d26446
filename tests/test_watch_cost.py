"""The cost work of ``afanotify watch`` (issue #12): the cheaper paths give the same paths.

- A PIDFD record (every event of a FAN_REPORT_PIDFD group, as ``watch``
  opens when it can) keeps an event in the plain FID+name shape, so the C
  builder fills its path; before, each such event was a cut and every path
  was resolved in Python.
- ``watch`` takes the drain thread's batches at most every ``PACE_S``, so
  that a steady rate comes in batches, not in rounds of a few events each.
- A FID-only event with DELETE_SELF is not looked up with
  ``open_by_handle_at``: its object has no link left, so the lookup could
  only fail or name it "(deleted)" (both: no path).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import child_env
from test_cli import CHILD_CWD, cli
from test_cli_capture import _wait_lines
from test_fastparse_differential import DFID_NAME, FID, PIDFD, event, fid_rec, rec

from afanotify import _drain, _fastparse
from afanotify._dirmap import DirMap
from afanotify.events import FileHandle
from afanotify.flags import Event, InitFlag
from afanotify.group import Fanotify

needs_c = pytest.mark.skipif(not _fastparse.available(), reason="needs the compiled core")


@needs_c
@pytest.mark.parametrize("pidfd", [-1, -2, 0, 1000], ids=["nopidfd", "epidfd", "zero", "fd"])
def test_a_pidfd_record_keeps_the_path_in_c(pidfd: int) -> None:
    buf = b"".join(
        event(fid_rec(DFID_NAME, name=n), rec(PIDFD, struct.pack("=i", pidfd)), fd=-1,
              mask=int(Event.CREATE))
        for n in (b"a", b"b")
    ) + event(fid_rec(DFID_NAME, name=b"c"), fid_rec(FID, handle=b"\x09" * 8),
              rec(PIDFD, struct.pack("=i", pidfd)), fd=-1, mask=int(Event.CLOSE_WRITE))
    dec = _fastparse.Decoder()
    asked: list[Any] = []

    def dir_path(h: FileHandle) -> str:
        asked.append(h)
        return "/d"

    events, errors = dec.decode(buf, len(buf), dir_path=dir_path)
    assert not errors
    assert [(e.path, e.dir_path, e.path_resolved, e.pidfd) for e in events] == [
        ("/d/a", "/d", True, pidfd), ("/d/b", "/d", True, pidfd), ("/d/c", "/d", True, pidfd),
    ]
    assert (dec.resolved_upto, dec.resolved_count) == (3, 3)
    assert len(asked) == 1  # once per directory, as without the record


@needs_c
def test_a_directory_change_with_a_pidfd_record_is_still_the_cut() -> None:
    pid_rec = rec(PIDFD, struct.pack("=i", -1))
    buf = (
        event(fid_rec(DFID_NAME, name=b"a"), pid_rec, fd=-1, mask=int(Event.CREATE))
        + event(fid_rec(DFID_NAME, name=b"sub"), pid_rec, fd=-1,
                mask=int(Event.DELETE | Event.ONDIR))
        + event(fid_rec(DFID_NAME, name=b"b"), pid_rec, fd=-1, mask=int(Event.CREATE))
    )
    dec = _fastparse.Decoder()
    events, _ = dec.decode(buf, len(buf), dir_path=lambda h: "/d")
    assert dec.resolved_upto == 1
    assert [e.path for e in events] == ["/d/a", None, None]


def _handle(n: int) -> FileHandle:
    return FileHandle((1, 2), 1, bytes([n]) * 8)


def test_a_deleted_object_is_not_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = DirMap()
    looked: list[FileHandle] = []

    def fresh(h: FileHandle, **_: Any) -> str:
        looked.append(h)
        return "/looked/up"

    monkeypatch.setattr(dm, "_fresh", fresh)
    dm.begin()
    gone, moved = _handle(1), _handle(2)
    assert dm.object_at(gone, 0, gone=True) is None
    assert dm.object_at(moved, 1) == "/looked/up"
    assert looked == [moved]
    # A directory the map knows keeps its path, deleted or not (the map
    # holds where it was until then).
    dm._put(gone, None, "/known")
    assert dm.object_at(gone, 2, gone=True) == "/known"


@pytest.mark.kernel
@needs_c
def test_pidfd_group_paths_are_filled_in_c(tmpfs: Path) -> None:
    """A FID group with pidfds names a burst's files (and the C builder named them)."""
    flags = InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID | InitFlag.REPORT_PIDFD
    try:
        fan = Fanotify(flags)
    except (OSError, ValueError) as exc:  # REPORT_PIDFD: Linux 5.15+
        pytest.skip(f"no FAN_REPORT_PIDFD here: {exc}")
    with fan:
        (tmpfs / "d").mkdir()
        fan.mark(str(tmpfs), Event.CREATE | Event.CLOSE_WRITE | Event.RENAME | Event.ONDIR,
                 "filesystem")
        names = [f"f{i:02d}" for i in range(20)]
        # Another process: the group leaves out its own events.
        script = "import sys\nfor p in sys.argv[1:]:\n    open(p, 'w').write('x')\n"
        subprocess.run([sys.executable, "-c", script,
                        *(str(tmpfs / "d" / n) for n in [*names, "zz-end"])],
                       check=True, timeout=30)
        seen: list[Any] = []
        counts = []
        while not any(e.name == "zz-end" and e.ev_types & Event.CLOSE_WRITE for e in seen):
            batch = fan.read_batch()
            fast = fan._pipeline.fast
            assert fast is not None
            counts.append((len(batch), fast.resolved_count))
            seen.extend(batch)
        for e in seen:
            assert e.pidfd >= 0 or e.pidfd in (-1, -2)
            assert e.path_resolved and e.path == os.path.join(tmpfs, "d", e.name)
            e.close()
        assert {e.name for e in seen} == {*names, "zz-end"}
        assert sum(c for _n, c in counts) == len(seen)  # every path filled in C


#: Files created one at a time, a few milliseconds apart (a steady rate: each
#: read of the drain thread holds a few events), then a sentinel.
STEADY = r"""
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(root, f"s{i:03d}"), "w") as f:
        f.write("x")
    time.sleep(0.002)
open(os.path.join(root, "zz_end"), "w").close()
"""


@pytest.mark.kernel
@pytest.mark.timeout(120)
@pytest.mark.skipif(not _drain.available(), reason="the pure core has no drain")
def test_paced_rounds_write_every_line_of_a_steady_rate(tmpfs: Path, tmp_path: Path) -> None:
    """The loop takes the drain's batches at most every PACE_S: no line is lost or stuck.

    Every create of a steady writer is written with its full path, and the
    last line follows the writer's end well within a deadline (a wakeup that
    came while a round was due must not be forgotten).
    """
    log = tmp_path / "out.jsonl"
    n = 150
    with cli("watch", "--filesystem", "--json", "--output", str(log), str(tmpfs)) as p:
        p.wait_stderr("watching")
        subprocess.run([sys.executable, "-c", STEADY, str(tmpfs), str(n)], cwd=CHILD_CWD,
                       env=child_env(), check=True, timeout=60)
        text = _wait_lines(log, f"{tmpfs}/zz_end", timeout=10.0)
        p.popen.send_signal(signal.SIGINT)
        code, _out, err = p.finish(timeout=60)
    assert code == 0, err
    created = {json.loads(line)["file"]["path"] for line in text.splitlines()
               if "create" in json.loads(line)["event"]["action"]}
    assert created >= {f"{tmpfs}/s{i:03d}" for i in range(n)}
    assert "nothing lost" in err
