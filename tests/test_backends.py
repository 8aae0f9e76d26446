"""The behavioural tests run on asyncio and on trio, and the trio variants really run under trio.

Those modules are marked for anyio's pytest plugin (``pytest.mark.anyio``),
whose ``anyio_backend`` fixture (tests/conftest.py) runs each async test once
per backend; conftest's ``pytest_pyfunc_call`` wrapper fails a test whose
body finds another library running than its backend says.  pytest-asyncio
runs in strict mode (pyproject.toml), so it takes only the async tests not
marked for anyio, which conftest hands it.
"""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sniffio
import trio
from helpers import CHILD_CWD, REPO, child_env

#: The behavioural modules that run every async test on both backends.
BOTH = (
    "test_client.py", "test_client_kernel.py", "test_group_basic.py",
    "test_group_decode_paths.py", "test_group_edge.py", "test_group_errors.py",
    "test_group_events.py", "test_group_lifecycle.py", "test_group_marks.py",
    "test_own_threads.py", "test_permission.py", "test_permission_matrix.py",
    "test_bad_input.py", "test_filesystems.py", "test_rules.py", "test_queue_put_many.py",
    "test_reliability.py",
)
#: Async tests there kept on asyncio, each saying why in a comment at the test.
ASYNCIO_ONLY = {
    "test_reliability.py": {
        "test_thousands_of_random_cancellations_lose_and_leave_nothing",
        "test_a_cancelled_async_handler_is_defaulted_with_a_log_line",
    },
}


@pytest.mark.anyio
async def test_an_anyio_test_runs_on_its_backend(anyio_backend: str) -> None:
    assert sniffio.current_async_library() == anyio_backend
    if anyio_backend == "trio":
        assert trio.lowlevel.current_task() is not None
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # no asyncio loop under the trio variant
    else:
        assert asyncio.current_task() is not None


def _async_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name for node in tree.body
        if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def test_every_async_behavioural_test_is_collected_once_per_backend() -> None:
    tests = REPO / "tests"
    files = [tests / name for name in BOTH]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly",
         *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
        cwd=CHILD_CWD, env=child_env(),  # the afanotify under test, not the checkout's
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ids: dict[tuple[str, str], list[str]] = {}
    for line in r.stdout.splitlines():
        m = re.fullmatch(r"tests/(test_\w+\.py)::(\w+)(?:\[(.*)\])?", line.strip())
        if m:
            ids.setdefault((m[1], m[2]), []).append(m[3] or "")
    for path in files:
        only_asyncio = ASYNCIO_ONLY.get(path.name, set())
        for name in _async_tests(path):
            params = ids.get((path.name, name))
            assert params, f"{path.name}::{name} was not collected"
            backends = [p.split("-") for p in params]
            on_trio = sum("trio" in b for b in backends)
            on_asyncio = sum("asyncio" in b for b in backends)
            if name in only_asyncio:
                assert (on_trio, on_asyncio) == (0, 0), f"{path.name}::{name}: {params}"
            else:
                # Each variant once on each backend, and nothing else.
                assert on_trio == on_asyncio == len(params) // 2 >= 1, (
                    f"{path.name}::{name}: {params}"
                )
