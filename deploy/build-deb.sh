#!/bin/sh
# Builds divvy_VERSION_ARCH.deb: everything Divvy installs, with no dependency on the Swift toolchain at run time.
set -eu

usage() {
    cat <<USAGE
usage: deploy/build-deb.sh [-h] [--out DIR] [--build-dir DIR] [--skip-build]

Builds the Debian package divvy_VERSION_ARCH.deb with dpkg-deb (no other packaging tools). The Swift runtime is
linked into every binary (--static-swift-stdlib -Xswiftc -static-stdlib), so the package needs only libc,
libstdc++ and libgcc_s; the preload library carries no Swift runtime at all (docs/packaging.md says why).

Options:
  --out DIR         where to write the .deb (default: .build-deb/)
  --build-dir DIR   the static release build's scratch path (default: .build-release-static)
  --skip-build      use what --build-dir holds (CI builds once, then packages)
  -h, --help        this help

Variables:
  DIVVY_MALLOC_LIBRARY   a prebuilt libDivvyMalloc.so to package instead of building one

The package installs:
  /usr/bin/divvyd, /usr/bin/divvyctl
  /usr/lib/ARCH-TRIPLET/libdivvy.so.VERSION (+ .so.1, .so links), /usr/include/divvy.h, .../pkgconfig/divvy.pc
  /usr/lib/ARCH-TRIPLET/libDivvyMalloc.so           LD_PRELOAD=... program
  /usr/lib/python3/dist-packages/divvy/              the Python client
  /usr/lib/systemd/system/divvyd.service, divvyd.socket
  /usr/lib/sysusers.d/divvy.conf, /usr/lib/tmpfiles.d/divvy.conf
  /etc/divvy/divvyd.conf (a conffile: your edits survive upgrades)
  /usr/share/man/man1/divvyd.1.gz, divvyctl*.1.gz; bash, zsh and fish completions
  /usr/share/doc/divvy/ (copyright, changelog, README, examples)

Then: apt install ./divvy_VERSION_ARCH.deb && systemctl enable --now divvyd.socket
USAGE
}

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/.build-deb
build=$root/.build-release-static
skip_build=no
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --build-dir) build=$2; shift 2 ;;
    --build-dir=*) build=${1#--build-dir=}; shift ;;
    --skip-build) skip_build=yes; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-deb: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for tool in dpkg-deb gzip strip readelf md5sum; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build-deb: $tool is missing (apt-get install dpkg binutils gzip coreutils)" >&2
        exit 2
    fi
done

version=$(sed -n 's/^    public static let string = "\(.*\)"$/\1/p' "$root/Sources/Divvy/Core/DivvyVersion.swift")
if [ -z "$version" ]; then
    echo "build-deb: cannot read the version from Sources/Divvy/Core/DivvyVersion.swift" >&2
    exit 2
fi
# The SONAME's number follows the C ABI, not the release (libdivvy.so.1 since 128-bit handles): read it from
# Package.swift, the one place it is written (-soname=libdivvy.so.N).
abi=$(sed -n 's/.*"-soname=libdivvy\.so\.\([0-9][0-9]*\)".*/\1/p' "$root/Package.swift")
if [ -z "$abi" ]; then
    echo "$(basename "$0" .sh): cannot read libdivvy's SONAME from Package.swift" >&2
    exit 2
fi
arch=$(dpkg --print-architecture)
case "$arch" in
amd64) triplet=x86_64-linux-gnu ;;
arm64) triplet=aarch64-linux-gnu ;;
*) echo "build-deb: no multiarch triplet known for $arch" >&2; exit 2 ;;
esac
libdir=/usr/lib/$triplet

