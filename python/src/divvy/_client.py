"""Client and Block: the Python face of divvy.h's divvy_client and block handles."""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

from . import _native
from ._errors import ClientClosedError, DivvyError, ErrorCode, HandleError, error_for

if TYPE_CHECKING:  # numpy is optional: imported only by Block.numpy()
    import numpy

__all__ = ["Client", "Block", "Stats", "ShareInfo", "Mode"]

Mode = Literal["any", "direct", "mediated"]

_MODES = {"any": _native.MODE_ANY, "direct": _native.MODE_DIRECT, "mediated": _native.MODE_MEDIATED}
_MODE_NAMES = {_native.MODE_DIRECT: "direct", _native.MODE_MEDIATED: "mediated"}
_U64_MAX = (1 << 64) - 1
_U128_MAX = (1 << 128) - 1


@dataclass(frozen=True)
class Stats:
    """This client's usage and the heap's totals, from the daemon (``divvy_stats``).

    Attributes:
        bytes_held: bytes this client holds (sum of its blocks' sizes, including a direct client's blocks in
            shared memory).
        blocks_held: blocks this client holds.
        quota_bytes: the most bytes this client may hold.
        heap_bytes_used: bytes in use in the whole heap (all clients).
        heap_bytes_free: bytes free in the whole heap.
        page_allowance: pages this client may own (direct clients; 0 for mediated ones).
        clients: clients connected to the daemon, this one included.
    """

    bytes_held: int
    blocks_held: int
    quota_bytes: int
    heap_bytes_used: int
    heap_bytes_free: int
    page_allowance: int
    clients: int


@dataclass(frozen=True)
class ShareInfo:
    """What the daemon reports about a block this client holds (``divvy_share``).

    Attributes:
        handle: the block's handle (what another process passes to `Client.adopt`).
        offset: the block's offset from the start of the data area.
        block_size: the block's usable size in bytes (its size class: at least the size asked for).
        holders: how many clients hold the block now (each client once).
        token: the share token (an int, never 0): pass it with `handle` to the process that adopts
            (`Client.adopt(handle, token)`). It lets one client adopt once, and dies when this client stops
            holding the block or disconnects.
    """

    handle: int
    offset: int
    block_size: int
    holders: int
    token: int


class _Views:
    """Weak references to the memoryviews handed out, so freeing or closing can release them.

    A released memoryview raises ValueError on use instead of reading memory that was freed or unmapped. Only a
    view that nothing re-exported can be released (`memoryview.release` raises BufferError otherwise): a NumPy
    array or another buffer taken *from* a view is not protected.
    """

    __slots__ = ("_refs",)

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[memoryview]] = {}

    def add(self, view: memoryview) -> None:
        key = id(view)
        refs = self._refs

        def forget(ref: weakref.ref[memoryview]) -> None:
            # Runs while `view` is deallocated, so `key` cannot name a newer view yet.
            if refs.get(key) is ref:
                del refs[key]

        refs[key] = weakref.ref(view, forget)

    def release_all(self) -> None:
        refs, self._refs = self._refs, {}
        for ref in refs.values():
            view = ref()
            if view is not None:
                try:
                    view.release()
                except BufferError:
                    pass  # re-exported (e.g. np.frombuffer(view)): cannot be revoked; documented


def _check_handle(handle: int) -> int:
    if isinstance(handle, bool) or not isinstance(handle, int):
        raise TypeError(f"a handle is an int, not {type(handle).__name__}")
    if not 0 <= handle <= _U128_MAX:
        raise ValueError(f"a handle is a 128-bit unsigned integer; {handle} is out of range")
    return handle


