#!/bin/sh
# install.sh: installs divvyd as a systemd service. Run it again after an upgrade: it replaces the binaries, units
# and docs, keeps the config, and restarts a running divvyd (clients that connect meanwhile wait in the socket's
# backlog).
#
# Usage: deploy/install.sh [options]
#
# Options (each also readable from the environment variable in parentheses; a flag wins over the variable):
#   --prefix DIR       (PREFIX)     where programs, man pages and completions go         default /usr/local
#   --destdir DIR      (DESTDIR)    stage everything under DIR (for packaging): files only, no users, no
#                                   systemctl; the installed files still name PREFIX and SYSCONFDIR
#   --sysconfdir DIR   (SYSCONFDIR) configuration and systemd snippets                   default /etc
#   --binary PATH                   the divvyd to install; divvyctl is taken from the same directory when it is
#                                   there                                           default .build/release/divvyd
#   --docs DIR                      man pages and completions made by deploy/generate-docs.sh DIR; installed when
#                                   given, or when .build/docs exists                  default .build/docs
#   --no-enable                     install and reload systemd, but do not enable or start anything
#   -h, --help                      this help
#
# What goes where (DESTDIR in front of each):
#   PREFIX/bin/divvyd, PREFIX/bin/divvyctl
#   SYSCONFDIR/systemd/system/divvyd.service, divvyd.socket   (ExecStart= and the paths in them follow PREFIX and
#                                                              SYSCONFDIR)
#   SYSCONFDIR/sysusers.d/divvy.conf         the divvy user and group
#   SYSCONFDIR/tmpfiles.d/divvy.conf         /run/divvy
#   SYSCONFDIR/sysctl.d/60-divvy-hugepages.conf   an inactive huge-page example (only if absent)
#   SYSCONFDIR/divvy/divvyd.conf             from divvyd.conf.example, only if absent (allow-gids set to the divvy
#                                            group on a real install)
#   PREFIX/share/doc/divvy/                  README.md, docs/*.md, divvyd.conf.example
#   PREFIX/share/man/man1/divvyd.1, divvyctl.1                          (with --docs)
#   PREFIX/share/bash-completion/completions/divvyd, divvyctl           (with --docs)
#   PREFIX/share/zsh/site-functions/_divvyd, _divvyctl                  (with --docs; vendor-completions for /usr)
#   PREFIX/share/fish/vendor_completions.d/divvyd.fish, divvyctl.fish   (with --docs)
# Then, without DESTDIR (as root): systemd-sysusers, systemd-tmpfiles --create, systemctl daemon-reload, and unless
# --no-enable, systemctl enable --now divvyd.socket, enable and (re)start divvyd.service.
#
# Examples:
#   swift build -c release --product divvyd && swift build -c release --product divvyctl
#   deploy/generate-docs.sh .build/docs .build/release
#   sudo deploy/install.sh
#   deploy/install.sh --destdir /tmp/stage --prefix /usr --binary .build/release/divvyd   # stage for a package
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repository=$(dirname "$here")
usage() { sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
    echo "install.sh: $*" >&2
    exit 2
}

prefix=${PREFIX:-/usr/local}
dest=${DESTDIR:-}
sysconfdir=${SYSCONFDIR:-/etc}
binary="$repository/.build/release/divvyd"
docs=
enable=yes
# An option's value: `--name VALUE` or `--name=VALUE`; never empty (a missing value is an error, not a default).
value() {
    case "$1" in
        *=*) printf '%s' "${1#*=}" ;;
        *) [ $# -ge 2 ] || die "$1 needs a value (see --help)"; printf '%s' "$2" ;;
    esac
}
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix | --prefix=*) prefix=$(value "$@") ;;
        --destdir | --destdir=*) dest=$(value "$@") ;;
        --sysconfdir | --sysconfdir=*) sysconfdir=$(value "$@") ;;
        --binary | --binary=*) binary=$(value "$@") ;;
        --docs | --docs=*) docs=$(value "$@") ;;
        --no-enable) enable=no; shift; continue ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    case "$1" in *=*) shift ;; *) shift 2 ;; esac
