"""An install on a machine without a C compiler works, on the pure-Python core.

The checkout is installed into a fresh virtualenv with ``CC`` naming a
compiler that does not exist, as on a machine without gcc: the build of the
compiled core fails, the install must not.  The installed copy then reports
the pure core (``afanotify features``, once on stderr how to get the
compiled one) and delivers a real event from a private tmpfs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers import CHILD_CWD, REPO, child_env

import afanotify
from afanotify import _fastparse, _ffi

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]

# What a source tree carries that the install must not see: the checkout's
# own compiled core, build leftovers, virtualenvs.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "*.so", "*.o", "_fanotify.c",
    "__pycache__", ".mypy_cache", ".ruff_cache", ".hypothesis", "results",
)

# Watches the tmpfs (argv[1]) in FID mode, creates a file from a child
# process, and prints what it got as JSON.
_WATCH = """
import asyncio, json, subprocess, sys
import afanotify
from afanotify import Event, Fanotify, InitFlag, _ffi

async def main():
    async with Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID) as fan:
        fan.mark(sys.argv[1], Event.CREATE | Event.ONDIR, "filesystem")
        subprocess.run(["touch", sys.argv[1] + "/made-by-child"], check=True)
        ev = await asyncio.wait_for(fan.receive(), 10)
        with ev:
            print(json.dumps({"core": _ffi.CORE, "path": ev.path,
                              "create": bool(ev.events & Event.CREATE),
                              "features_core": afanotify.features().core}))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def pure_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding afanotify installed from the checkout with no usable compiler."""
    root = tmp_path_factory.mktemp("nocc")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(CC="/nonexistent/gcc", LDSHARED="/nonexistent/gcc -shared", PIP_NO_INPUT="1")
    r = subprocess.run(
        [str(env_dir / "bin" / "pip"), "install", "--no-cache-dir", "-v", str(src)],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    # The build did try the compiler, and went on without it.
    assert "/nonexistent/gcc" in r.stdout + r.stderr
    assert "installing the pure-Python core instead" in r.stdout + r.stderr
    return env_dir


def _run(env_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AFANOTIFY_"))}
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=CHILD_CWD, timeout=60, check=False
    )


def test_install_without_a_compiler_has_no_compiled_core(pure_install: Path) -> None:
    site = next((pure_install / "lib").glob("python3*/site-packages/afanotify"))
    assert (site / "_purecore.py").is_file()
    assert not list(site.glob("_fanotify*.so"))


def test_features_says_pure_core_and_how_to_get_the_compiled_one(pure_install: Path) -> None:
    r = _run(pure_install, str(pure_install / "bin" / "afanotify"), "features")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "core:        pure (pure-Python, slower decoding)"
    assert "OPEN" in r.stdout
    # One line on stderr, saying how to get the compiled core.
    assert r.stderr.count("pure-Python core") == 1, r.stderr
    assert "C compiler" in r.stderr
    j = _run(pure_install, str(pure_install / "bin" / "afanotify"), "features", "--json")
    assert json.loads(j.stdout)["core"] == "pure"


def test_pure_install_delivers_a_real_event(pure_install: Path, tmpfs: Path) -> None:
    r = _run(pure_install, str(pure_install / "bin" / "python"), "-c", _WATCH, str(tmpfs))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == {"core": "pure", "path": f"{tmpfs}/made-by-child", "create": True,
                   "features_core": "pure"}


def test_this_run_uses_the_core_it_asked_for() -> None:
    # The counterpart: the suite itself (CI installs with gcc) runs on the C
    # core, so the C decoder is what the other tests exercise, unless the run
    # asked for the pure one with AFANOTIFY_CORE=pure.
    if os.environ.get("AFANOTIFY_CORE") == "pure":
        assert (_ffi.CORE, _fastparse.available()) == ("pure", False)
        label = "pure (pure-Python, slower decoding)"
    else:
        assert _ffi.CORE == "c", _ffi.CORE_ERROR
        assert _fastparse.available()
        assert "afanotify._fanotify" in sys.modules
        label = "c (compiled)"
    feats = afanotify.features()
    assert feats.core == _ffi.CORE and feats.as_dict()["core"] == _ffi.CORE
    assert (feats.core_hint is None) == (_ffi.CORE == "c")
    # The command's first line says the same (with or without root).
    r = subprocess.run(
        [sys.executable, "-m", "afanotify", "features"], capture_output=True, text=True,
        env=child_env(), cwd=CHILD_CWD, timeout=60, check=False,
    )
    assert r.stdout.splitlines()[0] == f"core:        {label}", r.stdout + r.stderr
