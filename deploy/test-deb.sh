#!/bin/sh
# Installs divvy_*.deb into a scratch root with dpkg, then proves the installed files work with the Swift toolchain
# made invisible: divvyd, divvyctl, a C client built with pkg-config, the Python client and a preloaded program.
set -eu

usage() {
    cat <<USAGE
usage: deploy/test-deb.sh [-h] DEB

Checks a package built by deploy/build-deb.sh, as root, without touching the host's installed files:
  1. dpkg --root installs it into a scratch root (maintainer scripts run chrootless, with DPKG_ROOT), and the
     conffile, the divvy user and every file are where they belong.
  2. In a private mount namespace, the scratch root is overlaid on /usr (read-only), so the files sit at
     their installed paths, and a tmpfs hides the Swift toolchain. There: divvyd --version, divvyctl --version;
     no installed binary needs a library that is missing; divvyd serves divvyctl status; a C program compiled
     with \$(pkg-config --cflags --libs divvy) passes blocks between processes; python3 -c 'import divvy' allocates,
     writes and frees (NumPy too, when Debian's python3-numpy is installed); /bin/echo, sort and python3 run under
     LD_PRELOAD=libDivvyMalloc.so; the man pages render and the bash completion loads.
  3. dpkg removes and purges it, leaving no file of the package behind.
Needs: root, unshare and overlayfs, dpkg, a C compiler, pkg-config, python3 (/usr/bin/python3).
USAGE
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
"") usage >&2; exit 2 ;;
esac

# --- inside the namespace ---------------------------------------------------------------------------------------
if [ "${1:-}" = --inside ]; then
    version=$2
    work=$3
    root=$4
    fail() {
        echo "test-deb: FAILED: $*" >&2
        exit 1
    }
    triplet=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
    libdir=/usr/lib/$triplet

    if command -v swift >/dev/null 2>&1 && swift --version >/dev/null 2>&1; then
        fail "the Swift toolchain is still visible"
    fi
    if ldconfig -p | grep -q libswiftCore; then fail "a Swift runtime is registered with ld.so: $(ldconfig -p | grep libswiftCore)"; fi
    echo "test-deb: toolchain hidden (swift: $(command -v swift || echo none))"

    for file in /usr/bin/divvyd /usr/bin/divvyctl "$libdir/libdivvy.so.1" "$libdir/libDivvyMalloc.so"; do
        ldd "$file" >"$work/ldd.txt" 2>&1 || fail "ldd $file: $(cat "$work/ldd.txt")"
        if grep -q "not found\|libswift" "$work/ldd.txt"; then fail "$file: $(cat "$work/ldd.txt")"; fi
    done
    echo "test-deb: no installed binary needs a missing library or a Swift runtime"

    [ "$(divvyd --version)" = "$version" ] || fail "divvyd --version says '$(divvyd --version)', not $version"
    [ "$(divvyctl --version)" = "$version" ] || fail "divvyctl --version says '$(divvyctl --version)'"
    echo "test-deb: divvyd and divvyctl --version: $version"

    socket=$work/divvyd.sock
    # The packaged configuration (the conffile; /etc is not overlaid, so the host's users stay as they are).
    divvyd --config "$root/etc/divvy/divvyd.conf" --socket "$socket" --data-size 32M >"$work/divvyd.log" 2>&1 &
    daemon=$!
    tries=0
    until [ -S "$socket" ] && divvyctl --socket "$socket" status >"$work/status.txt" 2>&1; do
        tries=$((tries + 1))
        if [ $tries -gt 100 ] || ! kill -0 "$daemon" 2>/dev/null; then
            cat "$work/divvyd.log" >&2
            fail "divvyd did not start"
        fi
        sleep 0.1
    done
    grep -q "$version" "$work/status.txt" || fail "divvyctl status does not name version $version: $(cat "$work/status.txt")"
    echo "test-deb: divvyd serves; divvyctl status reports version $version"

    cc -std=c11 -Wall -Werror /usr/share/doc/divvy/examples/c-client.c $(pkg-config --cflags --libs divvy) \
        -lpthread -o "$work/c-client" || fail "the C example does not build with pkg-config's flags"
    readelf -d "$work/c-client" | grep -q 'Shared library: \[libdivvy.so.1\]' || fail "C client does not need libdivvy.so.1"
    for mode in direct mediated; do
        "$work/c-client" --socket "$socket" --mode "$mode" --child-mode mediated >"$work/c.txt" 2>&1 ||
            fail "C client ($mode): $(cat "$work/c.txt")"
    done
    echo "test-deb: C client (pkg-config, libdivvy.so.1) passes blocks in direct and mediated mode"

    /usr/bin/python3 - "$socket" "$version" <<'PYTHON' || fail "the Python client"
import sys
import divvy

socket, version = sys.argv[1], sys.argv[2]
assert divvy.__version__ == version, (divvy.__version__, version)
assert divvy.library_version() == version, divvy.library_version()
with divvy.Client(socket, name="test-deb") as client:
    block = client.alloc(4096)
    view = block.memoryview()
    view[:5] = b"hello"
    assert bytes(block.memoryview()[:5]) == b"hello"
    try:
        import numpy
    except ImportError:
        numpy = None
    if numpy is not None:
        array = block.numpy(dtype="uint32")
        array[1] = 0xDEADBEEF
        assert bytes(block.memoryview()[4:8]) == (0xDEADBEEF).to_bytes(4, "little")
        del array
    del view
    block.free()
print("python: ok", "(with numpy)" if numpy is not None else "(numpy not installed)")
PYTHON
    echo "test-deb: Python client (import divvy from dist-packages) works"

    preload=$libdir/libDivvyMalloc.so
    [ "$(LD_PRELOAD=$preload /bin/echo preloaded)" = preloaded ] || fail "/bin/echo under the preload"
    [ "$(printf 'b\na\nc\n' | LD_PRELOAD=$preload sort | tr -d '\n')" = abc ] || fail "sort under the preload"
    LD_PRELOAD=$preload /usr/bin/python3 -c '
import ctypes
lib = ctypes.CDLL(None)
assert hasattr(lib, "divvy_malloc_stat"), "libDivvyMalloc is not the process allocator"
print(sum(len(str(i) * 10) for i in range(200000)))' >"$work/py-preload.txt" 2>&1 ||
        fail "python3 under the preload: $(cat "$work/py-preload.txt")"
    echo "test-deb: /bin/echo, sort and python3 run under LD_PRELOAD=libDivvyMalloc.so"

    for page in divvyd divvyctl; do
        zcat "/usr/share/man/man1/$page.1.gz" | grep -Eq '^\.(TH|Dt) ' || fail "man page $page.1 has no .TH or .Dt header"
        if command -v man >/dev/null 2>&1; then
            MANWIDTH=100 man -l "/usr/share/man/man1/$page.1.gz" 2>/dev/null | grep -q "$page" ||
                fail "man -l $page.1 renders nothing"
        fi
    done
    bash -c '. /usr/share/bash-completion/completions/divvyctl && complete -p divvyctl' >/dev/null ||
        fail "the bash completion of divvyctl does not load"
    echo "test-deb: man pages render; bash completion loads"

    kill -TERM "$daemon"
    wait "$daemon" || fail "divvyd exited with status $? on SIGTERM"
    echo "test-deb: divvyd stopped on SIGTERM"
    exit 0
fi

# --- outside: install with dpkg into a scratch root -------------------------------------------------------------
deb=$(readlink -f "$1")
[ -f "$deb" ] || { echo "test-deb: no such file: $1" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "test-deb: run as root (dpkg --root, unshare, mount)" >&2; exit 2; }
version=$(dpkg-deb -f "$deb" Version)
work=$(mktemp -d "${TMPDIR:-/tmp}/divvy-test-deb.XXXXXX")
root=$work/root
trap 'rm -rf "$work"' EXIT INT TERM
echo "test-deb: $deb (version $version)"

dpkg-deb -f "$deb" Package Version Architecture Depends
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)" = /etc/divvy/divvyd.conf ] ||
    { echo "test-deb: conffiles is not /etc/divvy/divvyd.conf" >&2; exit 1; }

