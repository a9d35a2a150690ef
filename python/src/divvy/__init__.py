"""divvy: Python client of divvyd, the Divvy shared-memory allocator daemon.

A process connects to the daemon (`Client`), allocates blocks of its shared memory (`Client.alloc`), reads and
writes them zero-copy (`Block.memoryview`, `Block.numpy`) and passes a block to another process by sending its
128-bit `Block.handle` (an int) and a share token (`Block.share().token`) by any means; the other process adopts
it with the token (`Client.adopt(handle, token)`) and sees the same bytes.

The package is pure Python over the C client library, libdivvy (``divvy.h``), through ctypes; the library is
found on first use (see `library_path`).
"""

from __future__ import annotations

from . import _native
from ._client import Block, Client, Mode, ShareInfo, Stats
from ._errors import (
    ClientClosedError,
    DaemonGoneError,
    DivvyError,
    ErrorCode,
    HandleError,
    NoDaemonError,
    NotPermittedError,
    OutOfSpaceError,
)
from ._native import LibraryNotFoundError

__all__ = [
    "__version__",
    "Block",
    "Client",
    "ClientClosedError",
    "DaemonGoneError",
    "DivvyError",
    "ErrorCode",
    "HandleError",
    "LibraryNotFoundError",
    "MAX_BATCH",
    "Mode",
    "NoDaemonError",
    "NotPermittedError",
    "OutOfSpaceError",
    "ShareInfo",
    "Stats",
    "library_path",
    "library_version",
]

#: The most blocks one `Client.alloc_batch` or `Client.free_batch` call takes (``DIVVY_MAX_BATCH``).
MAX_BATCH = _native.MAX_BATCH


def _source_tree_version() -> str:
    """The version in DivvyVersion.swift, for a package imported straight from a Divvy checkout (python/src)."""
    import re
    from pathlib import Path

    swift = Path(__file__).resolve().parents[3] / "Sources" / "Divvy" / "Core" / "DivvyVersion.swift"
    try:
        match = re.search(r'public static let string = "([^"]+)"', swift.read_text(encoding="utf-8"))
    except OSError:
        match = None
    return match.group(1) if match else "0+unknown"


try:
    # Written by setup.py into every built wheel from DivvyVersion.swift, the one place the version is written.
    from ._version import __version__
except ImportError:
    __version__ = _source_tree_version()


def library_version() -> str | None:
    """The loaded libdivvy's version (``divvy_version()``), e.g. ``"0.2.0"``; None for a library older than that
    call.

    Raises:
        LibraryNotFoundError: libdivvy could not be loaded.
    """
    return _native.version()


def library_path() -> str:
    """Where libdivvy was loaded from (loading it if needed).

    Tried in order: ``$DIVVY_LIBRARY`` (a path; when set, the only candidate), the library bundled in this
    package (``divvy/_lib/libdivvy.so.1``, in wheels built with one), ``libdivvy.so.1`` (the installed .deb),
    then ``libdivvy.so``; the latter two through the dynamic linker's search path.

    Raises:
        LibraryNotFoundError: nothing loaded; the message lists each candidate and why it failed.
    """
    return _native.library_path()
