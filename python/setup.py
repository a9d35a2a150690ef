"""Build-time glue for setuptools (the metadata is in pyproject.toml).

Two things pyproject.toml cannot say:
- the version: read from Sources/Divvy/Core/DivvyVersion.swift, the one place Divvy's version is written, and
  written into the wheel as divvy/_version.py;
- the wheel's tag: a wheel with libdivvy bundled (divvy/_lib/libdivvy.so.1, put there by build-wheel.sh) is
  platform-specific (py3-none-<platform>); without it the wheel is pure (py3-none-any).
"""

import os
import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# build-wheel.sh builds from a staging copy and points here; in place, the checkout's file is two levels up.
VERSION_FILE = Path(os.environ.get("DIVVY_VERSION_FILE", HERE.parent / "Sources/Divvy/Core/DivvyVersion.swift"))
BUNDLED = HERE / "src" / "divvy" / "_lib" / "libdivvy.so.1"


def read_version() -> str:
    try:
        text = VERSION_FILE.read_text(encoding="utf-8")
    except OSError as error:
        raise SystemExit(
            f"cannot read Divvy's version from {VERSION_FILE} ({error}); build from a Divvy checkout "
            "(python/ next to Sources/) or set DIVVY_VERSION_FILE"
        )
    match = re.search(r'^\s*public static let string = "(\d+\.\d+\.\d+)"', text, re.MULTILINE)
    if not match:
        raise SystemExit(f'{VERSION_FILE} has no line `public static let string = "X.Y.Z"`')
    return match.group(1)


VERSION = read_version()


class build_py_with_version(build_py):
    """Writes divvy/_version.py into the build directory (never into src/)."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "divvy" / "_version.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            "# Written by setup.py from Sources/Divvy/Core/DivvyVersion.swift when the wheel was built.\n"
            f'__version__ = "{VERSION}"\n',
            encoding="utf-8",
        )


commands = {"build_py": build_py_with_version}
options = {}

if BUNDLED.exists():
    from setuptools.dist import Distribution

    try:
        from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
    except ImportError:
        from wheel.bdist_wheel import bdist_wheel  # the `wheel` package, older setuptools

    class BinaryDistribution(Distribution):
        """Carries a native library: built into the platform-specific tree (platlib), not purelib."""

        def has_ext_modules(self):
            return True

    class bdist_wheel_platform(bdist_wheel):
        """Tags the wheel py3-none-<platform>: the library is native, but it is loaded with ctypes, so any
        Python 3 and any ABI will do."""

        def get_tag(self):
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    commands["bdist_wheel"] = bdist_wheel_platform
    options["distclass"] = BinaryDistribution

setup(version=VERSION, cmdclass=commands, **options)