install -d "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
: >"$root/var/lib/dpkg/status"
: >"$root/var/lib/dpkg/available"
# The scratch root has no passwd of its own yet: systemd-sysusers --root writes one with the divvy user.
dpkg --root="$root" --force-script-chrootless --force-depends --log=/dev/null -i "$deb" >"$work/dpkg.txt" 2>&1 ||
    { cat "$work/dpkg.txt" >&2; echo "test-deb: dpkg -i failed" >&2; exit 1; }
status=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}' divvy)
[ "$status" = "install ok installed" ] || { echo "test-deb: dpkg status is '$status'" >&2; exit 1; }
dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Conffiles}\n' divvy | grep -q /etc/divvy/divvyd.conf ||
    { echo "test-deb: /etc/divvy/divvyd.conf is not registered as a conffile" >&2; exit 1; }
if command -v systemd-sysusers >/dev/null 2>&1; then
    grep -q '^divvy:' "$root/etc/passwd" || { echo "test-deb: postinst did not create the divvy user" >&2; exit 1; }
fi
echo "test-deb: dpkg installed it ($(dpkg-query --admindir="$root/var/lib/dpkg" -L divvy | wc -l) paths)," \
    "conffile registered, divvy user created by postinst"

# --- the namespace: installed paths, no toolchain ---------------------------------------------------------------
toolchain=
if command -v swift >/dev/null 2>&1; then
    toolchain=$(dirname "$(dirname "$(dirname "$(readlink -f "$(command -v swift)")")")")
fi
script=$(readlink -f "$0")
unshare --mount --propagation private sh -eu -c '
    root=$1; toolchain=$2; shift 2
    for dir in usr/bin usr/include usr/lib/'"$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"' \
        usr/lib/python3/dist-packages usr/lib/systemd/system usr/lib/sysusers.d usr/lib/tmpfiles.d \
        usr/share/man/man1 usr/share/bash-completion/completions usr/share/doc; do
        [ -d "$root/$dir" ] && [ -d "/$dir" ] || continue
        mount -t overlay overlay -o "lowerdir=$root/$dir:/$dir" "/$dir"
    done
    if [ -n "$toolchain" ] && [ "$toolchain" != / ]; then mount -t tmpfs -o ro,size=1M none "$toolchain"; fi
    exec sh "$@"
' sh "$root" "$toolchain" "$script" --inside "$version" "$work" "$root"

# --- remove and purge -------------------------------------------------------------------------------------------
dpkg --root="$root" --force-script-chrootless --log=/dev/null -P divvy >"$work/dpkg.txt" 2>&1 ||
    { cat "$work/dpkg.txt" >&2; echo "test-deb: dpkg -P failed" >&2; exit 1; }
left=$(cd "$root" && find . -path ./var -prune -o \( -type f -o -type l \) -print | grep -v '^\./etc/\(passwd\|group\|shadow\|gshadow\|\.pwd\.lock\)$' || true)
[ -z "$left" ] || { echo "test-deb: files left after purge: $left" >&2; exit 1; }
echo "test-deb: removed and purged cleanly"
echo "test-deb: all checks passed"
