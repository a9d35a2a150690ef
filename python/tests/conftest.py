"""Fixtures: real divvyd daemons on temporary sockets, and helper processes that use the package on their own.

Binaries come from $DIVVY_BIN_DIR (default: <repo>/.build/debug): divvyd is required, divvyctl is used when
present (each daemon's heap audit must be clean when it stops). The library is $DIVVY_LIBRARY, defaulting to
libdivvy.so in the same directory; it is exported so helper processes load the same one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parents[1]
REPO = PYTHON_DIR.parent
BIN_DIR = Path(os.environ.get("DIVVY_BIN_DIR", REPO / ".build" / "debug"))
DIVVYD = BIN_DIR / "divvyd"
DIVVYCTL = BIN_DIR / "divvyctl"
HELPER = Path(__file__).resolve().parent / "helper.py"

if not os.environ.get("DIVVY_LIBRARY") and (BIN_DIR / "libdivvy.so").exists():
    os.environ["DIVVY_LIBRARY"] = str(BIN_DIR / "libdivvy.so")
LIBRARY = os.environ.get("DIVVY_LIBRARY", "")

# Every daemon is small: 16 MiB of data (a 4 MiB quota per client), 64 KiB pages, 512 KiB largest class.
DATA_SIZE = 16 << 20
QUOTA = DATA_SIZE // 4
LARGEST_CLASS = 512 << 10
# Blocks up to pageSize / 8 come from small pages; larger classes from the span tier (a quarter of the data area);
# larger blocks still are extents of the extent area (another quarter), so the largest block is the extent area.
# One mediated client may hold a quarter of the span tier and extent area together by default (large-quota).
LARGEST_SMALL_CLASS = 8 << 10
LARGEST_BLOCK = DATA_SIZE // 4
LARGE_QUOTA = (DATA_SIZE // 4 + DATA_SIZE // 4) // 4


def pytest_configure(config):
    if not DIVVYD.exists():
        raise pytest.UsageError(
            f"{DIVVYD} not found: build it (swift build --product divvyd --product divvy) or set DIVVY_BIN_DIR"
        )
    if not LIBRARY or not Path(LIBRARY).exists():
        raise pytest.UsageError(f"libdivvy not found ({LIBRARY or BIN_DIR / 'libdivvy.so'}): set DIVVY_LIBRARY")


def _die_with_parent() -> None:
    """Runs in the daemon's process before exec: SIGTERM it when pytest dies (a crash skips the teardowns)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Daemon:
    """A divvyd on a temporary socket; `stop()` sends SIGTERM and checks a clean exit and a clean heap audit."""

    def __init__(self, *extra: str, audit: bool = True) -> None:
        self.audit = audit  # False when the policy keeps divvyctl out too
        self.directory = Path(tempfile.mkdtemp(prefix="divvy-py-"))
        self.socket = str(self.directory / "divvyd.sock")
        self.log_path = self.directory / "divvyd.log"
        self.args = [str(DIVVYD), "--socket", self.socket, "--data-size", str(DATA_SIZE), *extra]
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        # The log is appended to by every start: only a "ready" line after this point counts.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        log.close()
        deadline = time.monotonic() + 30
        while b"divvyd ready" not in self.log_path.read_bytes()[offset:]:
            if self.process.poll() is not None:
                raise RuntimeError(f"divvyd exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"divvyd did not get ready in 30 s:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash would (clients then see DIVVY_EDAEMON_GONE)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(20)
        self.process = None

    def verify(self) -> str:
        """`divvyctl verify`: the daemon's heap audit; fails the test on any violation."""
        result = subprocess.run(
            [str(DIVVYCTL), "verify", "--socket", self.socket], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, f"heap audit failed:\n{result.stdout}{result.stderr}"
        return result.stdout

    def clients(self) -> list[dict]:
        result = subprocess.run(
            [str(DIVVYCTL), "clients", "--json", "--socket", self.socket],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(result.stdout)

    def stop(self) -> None:
        if self.process is not None:
            if self.audit and DIVVYCTL.exists():
                self.verify()
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise AssertionError(f"divvyd did not stop on SIGTERM:\n{self.log()}")
            self.process = None
            assert code == 0, f"divvyd exited with {code}:\n{self.log()}"
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon():
    """A daemon with the default policy: this uid may connect, and (being the daemon's uid) gets direct access."""
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def mediated_only_daemon():
    """A daemon whose policy grants direct access to another uid only: this process is admitted, mediated."""
    d = Daemon("--set", f"direct-uids={os.getuid() + 1}")
    yield d
    d.stop()


@pytest.fixture
def fresh_daemon():
    """A daemon of the test's own (for tests that kill it or fill it)."""
    d = Daemon()
    yield d
    d.stop()


MODES = ["direct", "mediated"]


class Helper:
    """Another Python process using the package (tests/helper.py), driven by JSON lines over its stdin/stdout."""

    def __init__(self, socket: str, mode: str, env: dict[str, str] | None = None) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(PYTHON_DIR / "src"), *filter(None, [environment.get("PYTHONPATH")])]
        )
        environment.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, str(HELPER), socket, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.hello = self._read()

    def _read(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            assert self.process.stderr is not None
            raise AssertionError(f"helper died ({self.process.wait(10)}):\n{self.process.stderr.read()}")
        return json.loads(line)

    def call(self, op: str, **arguments) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> int:
        if self.process.stdin:
            self.process.stdin.close()
        code = self.process.wait(30)
        if self.process.stdout:
            self.process.stdout.close()
        if self.process.stderr:
            self.process.stderr.close()
        return code


@pytest.fixture
def spawn():
    """spawn(socket, mode) -> Helper; every helper is closed (and must exit 0) when the test ends."""
    helpers: list[Helper] = []

    def make(socket: str, mode: str) -> Helper:
        helper = Helper(socket, mode)
        helpers.append(helper)
        return helper

    yield make
    for helper in helpers:
        assert helper.close() == 0
