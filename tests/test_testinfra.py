"""The test helpers themselves: Python children run the afanotify under test."""

from __future__ import annotations

import os
import re
from pathlib import Path

from helpers import CODE_ROOT, REPO, child_env, run_in_child

import afanotify


def test_a_child_imports_the_same_afanotify_with_its_compiled_core() -> None:
    # Installed non-editable, the checkout's afanotify/ has no compiled core;
    # a child that picked it up (cwd or PYTHONPATH) would fail here.
    r = run_in_child("import afanotify, afanotify._ffi; print(afanotify.__file__)")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == Path(afanotify.__file__).resolve()


def test_child_env_puts_the_code_first_and_keeps_the_rest_absolute() -> None:
    env = child_env({"PYTHONPATH": os.pathsep.join(["rel", "/abs", CODE_ROOT])}, EXTRA="1")
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts == [CODE_ROOT, os.path.abspath("rel"), "/abs"]
    assert env["EXTRA"] == "1"


def test_repo_is_the_checkout_holding_the_tests() -> None:
    assert (REPO / "tests" / "helpers.py").is_file()
    assert (REPO / "README.md").is_file() and (REPO / "examples").is_dir()


def test_no_test_points_a_child_at_the_checkout_by_hand() -> None:
    # PYTHONPATH set to the checkout works with an editable install and fails
    # in CI's non-editable one (the checkout has no compiled core): children
    # take child_env() and CHILD_CWD instead.
    by_hand = re.compile(r"PYTHONPATH\W+(str\()?(Path\(__file__\)|REPO\b)")
    found = [f"{p.name}:{n}" for p in sorted((REPO / "tests").glob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if by_hand.search(line)]
    assert found == []
