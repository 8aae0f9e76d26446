"""The static checks CI requires: mypy --strict and ruff, on the source tree."""

from __future__ import annotations

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
