"""The build of the compiled core, ``afanotify._fanotify`` (see build_ffi.py).

The core is optional: when it cannot be compiled (no C compiler, no Python
headers), the install goes on without it and afanotify runs on its
pure-Python core (``afanotify/_purecore.py``), which ``afanotify features``
reports.  Set ``AFANOTIFY_REQUIRE_C=1`` to make a failed compile fail the
build instead, as the wheel builds do: a wheel must never ship without it.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

# What a missing or broken toolchain raises: CompileError and LinkError are
# CCompilerErrors; a compiler that is not there at all is an ExecError (or an
# OSError from spawn), no compiler for the platform a PlatformError.
_NO_TOOLCHAIN = (CCompilerError, ExecError, PlatformError, OSError)


def _required() -> bool:
    return os.environ.get("AFANOTIFY_REQUIRE_C", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """``build_ext`` that installs without the compiled core when it cannot be built."""

    def run(self) -> None:
        try:
            super().run()
        except _NO_TOOLCHAIN as exc:
            self._skip(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except _NO_TOOLCHAIN as exc:
            self._skip(exc)

    def _skip(self, exc: BaseException) -> None:
        if _required():
            raise exc
        self.warn(
            f"afanotify: the compiled core was not built ({exc}); installing the "
            "pure-Python core instead. Everything works, decoding is slower. For the "
            "compiled core, install a C compiler and the Python headers "
            "(apt install gcc python3-dev) and reinstall."
        )


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
