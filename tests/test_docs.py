"""The documentation: the Sphinx site builds with warnings as errors, and the
API reference documents every public name, from docstrings that say what
each method raises."""

from __future__ import annotations

import ast
import html
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import CHILD_CWD, REPO, child_env

import afanotify

DOCS = REPO / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built from docs/ against the afanotify under test, with -W."""
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / ".doctrees"), str(DOCS), str(out)],
        capture_output=True, text=True, env=child_env(), cwd=CHILD_CWD, timeout=280,
        check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.mark.timeout(300)
def test_every_guide_is_a_page_of_the_site(site: Path) -> None:
    pages = {p.stem for p in DOCS.glob("*.md")} | {p.stem for p in DOCS.glob("*.rst")}
    assert {"index", "group", "rules", "permissions", "compat", "developers", "api"} <= pages
    for page in pages:
        assert (site / f"{page}.html").is_file(), page
    # Each page is reachable from the table of contents, not only built.
    index = (site / "index.html").read_text()
    for page in pages - {"index"}:
        assert f'href="{page}.html"' in index, page


def _ids(html: str) -> set[str]:
    """The Python objects a page documents (and ``module-NAME`` for modules)."""
    objects = set(re.findall(r'<dt class="sig sig-object py[^"]*" id="([^"]+)"', html))
    return objects | set(re.findall(r'id="(module-[\w.]+)"', html))


@pytest.mark.timeout(300)
def test_api_reference_has_every_public_name(site: Path) -> None:
    ids = _ids((site / "api.html").read_text())
    missing = [
        name for name in afanotify.__all__
        if f"afanotify.{name}" not in ids and f"module-afanotify.{name}" not in ids
    ]
    assert not missing, f"not in docs/api.rst: {missing}"
    # And the members of the main classes, properties included.
    for cls in (afanotify.Fanotify, afanotify.FanotifyClient):
        for name in _public_members(cls):
            assert f"afanotify.{cls.__name__}.{name}" in ids, f"{cls.__name__}.{name}"


@pytest.mark.timeout(300)
def test_the_cli_page_has_the_json_field_table(site: Path) -> None:
    page = (site / "cli.html").read_text()
    cells = [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td>(.*?)</td>", page)]
    for field in ("@timestamp", "event.action", "fanotify.path_resolved", "process.executable"):
        assert field in cells, field


def _public_members(cls: type) -> list[str]:
    """Public attributes of ``cls`` and its bases, ``__aiter__`` included."""
    return [
        name for name, _value in inspect.getmembers(cls)
        if (not name.startswith("_") or name == "__aiter__") and name not in vars(object)
    ]


def _public_objects() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for name in afanotify.__all__:
        obj = getattr(afanotify, name)
        if name == "__version__" or inspect.ismodule(obj) or not callable(obj):
            continue
        out.append((name, obj))
        if inspect.isclass(obj) and not issubclass(obj, (int, BaseException)):
            for member, value in vars(obj).items():
                if member.startswith("_") and member != "__aiter__":
                    continue
                func = value.fget if isinstance(value, property) else value
                func = getattr(func, "__func__", func)
                if inspect.isfunction(func):
                    out.append((f"{name}.{member}", func))
    return out


@pytest.mark.parametrize(("name", "obj"), _public_objects(), ids=lambda v: str(v)[:40])
def test_public_name_has_a_docstring(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{name} has no docstring"
    if inspect.isfunction(obj):
        src = inspect.getsource(obj)
        # Code after the docstring that raises must say so with :raises:.
        body = src.split('"""', 2)[-1]
        if re.search(r"^\s+raise \w", body, re.M) and "raise StopAsyncIteration" not in body:
            assert ":raises" in doc, f"{name} raises but its docstring has no :raises:"


def test_help_of_the_package_is_an_introduction() -> None:
    doc = afanotify.__doc__ or ""
    lines = doc.strip().splitlines()
    assert len(lines) > 10
    for name in ("Fanotify", "FanoRule", "features", "afanotify.compat", "Event", "InitFlag"):
        assert name in doc, name


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in sorted([*DOCS.glob("*.md"), REPO / "README.md"]):
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
            blocks.append((f"{page.name}#{i}", code))
    return blocks


@pytest.mark.parametrize(("where", "code"), _python_blocks(), ids=lambda v: v.split("\n")[0][:30])
def test_python_examples_in_the_docs_compile(where: str, code: str) -> None:
    # Snippets may use await at top level, as in an asyncio REPL.
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST
    compile(textwrap.dedent(code), where, "exec", flags=flags)
