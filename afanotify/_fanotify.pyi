# The compiled cffi core (built from build_ffi.py).  Its functions and
# constants are typed where they are used, in afanotify._ffi.
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

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

# Added by lib.afn_install_ready() (afanotify/csrc/fastpath_ready.c).
class ReadyAwaitable(Coroutine[Any, Any, Any]):
    def __await__(self) -> Any: ...
    def __next__(self) -> Any: ...
    def __iter__(self) -> ReadyAwaitable: ...
    def send(self, value: None, /) -> Any: ...
    def throw(self, typ: Any, val: Any = ..., tb: Any = ..., /) -> Any: ...
    def close(self) -> None: ...

def _ready(value: _T, owner: Any, /) -> Coroutine[Any, Any, _T]: ...
