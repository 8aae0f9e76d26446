"""The packaging metadata in pyproject.toml: one version, the SPDX license,
classifiers that match the wheels built, and the extras CI installs."""

from __future__ import annotations

import importlib.metadata
import re
import sys

from helpers import REPO

import afanotify

if sys.version_info >= (3, 11):
    import tomllib
else:  # 3.10 has no tomllib: tomli is the same parser (the test extra installs it there)
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def test_the_version_lives_in_one_place() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "afanotify.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+)?", afanotify.__version__)
    assert importlib.metadata.version("afanotify") == afanotify.__version__
    # No other file states it.
    assert "0.1.0" not in (REPO / "setup.py").read_text()


def test_license_is_an_spdx_expression() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])


def test_python_classifiers_are_the_versions_wheels_are_built_for() -> None:
    built = PYPROJECT["tool"]["cibuildwheel"]["build"].split()
    built_versions = {f"3.{b[3:-2]}" for b in built}
    classified = {
        c.rsplit(" :: ", 1)[1] for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert classified == built_versions
    assert PROJECT["requires-python"] == f">={min(classified, key=lambda v: int(v[2:]))}"
    for needed in ("Development Status :: ", "Topic :: ", "Operating System :: POSIX :: Linux"):
        assert any(c.startswith(needed) for c in PROJECT["classifiers"]), needed
    assert {"Homepage", "Documentation", "Source", "Issues", "Changelog"} <= set(PROJECT["urls"])


def test_wheels_require_the_compiled_core_and_skip_musl() -> None:
    cibw = PYPROJECT["tool"]["cibuildwheel"]
    assert cibw["environment"]["AFANOTIFY_REQUIRE_C"] == "1"
    assert "*-musllinux_*" in cibw["skip"].split()
    assert set(cibw["linux"]["archs"]) == {"x86_64", "aarch64"}


def test_ci_installs_what_the_docs_test_needs() -> None:
    readme = (REPO / "README.md").read_text()
    command = readme.split("<!-- ci:test -->", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    extras = re.findall(r"'\.\[([\w-]+)\]'", command)
    assert "test" in extras
    installed = " ".join(
        " ".join(PROJECT["optional-dependencies"][e]) for e in extras
    )
    for package in PROJECT["optional-dependencies"]["docs"]:
        assert package in installed, package


def test_changelog_has_the_current_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    assert f"## [{afanotify.__version__}]" in text
    assert "## [Unreleased]" in text
