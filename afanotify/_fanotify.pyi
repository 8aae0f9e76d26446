# The compiled cffi core (built from build_ffi.py).  Its functions and
# constants are typed where they are used, in afanotify._ffi.
from typing import Any

ffi: Any
lib: Any

# Added by lib.afn_install_builder() (afanotify/csrc/fastpath_build.c).
def _builder_setup(
    event_type: type, handle_type: type, slots: tuple[str, ...], defaults: tuple[Any, ...],
    handle_slots: tuple[str, ...], /,
) -> None: ...
def _build(
    out: Any, start: int, count: int, src: Any, arena: Any, events: list[Any],
    dirs: list[Any], by_record: dict[bytes, list[Any]], dir_path: Any, skip_pids: Any,
    flags: int, perm_mask: int, dir_change_mask: int, /,
) -> tuple[int, int, int]: ...
