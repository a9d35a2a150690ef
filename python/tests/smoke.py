"""Smoke test of an installed divvy package: python smoke.py SOCKET.

Prints one JSON line describing the installation (module file, version, library), then shares a NumPy array with
a child process (this script again, with --child HANDLE) and checks both sides' writes. Exits 0 on success. Run by
tests/test_wheel.py with a venv's python; usable by hand against any running divvyd.
"""

import json
import subprocess
import sys

import divvy


def child(socket: str, handle: int, token: int) -> None:
    with divvy.Client(socket, name="smoke-child") as client:
        block = client.adopt(handle, token)
        array = block.numpy("int64", 100)
        assert array.sum() == sum(range(100)), array
        array[0] = -1
        block.free()


def main() -> int:
    socket = sys.argv[1]
    if len(sys.argv) == 5 and sys.argv[2] == "--child":
        child(socket, int(sys.argv[3]), int(sys.argv[4]))
        return 0
    print(
        json.dumps(
            {
                "file": divvy.__file__,
                "version": divvy.__version__,
                "library": divvy.library_path(),
                "library_version": divvy.library_version(),
            }
        ),
        flush=True,
    )
    with divvy.Client(socket, name="smoke") as client:
        block = client.alloc(100 * 8)
        array = block.numpy("int64")
        array[:] = range(100)
        token = block.share().token
        subprocess.run([sys.executable, __file__, socket, "--child", str(block.handle), str(token)], check=True)
        assert array[0] == -1, "the child's write is not visible"
        assert block.free() is True
        assert client.stats().blocks_held == 0
    print("smoke test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
