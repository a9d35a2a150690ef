"""Finding and loading libdivvy, and the ctypes prototypes of divvy.h.

Everything that touches ctypes directly lives here; the rest of the package calls the functions of the loaded
library through `library()`. The prototypes mirror ``Sources/CDivvyC/include/divvy.h`` one for one (the tests
compare the error codes with the header).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

__all__ = ["LibraryNotFoundError", "library", "library_path"]

# The SONAME the .deb installs (libdivvy.so.1: C ABI 2, 128-bit handles) and the development name a plain build or
# -dev package has. libdivvy.so.0 (64-bit handles) is not loaded: its prototypes differ.
_SONAME = "libdivvy.so.1"
_DEVNAME = "libdivvy.so"
_BUNDLED = Path(__file__).resolve().parent / "_lib" / _SONAME

# divvy_mode (divvy.h).
MODE_ANY = 0
MODE_DIRECT = 1
MODE_MEDIATED = 2

# DIVVY_MAX_BATCH (divvy.h): the most handles one batch call takes.
MAX_BATCH = 4093


class LibraryNotFoundError(OSError):
    """libdivvy could not be loaded; the message lists every place that was tried and why each failed.

    Set ``DIVVY_LIBRARY`` to the path of ``libdivvy.so`` (e.g. ``.build/debug/libdivvy.so`` in a Divvy checkout),
    install the Divvy .deb (which provides ``libdivvy.so.1``), or install a wheel built with the library bundled.
    """


class Stats(ctypes.Structure):
    """``struct divvy_stats`` (divvy.h)."""

    _fields_ = [
        ("bytes_held", ctypes.c_uint64),
        ("blocks_held", ctypes.c_uint64),
        ("quota_bytes", ctypes.c_uint64),
        ("heap_bytes_used", ctypes.c_uint64),
        ("heap_bytes_free", ctypes.c_uint64),
        ("page_allowance", ctypes.c_uint32),
        ("clients", ctypes.c_uint32),
    ]


class Handle(ctypes.Structure):
    """``divvy_handle_t`` (divvy.h): a 128-bit handle as two 64-bit words."""

    _fields_ = [
        ("low", ctypes.c_uint64),
        ("high", ctypes.c_uint64),
    ]


def to_c_handle(handle: int) -> Handle:
    """The ``divvy_handle_t`` of a handle int (``low | high << 64``)."""
    return Handle(handle & 0xFFFF_FFFF_FFFF_FFFF, handle >> 64)


def from_c_handle(handle: Handle) -> int:
    """The int of a ``divvy_handle_t``: ``low | high << 64``."""
    return handle.low | handle.high << 64


class ShareInfo(ctypes.Structure):
    """``divvy_share_info`` (divvy.h)."""

    _fields_ = [
        ("handle", Handle),
        ("offset", ctypes.c_uint64),
        ("block_size", ctypes.c_uint64),
        ("holders", ctypes.c_uint32),
    ]


_client_p = ctypes.c_void_p
_int = ctypes.c_int
_handle = Handle
_handle_p = ctypes.POINTER(Handle)
_int_p = ctypes.POINTER(ctypes.c_int)
_void_pp = ctypes.POINTER(ctypes.c_void_p)
_size = ctypes.c_size_t

# name: (restype, argtypes) for every function of divvy.h. Declaring them all keeps ctypes from truncating a
# pointer to an int (its default for undeclared arguments and results) and passes handles as the 16-byte struct.
_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "divvy_connect": (_int, [ctypes.c_char_p, ctypes.c_char_p, _int, ctypes.POINTER(_client_p)]),
    "divvy_close": (_int, [_client_p]),
    "divvy_reconnect": (_int, [_client_p]),
    "divvy_client_info": (_int, [_client_p, _int_p, ctypes.POINTER(ctypes.c_uint32)]),
    "divvy_alloc": (_int, [_client_p, _size, _handle_p, _void_pp]),
    "divvy_free": (_int, [_client_p, _handle, _int_p]),
    "divvy_alloc_batch": (_int, [_client_p, _size, _size, _handle_p]),
    "divvy_free_batch": (_int, [_client_p, _handle_p, _size, _int_p, _int_p]),
    "divvy_share": (_int, [_client_p, _handle, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ShareInfo)]),
    "divvy_adopt": (_int, [_client_p, _handle, ctypes.c_uint64, _void_pp, ctypes.POINTER(_size)]),
    "divvy_pointer": (_int, [_client_p, _handle, _void_pp]),
    "divvy_handle_for_pointer": (_int, [_client_p, ctypes.c_void_p, _handle_p]),
    "divvy_stats": (_int, [_client_p, ctypes.POINTER(Stats)]),
    "divvy_ping": (_int, [_client_p]),
    "divvy_strerror": (ctypes.c_char_p, [_int]),
    "divvy_last_error_message": (ctypes.c_char_p, []),
}

# Added after the first release: declared when present, None-valued helpers report their absence.
_OPTIONAL_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "divvy_version": (ctypes.c_char_p, []),
    "divvy_version_number": (ctypes.c_uint, []),
}

_lock = threading.Lock()
_loaded: ctypes.CDLL | None = None
_loaded_from: str | None = None


def _candidates() -> list[tuple[str, str]]:
    """What to try, in order, as (description, name-or-path) pairs.

    ``$DIVVY_LIBRARY``, when set, is the only candidate: an explicit choice that fails must say so rather than
    silently load some other copy of the library.
    """
    explicit = os.environ.get("DIVVY_LIBRARY")
    if explicit:
        return [("$DIVVY_LIBRARY", explicit)]
    return [
        ("the library bundled in this package", str(_BUNDLED)),
        ("the installed library (the Divvy .deb)", _SONAME),
        ("the development library", _DEVNAME),
    ]


def _load(candidates: list[tuple[str, str]]) -> tuple[ctypes.CDLL, str]:
    """Loads the first candidate that loads and has divvy.h's functions; raises LibraryNotFoundError otherwise."""
    failures = []
    for description, name in candidates:
        if os.sep in name and not os.path.exists(name):
            failures.append(f"  {description}: {name}: no such file")
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError as error:
            failures.append(f"  {description}: {name}: {error}")
            continue
        missing = [symbol for symbol in _PROTOTYPES if not hasattr(lib, symbol)]
        if missing:
            failures.append(f"  {description}: {name}: loaded, but it is not libdivvy (no {', '.join(missing)})")
            continue
        return lib, name
    tried = "\n".join(failures)
    raise LibraryNotFoundError(
        "could not load libdivvy, the Divvy C client library. Tried, in order:\n"
        f"{tried}\n"
        "Set DIVVY_LIBRARY to the path of libdivvy.so (in a Divvy checkout: swift build --product divvy, then "
        "DIVVY_LIBRARY=$PWD/.build/debug/libdivvy.so), install the Divvy .deb (it provides libdivvy.so.1), or "
        "install a divvy wheel built with the library bundled (python/build-wheel.sh PATH_TO_LIBDIVVY)."
    )


