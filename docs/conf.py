"""Sphinx configuration of the afanotify documentation.

Build: ``pip install '.[docs]' && python -m sphinx -W -b html docs docs/_build``
(tests/test_docs.py builds it the same way, warnings as errors).  The guides
are the Markdown files in this directory, read through MyST; the API
reference (api.rst) is generated from the docstrings of the installed
afanotify, so build from an install (an editable one is fine).
"""

from __future__ import annotations

import afanotify

project = "afanotify"
author = "the afanotify developers"
copyright = "2026, the afanotify developers"
version = release = afanotify.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# The guides number their sections from "##"; the README's CLI section
# (included in cli.md) goes from "##" to "####".  Anchors for links such as
# group.md#marks come from headings down to level 3.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]
suppress_warnings = ["myst.header"]

# The reference documents the names where users import them from
# (``afanotify.Fanotify``), in source order, with type hints in the text.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Names in annotations that Sphinx cannot resolve on its own page.
nitpicky = False

html_theme = "alabaster"
html_title = f"afanotify {release}"
html_static_path: list[str] = []
