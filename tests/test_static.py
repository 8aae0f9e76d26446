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


#: The structure's limits (docs/developers.md, "Architecture"): a module a
#: reader can hold in mind, and a class with one job.
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 450


def test_modules_and_classes_stay_within_their_size_limits() -> None:
    import ast

    found = []
    for path in sorted((REPO / "afanotify").rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(REPO)
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    found.append(
                        f"{name}:{node.lineno}: class {node.name} is {size} lines "
                        f"(at most {MAX_CLASS_LINES})"
                    )
    assert not found, "split these by job:\n" + "\n".join(found)
