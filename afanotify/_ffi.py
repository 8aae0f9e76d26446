"""The only importer of the compiled core; thin syscall wrappers.

Each wrapper raises ``OSError(errno, message, path)`` on failure.  Messages say
what to do about the error, not only what went wrong.

There are two cores with one interface (``ffi``, ``lib``): the compiled
``afanotify._fanotify`` (built by ``build_ffi.py`` when the install had a C
compiler), and ``afanotify._purecore``, which calls the C library through
cffi's ABI mode.  The compiled one is used when it imports; ``CORE`` says
which one this process runs on.  ``AFANOTIFY_CORE=pure`` forces the pure one
(tests run the suite on it that way); ``AFANOTIFY_CORE=c`` makes a missing
compiled core an ImportError instead of a fallback.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._fanotify import _Lib

__all__ = [
    "CORE",
    "CORE_ERROR",
    "ffi",
    "lib",
    "fanotify_init",
    "fanotify_mark",
    "respond",
    "respond_audit",
    "open_by_handle",
    "name_to_handle",
    "fsid_of_fd",
    "fnmatch",
    "event_builder",
]


log = logging.getLogger(__name__)


def _load_core() -> tuple[Any, Literal["c", "pure"], str | None]:
    """The core module, its name, and why the compiled one is not in use (or None)."""
    wanted = os.environ.get("AFANOTIFY_CORE", "")
    if wanted not in ("", "c", "pure"):
        raise ImportError(f"AFANOTIFY_CORE={wanted!r}: use 'c', 'pure', or leave it unset")
    if wanted != "pure":
        try:
            return importlib.import_module("._fanotify", __package__), "c", None
        except ImportError as exc:
            if wanted == "c":
                raise ImportError(
                    f"AFANOTIFY_CORE=c but the compiled core does not import: {exc}; "
                    "reinstall with a C compiler and the Python headers"
                ) from exc
            why = str(exc)
    else:
        why = "AFANOTIFY_CORE=pure"
    return importlib.import_module("._purecore", __package__), "pure", why


_core, _name, _why = _load_core()
#: ``"c"`` for the compiled core, ``"pure"`` for the pure-Python one.
CORE: Literal["c", "pure"] = _name
#: Why the compiled core is not in use (None when it is).
CORE_ERROR: str | None = _why
ffi: Any = _core.ffi
lib: _Lib = _core.lib

if CORE == "pure":
    # Once per process (on import): the library works, but decodes in Python.
    # A warning when the compiled core is missing, so the user sees it without
    # configuring logging; only informational when AFANOTIFY_CORE=pure asked.
    log.log(
        logging.INFO if CORE_ERROR == "AFANOTIFY_CORE=pure" else logging.WARNING,
        "afanotify runs on its pure-Python core (%s): everything works, decoding is slower. "
        "For the compiled core, install a wheel from PyPI, or reinstall with a C compiler "
        "and the Python headers: apt install gcc python3-dev (or dnf install gcc "
        "python3-devel), then pip install --force-reinstall --no-binary afanotify afanotify",
        CORE_ERROR,
    )


def _err(msg: str, path: str | bytes | None = None) -> OSError:
    code = ffi.errno
    text = f"{msg}: {os.strerror(code)}"
    if path is None:
        return OSError(code, text)
    return OSError(code, text, os.fsdecode(path))


def fanotify_init(flags: int, event_f_flags: int) -> int:
    """Create a fanotify group; returns its fd.

    :raises OSError: with the kernel's errno (EINVAL, EPERM, EMFILE, ...)
    """
    fd: int = lib.fanotify_init(flags, event_f_flags)
    if fd < 0:
        raise _err("fanotify_init failed")
    return fd


def fanotify_mark(fan_fd: int, flags: int, mask: int, dirfd: int, path: str | bytes | None) -> None:
    """Add, remove or flush a mark.

    :raises OSError: with the kernel's errno and the path
    """
    cpath: Any = ffi.NULL if path is None else os.fsencode(path)
    if lib.fanotify_mark(fan_fd, flags, mask, dirfd, cpath) < 0:
        raise _err("fanotify_mark failed", path)


def respond(fan_fd: int, fd: int, response: int) -> None:
    """Write one ``struct fanotify_response``.

    :raises OSError: when the kernel rejects the response
    """
    if lib.afn_respond(fan_fd, fd, response) < 0:
        raise _err("writing the permission response failed")


def respond_audit(
    fan_fd: int, fd: int, response: int, rule_number: int, subj_trust: int, obj_trust: int
) -> None:
    """Write a response followed by a FAN_INFO audit-rule record.

    :raises OSError: when the kernel rejects the response
    """
    if lib.afn_respond_audit(fan_fd, fd, response, rule_number, subj_trust, obj_trust) < 0:
        raise _err("writing the permission response with audit info failed")


def open_by_handle(mount_fd: int, handle: bytes, handle_type: int, flags: int) -> int:
    """``open_by_handle_at(2)``; returns a new fd.

    :raises OSError: ESTALE when the object is gone, EPERM without CAP_DAC_READ_SEARCH
    """
    fd: int = lib.afn_open_by_handle(mount_fd, handle, len(handle), handle_type, flags)
    if fd < 0:
        raise _err("open_by_handle_at failed")
    return fd


def name_to_handle(dirfd: int, path: str | bytes, flags: int = 0) -> tuple[int, bytes, int]:
    """``name_to_handle_at(2)``; returns ``(handle_type, handle, mount_id)``.

    :raises OSError: with the kernel's errno and the path
    """
    buf = ffi.new("unsigned char[]", lib.MAX_HANDLE_SZ)
    nbytes = ffi.new("uint32_t *")
    htype = ffi.new("int32_t *")
    mnt = ffi.new("int *")
    if lib.afn_name_to_handle(dirfd, os.fsencode(path), buf, nbytes, htype, mnt, flags) < 0:
        raise _err("name_to_handle_at failed", path)
    return int(htype[0]), bytes(ffi.buffer(buf, nbytes[0])), int(mnt[0])


def fsid_of_fd(fd: int) -> tuple[int, int]:
    """The filesystem id fanotify reports for objects on ``fd``'s filesystem.

    :raises OSError: when fstatfs fails
    """
    out = ffi.new("uint32_t[2]")
    if lib.afn_fsid(fd, out) < 0:
        raise _err("fstatfs failed")
    return int(out[0]), int(out[1])


def fnmatch(pattern: bytes, name: bytes, flags: int) -> bool:
    """glibc ``fnmatch(3)``; True on a match."""
    return bool(lib.fnmatch(pattern, name, flags) == 0)



@functools.cache
def event_builder() -> (
    tuple[Callable[..., None], Callable[..., tuple[int, int, int, int, int]]] | None
):
    """The C event builder's ``(_builder_setup, _build)``, or None without it.

    ``lib.afn_install_builder()`` adds both to the compiled module (cffi
    cannot export code written against the C API).  It runs once; None means
    the core predates the builder, or installing it failed.
    """
    if CORE != "c" or lib.afn_install_builder() != 0:
        return None
    return _core._builder_setup, _core._build
