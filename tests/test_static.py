"""The static checks CI requires: mypy --strict and ruff, on the source tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


@pytest.mark.timeout(300)
def test_mypy_strict_is_clean() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "afanotify"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = subprocess.run(
        [ruff, "check", "afanotify", "tests", "build_ffi.py"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_timeouts_are_caught_as_asyncio_timeout_error() -> None:
    # On Python 3.10 asyncio.wait_for() raises asyncio.TimeoutError, which is
    # not the builtin TimeoutError (they are one class from 3.11); an
    # ``except TimeoutError`` there lets the timeout escape.
    bare = re.compile(r"^\s*except\b.*(?<![\w.])TimeoutError\b")
    found = []
    for folder in ("afanotify", "tests", "examples", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if bare.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "use asyncio.TimeoutError (Python 3.10):\n" + "\n".join(found)
