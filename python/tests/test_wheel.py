"""build-wheel.sh's wheels, installed into fresh venvs, run the smoke test against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import LIBRARY, PYTHON_DIR
from test_library import swift_version

BUILD = PYTHON_DIR / "build-wheel.sh"
SMOKE = Path(__file__).resolve().parent / "smoke.py"


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment without anything that points at the source tree or a library."""
    environment = {k: v for k, v in os.environ.items() if k not in ("DIVVY_LIBRARY", "LD_LIBRARY_PATH")}
    paths = [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p and "python/src" not in p]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    environment.update(extra)
    return environment


def build(out: Path, *arguments: str) -> Path:
    result = subprocess.run(
        ["bash", str(BUILD), "--out", str(out), *arguments],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    wheel = Path(result.stdout.strip().splitlines()[-1])
    assert wheel.parent == out and wheel.exists(), result.stdout
    return wheel


def install(wheel: Path, venv: Path) -> Path:
    """A fresh venv that sees the system's packages (numpy), with the wheel installed into it (by this Python's pip:
    seeding the venv with its own pip takes 15 s here and tests nothing of ours)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True, timeout=300
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        check=True,
        timeout=300,
        env=clean_environment(),
    )
    return python


def smoke(python: Path, socket: str, **env: str) -> dict:
    result = subprocess.run(
        [str(python), str(SMOKE), socket], capture_output=True, text=True, timeout=120, env=clean_environment(**env)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("smoke test passed")
    return json.loads(result.stdout.splitlines()[0])


def test_help():
    result = subprocess.run(["bash", str(BUILD), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "PATH_TO_LIBDIVVY" in result.stdout and "--out" in result.stdout
    result = subprocess.run(["bash", str(BUILD), "--frobnicate"], capture_output=True, text=True)
    assert result.returncode == 64 and "--help" in result.stderr


def test_pure_wheel_in_a_venv(daemon, tmp_path):
    wheel = build(tmp_path / "dist")
    assert wheel.name == f"divvy-{swift_version()}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "divvy/_version.py" in names and not any("_lib" in n for n in names)
    assert f"divvy-{swift_version()}.dist-info/LICENSE" in names
    python = install(wheel, tmp_path / "venv")
    info = smoke(python, daemon.socket, DIVVY_LIBRARY=LIBRARY)
    assert info["file"].startswith(str(tmp_path / "venv")), info  # the installed copy, not the source tree
    assert info["version"] == swift_version()
    assert info["library"] == LIBRARY
    # Without a library anywhere, the installed package says what it tried (unless the .deb's library is here).
    result = subprocess.run(
        [str(python), "-c", "import divvy; print(divvy.library_path())"],
        capture_output=True,
        text=True,
        env=clean_environment(),
    )
    if result.stdout.strip() != "libdivvy.so.1":
        assert result.returncode != 0 and "LibraryNotFoundError: could not load libdivvy" in result.stderr


def test_wheel_with_the_library_bundled_in_a_venv(daemon, tmp_path):
    wheel = build(tmp_path / "dist", LIBRARY)
    assert wheel.name.startswith(f"divvy-{swift_version()}-py3-none-linux_")
    with zipfile.ZipFile(wheel) as archive:
        assert "divvy/_lib/libdivvy.so.1" in archive.namelist()
        assert "Root-Is-Purelib: false" in archive.read(f"divvy-{swift_version()}.dist-info/WHEEL").decode()
    python = install(wheel, tmp_path / "venv")
    info = smoke(python, daemon.socket)  # no DIVVY_LIBRARY: the bundled copy must be found
    assert info["library"].startswith(str(tmp_path / "venv")), info
    assert info["library"].endswith("divvy/_lib/libdivvy.so.1")
    assert info["version"] == swift_version()
