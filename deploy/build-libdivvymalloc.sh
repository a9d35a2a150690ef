#!/bin/sh
# Builds libDivvyMalloc.so without the Swift runtime: a release-optimized library whose only dependency is libc, so
# `LD_PRELOAD` costs a program no libswiftCore (no extra RSS, no extra start-up) and works where no Swift toolchain
# is installed. See docs/malloc-no-runtime.md.
#
#   deploy/build-libdivvymalloc.sh [OUTDIR]     # OUTDIR default .build/malloc-embedded; prints the library's path
#
# It compiles the same sources as the SwiftPM product `DivvyMalloc`, in Embedded Swift (`-enable-experimental-feature
# Embedded -wmo`), which SwiftPM cannot mix with normal targets in one build, so this script drives swiftc and clang:
#   1. Atomics: swift-atomics' sources as they are, from the package checkout (`swift package resolve` fetches it).
#   2. Divvy: the part of the Divvy module the malloc shim uses: the allocator protocol and its value types
#      (Sources/Divvy/Core) and the adapter with its strategy protocol (Sources/Divvy/Global).
#   3. DivvyMalloc: the heap and the @_cdecl entry points (Sources/DivvyMalloc/*.swift).
#   4. The C shims (Sources/CDivvyMalloc/*.c, swift-atomics' _AtomicsShims) with clang -O2. (CDivvy, the system
#      layer's shim, is not needed: this part of Divvy makes no system call through it.)
# Then one link with Sources/DivvyMalloc/libDivvyMalloc.map: exports are the malloc family and its diagnostics only.
#
# Embedded Swift has no Glibc overlay: a clang module named `Glibc` over the toolchain's SwiftGlibc.h stands in for
# it, so the sources' `import Glibc` stays as it is. `-no-allocations` makes the compiler reject any Swift heap
# allocation in the heap's module (the Embedded runtime would get its memory from posix_memalign: from us).
# Environment: SWIFTC, CLANG (default: from PATH), DIVVY_ATOMICS_DIR (the swift-atomics checkout).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.build/malloc-embedded}
mkdir -p "$out"
out=$(cd "$out" && pwd)
swiftc=${SWIFTC:-$(command -v swiftc)}
clang=${CLANG:-$(dirname "$(readlink -f "$swiftc")")/clang}
[ -x "$clang" ] || clang=$(command -v clang)
toolchain=$(cd "$(dirname "$(readlink -f "$swiftc")")/.." && pwd)
arch=$(uname -m)
target=$arch-unknown-linux-gnu

atomics=${DIVVY_ATOMICS_DIR:-$root/.build/checkouts/swift-atomics}
if [ ! -d "$atomics/Sources/Atomics" ]; then
    (cd "$root" && swift package resolve >&2)
fi
if [ ! -d "$atomics/Sources/Atomics" ]; then
    echo "build-libdivvymalloc: no swift-atomics checkout at $atomics (set DIVVY_ATOMICS_DIR)" >&2
    exit 2
fi

work=$out/obj
rm -rf "$work"
mkdir -p "$work/modules/Glibc" "$work/modules/CDivvyMalloc"

# Clang modules: Glibc (see above) and the malloc shim's header (SwiftPM generates these module maps itself).
glibc_header=$toolchain/lib/swift/linux/$arch/SwiftGlibc.h
[ -f "$glibc_header" ] || glibc_header=$toolchain/lib/swift/linux/SwiftGlibc.h
printf 'module Glibc [system] {\n    header "%s"\n    export *\n}\n' "$glibc_header" \
    >"$work/modules/Glibc/module.modulemap"
printf 'module CDivvyMalloc {\n    umbrella header "%s"\n    export *\n}\n' \
    "$root/Sources/CDivvyMalloc/include/CDivvyMalloc.h" >"$work/modules/CDivvyMalloc/module.modulemap"

# -function-sections: every function in its own section, so --gc-sections drops what nothing calls (the parts of
# Divvy's types the heap does not use, the Embedded runtime's unused entry points).
embedded="-target $target -enable-experimental-feature Embedded -wmo -parse-as-library -O -Xcc -fPIC
    -Xfrontend -function-sections -I $work -I $work/modules/Glibc
    -I $work/modules/CDivvyMalloc -I $atomics/Sources/_AtomicsShims/include"

echo "build-libdivvymalloc: Atomics (Embedded Swift)" >&2
# Quoted, one a line: a response file splits at spaces ("Unmanaged extensions.swift").
find "$atomics/Sources/Atomics" -name '*.swift' | sort | sed 's/.*/"&"/' >"$work/atomics.files"
# shellcheck disable=SC2086
"$swiftc" $embedded -enable-experimental-feature BuiltinModule -module-name Atomics \
    -emit-module -emit-module-path "$work/Atomics.swiftmodule" -c -o "$work/Atomics.o" @"$work/atomics.files"

echo "build-libdivvymalloc: Divvy (the adapter, its strategy protocol, the allocator protocol)" >&2
# shellcheck disable=SC2086
"$swiftc" $embedded -swift-version 6 -module-name Divvy -emit-module -emit-module-path "$work/Divvy.swiftmodule" -c \
    -o "$work/Divvy.o" "$root"/Sources/Divvy/Core/Allocator.swift "$root"/Sources/Divvy/Core/AllocationError.swift \
    "$root"/Sources/Divvy/Core/Layout.swift "$root"/Sources/Divvy/Core/UnsafeBlock.swift \
    "$root"/Sources/Divvy/Global/CAllocationStrategy.swift "$root"/Sources/Divvy/Global/GlobalAllocatorAdapter.swift \
    "$root"/Sources/Divvy/Global/HeaderStrategy.swift

echo "build-libdivvymalloc: DivvyMalloc (the heap)" >&2
# shellcheck disable=SC2086
"$swiftc" $embedded -swift-version 6 -no-allocations -module-name DivvyMalloc -c -o "$work/DivvyMalloc.o" \
    "$root"/Sources/DivvyMalloc/*.swift

echo "build-libdivvymalloc: C shims" >&2
cflags="-O2 -fPIC -ffunction-sections -fdata-sections"
# shellcheck disable=SC2086
for c in "$root"/Sources/CDivvyMalloc/*.c; do
    "$clang" $cflags -I "$root/Sources/CDivvyMalloc/include" -c -o "$work/CDivvyMalloc-$(basename "$c" .c).o" "$c"
done
# shellcheck disable=SC2086
"$clang" $cflags -I "$atomics/Sources/_AtomicsShims/include" -c -o "$work/AtomicsShims.o" \
    "$atomics/Sources/_AtomicsShims/src/_AtomicsShims.c"

# -nostdlib++ and no Swift runtime: the only library linked is libc (clang adds it, with crt files for -shared).
"$clang" -shared -fPIC -o "$out/libDivvyMalloc.so" "$work"/*.o \
    -Wl,--version-script="$root/Sources/DivvyMalloc/libDivvyMalloc.map" -Wl,--gc-sections \
    -Wl,-soname,libDivvyMalloc.so
echo "$out/libDivvyMalloc.so"
