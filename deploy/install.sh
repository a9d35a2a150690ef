#!/bin/sh
# Installs divvyd as a systemd service: the binary (and divvyctl, if built) under /usr/local/bin, the units under
# /etc/systemd/system, the divvy user (sysusers.d), /run/divvy (tmpfiles.d), the huge-page sysctl example
# (inactive), and /etc/divvy/divvyd.conf (only if there is none yet); then enables and starts the socket and
# the service. Run it again after an upgrade: it replaces the binaries and units, keeps the config, and restarts
# a running divvyd (clients that connect meanwhile wait in the socket's backlog).
#
# Usage (from the repository):
#   swift build -c release --product divvyd      # and --product divvyctl, if you want it
#   sudo deploy/install.sh [--binary PATH] [--no-enable]
#   DESTDIR=/tmp/stage deploy/install.sh --binary PATH   # stage the files only (no users, no systemctl)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repository=$(dirname "$here")
binary="$repository/.build/release/divvyd"
enable=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --binary=*) binary=${1#--binary=}; shift ;;
        --no-enable) enable=no; shift ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ ! -x "$binary" ]; then
    echo "install.sh: no divvyd at $binary: build it first (swift build -c release --product divvyd)" \
        "or pass --binary PATH" >&2
    exit 1
fi
dest=${DESTDIR:-}
if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or set DESTDIR to stage the files" >&2
    exit 1
fi

install -d "$dest/usr/local/bin" "$dest/etc/systemd/system" "$dest/etc/sysusers.d" "$dest/etc/tmpfiles.d" \
    "$dest/etc/sysctl.d" "$dest/etc/divvy" "$dest/usr/local/share/doc/divvy"
install -m 0755 "$binary" "$dest/usr/local/bin/divvyd"
divvyctl="$(dirname "$binary")/divvyctl"
if [ -x "$divvyctl" ]; then install -m 0755 "$divvyctl" "$dest/usr/local/bin/divvyctl"; fi
install -m 0644 "$here/divvyd.service" "$here/divvyd.socket" "$dest/etc/systemd/system/"
install -m 0644 "$here/sysusers.d/divvy.conf" "$dest/etc/sysusers.d/divvy.conf"
install -m 0644 "$here/tmpfiles.d/divvy.conf" "$dest/etc/tmpfiles.d/divvy.conf"
if [ ! -e "$dest/etc/sysctl.d/60-divvy-hugepages.conf" ]; then
    install -m 0644 "$here/sysctl.d/60-divvy-hugepages.conf" "$dest/etc/sysctl.d/60-divvy-hugepages.conf"
fi
install -m 0644 "$repository/README.md" "$here/divvyd.conf.example" "$dest/usr/local/share/doc/divvy/"
new_config=no
if [ ! -e "$dest/etc/divvy/divvyd.conf" ]; then
    install -m 0644 "$here/divvyd.conf.example" "$dest/etc/divvy/divvyd.conf"
    new_config=yes
fi

if [ -n "$dest" ]; then
    echo "staged under $dest (create the divvy user, /run/divvy and allow-gids on the target)"
    exit 0
fi

systemd-sysusers /etc/sysusers.d/divvy.conf
if [ "$new_config" = yes ]; then
    # Admit the divvy group's members (as their primary group: see the comment above allow-gids).
    gid=$(getent group divvy | cut -d: -f3)
    sed -i "s/^allow-gids =.*/allow-gids = $gid/" /etc/divvy/divvyd.conf
fi
systemd-tmpfiles --create /etc/tmpfiles.d/divvy.conf
systemctl daemon-reload
if [ "$enable" = yes ]; then
    systemctl enable --now divvyd.socket
    systemctl enable divvyd.service
    # Start it, or restart it on the new binary if it was running.
    if systemctl is-active --quiet divvyd.service; then
        systemctl restart divvyd.service
    else
        systemctl start divvyd.service
    fi
    systemctl --no-pager status divvyd.service || true
fi
