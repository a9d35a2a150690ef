"""One process against a real divvyd: connecting, blocks, batches, errors and lifetimes."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref

import pytest

import divvy
from conftest import LARGE_QUOTA, LARGEST_BLOCK, LARGEST_CLASS, LARGEST_SMALL_CLASS, MODES, QUOTA
from divvy import ErrorCode


# --- connecting ---------------------------------------------------------------------------------------------------


def test_connect_any_is_granted_direct_under_the_default_policy(daemon):
    # The default policy gives direct access to the daemon's own uid, which is ours.
    with divvy.Client(daemon.socket, mode="any") as client:
        assert client.mode == "direct"
        assert client.client_id > 0
        assert client.stats().page_allowance > 0  # a direct client leases pages


@pytest.mark.parametrize("mode", MODES)
def test_connect_each_mode_explicitly(daemon, mode):
    with divvy.Client(daemon.socket, name=f"py-{mode}", mode=mode) as client:
        assert client.mode == mode
        client.ping()
        assert not client.closed
        listed = {c["id"]: c for c in daemon.clients()}
        assert listed[client.client_id]["mode"] == mode
        assert listed[client.client_id]["name"] == f"py-{mode}"
        assert listed[client.client_id]["pid"] == os.getpid()
    assert client.closed


def test_any_is_mediated_and_direct_refused_when_the_policy_grants_direct_to_others(mediated_only_daemon):
    with divvy.Client(mediated_only_daemon.socket, mode="any") as client:
        assert client.mode == "mediated"
        assert client.stats().page_allowance == 0
    with pytest.raises(divvy.NotPermittedError) as caught:
        divvy.Client(mediated_only_daemon.socket, mode="direct")
    assert caught.value.code == ErrorCode.EWRONG_MODE
    assert caught.value.name == "DIVVY_EWRONG_MODE"
    assert "direct-uids" in caught.value.message  # the library's message says what to do
    with divvy.Client(mediated_only_daemon.socket, mode="mediated") as client:
        assert client.mode == "mediated"


def test_not_authorized():
    from conftest import Daemon

    # No admins either: an admin rule admits by itself.
    closed = Daemon("--set", f"allow-uids={os.getuid() + 1}", "--set", "admin-uids=", audit=False)
    try:
        with pytest.raises(divvy.NotPermittedError) as caught:
            divvy.Client(closed.socket, mode="mediated")
        assert caught.value.code == ErrorCode.ENOT_AUTHORIZED
    finally:
        closed.stop()


def test_no_daemon(tmp_path):
    with pytest.raises(divvy.NoDaemonError) as caught:
        divvy.Client(str(tmp_path / "nothing.sock"))
    assert caught.value.code == ErrorCode.ENO_DAEMON == 100
    assert caught.value.name == "DIVVY_ENO_DAEMON"
    assert str(tmp_path / "nothing.sock") in caught.value.message


def test_bad_arguments_are_refused_before_connecting(daemon):
    with pytest.raises(ValueError, match="mode"):
        divvy.Client(daemon.socket, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(divvy.DivvyError) as caught:
        divvy.Client("x" * 200)  # longer than a Unix socket path
    assert caught.value.code == ErrorCode.EINVAL


# --- blocks -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_alloc_write_read_through_memoryview(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        block = client.alloc(1000)
        assert block.size == 1000
        assert block.handle > 0
        view = block.memoryview()
        assert (view.format, view.itemsize, view.nbytes, view.readonly) == ("B", 1, 1000, False)
        view[:] = bytes(range(256)) * 3 + bytes(range(232))
        # A second view is over the same memory, not a copy.
        again = block.memoryview()
        assert again.tobytes() == view.tobytes()
        again[10] = 0xEE
        assert view[10] == 0xEE
        stats = client.stats()
        assert stats.blocks_held == 1
        assert stats.bytes_held >= 1000
        info = block.share()
        assert info.handle == block.handle
        assert info.block_size >= 1000
        assert info.holders == 1
        assert 0 < info.token < 2**64 and block.share().token != info.token, "a new token per share"
        assert block.free() is True  # the only holder: released
        assert block.freed
        assert client.stats().blocks_held == 0


@pytest.mark.parametrize("mode", MODES)
def test_batches(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        before = client.stats()
        blocks = client.alloc_batch(256, 100)
        assert len(blocks) == 100
        assert len({b.handle for b in blocks}) == 100
        for i, block in enumerate(blocks):
            block.memoryview()[:4] = i.to_bytes(4, "little")
        assert [int.from_bytes(b.memoryview()[:4], "little") for b in blocks] == list(range(100))
        assert client.stats().blocks_held == before.blocks_held + 100
        assert client.free_batch(blocks) == [True] * 100
        assert all(b.freed for b in blocks)
        assert client.stats().blocks_held == before.blocks_held
        assert client.free_batch([]) == []


@pytest.mark.parametrize("mode", MODES)
def test_batch_limits_and_all_or_none(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        before = client.stats()
        for count in (0, divvy.MAX_BATCH + 1):
            with pytest.raises(divvy.DivvyError) as caught:
                client.alloc_batch(64, count)
            assert caught.value.code == ErrorCode.EBATCH_TOO_LARGE
        # More than the quota in one batch: refused as a whole, nothing stays allocated.
        with pytest.raises(divvy.OutOfSpaceError) as caught:
            client.alloc_batch(LARGEST_CLASS, QUOTA // LARGEST_CLASS + 1)
        assert caught.value.code == ErrorCode.EQUOTA_EXCEEDED
        after = client.stats()
        assert (after.blocks_held, after.bytes_held) == (before.blocks_held, before.bytes_held)


@pytest.mark.parametrize("mode", MODES)
def test_free_batch_with_a_freed_block_frees_nothing(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        a, b = client.alloc_batch(64, 2)
        a.free()
        with pytest.raises(divvy.HandleError) as caught:
            client.free_batch([b, a])
        assert caught.value.code == ErrorCode.EDOUBLE_FREE
        assert not b.freed
        with pytest.raises(divvy.HandleError) as caught:
            client.free_batch([b, b])
        assert caught.value.code == ErrorCode.EDOUBLE_FREE
        assert client.stats().blocks_held == 1
        assert client.free_batch([b]) == [True]


# --- error paths: exact codes, and nothing changed -------------------------------------------------------------------


def snapshot(client: divvy.Client) -> tuple[int, int, int, int]:
    time.sleep(0.15)  # the daemon's heap figures may be up to 100 ms old (PROTOCOL.md, stats)
    stats = client.stats()
    return stats.blocks_held, stats.bytes_held, stats.heap_bytes_used, stats.heap_bytes_free


@pytest.mark.parametrize("mode", MODES)
def test_double_free_raises_and_changes_nothing(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        keep = client.alloc(64)
        block = client.alloc(64)
        block.free()
        before = snapshot(client)
        with pytest.raises(divvy.HandleError) as caught:
            block.free()
        assert caught.value.code == ErrorCode.EDOUBLE_FREE == 14
        assert caught.value.name == "DIVVY_EDOUBLE_FREE"
        assert snapshot(client) == before
        assert keep.share().holders == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_second_free_never_drops_another_holding(daemon, mode):
    # Two holdings of one block in this process (a second client here): freeing one Block twice must not take the
    # other's holding. A client holds a block once: adopting its own block again is refused, in both modes.
    with divvy.Client(daemon.socket, mode=mode) as one, divvy.Client(daemon.socket, mode=mode) as two:
        block = one.alloc(64)
        adopted = two.adopt(block.handle, block.share().token)
        assert block.share().holders == 2
        assert adopted.free() is False
        with pytest.raises(divvy.HandleError):
            adopted.free()
        assert block.share().holders == 1
        with pytest.raises(divvy.HandleError) as caught:
            one.adopt(block.handle, block.share().token)
        assert caught.value.code == ErrorCode.EALREADY_HOLDER
        assert block.share().holders == 1, "a refused adopt changes nothing"


@pytest.mark.parametrize("mode", MODES)
def test_bogus_handles_give_the_daemons_codes(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        keep = client.alloc(64)
        before = snapshot(client)
        with pytest.raises(divvy.HandleError) as caught:
            client.adopt(0, 0)
        assert caught.value.code == ErrorCode.EINVALID_HANDLE
        with pytest.raises(divvy.HandleError) as caught:
            client.adopt(keep.handle + 1, 0)  # inside the block, not its start
        assert caught.value.code == ErrorCode.EMISALIGNED_HANDLE, caught.value
        with pytest.raises(divvy.HandleError) as caught:
            # This heap's id (the top 64 bits of a real handle), an offset far outside the data area.
            client.adopt(keep.handle >> 64 << 64 | 0xFFFF_FFFF_FFFF, 0)
        assert caught.value.code in (ErrorCode.EINVALID_HANDLE, ErrorCode.ESTALE_HANDLE), caught.value
        assert snapshot(client) == before
        with pytest.raises(ValueError):
            client.adopt(-1, 0)
        with pytest.raises(TypeError):
            client.adopt("0x10", 0)  # type: ignore[arg-type]
        # A share token is a u64.
        with pytest.raises(ValueError):
            client.adopt(keep.handle, -1)
        with pytest.raises(ValueError):
            client.adopt(keep.handle, 1 << 64)
        with pytest.raises(TypeError):
            client.adopt(keep.handle, "1")  # type: ignore[arg-type]
        assert snapshot(client) == before


@pytest.mark.parametrize("mode", MODES)
def test_handles_are_128_bits_and_another_heaps_handle_is_foreign(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        block = client.alloc(64)
        handle = block.handle
        # low | high << 64, the heap id in the top 32 bits (never 0): a handle does not fit 64 bits.
        heap_id = handle >> 96
        assert heap_id != 0 and handle >> 64 != 0, hex(handle)
        assert block.share().handle == handle
        # The same block under another heap's id, as a handle kept from before a daemon restart would be.
        other_id = 0x0BADBEEF if heap_id != 0x0BADBEEF else 0x0BADBEF0
        foreign = handle & ((1 << 96) - 1) | other_id << 96
        before = snapshot(client)
        with pytest.raises(divvy.HandleError) as caught:
            client.adopt(foreign, 0)
        assert caught.value.code == ErrorCode.EFOREIGN_HANDLE, caught.value
        assert "another heap" in str(caught.value)
        assert snapshot(client) == before, "a refused adopt changes nothing"
        with pytest.raises(ValueError):
            client.adopt(1 << 128, 0)
        assert block.free() is True, "the real handle is still held, once"


@pytest.mark.parametrize("mode", MODES)
def test_adopting_a_freed_block_is_stale(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client, divvy.Client(daemon.socket, mode=mode) as other:
        block = client.alloc(64)
        handle = block.handle
        block.free()
        before = snapshot(other)
        with pytest.raises(divvy.HandleError) as caught:
            other.adopt(handle, 0)
        # The free moved the block to a new generation: the old handle is stale (DIVVY_ESTALE_HANDLE), detected.
        assert caught.value.code == ErrorCode.ESTALE_HANDLE
        assert snapshot(other) == before


@pytest.mark.parametrize("mode", MODES)
def test_oversize_and_zero_allocations(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        before = snapshot(client)
        for size in (0, LARGEST_BLOCK + 1, 1 << 40, (1 << 64) - 1):
            with pytest.raises(divvy.DivvyError) as caught:
                client.alloc(size)
            assert caught.value.code == ErrorCode.EUNSUPPORTED_SIZE, size
            assert type(caught.value) is divvy.DivvyError
        with pytest.raises(ValueError):
            client.alloc(-1)
        with pytest.raises(ValueError):
            client.alloc(1 << 64)
        assert snapshot(client) == before
        largest = client.alloc(LARGEST_CLASS)
        largest.memoryview()[-1] = 1
        largest.free()
        # Above the largest class: an extent of whole 64 KiB units.
        extent = client.alloc(2 * LARGEST_CLASS + 1)
        assert len(extent.memoryview()) == 2 * LARGEST_CLASS + 1
        extent.memoryview()[-1] = 1
        extent.free()


def test_quota_exceeded(daemon):
    with divvy.Client(daemon.socket, mode="mediated") as client:
        blocks = client.alloc_batch(LARGEST_SMALL_CLASS, QUOTA // LARGEST_SMALL_CLASS)
        before = snapshot(client)
        with pytest.raises(divvy.OutOfSpaceError) as caught:
            client.alloc(LARGEST_SMALL_CLASS)
        assert caught.value.code == ErrorCode.EQUOTA_EXCEEDED
        assert "quota" in str(caught.value)
        assert snapshot(client) == before
        client.free_batch(blocks)


def test_large_quota_leaves_large_blocks_for_others(daemon):
    with divvy.Client(daemon.socket, mode="mediated") as hog, divvy.Client(daemon.socket, mode="mediated") as other:
        blocks = [hog.alloc(LARGEST_CLASS) for _ in range(LARGE_QUOTA // LARGEST_CLASS)]
        before = snapshot(hog)
        with pytest.raises(divvy.OutOfSpaceError) as caught:
            hog.alloc(LARGEST_CLASS)
        assert caught.value.code == ErrorCode.EQUOTA_EXCEEDED
        assert "large-quota" in str(caught.value)
        assert snapshot(hog) == before
        other.alloc(LARGEST_CLASS).free()
        hog.free_batch(blocks)


# --- lifetimes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_using_a_block_after_its_client_closed_raises(daemon, mode):
    client = divvy.Client(daemon.socket, mode=mode)
    block = client.alloc(64)
    view = block.memoryview()
    view[0] = 1
    client.close()
    client.close()  # twice is fine
    for use in (block.memoryview, block.free, block.share, lambda: block.address, block.numpy):
        with pytest.raises(divvy.ClientClosedError) as caught:
            use()
        assert caught.value.code == ErrorCode.EINVAL
    for use in (lambda: client.alloc(1), client.ping, client.stats, lambda: client.adopt(block.handle, 0)):
        with pytest.raises(divvy.ClientClosedError):
            use()
    with pytest.raises(ValueError, match="released"):
        view[0]  # the memoryview was released, not left pointing at unmapped memory
    assert "closed" in repr(client) and "client closed" in repr(block)


@pytest.mark.parametrize("mode", MODES)
def test_a_freed_blocks_views_are_released(daemon, mode):
    with divvy.Client(daemon.socket, mode=mode) as client:
        block = client.alloc(64)
        view = block.memoryview()
        block.free()
        with pytest.raises(ValueError):
            view[0] = 1
        with pytest.raises(divvy.HandleError) as caught:
            block.memoryview()
        assert caught.value.code == ErrorCode.ESTALE_HANDLE


def test_block_context_manager_frees(daemon):
    with divvy.Client(daemon.socket) as client:
        with client.alloc(64) as block:
            block.memoryview()[0] = 7
            assert client.stats().blocks_held == 1
        assert block.freed
        assert client.stats().blocks_held == 0


def test_a_view_keeps_its_client_alive_and_garbage_collection_closes_it(daemon):
    client = divvy.Client(daemon.socket, name="py-gc")
    client_ref = weakref.ref(client)
    view = client.alloc(64).memoryview()
    del client
    gc.collect()
    assert client_ref() is not None  # the view -> Block -> Client chain holds it
    view[:3] = b"abc"
    assert "py-gc" in [c["name"] for c in daemon.clients()]
    del view
    gc.collect()
    assert client_ref() is None
    assert "py-gc" not in [c["name"] for c in daemon.clients()]  # closed by garbage collection


def test_blocks_do_not_pickle(daemon):
    import pickle

    with divvy.Client(daemon.socket) as client:
        block = client.alloc(8)
        with pytest.raises(TypeError, match="adopt"):
            pickle.dumps(block)
        with pytest.raises(TypeError):
            pickle.dumps(client)
    error = divvy.HandleError(14, "m")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.code, again.name, again.message) == (divvy.HandleError, 14, "DIVVY_EDOUBLE_FREE", "m")


def test_threads_share_a_client_safely(daemon):
    with divvy.Client(daemon.socket, mode="mediated") as client:
        errors = []

        def work(seed: int) -> None:
            try:
                for i in range(50):
                    block = client.alloc(32)
                    block.memoryview()[:2] = bytes([seed, i])
                    assert block.memoryview()[:2].tobytes() == bytes([seed, i])
                    block.free()
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert client.stats().blocks_held == 0


def test_a_client_inherited_through_fork_raises_in_the_child(daemon):
    client = divvy.Client(daemon.socket)
    block = client.alloc(16)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must not use (or close) the parent's client
        status = 1
        try:
            try:
                client.ping()
            except divvy.ClientClosedError as error:
                if "fork" in error.message:
                    status = 0
            try:
                block.memoryview()
                status = 1
            except divvy.ClientClosedError:
                pass
            client.close()  # forgets it without calling divvy_close
        finally:
            os.write(write, bytes([status]))
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"\x00"
    os.close(read)
    os.waitpid(pid, 0)
    client.ping()  # the parent's connection is untouched
    assert block.share().holders == 1
    client.close()


def test_daemon_gone_then_reconnect(fresh_daemon):
    client = divvy.Client(fresh_daemon.socket, mode="mediated")
    block = client.alloc(64)
    view = block.memoryview()
    fresh_daemon.kill()
    with pytest.raises(divvy.DaemonGoneError) as caught:
        client.ping()
    assert caught.value.code == ErrorCode.EDAEMON_GONE
    with pytest.raises(divvy.NoDaemonError):
        client.reconnect()
    fresh_daemon.start()
    client.reconnect()
    client.ping()
    # The old connection's blocks are gone: their Block raises, their view was released.
    with pytest.raises(divvy.HandleError) as caught:
        block.memoryview()
    assert caught.value.code == ErrorCode.ESTALE_HANDLE
    with pytest.raises(ValueError):
        view[0]
    fresh = client.alloc(64)
    fresh.memoryview()[0] = 1
    assert client.stats().blocks_held == 1
    client.close()


def test_works_without_numpy(daemon):
    import subprocess
    import sys

    from conftest import PYTHON_DIR

    code = f"""
import sys
sys.modules["numpy"] = None  # as if NumPy were not installed
import divvy
with divvy.Client({daemon.socket!r}) as client:
    block = client.alloc(16)
    block.memoryview()[:2] = b"ok"
    try:
        block.numpy()
    except ImportError:
        print(bytes(block.memoryview()[:2]).decode())
"""
    environment = dict(os.environ, PYTHONPATH=str(PYTHON_DIR / "src"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
