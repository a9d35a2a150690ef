"""Finding libdivvy, versions, and the error codes against divvy.h."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import subprocess
import sys

import pytest

import divvy
from conftest import LIBRARY, PYTHON_DIR, REPO
from divvy import ErrorCode, _native

HEADER = REPO / "Sources" / "CDivvyC" / "include" / "divvy.h"
VERSION_SWIFT = REPO / "Sources" / "Divvy" / "Core" / "DivvyVersion.swift"


def swift_version() -> str:
    match = re.search(r'public static let string = "(\d+\.\d+\.\d+)"', VERSION_SWIFT.read_text())
    assert match, f"no version line in {VERSION_SWIFT}"
    return match.group(1)


def run_python(code: str, **env: str | None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("DIVVY_LIBRARY", "LD_LIBRARY_PATH")}
    environment["PYTHONPATH"] = str(PYTHON_DIR / "src")
    environment.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=60)


def test_package_version_is_divvys_version():
    assert divvy.__version__ == swift_version()


def test_library_version_matches_when_the_library_reports_one():
    lib = ctypes.CDLL(LIBRARY)
    if hasattr(lib, "divvy_version"):
        assert divvy.library_version() == swift_version()
        major, minor, patch = (int(n) for n in swift_version().split("."))
        assert _native.version_number() == major * 10_000 + minor * 100 + patch
    else:  # a library from before divvy_version(): reported as unknown, not an error
        assert divvy.library_version() is None
        assert _native.version_number() is None


def test_library_path_is_the_one_asked_for():
    assert divvy.library_path() == LIBRARY


def test_error_codes_mirror_the_header():
    text = HEADER.read_text()
    enum = text[text.index("typedef enum divvy_error {") : text.index("} divvy_error;")]
    header = {name: int(value) for name, value in re.findall(r"DIVVY_(\w+) = (\d+)", enum)}
    ours = {code.name: int(code) for code in ErrorCode}
    assert ours == header
    for code in ErrorCode:
        error = divvy.DivvyError(code, "m")
        assert error.name == f"DIVVY_{code.name}"
        assert _native.strerror(code) != "unknown divvy error code" or code == 0
    unknown = divvy.DivvyError(77, "from a newer daemon")
    assert (unknown.code, unknown.name) == (77, "DIVVY_ERROR_77")


def test_constants_and_the_handle_struct_mirror_the_header():
    text = HEADER.read_text()
    assert int(re.search(r"#define DIVVY_MAX_BATCH (\d+)", text).group(1)) == divvy.MAX_BATCH == 4093
    assert "uint64_t low;\n    uint64_t high;\n} divvy_handle_t;" in text
    assert ctypes.sizeof(_native.Handle) == 16
    # A handle int is low | high << 64, both ways, with every bit kept.
    value = 0xFEDC_BA98_7654_3210_0123_4567_89AB_CDEF
    c_handle = _native.to_c_handle(value)
    assert (c_handle.low, c_handle.high) == (0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210)
    assert _native.from_c_handle(c_handle) == value


def test_a_wrong_divvy_library_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "libdivvy.so"
    result = run_python("import divvy; divvy.Client()", DIVVY_LIBRARY=str(missing))
    assert result.returncode != 0
    assert "LibraryNotFoundError" in result.stderr
    assert f"$DIVVY_LIBRARY: {missing}: no such file" in result.stderr
    # A library that is not libdivvy is refused too.
    libm = ctypes.util.find_library("m")
    result = run_python("import divvy; divvy.library_version()", DIVVY_LIBRARY=libm)
    assert "loaded, but it is not libdivvy" in result.stderr, result.stderr


def test_library_not_found_lists_everything_tried():
    # Without $DIVVY_LIBRARY, from the source tree (nothing bundled), on a machine without the .deb.
    try:
        ctypes.CDLL("libdivvy.so.1")
        pytest.skip("libdivvy.so.1 is installed on this machine, so the search succeeds")
    except OSError:
        pass
    result = run_python("import divvy; print(divvy.__version__); divvy.Client()")
    assert result.returncode != 0
    assert result.stdout.strip() == swift_version()  # importing works without the library; using it does not
    message = result.stderr
    assert "divvy._native.LibraryNotFoundError: could not load libdivvy" in message
    bundled = PYTHON_DIR / "src" / "divvy" / "_lib" / "libdivvy.so.1"
    assert f"the library bundled in this package: {bundled}: no such file" in message
    assert "the installed library (the Divvy .deb): libdivvy.so.1:" in message
    assert "the development library: libdivvy.so:" in message
    assert "Set DIVVY_LIBRARY" in message
    # The search order is the documented one.
    assert message.index("bundled") < message.index("libdivvy.so.1:") < message.index("libdivvy.so:")


def test_the_library_is_found_through_the_linker_path():
    # LD_LIBRARY_PATH stands in for an installed library: found as libdivvy.so (a build has no .so.0 link).
    directory = os.path.dirname(LIBRARY)
    result = run_python("import divvy; print(divvy.library_path())", LD_LIBRARY_PATH=directory)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("libdivvy.so", "libdivvy.so.1")


def test_library_not_found_is_an_oserror():
    assert issubclass(divvy.LibraryNotFoundError, OSError)
    with pytest.raises(divvy.LibraryNotFoundError, match="nowhere: no such file"):
        _native._load([("test", "/nowhere")])
