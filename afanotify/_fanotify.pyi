# The compiled cffi core (built from build_ffi.py).  Its functions and
# constants are typed where they are used, in afanotify._ffi.
from typing import Any

ffi: Any
lib: Any
