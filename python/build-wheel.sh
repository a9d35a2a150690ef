#!/usr/bin/env bash
# Builds the divvy Python wheel into python/dist/ (or --out DIR). See --help.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

usage() {
    cat <<EOF
Usage: python/build-wheel.sh [--out DIR] [PATH_TO_LIBDIVVY]

Builds the divvy Python package as a wheel with
'python3 -m pip wheel --no-deps --no-build-isolation' (no network needed).

  (no argument)       a pure wheel, divvy-X.Y.Z-py3-none-any.whl: it finds libdivvy
                      at run time (\$DIVVY_LIBRARY, libdivvy.so.1 from the .deb, libdivvy.so).
  PATH_TO_LIBDIVVY    bundle that library as divvy/_lib/libdivvy.so.1 and tag the wheel
                      for this platform: divvy-X.Y.Z-py3-none-linux_x86_64.whl. Build the
                      library so it runs without a Swift toolchain on the target machine.
  -o, --out DIR       where the wheel goes (default: python/dist/).
  -h, --help          this help.

The version is read from Sources/Divvy/Core/DivvyVersion.swift (the one place it is
written) and lands in the wheel's metadata and in divvy/_version.py; LICENSE and
NOTICE from the repository root go into the wheel's metadata.

Needs python3 with setuptools and a bdist_wheel command: setuptools >= 70.1, or the
'wheel' package (python3 -m pip install 'wheel<0.46' for an older setuptools).

Prints the built wheel's path as its last line.
EOF
}

out="$here/dist"
library=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        -o|--out) [ $# -ge 2 ] || { echo "build-wheel.sh: $1 needs a directory" >&2; exit 64; }; out="$2"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        -*) echo "build-wheel.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
        *)
            [ -z "$library" ] || { echo "build-wheel.sh: one library path only (see --help)" >&2; exit 64; }
            library="$1"; shift ;;
    esac
done

python="${PYTHON:-python3}"
if ! "$python" -c 'import setuptools' 2>/dev/null; then
    echo "build-wheel.sh: $python has no setuptools; install it (python3 -m pip install setuptools)" >&2
    exit 69
fi
if ! "$python" -c 'from setuptools.command.bdist_wheel import bdist_wheel' 2>/dev/null \
    && ! "$python" -c 'from wheel.bdist_wheel import bdist_wheel' 2>/dev/null; then
    setuptools_version="$("$python" -c 'import setuptools; print(setuptools.__version__)')"
    echo "build-wheel.sh: $python's setuptools ($setuptools_version) has" \
        "no bdist_wheel command; install the 'wheel' package (python3 -m pip install 'wheel<0.46') or" \
        "setuptools >= 70.1" >&2
    exit 69
fi

version_file="$repo/Sources/Divvy/Core/DivvyVersion.swift"
[ -f "$version_file" ] || { echo "build-wheel.sh: $version_file not found: run from a Divvy checkout" >&2; exit 66; }

# Build from a staging copy: the bundled library and setuptools' build/ and *.egg-info never land in python/.
staging="$(mktemp -d "${TMPDIR:-/tmp}/divvy-wheel.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
cp "$here/pyproject.toml" "$here/setup.py" "$here/README.md" "$staging/"
cp "$repo/LICENSE" "$repo/NOTICE" "$staging/"
mkdir -p "$staging/src/divvy"
cp "$here"/src/divvy/*.py "$here/src/divvy/py.typed" "$staging/src/divvy/"
rm -f "$staging/src/divvy/_version.py"

if [ -n "$library" ]; then
    [ -f "$library" ] || { echo "build-wheel.sh: $library: no such file" >&2; exit 66; }
    if ! "$python" - "$library" <<'PY'
import ctypes, sys
try:
    lib = ctypes.CDLL(sys.argv[1])
    lib.divvy_connect
except (OSError, AttributeError) as error:
    sys.exit(f"build-wheel.sh: {sys.argv[1]} is not a loadable libdivvy: {error}")
PY
    then
        exit 65
    fi
    if command -v readelf >/dev/null 2>&1 && readelf -d "$library" | grep -q 'NEEDED.*libswiftCore'; then
        echo "build-wheel.sh: warning: $library needs the Swift runtime (libswiftCore.so): the wheel will only load" \
            "where that is installed. Link the Swift standard library statically for a self-contained wheel." >&2
    fi
    mkdir -p "$staging/src/divvy/_lib"
    cp -L "$library" "$staging/src/divvy/_lib/libdivvy.so.1"
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
before="$(ls "$out"/divvy-*.whl 2>/dev/null || true)"
DIVVY_VERSION_FILE="$version_file" "$python" -m pip wheel --quiet --no-deps --no-build-isolation \
    --wheel-dir "$out" "$staging" >&2
version="$(sed -n 's/^ *public static let string = "\(.*\)"/\1/p' "$version_file")"
if [ -n "$library" ]; then
    wheel="$(ls -t "$out"/divvy-"$version"-py3-none-*.whl | grep -v -- '-any\.whl$' | head -n 1)"
else
    wheel="$out/divvy-$version-py3-none-any.whl"
fi
[ -f "$wheel" ] || { echo "build-wheel.sh: pip did not produce the expected wheel in $out" >&2; exit 70; }
echo "$wheel"