def _declare(lib: ctypes.CDLL) -> None:
    for symbol, (restype, argtypes) in _PROTOTYPES.items():
        function = getattr(lib, symbol)
        function.restype = restype
        function.argtypes = argtypes
    for symbol, (restype, argtypes) in _OPTIONAL_PROTOTYPES.items():
        if hasattr(lib, symbol):
            function = getattr(lib, symbol)
            function.restype = restype
            function.argtypes = argtypes


def library() -> ctypes.CDLL:
    """The loaded libdivvy (loaded on first use, then cached for the life of the process).

    Raises:
        LibraryNotFoundError: no candidate loaded; the message lists them.
    """
    global _loaded, _loaded_from
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            lib, name = _load(_candidates())
            _declare(lib)
            _loaded_from = name
            _loaded = lib
    return _loaded


def library_path() -> str:
    """Where libdivvy was loaded from: a path, or the name the dynamic linker resolved (``libdivvy.so.1``).

    Loads the library if it is not loaded yet (raising LibraryNotFoundError as `library()` does).
    """
    library()
    assert _loaded_from is not None
    return _loaded_from


def strerror(code: int) -> str:
    """``divvy_strerror(code)``: the library's short constant description of an error code."""
    return library().divvy_strerror(code).decode("utf-8", "replace")


def last_error_message() -> str:
    """``divvy_last_error_message()``: the calling thread's detail message of its last failing call."""
    return library().divvy_last_error_message().decode("utf-8", "replace")


def version() -> str | None:
    """``divvy_version()`` when the loaded library has it, else None (libraries before 0.2.0 do not)."""
    lib = library()
    if not hasattr(lib, "divvy_version"):
        return None
    return lib.divvy_version().decode("utf-8", "replace")


def version_number() -> int | None:
    """``divvy_version_number()`` when the loaded library has it, else None."""
    lib = library()
    if not hasattr(lib, "divvy_version_number"):
        return None
    return int(lib.divvy_version_number())
