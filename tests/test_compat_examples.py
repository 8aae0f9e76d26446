"""pyfanotify's three published examples, ported to afanotify.compat, run end to end.

Each example runs as its own process, watching a private tmpfs the test
mounted.  The test process produces the events (through ``sh``), so they
come from a process that is not a descendant of the example.  The example
is stopped with SIGINT, as a user would press Ctrl-C.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import CHILD_CWD, REPO, child_env

EXAMPLES = REPO / "examples"


class Example:
    """A running example whose stdout is collected line by line on a thread."""

    def __init__(self, name: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=child_env(), cwd=CHILD_CWD,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._result: tuple[int, str] | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if any(pred(line) for line in self.seen):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.seen.append(self.lines.get(timeout=left))
            except queue.Empty:
                return False

    def stop(self) -> tuple[int, str]:
        if self._result is not None:
            return self._result
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        # stdout belongs to the reader thread; stderr is read here (examples
        # write little to it, so the pipe cannot fill up meanwhile).
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        self._result = (self.proc.returncode, err)
        return self._result


@pytest.fixture
def run_example() -> Iterator[Callable[..., Example]]:
    running: list[Example] = []

    def start(name: str, *args: str) -> Example:
        ex = Example(name, *args)
        running.append(ex)
        return ex

    yield start
    for ex in running:
        ex.stop()


def produce_until(ex: Example, script: Callable[[int], str], seen: Callable[[str], bool],
                  timeout: float = 20.0) -> None:
    """Run ``script(i)`` in a shell again and again until the example prints what ``seen`` wants.

    The example may still be starting; it reports an event only once its
    marks exist, so the test keeps producing until one is reported.
    """
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        subprocess.run(["sh", "-c", script(i)], check=True, timeout=10)
        if ex.wait_for(seen, 0.5):
            return
        assert ex.proc.poll() is None, ex.stop()
        i += 1
    rc, err = ex.stop()
    raise AssertionError(f"the example never reported it; rc={rc} out={ex.seen!r} err={err}")


def finish(ex: Example) -> None:
    rc, err = ex.stop()
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert any(line.strip() == "STOP" for line in ex.seen), ex.seen


@pytest.mark.parametrize(
    "name", ["legacy_simple.py", "legacy_fid.py", "legacy_all_mountpoints.py"]
)
def test_example_uses_only_the_changed_import(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    assert "import afanotify.compat as fan  # was: import pyfanotify as fan" in text
    # Nothing else from afanotify: the legacy API calls are pyfanotify's.
    assert text.count("afanotify.") == text.count("afanotify.compat")


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_legacy_simple(tmpfs: Path, run_example: Callable[..., Example]) -> None:
    ex = run_example("legacy_simple.py", str(tmpfs))
    assert ex.wait_for(lambda line: line.startswith("tick"), 10), ex.stop()
    produce_until(
        ex, lambda i: f"echo hello > {tmpfs}/note{i}",
        lambda line: f"'{tmpfs}/note" in line and "close_write" in line,
    )
    finish(ex)


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_legacy_fid(tmpfs: Path, run_example: Callable[..., Example]) -> None:
    ex = run_example("legacy_fid.py", str(tmpfs))
    produce_until(
        ex, lambda i: f"mkdir {tmpfs}/dir{i} && mv {tmpfs}/dir{i} {tmpfs}/moved{i}",
        lambda line: f"'{tmpfs}/moved" in line and "rename" in line,
    )
    assert any(f"'{tmpfs}/dir" in line and "create" in line for line in ex.seen), ex.seen
    finish(ex)


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_legacy_all_mountpoints(tmpfs: Path, run_example: Callable[..., Example]) -> None:
    mounts = [tmpfs / "a", tmpfs / "b"]
    for m in mounts:
        m.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "afanotify-ex", str(m)],
                       check=True)
    try:
        for m in mounts:
            (m / "data").write_text("payload\n")
        ex = run_example("legacy_all_mountpoints.py", str(tmpfs))
        assert ex.wait_for(lambda line: line.strip() == "marked", 10), ex.stop()
        for m in mounts:
            produce_until(
                ex, lambda i, m=m: f"cat {m}/data > /dev/null",
                lambda line, m=m: f"'{m}/data'" in line and "access" in line,
            )
        finish(ex)
    finally:
        for m in mounts:
            subprocess.run(["umount", "-l", str(m)], check=False, capture_output=True)