# --- build ------------------------------------------------------------------------------------------------------
if [ "$skip_build" = no ]; then
    # Progress goes to stderr: stdout is only the .deb's path (CI captures it).
    echo "build-deb: swift build -c release (Swift runtime linked in) into $build" >&2
    for product in divvyd divvyctl divvy; do
        (cd "$root" && swift build -c release --scratch-path "$build" --static-swift-stdlib -Xswiftc -static-stdlib \
            --product "$product") >&2
    done
fi
products=$build/release
for file in "$products/divvyd" "$products/divvyctl" "$products/libdivvy.so"; do
    if [ ! -f "$file" ]; then
        echo "build-deb: $file is missing (run without --skip-build)" >&2
        exit 2
    fi
done
malloc_library=${DIVVY_MALLOC_LIBRARY:-}
if [ -z "$malloc_library" ]; then
    # Embedded Swift: no Swift runtime at all in the programs it is preloaded into (docs/malloc-no-runtime.md).
    malloc_library=$("$root/deploy/build-libdivvymalloc.sh" "$build/malloc-embedded" | tail -n 1)
fi
if [ ! -f "$malloc_library" ]; then
    echo "build-deb: no libDivvyMalloc.so at $malloc_library" >&2
    exit 2
fi

# No binary may need the toolchain: no libswift* and no RUNPATH into it.
for file in "$products/divvyd" "$products/divvyctl" "$products/libdivvy.so" "$malloc_library"; do
    if readelf -d "$file" | grep -q 'Shared library: \[libswift'; then
        echo "build-deb: $file still needs the Swift runtime:" >&2
        readelf -d "$file" | grep NEEDED >&2
        exit 1
    fi
done