def _check_size(size: int, what: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{what} is an int, not {type(size).__name__}")
    if not 0 <= size <= _U64_MAX:
        raise ValueError(f"{what} must be in 0...2**64-1, not {size}")
    return size


class Client:
    """A connection to divvyd (``divvy_connect``); allocates, adopts and frees blocks of its shared memory.

    Use it as a context manager, or call `close` yourself::

        with divvy.Client() as client:
            block = client.alloc(4096)
            block.memoryview()[:5] = b"hello"
            print(block.handle, block.share().token)  # another process: client.adopt(handle, token)

    Lifetimes: the client is closed by `close`, by leaving the ``with`` block, or when it is garbage-collected
    (nothing refers to it any more: a Block, a memoryview or a NumPy array over a block keeps it alive). Closing
    releases every block the client still holds (other holders keep theirs) and unmaps the shared memory, so
    every view over its blocks becomes invalid; Blocks of a closed client raise `ClientClosedError`.

    Threads: calls on one Client are serialised with a lock (the C client is not thread-safe); for parallel
    work, use one Client per thread. Processes: a Client belongs to the process that connected it; after
    ``fork()`` the child must connect its own (the inherited one raises `ClientClosedError`).

    Args:
        socket_path: the daemon's socket; None: ``$DIVVY_SOCKET``, else ``$XDG_RUNTIME_DIR/divvy/divvyd.sock``
            (``/run/divvy/divvyd.sock`` as root).
        name: this client's name in ``divvyctl clients`` (at most 255 bytes are kept); None: ``"c-client"``.
        mode: ``"any"`` (direct when the daemon's policy allows it, mediated otherwise), ``"direct"`` (the
            fast path: blocks are allocated in shared memory with no system call; refused unless the policy's
            ``direct-uids``/``direct-gids`` list this process) or ``"mediated"`` (every allocation is a round
            trip to the daemon; only the data area is mapped).

    Raises:
        NoDaemonError: nothing listens at the socket.
        NotPermittedError: the policy refused this process or the mode.
        DivvyError: any other ``divvy_connect`` failure (``.code`` says which).
        LibraryNotFoundError: libdivvy could not be loaded.
    """

    def __init__(
        self, socket_path: str | os.PathLike[str] | None = None, name: str | None = None, mode: Mode = "any"
    ) -> None:
        self._pointer: int | None = None
        if mode not in _MODES:
            raise ValueError(f"mode must be 'any', 'direct' or 'mediated', not {mode!r}")
        path = None if socket_path is None else os.fsencode(socket_path)
        encoded_name = None if name is None else name.encode("utf-8")
        if (path and b"\0" in path) or (encoded_name and b"\0" in encoded_name):
            raise ValueError("socket_path and name must not contain NUL characters")
        self._lib = _native.library()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._epoch = 0
        self._views = _Views()
        self._requested_mode: Mode = mode
        out = ctypes.c_void_p()
        code = self._lib.divvy_connect(path, encoded_name, _MODES[mode], ctypes.byref(out))
        if code != 0:
            raise error_for(code, _native.last_error_message())
        self._pointer = out.value
        self._mode = ""
        self._client_id = 0
        self._read_info()

    # --- lifetime -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection (``divvy_close``); safe to call more than once.

        The daemon releases every block this client still holds (other holders keep theirs), and the shared
        memory is unmapped: memoryviews over this client's blocks are released (using them raises ValueError),
        while NumPy arrays and buffers taken from a view must no longer be used (they cannot be revoked).
        A Client inherited through fork() is forgotten without calling C (divvy.h forbids it).
        """
        with self._lock:
            pointer, self._pointer = self._pointer, None
            if pointer is None:
                return
            if os.getpid() != self._pid:
                return  # the parent's client: the child must not touch it, not even to close it
            self._views.release_all()
            self._lib.divvy_close(pointer)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone already
            pass

    def __repr__(self) -> str:
        if self._pointer is None:
            return "<divvy.Client closed>"
        return f"<divvy.Client id={self._client_id} mode={self._mode}>"

    def __reduce__(self):
        raise TypeError("a divvy.Client cannot be pickled: each process connects its own Client")

    @property
    def closed(self) -> bool:
        """True once `close` was called (or the Client belongs to another process)."""
        return self._pointer is None or os.getpid() != self._pid

    @property
    def mode(self) -> str:
        """The mode the daemon granted: ``"direct"`` or ``"mediated"`` (``divvy_client_info``)."""
        return self._mode

    @property
    def client_id(self) -> int:
        """This connection's client id, as ``divvyctl clients`` shows it (``divvy_client_info``)."""
        return self._client_id

    def _read_info(self) -> None:
        mode = ctypes.c_int()
        client_id = ctypes.c_uint32()
        self._call("divvy_client_info", ctypes.byref(mode), ctypes.byref(client_id))
        self._mode = _MODE_NAMES.get(mode.value, f"unknown({mode.value})")
        self._client_id = client_id.value

    def _check_open(self) -> None:
        if self._pointer is None:
            raise ClientClosedError(
                ErrorCode.EINVAL, "this divvy.Client is closed; its blocks were released and their views are invalid"
            )
        if os.getpid() != self._pid:
            raise ClientClosedError(
                ErrorCode.EINVAL,
                f"this divvy.Client was connected by process {self._pid} and inherited through fork(); "
                "connect a new Client in this process",
            )

    def _call(self, function: str, *args: Any) -> None:
        """Calls ``function(client, *args)`` under the lock; raises the DivvyError of a failing code."""
        with self._lock:
            self._check_open()
            code = getattr(self._lib, function)(self._pointer, *args)
            if code != 0:
                # Thread-local in C, and read on this thread before any other call of ours.
                raise error_for(code, _native.last_error_message())

    # --- blocks ---------------------------------------------------------------------------------------------

    def alloc(self, size: int) -> Block:
        """Allocates a block of at least `size` bytes, held by this client (``divvy_alloc``).

        The contents are unspecified (not zeroed). The block stays allocated until `Block.free` or until this
        client closes; dropping the Block object does not free it.

        Raises:
            DivvyError: ``DIVVY_EUNSUPPORTED_SIZE`` (0, or above the largest size class), `OutOfSpaceError`
                (quota or heap full), `DaemonGoneError`, `ClientClosedError`.
        """
        _check_size(size)
        handle = _native.Handle()
        address = ctypes.c_void_p()
        self._call("divvy_alloc", size, ctypes.byref(handle), ctypes.byref(address))
        return Block(self, _native.from_c_handle(handle), size, address.value or 0)

    def alloc_batch(self, size: int, count: int) -> list[Block]:
        """Allocates `count` blocks of at least `size` bytes each, all or none (``divvy_alloc_batch``).

        A mediated client needs one round trip for the whole batch. `count` must be in 1...4093
        (``DIVVY_MAX_BATCH``).

        Raises:
            DivvyError: ``DIVVY_EBATCH_TOO_LARGE`` (count out of range) and the errors of `alloc`; no block stays
                allocated.
        """
        _check_size(size)
        _check_size(count, "count")
        if not 1 <= count <= _native.MAX_BATCH:
            # Checked here as divvy_alloc_batch checks it, so the handle array is never smaller than what C writes.
            raise DivvyError(
                ErrorCode.EBATCH_TOO_LARGE,
                f"alloc_batch: count {count} is not in 1...{_native.MAX_BATCH} (DIVVY_MAX_BATCH); "
                "nothing was allocated",
            )
        handles = (_native.Handle * count)()
        self._call("divvy_alloc_batch", size, count, handles)
        blocks = []
        address = ctypes.c_void_p()
        try:
            for handle in handles[:count]:
                self._call("divvy_pointer", handle, ctypes.byref(address))
                blocks.append(Block(self, _native.from_c_handle(handle), size, address.value or 0))
        except DivvyError:
            # Cannot happen for blocks just allocated; if it did, keep the batch all-or-none.
            freed = (_native.Handle * count)(*handles[:count])
            with self._lock:
                self._lib.divvy_free_batch(self._pointer, freed, count, None, None)
            raise
        return blocks

    def free_batch(self, blocks: Sequence[Block]) -> list[bool]:
        """Frees several blocks of this client (``divvy_free_batch``; a mediated client: one round trip).

        Each block is freed or not on its own. An empty sequence does nothing. At most 4093 blocks
        (``DIVVY_MAX_BATCH``).

        Returns:
            for each block, True when this free released it (no holder left), False when other holders remain.

        Raises:
            HandleError: a Block was already freed (``DIVVY_EDOUBLE_FREE``) or appears twice, or belongs to the
                connection before `reconnect` (``DIVVY_ESTALE_HANDLE``); checked before anything is sent, so
                nothing was freed.
            ValueError: a Block belongs to another Client.
            DivvyError: the first failing block's code, with ``.results`` holding every block's code (0 for the
                blocks that were freed, which are marked freed).
        """
        blocks = list(blocks)
        if not blocks:
            return []
        seen: set[int] = set()
        for block in blocks:
            if not isinstance(block, Block):
                raise TypeError(f"free_batch takes Blocks, not {type(block).__name__}")
            if block._client is not self:
                raise ValueError(f"{block!r} belongs to another Client")
            block._check_usable("free")
            if id(block) in seen:
                raise HandleError(
                    ErrorCode.EDOUBLE_FREE, f"{block!r} appears twice in the batch; nothing was freed"
                )
            seen.add(id(block))
        count = len(blocks)
        handles = (_native.Handle * count)(*(_native.to_c_handle(block._handle) for block in blocks))
        results = (ctypes.c_int * count)(*([-1] * count))
        released = (ctypes.c_int * count)()
        with self._lock:
            self._check_open()
            code = self._lib.divvy_free_batch(self._pointer, handles, count, results, released)
            message = _native.last_error_message() if code != 0 else ""
        for block, result in zip(blocks, results):
            if result == 0:
                block._mark_freed()
        if code != 0:
            raise error_for(code, message, [code if result == -1 else result for result in results])
        return [bool(flag) for flag in released]

    def adopt(self, handle: int, token: int) -> Block:
        """Takes a holding of a block another client shared (``divvy_adopt``).

        `handle` and `token` are the other side's `Block.handle` and the `ShareInfo.token` its `Block.share()`
        returned, passed by any means (a pipe, a socket, argv). A mediated client's adopt uses the token up (one
        token, one adopt); a direct client adopts in shared memory and does not need it. The block stays alive
        until every holder freed it. The returned Block's `size` is the block's usable size (its size class), which
        may exceed the size the allocating process asked for.

        A client holds a block once: adopting a block it already holds raises ``DIVVY_EALREADY_HOLDER``.

        Raises:
            HandleError: ``DIVVY_EBAD_SHARE_TOKEN`` (mediated: the token was never issued for this handle, was
                used, or its sharer stopped holding the block), ``DIVVY_ESTALE_HANDLE`` (the block was freed since,
                reused or not), ``DIVVY_EINVALID_HANDLE``, ``DIVVY_EMISALIGNED_HANDLE``, ``DIVVY_EFOREIGN_HANDLE``
                (issued by another heap: kept from before the daemon restarted), ``DIVVY_EALREADY_HOLDER``;
                nothing changed.
            OutOfSpaceError: the block does not fit in this client's quota.
        """
        _check_handle(handle)
        _check_size(token, "a share token")
        address = ctypes.c_void_p()
        size = ctypes.c_size_t()
        self._call(
            "divvy_adopt", _native.to_c_handle(handle), token, ctypes.byref(address), ctypes.byref(size))
        return Block(self, handle, size.value, address.value or 0)

    # --- the daemon -----------------------------------------------------------------------------------------

    def stats(self) -> Stats:
        """This client's usage and the heap's totals (``divvy_stats``; a round trip to the daemon; the heap totals
        may be up to 100 ms old)."""
        raw = _native.Stats()
        self._call("divvy_stats", ctypes.byref(raw))
        return Stats(
            bytes_held=raw.bytes_held,
            blocks_held=raw.blocks_held,
            quota_bytes=raw.quota_bytes,
            heap_bytes_used=raw.heap_bytes_used,
            heap_bytes_free=raw.heap_bytes_free,
            page_allowance=raw.page_allowance,
            clients=raw.clients,
        )

    def ping(self) -> None:
        """A round trip to the daemon (``divvy_ping``): returns if it answers.

        Raises:
            DaemonGoneError: the daemon went away (call `reconnect`).
            DivvyError: ``DIVVY_ETIMED_OUT`` (no answer in 10 s).
        """
        self._call("divvy_ping")

    def reconnect(self) -> None:
        """Connects again with the same socket path, name and mode (``divvy_reconnect``).

        The usual answer to `DaemonGoneError`. Blocks held through the old connection are gone: their Blocks
        raise `HandleError` (``DIVVY_ESTALE_HANDLE``) and their memoryviews are released. On failure the Client
        stays usable but disconnected (calls raise `DaemonGoneError`): retry, or close it.
        """
        with self._lock:
            self._check_open()
            # The old connection's blocks are gone whether or not connecting again works.
            self._epoch += 1
            self._views.release_all()
            code = self._lib.divvy_reconnect(self._pointer)
            if code != 0:
                raise error_for(code, _native.last_error_message())
        self._read_info()


class _ArrayBase:
    """The ``base`` of a NumPy array over a block: exposes the block's memory and keeps the Block (and so its
    Client) alive for as long as the array, or any view of it, exists."""

    __slots__ = ("block", "__array_interface__")

    def __init__(self, block: Block, interface: dict[str, Any]) -> None:
        self.block = block
        self.__array_interface__ = interface


class Block:
    """One holding of a block of shared memory: what `Client.alloc`, `Client.alloc_batch` and `Client.adopt`
    return.

    The block's memory is reached through `memoryview` or `numpy` (zero-copy) and another process reaches the
    same memory by adopting `handle`. A Block is freed by `free` (or by leaving a ``with block:`` statement, or by
    its client closing), never by garbage collection: the holding is the daemon's record, the Python object only
    names it.

    Views (memoryviews, NumPy arrays) stay valid until the block is freed through this Block or its client is
    closed or reconnected, whichever comes first; they keep the Block and the Client from being garbage-collected.
    After that, memoryviews from `memoryview` are released (using them raises ValueError); a NumPy array, or a
    buffer taken from a memoryview, cannot be revoked and must not be used (reading it reads whatever the memory
    holds next, or crashes once the client closed). Methods of a freed Block, or of a Block whose client was
    closed, raise instead of touching memory.
    """

    __slots__ = ("_client", "_handle", "_size", "_address", "_epoch", "_freed", "_views", "__weakref__")

    def __init__(self, client: Client, handle: int, size: int, address: int) -> None:
        self._client = client
        self._handle = handle
        self._size = size
        self._address = address
        self._epoch = client._epoch
        self._freed = False
        self._views = _Views()

    def __repr__(self) -> str:
        state = ""
        if self._freed:
            state = " freed"
        elif self._client.closed:
            state = " client closed"
        return f"<divvy.Block handle=0x{self._handle:x} size={self._size}{state}>"

    def __reduce__(self):
        raise TypeError(
            "a divvy.Block cannot be pickled: send block.handle and block.share().token to the other process and "
            "call client.adopt(handle, token)"
        )

    def __enter__(self) -> Block:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._freed and not self._client.closed and self._epoch == self._client._epoch:
            self.free()

    @property
    def handle(self) -> int:
        """The block's 128-bit handle, an int (``low | high << 64`` of ``divvy_handle_t``): what another process
        passes to `Client.adopt` (valid while a holder holds the block; a freed-and-reused block's old handle is
        refused as stale, and a handle from before the daemon restarted as foreign)."""
        return self._handle

    @property
    def size(self) -> int:
        """The usable size in bytes: the size asked for (`Client.alloc`), or the block's size class
        (`Client.adopt`, which does not know what the allocating process asked for)."""
        return self._size

    @property
    def address(self) -> int:
        """The block's address in this process (``divvy_pointer``), for handing to ctypes or C code. Valid as
        long as the views are (see the class documentation)."""
        self._check_usable("address")
        return self._address

    @property
    def client(self) -> Client:
        """The Client this holding belongs to."""
        return self._client

    @property
    def freed(self) -> bool:
        """True once this Block was freed (by `free` or `Client.free_batch`)."""
        return self._freed

    def _check_usable(self, action: str) -> None:
        self._client._check_open()
        if self._freed:
            if action == "free":
                raise HandleError(
                    ErrorCode.EDOUBLE_FREE,
                    f"block 0x{self._handle:x} was already freed through this Block; nothing changed",
                )
            raise HandleError(
                ErrorCode.ESTALE_HANDLE,
                f"cannot {action} block 0x{self._handle:x}: it was freed through this Block",
            )
        if self._epoch != self._client._epoch:
            raise HandleError(
                ErrorCode.ESTALE_HANDLE,
                f"cannot {action} block 0x{self._handle:x}: it belonged to the connection before reconnect(), "
                "whose blocks the daemon released",
            )

    def _mark_freed(self) -> None:
        self._freed = True
        self._views.release_all()

    def free(self) -> bool:
        """Drops this holding (``divvy_free``); the block returns to the heap when no holder is left.

        Memoryviews from `memoryview` are released; NumPy arrays over the block must no longer be used.

        Returns:
            True when this free released the block, False when other holders remain.

        Raises:
            HandleError: ``DIVVY_EDOUBLE_FREE`` when this Block was already freed (checked here, so a second free
                never drops another holding of the same client), ``DIVVY_ESTALE_HANDLE`` after `Client.reconnect`.
            ClientClosedError: the client is closed (it released the block already).
        """
        self._check_usable("free")
        released = ctypes.c_int()
        self._client._call("divvy_free", _native.to_c_handle(self._handle), ctypes.byref(released))
        self._mark_freed()
        return bool(released.value)

    def share(self) -> ShareInfo:
        """Lets one other process adopt the block (``divvy_share``): the daemon checks this client holds it,
        describes it, and issues a share token (`ShareInfo.token`).

        Send `handle` and the token to the adopter, which calls `Client.adopt(handle, token)`. A token lets one
        client adopt once (share once per adopter) and dies when this client frees its holding or disconnects:
        free only after the adopter says it adopted.

        Raises:
            OutOfSpaceError: ``DIVVY_EQUOTA_EXCEEDED``: this client has as many unused tokens outstanding as the
                daemon's ``max-share-tokens-per-client`` allows (256 by default).
        """
        self._check_usable("share")
        raw = _native.ShareInfo()
        token = ctypes.c_uint64()
        self._client._call(
            "divvy_share", _native.to_c_handle(self._handle), ctypes.byref(token), ctypes.byref(raw))
        return ShareInfo(
            handle=_native.from_c_handle(raw.handle), offset=raw.offset, block_size=raw.block_size,
            holders=raw.holders, token=token.value)

    def memoryview(self) -> memoryview:
        """A writable, zero-copy memoryview (format ``"B"``, `size` bytes) over the block in shared memory.

        Valid until the block is freed through this Block or its client is closed or reconnected; then it is
        released and using it raises ValueError. A buffer taken from it (``numpy.frombuffer(view)``, a ctypes
        ``from_buffer``) is not revoked and must not outlive the block. The view keeps this Block and its Client
        alive.
        """
        self._check_usable("view")
        memory = (ctypes.c_ubyte * self._size).from_address(self._address)
        memory._divvy_block = self  # type: ignore[attr-defined]  # the view's .obj keeps the Block alive
        with memoryview(memory) as raw:
            view = raw.cast("B")
        self._views.add(view)
        self._client._views.add(view)
        return view

    def numpy(self, dtype: Any = "uint8", shape: int | Iterable[int] | None = None) -> numpy.ndarray:
        """A writable, zero-copy NumPy array over the block (NumPy is imported only here).

        Args:
            dtype: any NumPy dtype (``"float64"``, ``np.int32``, a structured dtype).
            shape: the array's shape; None: one dimension, as many items as fit in `size`. The shape's bytes must
                fit in the block.

        The array's ``base`` holds this Block (and so its Client) alive for as long as the array or any view of it
        exists. It is valid until the block is freed through this Block or its client is closed: after that it
        must not be used (NumPy arrays cannot be revoked; a closed client's memory is unmapped).

        Raises:
            ValueError: the shape does not fit in the block.
            ImportError: NumPy is not installed.
        """
        import numpy as np

        self._check_usable("view")
        dt = np.dtype(dtype)
        if shape is None:
            if dt.itemsize == 0 or self._size < dt.itemsize:
                raise ValueError(f"a block of {self._size} bytes holds no item of {dt} ({dt.itemsize} bytes)")
            dims: tuple[int, ...] = (self._size // dt.itemsize,)
        elif isinstance(shape, int):
            dims = (shape,)
        else:
            dims = tuple(int(n) for n in shape)
        if any(n < 0 for n in dims):
            raise ValueError(f"negative dimension in shape {dims}")
        nbytes = dt.itemsize
        for n in dims:
            nbytes *= n
        if nbytes > self._size:
            raise ValueError(f"shape {dims} of {dt} needs {nbytes} bytes; the block has {self._size}")
        interface = {
            "version": 3,
            "shape": dims,
            "typestr": dt.str,
            "descr": dt.descr,
            "data": (self._address, False),  # False: writable
            "strides": None,
        }
        return np.asarray(_ArrayBase(self, interface))
