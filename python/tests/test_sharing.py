"""Two processes, one block: a second Python process (tests/helper.py) adopts a handle and sees the same bytes."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import divvy
from conftest import MODES
from divvy import ErrorCode

MODE_PAIRS = [(parent, child) for parent in MODES for child in MODES]


@pytest.mark.parametrize(("mode", "child_mode"), MODE_PAIRS)
def test_another_process_adopts_reads_and_writes(daemon, spawn, mode, child_mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        block = client.alloc(4096)
        view = block.memoryview()
        view[:16] = bytes(range(16))
        helper = spawn(daemon.socket, child_mode)
        assert helper.hello["mode"] == child_mode
        adopted = helper.call("adopt", handle=block.handle, token=block.share().token)
        assert adopted["size"] >= 4096
        assert block.share().holders == 2
        assert helper.call("read", n=16)["hex"] == bytes(range(16)).hex()
        assert helper.call("write", offset=100, hex="c0ffee") == {}
        assert view[100:103].tobytes() == b"\xc0\xff\xee"  # the child's write, through our own view
        # Our free leaves the child's holding: the block stays alive and keeps its bytes.
        assert block.free() is False
        assert helper.call("read", offset=100, n=3)["hex"] == "c0ffee"
        assert helper.call("share")["holders"] == 1
        assert helper.call("free") == {"released": True}
        assert client.stats().blocks_held == 0


@pytest.mark.parametrize(("mode", "child_mode"), MODE_PAIRS)
def test_a_block_the_other_process_allocated(daemon, spawn, mode, child_mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        helper = spawn(daemon.socket, child_mode)
        handle = helper.call("alloc", size=100)["handle"]
        helper.call("write", hex="68656c6c6f")
        block = client.adopt(handle, helper.call("share")["token"])
        assert block.memoryview()[:5].tobytes() == b"hello"
        assert block.size >= 100  # the usable size (the size class): the adopter cannot know what was asked for
        assert helper.call("free") == {"released": False}  # we still hold it
        assert block.memoryview()[:5].tobytes() == b"hello"
        assert block.free() is True


def test_the_other_process_cannot_use_a_freed_handle(daemon, spawn):
    with divvy.Client(daemon.socket) as client:
        block = client.alloc(64)
        handle = block.handle
        block.free()
        helper = spawn(daemon.socket, "mediated")
        before = helper.call("stats")
        reply = helper.call("adopt", handle=handle)
        assert (reply["error"], reply["name"]) == (ErrorCode.ESTALE_HANDLE, "DIVVY_ESTALE_HANDLE")
        assert helper.call("stats") == before


@pytest.mark.parametrize("child_mode", MODES)
def test_adopting_needs_the_share_token_of_the_handle_once(daemon, spawn, child_mode):
    # Handles are predictable: a mediated process adopts only with the token a holder's share() gave for this
    # handle, once. A direct process adopts in shared memory (which it may write anyway) and needs none.
    with divvy.Client(daemon.socket, mode="mediated") as client:
        block, other = client.alloc(64), client.alloc(64)
        other_token = other.share().token
        helper = spawn(daemon.socket, child_mode)
        before = helper.call("stats")
        if child_mode == "mediated":
            for token in (0, 0x1234_5678_9ABC_DEF0, other_token):
                reply = helper.call("adopt", handle=block.handle, token=token)
                assert (reply["error"], reply["name"]) == (ErrorCode.EBAD_SHARE_TOKEN, "DIVVY_EBAD_SHARE_TOKEN")
                assert helper.call("stats") == before, "a refused adopt changes nothing"
                assert block.share().holders == 1
        token = block.share().token
        assert token != 0 and token != other_token
        assert "error" not in helper.call("adopt", handle=block.handle, token=token)
        assert block.share().holders == 2
        third = spawn(daemon.socket, "mediated")
        reply = third.call("adopt", handle=block.handle, token=token)
        if child_mode == "mediated":
            assert reply["error"] == ErrorCode.EBAD_SHARE_TOKEN, "a used token"
        else:
            # A direct adopter never shows the token to the daemon: it stays outstanding, usable once, until its
            # sharer stops holding the block.
            assert "error" not in reply, reply
            assert third.call("free") == {"released": False}
        # The sharer frees its holding: its outstanding tokens die, though the helper keeps the block alive.
        late = block.share().token
        assert block.free() is False
        assert third.call("adopt", handle=block.handle, token=late)["error"] == ErrorCode.EBAD_SHARE_TOKEN
        assert helper.call("free") == {"released": True}
        other.free()


def test_a_closing_process_releases_only_its_holdings(daemon, spawn):
    with divvy.Client(daemon.socket) as client:
        block = client.alloc(64)
        block.memoryview()[:4] = b"keep"
        helper = spawn(daemon.socket, "direct")
        helper.call("adopt", handle=block.handle, token=block.share().token)
        assert block.share().holders == 2
        assert helper.close() == 0  # exits without freeing: its client's close releases its holding
        assert block.share().holders == 1
        assert block.memoryview()[:4].tobytes() == b"keep"
        block.free()


# --- NumPy ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "child_mode"), [("direct", "mediated"), ("mediated", "direct")])
def test_numpy_array_shared_with_another_process(daemon, spawn, mode, child_mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        block = client.alloc(4 * 4 * 8)
        array = block.numpy("float64", (4, 4))
        array[:] = np.arange(16, dtype=np.float64).reshape(4, 4)
        helper = spawn(daemon.socket, child_mode)
        helper.call("adopt", handle=block.handle, token=block.share().token)
        assert helper.call("numpy_get", dtype="float64", shape=[4, 4])["values"] == array.tolist()
        helper.call("numpy_set", dtype="float64", shape=[4, 4], index=[1, 2], value=42.5)
        assert array[1, 2] == 42.5  # the other process's write, seen through our array: no copy anywhere
        array[3, 3] = -1.0
        assert helper.call("numpy_get", dtype="float64", shape=[4, 4])["values"][3][3] == -1.0
        helper.call("free")
        block.free()


@pytest.mark.parametrize("mode", MODES)
def test_numpy_is_zero_copy(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        block = client.alloc(1024)
        as_bytes = block.numpy()
        assert (as_bytes.dtype, as_bytes.shape) == (np.uint8, (1024,))
        as_ints = block.numpy(np.int32, (16, 16))
        assert as_ints.flags.writeable and as_ints.flags.c_contiguous
        assert np.shares_memory(as_bytes, as_ints)
        assert np.shares_memory(as_bytes, np.frombuffer(block.memoryview(), dtype=np.uint8))
        assert as_bytes.ctypes.data == block.address
        as_ints[0, 0] = 0x01020304
        assert as_bytes[:4].tolist() == [4, 3, 2, 1]
        assert block.memoryview()[:4].tobytes() == b"\x04\x03\x02\x01"
        structured = block.numpy([("x", "<f4"), ("n", "<u2")], 3)
        structured["n"][2] = 7
        assert structured.dtype.itemsize == 6 and as_bytes[16] == 7
        assert len(block.numpy("float64")) == 128
        block.free()


def test_numpy_shape_must_fit(daemon):
    with divvy.Client(daemon.socket) as client:
        block = client.alloc(100)
        with pytest.raises(ValueError, match="needs 104 bytes"):
            block.numpy("float64", 13)
        with pytest.raises(ValueError):
            block.numpy("float64", (-1,))
        with pytest.raises(ValueError):
            client.alloc(4).numpy("float64")  # not one item fits
        assert block.numpy("float64").shape == (12,)


def test_numpy_array_keeps_block_and_client_alive(daemon):
    client = divvy.Client(daemon.socket, name="py-numpy-gc")
    block = client.alloc(64)
    array = block.numpy("uint8")[8:16]  # a view of the array keeps the chain too
    client_ref, block_ref = weakref.ref(client), weakref.ref(block)
    del client, block
    gc.collect()
    assert block_ref() is not None and client_ref() is not None
    base = array.base
    while isinstance(base, np.ndarray):  # down to the owner of the memory: the object that holds the Block
        base = base.base
    assert base.block is block_ref() and base.block.client is client_ref()
    array[:] = 9
    assert "py-numpy-gc" in [c["name"] for c in daemon.clients()]
    del array, base
    gc.collect()
    assert client_ref() is None
    assert "py-numpy-gc" not in [c["name"] for c in daemon.clients()]