done
for name in prefix sysconfdir; do
    eval "path=\$$name"
    case "$path" in
        /*) ;;
        *) die "--$name must be an absolute path, not '$path'" ;;
    esac
done
prefix=${prefix%/}
sysconfdir=${sysconfdir%/}
dest=${dest%/}
if [ ! -x "$binary" ]; then
    echo "install.sh: no divvyd at $binary: build it first (swift build -c release --product divvyd)" \
        "or pass --binary PATH" >&2
    exit 1
fi
if [ -z "$docs" ] && [ -d "$repository/.build/docs/man1" ]; then docs="$repository/.build/docs"; fi
if [ -n "$docs" ] && [ ! -d "$docs/man1" ]; then
    echo "install.sh: no man pages in $docs/man1: run deploy/generate-docs.sh $docs first" >&2
    exit 1
fi
if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or set DESTDIR (--destdir) to stage the files" >&2
    exit 1
fi

bindir=$prefix/bin
docdir=$prefix/share/doc/divvy
unitdir=$sysconfdir/systemd/system
case "$prefix" in
    /usr) zshdir=$prefix/share/zsh/vendor-completions ;;  # Debian's zsh reads packages' completions here
    *) zshdir=$prefix/share/zsh/site-functions ;;
esac

install -d "$dest$bindir" "$dest$unitdir" "$dest$sysconfdir/sysusers.d" "$dest$sysconfdir/tmpfiles.d" \
    "$dest$sysconfdir/sysctl.d" "$dest$sysconfdir/divvy" "$dest$docdir"
install -m 0755 "$binary" "$dest$bindir/divvyd"
divvyctl="$(dirname "$binary")/divvyctl"
if [ -x "$divvyctl" ]; then install -m 0755 "$divvyctl" "$dest$bindir/divvyctl"; fi
# The units name /usr/local and /etc (ExecStart=, Documentation=): rewrite them for other directories.
for unit in divvyd.service divvyd.socket; do
    sed -e "s|/usr/local/|$prefix/|g" -e "s|/etc/divvy/|$sysconfdir/divvy/|g" "$here/$unit" >"$dest$unitdir/$unit"
    chmod 0644 "$dest$unitdir/$unit"
done
install -m 0644 "$here/sysusers.d/divvy.conf" "$dest$sysconfdir/sysusers.d/divvy.conf"
install -m 0644 "$here/tmpfiles.d/divvy.conf" "$dest$sysconfdir/tmpfiles.d/divvy.conf"
if [ ! -e "$dest$sysconfdir/sysctl.d/60-divvy-hugepages.conf" ]; then
    install -m 0644 "$here/sysctl.d/60-divvy-hugepages.conf" "$dest$sysconfdir/sysctl.d/60-divvy-hugepages.conf"
fi
install -m 0644 "$here/divvyd.conf.example" "$dest$docdir/"
for page in "$repository"/README.md "$repository"/docs/*.md; do
    if [ -f "$page" ]; then install -m 0644 "$page" "$dest$docdir/"; fi
done
new_config=no
if [ ! -e "$dest$sysconfdir/divvy/divvyd.conf" ]; then
    install -m 0644 "$here/divvyd.conf.example" "$dest$sysconfdir/divvy/divvyd.conf"
    new_config=yes
fi
if [ -n "$docs" ]; then
    install -d "$dest$prefix/share/man/man1" "$dest$prefix/share/bash-completion/completions" "$dest$zshdir" \
        "$dest$prefix/share/fish/vendor_completions.d"
    for tool in divvyd divvyctl; do
        if [ "$tool" = divvyctl ] && [ ! -x "$divvyctl" ]; then continue; fi
        install -m 0644 "$docs/man1/$tool.1" "$dest$prefix/share/man/man1/$tool.1"
        install -m 0644 "$docs/completions/bash/$tool" "$dest$prefix/share/bash-completion/completions/$tool"
        install -m 0644 "$docs/completions/zsh/_$tool" "$dest$zshdir/_$tool"
        install -m 0644 "$docs/completions/fish/$tool.fish" "$dest$prefix/share/fish/vendor_completions.d/$tool.fish"
    done
fi

if [ -n "$dest" ]; then
    echo "staged under $dest with prefix $prefix (create the divvy user, /run/divvy and allow-gids on the target)"
    exit 0
fi

systemd-sysusers "$sysconfdir/sysusers.d/divvy.conf"
if [ "$new_config" = yes ]; then
    # Admit the divvy group's members (as their primary group: see the comment above allow-gids).
    gid=$(getent group divvy | cut -d: -f3)
    sed -i "s/^allow-gids =.*/allow-gids = $gid/" "$sysconfdir/divvy/divvyd.conf"
fi
systemd-tmpfiles --create "$sysconfdir/tmpfiles.d/divvy.conf"
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
echo "installed divvyd $("$bindir/divvyd" --version) in $prefix"
