#!/bin/sh
# Builds the example C client (main.c) with the C compiler against divvy.h and the built libdivvy.so, starts divvyd
# from the same build on a temporary socket, runs the example in every mode pair (and the no-daemon check), stops
# divvyd with SIGTERM and checks that everything exited 0.
#
#   swift build --build-tests          # or plain `swift build`: builds libdivvy.so and divvyd
#   Examples/c-client/run.sh           # uses .build/debug; DIVVY_BUILD_DIR=<dir> for another build; CC=<compiler>
#
# Exit status 0 only if every run passed. CI runs it through `swift test` (CClientTests) as well.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${DIVVY_BUILD_DIR:-$root/.build/debug}
# The C compiler: $CC, else cc, else the Swift toolchain's clang (a machine with only the toolchain has no cc).
cc=${CC:-}
if [ -z "$cc" ]; then
    for candidate in cc gcc clang; do
        if command -v "$candidate" >/dev/null 2>&1; then
            cc=$candidate
            break
        fi
    done
fi
if [ -z "$cc" ]; then
    echo "run.sh: no C compiler (cc, gcc or clang; or set CC)" >&2
    exit 2
fi

for file in "$build/libdivvy.so" "$build/divvyd"; do
    if [ ! -e "$file" ]; then
        echo "run.sh: $file is missing: run \`swift build\` first (or set DIVVY_BUILD_DIR)" >&2
        exit 2
    fi
done

work=$(mktemp -d /tmp/divvy-c-client.XXXXXX)
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ]; then
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "c-client: building with $cc against $build/libdivvy.so"
# The library's SONAME is libdivvy.so.1 (what the program records and the loader looks for); SwiftPM writes only
# libdivvy.so, so give it both names, as an installed library has (deploy/install-libdivvy.sh).
mkdir "$work/lib"
ln -s "$build/libdivvy.so" "$work/lib/libdivvy.so.1"
ln -s "$build/libdivvy.so" "$work/lib/libdivvy.so"
"$cc" -std=c11 -Wall -Wextra -Wpedantic -Werror -I "$root/Sources/CDivvyC/include" "$root/Examples/c-client/main.c" \
    -L "$work/lib" -ldivvy -Wl,-rpath,"$work/lib" -lpthread -o "$work/divvy-c-example"

socket=$work/divvyd.sock
"$build/divvyd" --socket "$socket" --data-size 32M --page-size 16K >"$work/divvyd.log" 2>&1 &
daemon_pid=$!
# Wait until divvyd says it is ready (it logs after the socket listens), at most 20 s.
tries=0
until grep -q "divvyd ready" "$work/divvyd.log" 2>/dev/null; do
    tries=$((tries + 1))
    if [ $tries -gt 200 ] || ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "c-client: divvyd did not start:" >&2
        cat "$work/divvyd.log" >&2
        exit 1
    fi
    sleep 0.1
done

status=0
for parent in direct mediated; do
    for child in direct mediated; do
        echo "c-client: $parent parent, $child child"
        if ! "$work/divvy-c-example" --socket "$socket" --mode "$parent" --child-mode "$child" \
            >"$work/run.log" 2>&1; then
            status=1
        fi
        sed 's/^/    /' "$work/run.log"
    done
done
echo "c-client: no daemon"
"$work/divvy-c-example" no-daemon "$work/nobody.sock" | sed 's/^/    /' || status=1

kill -TERM "$daemon_pid"
if wait "$daemon_pid"; then
    echo "c-client: divvyd stopped on SIGTERM with status 0"
else
    echo "c-client: divvyd exited with status $? on SIGTERM:" >&2
    tail -n 20 "$work/divvyd.log" >&2
    status=1
fi
daemon_pid=

if [ $status -ne 0 ]; then
    echo "c-client: FAILED" >&2
    exit 1
fi
echo "c-client: all runs passed"
