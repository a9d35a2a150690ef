"""DivvyError and its subclasses: every divvy_error code of divvy.h, raised with the library's message."""

from __future__ import annotations

import enum

__all__ = [
    "ErrorCode",
    "DivvyError",
    "NoDaemonError",
    "DaemonGoneError",
    "NotPermittedError",
    "OutOfSpaceError",
    "HandleError",
    "ClientClosedError",
]


class ErrorCode(enum.IntEnum):
    """The ``divvy_error`` codes of divvy.h, by the C name without its ``DIVVY_`` prefix.

    Codes 1..99 are the daemon's protocol error codes (a newer daemon may send codes not named here: they are
    raised as plain ints); codes from 100 are raised on the client side.
    """

    OK = 0
    EMALFORMED_FRAME = 1
    EUNSUPPORTED_VERSION = 2
    EUNKNOWN_MESSAGE_TYPE = 3
    EFRAME_TOO_LARGE = 4
    ENOT_AUTHORIZED = 5
    EHANDSHAKE_REQUIRED = 6
    EWRONG_MODE = 7
    EQUOTA_EXCEEDED = 8
    EHEAP_FULL = 9
    EUNSUPPORTED_SIZE = 10
    EINVALID_HANDLE = 11
    EMISALIGNED_HANDLE = 12
    ESTALE_HANDLE = 13
    EDOUBLE_FREE = 14
    ENOT_HOLDER = 15
    EBATCH_TOO_LARGE = 16
    EADMIN_REQUIRED = 17
    ENO_SUCH_CLIENT = 18
    ETOO_MANY_CLIENTS = 19
    ESHUTTING_DOWN = 20
    EINTERNAL_ERROR = 21
    EINVALID_PARTICIPANT = 22
    EDIRECT_UNAVAILABLE = 23
    EALREADY_HOLDER = 24
    EFOREIGN_HANDLE = 25
    EBAD_SHARE_TOKEN = 26
    ENO_DAEMON = 100
    EDAEMON_GONE = 101
    ETIMED_OUT = 102
    ESYSTEM = 103
    EINVAL = 104
    EPROTOCOL = 105


def code_name(code: int) -> str:
    """The C name of `code` (``"DIVVY_EDOUBLE_FREE"``), or ``"DIVVY_ERROR_<code>"`` for a code divvy.h lacks."""
    try:
        return "DIVVY_" + ErrorCode(code).name
    except ValueError:
        return f"DIVVY_ERROR_{code}"


class DivvyError(Exception):
    """A divvy call failed.

    Attributes:
        code: the ``divvy_error`` code (an `ErrorCode` when divvy.h names it, else the plain int).
        name: the code's C name, e.g. ``"DIVVY_EDOUBLE_FREE"``.
        message: what happened, to what, and what to do (``divvy_last_error_message()`` for a failing C call).
        results: for `Client.free_batch`, the per-block codes (0 for each block that was freed); else None.
    """

    code: int
    name: str
    message: str
    results: list[int] | None

    def __init__(self, code: int, message: str, results: list[int] | None = None) -> None:
        try:
            self.code = ErrorCode(code)
        except ValueError:
            self.code = code
        self.name = code_name(code)
        self.message = message
        self.results = results
        super().__init__(f"{self.name}: {message}")

    def __reduce__(self):  # picklable (multiprocessing sends exceptions between processes)
        return (type(self), (int(self.code), self.message, self.results))


class NoDaemonError(DivvyError):
    """Nothing listens at the socket path (``DIVVY_ENO_DAEMON``): start divvyd or pass its socket."""


class DaemonGoneError(DivvyError):
    """The daemon went away or closed the connection (``DIVVY_EDAEMON_GONE``): call `Client.reconnect`.

    Every block held through the lost connection is gone.
    """


class NotPermittedError(DivvyError):
    """The daemon's policy refused this process (``DIVVY_ENOT_AUTHORIZED``) or the mode it asked for
    (``DIVVY_EWRONG_MODE``, e.g. ``mode="direct"`` for a uid not in ``direct-uids``), or ``mode="direct"`` found
    every participant slot of the daemon's heap taken (``DIVVY_EDIRECT_UNAVAILABLE``: connect with ``mode="any"``,
    served mediated then, or retry later)."""


class OutOfSpaceError(DivvyError):
    """An allocation did not fit: this client's quota (``DIVVY_EQUOTA_EXCEEDED``) or the shared heap
    (``DIVVY_EHEAP_FULL``). Nothing was allocated."""


class HandleError(DivvyError):
    """A handle or Block names no block this client may use, and nothing changed.

    ``DIVVY_EINVALID_HANDLE`` (not in the data area), ``DIVVY_EMISALIGNED_HANDLE`` (not the start of a block),
    ``DIVVY_ESTALE_HANDLE`` (freed since, maybe reused), ``DIVVY_EDOUBLE_FREE`` (already free, or this Block was
    already freed), ``DIVVY_ENOT_HOLDER`` (live but not held by this client), ``DIVVY_EALREADY_HOLDER`` (adopting
    a block this client already holds), ``DIVVY_EFOREIGN_HANDLE`` (issued by another heap: kept from before the
    daemon restarted), ``DIVVY_EBAD_SHARE_TOKEN`` (adopting with a share token that does not let this client adopt
    this handle: never issued for it, already used, or its sharer stopped holding the block).
    """


class ClientClosedError(DivvyError):
    """The Client was closed, or belongs to another process (it was inherited through fork()).

    Raised by Python before any C call (``code`` is ``DIVVY_EINVAL``): the C library's behaviour for a closed
    client is undefined, so the package checks instead of crashing.
    """


_CLASSES: dict[int, type[DivvyError]] = {
    ErrorCode.ENO_DAEMON: NoDaemonError,
    ErrorCode.EDAEMON_GONE: DaemonGoneError,
    ErrorCode.ENOT_AUTHORIZED: NotPermittedError,
    ErrorCode.EWRONG_MODE: NotPermittedError,
    ErrorCode.EDIRECT_UNAVAILABLE: NotPermittedError,
    ErrorCode.EQUOTA_EXCEEDED: OutOfSpaceError,
    ErrorCode.EHEAP_FULL: OutOfSpaceError,
    ErrorCode.EINVALID_HANDLE: HandleError,
    ErrorCode.EMISALIGNED_HANDLE: HandleError,
    ErrorCode.ESTALE_HANDLE: HandleError,
    ErrorCode.EDOUBLE_FREE: HandleError,
    ErrorCode.ENOT_HOLDER: HandleError,
    ErrorCode.EALREADY_HOLDER: HandleError,
    ErrorCode.EFOREIGN_HANDLE: HandleError,
    ErrorCode.EBAD_SHARE_TOKEN: HandleError,
}


def error_for(code: int, message: str, results: list[int] | None = None) -> DivvyError:
    """The DivvyError (or subclass) for `code`."""
    return _CLASSES.get(code, DivvyError)(code, message, results)
