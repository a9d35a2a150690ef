#!/bin/sh
# Installs the C client library: libdivvy.so, divvy.h and a pkg-config file.
#
#   swift build -c release --product divvy
#   deploy/install-libdivvy.sh [PREFIX [BUILD_DIR]]      # PREFIX default /usr/local; BUILD_DIR default .build/release
#
# Installs PREFIX/lib/libdivvy.so, PREFIX/include/divvy.h, PREFIX/lib/pkgconfig/divvy.pc (from deploy/divvy.pc.in).
# Honours DESTDIR (staged installs: files go under $DESTDIR$PREFIX, the .pc file names $PREFIX). Then:
#   cc prog.c $(pkg-config --cflags --libs divvy)     # PKG_CONFIG_PATH=PREFIX/lib/pkgconfig for a non-standard PREFIX
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:-/usr/local}
build=${2:-$root/.build/release}
destdir=${DESTDIR:-}
version=0.1.0

library=$build/libdivvy.so
if [ ! -f "$library" ]; then
    echo "install-libdivvy: $library is missing: run \`swift build -c release --product divvy\` first" >&2
    exit 2
fi
# The Swift runtime the library was linked against: the toolchain next to `swift`, else the library's RUNPATH.
runtime=
if command -v swift >/dev/null 2>&1; then
    runtime=$(cd "$(dirname "$(readlink -f "$(command -v swift)")")/../lib/swift/linux" 2>/dev/null && pwd) || runtime=
fi
if [ -z "$runtime" ] && command -v readelf >/dev/null 2>&1; then
    runtime=$(readelf -d "$library" | sed -n 's/.*R[UN]*PATH.*\[\([^]:]*\).*/\1/p' | head -n 1)
fi
if [ -z "$runtime" ]; then
    echo "install-libdivvy: cannot find the Swift runtime libraries (put swift on PATH)" >&2
    exit 2
fi

install -d "$destdir$prefix/lib/pkgconfig" "$destdir$prefix/include"
install -m 0755 "$library" "$destdir$prefix/lib/libdivvy.so"
install -m 0644 "$root/Sources/CDivvyC/include/divvy.h" "$destdir$prefix/include/divvy.h"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$prefix/lib|g" -e "s|@INCLUDEDIR@|$prefix/include|g" \
    -e "s|@SWIFT_RUNTIME_DIR@|$runtime|g" -e "s|@VERSION@|$version|g" \
    "$root/deploy/divvy.pc.in" >"$destdir$prefix/lib/pkgconfig/divvy.pc"
echo "installed libdivvy $version in $destdir$prefix (pkg-config: $prefix/lib/pkgconfig/divvy.pc)"
