#!/bin/sh
# CI check of deploy/: stages an install (install.sh with DESTDIR) and checks the real, unmodified files in it:
#  1. `systemd-analyze verify` of divvyd.socket and divvyd.service, with /usr/local/bin/divvyd being the built
#     binary inside the staged root and the host's own units next to them (dependencies resolve). Any output
#     fails: systemd-analyze reports unknown keys and bad values as warnings and still exits 0.
#  2. `systemd-analyze security --offline` stays at "OK" exposure or better (a guard against lost hardening).
#  3. sysusers.d creates the divvy user and group; tmpfiles.d then creates /run/divvy 0750 divvy:divvy.
#  4. divvyd.conf.example parses and equals divvyd's built-in defaults (every key listed, none stale), and names
#     the socket path that divvyd.socket listens on.
#  5. Every sysctl the huge-page example names exists.
# Installs Debian's systemd package first (apt-get) when systemd-analyze is missing.
#
# Usage: deploy/verify-units.sh [path/to/divvyd]     (default .build/debug/divvyd: `swift build` first)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repository=$(dirname "$here")
binary=${1:-$repository/.build/debug/divvyd}
case "$binary" in /*) ;; *) binary="$(pwd)/$binary" ;; esac
if [ ! -x "$binary" ]; then
    echo "verify-units.sh: no divvyd at $binary: run 'swift build --product divvyd' first, or pass its path" >&2
    exit 1
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify-units.sh: systemd-analyze is missing: installing Debian's systemd package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
. "$here/check-lib.sh"

DESTDIR=$root "$here/install.sh" --binary "$binary" >/dev/null
units=/usr/lib/systemd/system
[ -d "$units" ] || units=/lib/systemd/system
mkdir -p "$root/usr/lib/systemd"
cp -a "$units" "$root/usr/lib/systemd/"
# ExecReload= runs the host's /bin/kill: verify checks that it exists inside the root.
mkdir -p "$root/bin"
cp /bin/kill "$root/bin/kill"

# 1. The units.
if output=$(systemd-analyze verify --root="$root" /etc/systemd/system/divvyd.socket \
    /etc/systemd/system/divvyd.service 2>&1) && [ -z "$output" ]; then
    pass "systemd-analyze verify divvyd.socket divvyd.service"
else
    fail "systemd-analyze verify divvyd.socket divvyd.service" "$output"
fi

# 2. Hardening: exposure 1.5 or less ("OK"; the shipped unit scores 0.5, "SAFE").
if output=$(systemd-analyze security --offline=yes --root="$root" --threshold=15 divvyd.service 2>&1); then
    pass "systemd-analyze security: $(printf '%s\n' "$output" | grep 'Overall exposure' | sed 's/.*: //')"
else
    fail "systemd-analyze security (exposure above 1.5)" "$(printf '%s\n' "$output" | grep -E '✗|Overall')"
fi

# 3. sysusers.d and tmpfiles.d (a bare file name is looked up in the root's /etc/sysusers.d, /etc/tmpfiles.d).
if output=$(systemd-sysusers --root="$root" divvy.conf 2>&1) \
    && grep -q '^divvy:' "$root/etc/passwd" && grep -q '^divvy:' "$root/etc/group"; then
    pass "sysusers.d/divvy.conf creates the divvy user and group"
else
    fail "sysusers.d/divvy.conf" "$output"
fi
if [ "$(id -u)" = 0 ]; then
    uid=$(grep '^divvy:' "$root/etc/passwd" | cut -d: -f3)
    if output=$(systemd-tmpfiles --root="$root" --create divvy.conf 2>&1) \
        && [ "$(stat -c '%a %u %g' "$root/run/divvy")" = "750 $uid $uid" ]; then
        pass "tmpfiles.d/divvy.conf creates /run/divvy 0750 divvy:divvy"
    else
        fail "tmpfiles.d/divvy.conf" "$output $(stat -c '%a %u %g' "$root/run/divvy" 2>&1)"
    fi
else
    echo "skip tmpfiles.d/divvy.conf (chown needs root)"
fi

# 4. The example config: every key, at its default.
socket=$(sed -n 's/^ListenSequentialPacket=//p' "$here/divvyd.socket")
"$binary" --socket "$socket" --print-config > "$root/defaults"
if "$binary" --config "$here/divvyd.conf.example" --print-config > "$root/example" 2>&1 \
    && output=$(diff -u "$root/defaults" "$root/example"); then
    pass "divvyd.conf.example lists every key at its default, socket $socket"
else
    fail "divvyd.conf.example differs from 'divvyd --print-config' (defaults: -, example: +)" \
        "$(diff -u "$root/defaults" "$root/example")"
fi

# 5. The sysctl example's keys exist.
missing=""
for key in $(sed -n 's/^#*[[:space:]]*\(vm\.[a-z_]*\)[[:space:]]*=.*/\1/p' "$here/sysctl.d/60-divvy-hugepages.conf"); do
    [ -e "/proc/sys/$(echo "$key" | tr . /)" ] || missing="$missing $key"
done
if [ -z "$missing" ]; then pass "sysctl.d/60-divvy-hugepages.conf names existing sysctls"; else
    fail "sysctl.d/60-divvy-hugepages.conf names unknown sysctls:$missing"; fi

if [ "$failures" -ne 0 ]; then
    echo "verify-units.sh: $failures check(s) failed"
    exit 1
fi
echo "verify-units.sh: all checks passed"