# --- stage ------------------------------------------------------------------------------------------------------
stage=$(mktemp -d "${TMPDIR:-/tmp}/divvy-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
pkg=$stage/divvy_${version}_$arch
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg$libdir/pkgconfig" "$pkg/usr/include" \
    "$pkg/usr/lib/systemd/system" "$pkg/usr/lib/sysusers.d" "$pkg/usr/lib/tmpfiles.d" "$pkg/etc/divvy" \
    "$pkg/usr/share/doc/divvy/examples" "$pkg/usr/share/man/man1" "$pkg/usr/lib/python3/dist-packages"

# Binaries, stripped (debug information stays in the build directory).
install -m 0755 "$products/divvyd" "$products/divvyctl" "$pkg/usr/bin/"
install -m 0644 "$products/libdivvy.so" "$pkg$libdir/libdivvy.so.$version"
ln -s "libdivvy.so.$version" "$pkg$libdir/libdivvy.so.$abi"
ln -s "libdivvy.so.$abi" "$pkg$libdir/libdivvy.so"
install -m 0644 "$malloc_library" "$pkg$libdir/libDivvyMalloc.so"
strip --strip-unneeded "$pkg/usr/bin/divvyd" "$pkg/usr/bin/divvyctl" "$pkg$libdir/libdivvy.so.$version" \
    "$pkg$libdir/libDivvyMalloc.so"

# The C client's development files.
install -m 0644 "$root/Sources/CDivvyC/include/divvy.h" "$pkg/usr/include/divvy.h"
sed -e "s|@PREFIX@|/usr|g" -e "s|@LIBDIR@|$libdir|g" -e "s|@INCLUDEDIR@|/usr/include|g" \
    -e "s|@RPATH_FLAGS@||g" -e "s|@VERSION@|$version|g" \
    "$root/deploy/divvy.pc.in" >"$pkg$libdir/pkgconfig/divvy.pc"

# The Python client: the package's sources, with its version written in.
cp -R "$root/python/src/divvy" "$pkg/usr/lib/python3/dist-packages/divvy"
find "$pkg/usr/lib/python3/dist-packages" -name '__pycache__' -prune -exec rm -rf {} +
printf '__version__ = "%s"\n' "$version" >"$pkg/usr/lib/python3/dist-packages/divvy/_version.py"

# systemd: the units point at the packaged binary and docs.
for unit in divvyd.service divvyd.socket; do
    sed -e 's|/usr/local/bin/divvyd|/usr/bin/divvyd|g' \
        -e 's|file:///usr/local/share/doc/divvy/README.md|file:///usr/share/doc/divvy/README.md man:divvyd(1)|' \
        "$root/deploy/$unit" >"$pkg/usr/lib/systemd/system/$unit"
    chmod 0644 "$pkg/usr/lib/systemd/system/$unit"
done
install -m 0644 "$root/deploy/sysusers.d/divvy.conf" "$pkg/usr/lib/sysusers.d/divvy.conf"
install -m 0644 "$root/deploy/tmpfiles.d/divvy.conf" "$pkg/usr/lib/tmpfiles.d/divvy.conf"
install -m 0644 "$root/deploy/divvyd.conf.example" "$pkg/etc/divvy/divvyd.conf"

# Man pages and shell completions, generated from the argument parsers of the binaries just built.
generated=$stage/generated
"$root/deploy/generate-docs.sh" "$generated" "$products" >/dev/null
for page in "$generated"/man1/*.1; do
    gzip -9n <"$page" >"$pkg/usr/share/man/man1/$(basename "$page").gz"
done
install -d "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
    "$pkg/usr/share/fish/vendor_completions.d"
for tool in divvyd divvyctl; do
    install -m 0644 "$generated/completions/bash/$tool" "$pkg/usr/share/bash-completion/completions/$tool"
    install -m 0644 "$generated/completions/zsh/_$tool" "$pkg/usr/share/zsh/vendor-completions/_$tool"
    install -m 0644 "$generated/completions/fish/$tool.fish" "$pkg/usr/share/fish/vendor_completions.d/$tool.fish"
done

# Documentation (Debian policy: copyright and a compressed changelog).
install -m 0644 "$root/LICENSE" "$pkg/usr/share/doc/divvy/copyright"
gzip -9n <"$root/CHANGELOG.md" >"$pkg/usr/share/doc/divvy/changelog.gz"
install -m 0644 "$root/README.md" "$pkg/usr/share/doc/divvy/README.md"
install -d "$pkg/usr/share/doc/divvy/docs"
install -m 0644 "$root"/docs/*.md "$root/Protocol/PROTOCOL.md" "$pkg/usr/share/doc/divvy/docs/"
install -m 0644 "$root/Examples/c-client/main.c" "$pkg/usr/share/doc/divvy/examples/c-client.c"
install -m 0644 "$root/deploy/sysctl.d/60-divvy-hugepages.conf" "$pkg/usr/share/doc/divvy/examples/"

# --- control files ----------------------------------------------------------------------------------------------
installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: divvy
Version: $version
Architecture: $arch
Maintainer: The Divvy Authors <divvy@localhost>
Installed-Size: $installed_size
Depends: libc6 (>= 2.34), libstdc++6, libgcc-s1
Recommends: systemd
Suggests: python3, python3-numpy, pkg-config
Section: libs
Priority: optional
Homepage: file:///usr/share/doc/divvy/README.md
Description: shared-memory allocator daemon, client libraries and malloc replacement
 Divvy hands out blocks of POSIX shared memory to cooperating processes, which
 exchange them as 128-bit handles without copying. divvyd maps the region and
 serves clients over a Unix socket; divvyctl inspects it.
 .
 This package holds divvyd and divvyctl with their systemd units, the C client
 library libdivvy.so.1 with divvy.h and divvy.pc, the Python client (import
 divvy), and libDivvyMalloc.so, a malloc replacement for LD_PRELOAD. Nothing
 in it needs the Swift toolchain.
CONTROL
echo "/etc/divvy/divvyd.conf" >"$pkg/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$root/deploy/debian/$script" "$pkg/DEBIAN/$script"
done
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort | xargs md5sum) \
    >"$pkg/DEBIAN/md5sums"

install -d "$out"
deb=$out/divvy_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
