#!/bin/sh
# Installs the C client library from a build: libdivvy.so.VERSION with its SONAME link libdivvy.so.1 and the
# development link libdivvy.so, the header divvy.h, and a pkg-config file divvy.pc.
set -eu

usage() {
    cat <<USAGE
usage: deploy/install-libdivvy.sh [-h] [PREFIX [BUILD_DIR]]

Installs the C client library of divvyd from a SwiftPM build:
  PREFIX/lib/libdivvy.so.VERSION     the library (SONAME libdivvy.so.1)
  PREFIX/lib/libdivvy.so.1           link: what programs load
  PREFIX/lib/libdivvy.so             link: what -ldivvy finds
  PREFIX/include/divvy.h             the header
  PREFIX/lib/pkgconfig/divvy.pc      pkg-config file

Arguments and variables:
  PREFIX      install prefix (argument, else \$PREFIX, else /usr/local)
  BUILD_DIR   where libdivvy.so was built (argument, else \$BUILD_DIR, else .build/release)
  DESTDIR     staged install: files go under \$DESTDIR\$PREFIX; divvy.pc still names \$PREFIX

A library built by plain \`swift build\` needs the Swift runtime of the toolchain that built it, so divvy.pc then
adds an rpath to it. One built with the runtime linked in (\`swift build -c release --static-swift-stdlib
-Xswiftc -static-stdlib --product divvy\`, as deploy/build-deb.sh does) needs only libc, and divvy.pc adds nothing.

Example:
  swift build -c release --product divvy
  sudo deploy/install-libdivvy.sh /usr/local
  cc prog.c \$(pkg-config --cflags --libs divvy)     # PKG_CONFIG_PATH=PREFIX/lib/pkgconfig for other prefixes
USAGE
}

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
-*)
    echo "install-libdivvy: unknown option $1 (see --help)" >&2
    exit 2
    ;;
esac
if [ $# -gt 2 ]; then
    echo "install-libdivvy: too many arguments (see --help)" >&2
    exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:-${PREFIX:-/usr/local}}
build=${2:-${BUILD_DIR:-$root/.build/release}}
destdir=${DESTDIR:-}
# The one place the version is written (a test keeps this line's shape).
version=$(sed -n 's/^    public static let string = "\(.*\)"$/\1/p' "$root/Sources/Divvy/Core/DivvyVersion.swift")
# The SONAME's number follows the C ABI, not the release (libdivvy.so.1 since 128-bit handles): read it from
# Package.swift, the one place it is written (-soname=libdivvy.so.N).
abi=$(sed -n 's/.*"-soname=libdivvy\.so\.\([0-9][0-9]*\)".*/\1/p' "$root/Package.swift")
if [ -z "$abi" ]; then
    echo "$(basename "$0" .sh): cannot read libdivvy's SONAME from Package.swift" >&2
    exit 2
fi
if [ -z "$version" ]; then
    echo "install-libdivvy: cannot read the version from Sources/Divvy/Core/DivvyVersion.swift" >&2
    exit 2
fi

library=$build/libdivvy.so
if [ ! -f "$library" ]; then
    echo "install-libdivvy: $library is missing: run \`swift build -c release --product divvy\` first" >&2
    exit 2
fi

# Does the library load the Swift runtime (a plain SwiftPM build), or carry it (a static-stdlib build)?
rpath_flags="-Wl,-rpath,$prefix/lib"
if command -v readelf >/dev/null 2>&1; then
    needs_runtime=$(readelf -d "$library" | grep -c 'Shared library: \[libswiftCore.so\]' || true)
else
    needs_runtime=$(grep -c libswiftCore.so "$library" || true)
fi
if [ "$needs_runtime" -gt 0 ]; then
    # The toolchain next to `swift`, else the library's RUNPATH.
    runtime=
    if command -v swift >/dev/null 2>&1; then
        runtime=$(cd "$(dirname "$(readlink -f "$(command -v swift)")")/../lib/swift/linux" 2>/dev/null && pwd) ||
            runtime=
    fi
    if [ -z "$runtime" ] && command -v readelf >/dev/null 2>&1; then
        runtime=$(readelf -d "$library" | sed -n 's/.*R[UN]*PATH.*\[\([^]:]*\).*/\1/p' | head -n 1)
    fi
    if [ -z "$runtime" ]; then
        echo "install-libdivvy: $library needs the Swift runtime and none was found (put swift on PATH, or build" \
            "with --static-swift-stdlib -Xswiftc -static-stdlib)" >&2
        exit 2
    fi
    rpath_flags="$rpath_flags -Wl,-rpath,$runtime"
fi

install -d "$destdir$prefix/lib/pkgconfig" "$destdir$prefix/include"
install -m 0755 "$library" "$destdir$prefix/lib/libdivvy.so.$version"
ln -sf "libdivvy.so.$version" "$destdir$prefix/lib/libdivvy.so.$abi"
ln -sf "libdivvy.so.$abi" "$destdir$prefix/lib/libdivvy.so"
install -m 0644 "$root/Sources/CDivvyC/include/divvy.h" "$destdir$prefix/include/divvy.h"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$prefix/lib|g" -e "s|@INCLUDEDIR@|$prefix/include|g" \
    -e "s|@RPATH_FLAGS@|$rpath_flags|g" -e "s|@VERSION@|$version|g" \
    "$root/deploy/divvy.pc.in" >"$destdir$prefix/lib/pkgconfig/divvy.pc"
echo "installed libdivvy $version in $destdir$prefix (pkg-config: $prefix/lib/pkgconfig/divvy.pc)"
