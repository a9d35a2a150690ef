#!/bin/sh
# Generates the man pages and shell completions of divvyd and divvyctl from their argument parsers
# (swift-argument-parser), so they always match the built binaries.
#
# Usage: deploy/generate-docs.sh [--check] OUTDIR [BIN_DIR]
#   OUTDIR   where the files go (created):
#              OUTDIR/man1/divvyd.1, OUTDIR/man1/divvyctl.1     (one page each, subcommands included)
#              OUTDIR/completions/bash/divvyd, …/divvyctl       (bash-completion files)
#              OUTDIR/completions/zsh/_divvyd, …/_divvyctl      (zsh #compdef files)
#              OUTDIR/completions/fish/divvyd.fish, …/divvyctl.fish
#   BIN_DIR  the directory holding the built divvyd and divvyctl (default: .build/debug; any configuration works)
#   --check  then checks the result: both pages render through groff's mandoc macros without a warning and name
#            every divvyctl subcommand; the bash completion loads in bash and completes divvyctl's subcommands; the
#            zsh and fish files parse when those shells are installed. Installs Debian's groff-base (apt-get) when
#            groff is missing.
#
# Completions come from each binary's `--generate-completion-script bash|zsh|fish`; man pages from the
# `generate-manual` tool of swift-argument-parser (what its `swift package plugin generate-manual` runs), built here
# with `swift build --product generate-manual` (≈ 30 s the first time, offline) unless GENERATE_MANUAL names one.
# The pages' date is SOURCE_DATE_EPOCH's, else the last commit's, so a rebuild of one commit gives the same files.
# deploy/install.sh installs OUTDIR when given --docs OUTDIR (or finds .build/docs).
#
# Example:
#   swift build --product divvyd && swift build --product divvyctl
#   deploy/generate-docs.sh --check .build/docs
#   man -l .build/docs/man1/divvyctl.1
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repository=$(dirname "$here")
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

check=no
while [ $# -gt 0 ]; do
    case "$1" in
        --check) check=yes; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) echo "generate-docs.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "generate-docs.sh: expected OUTDIR [BIN_DIR] (see --help)" >&2
    exit 2
fi
out=$1
bin=${2:-$repository/.build/debug}
tools="divvyd divvyctl"
for tool in $tools; do
    if [ ! -x "$bin/$tool" ]; then
        echo "generate-docs.sh: no $tool in $bin: build it first (swift build --product $tool) or pass BIN_DIR" >&2
        exit 1
    fi
done

# --- Completions ----------------------------------------------------------------------------------------------
mkdir -p "$out/man1" "$out/completions/bash" "$out/completions/zsh" "$out/completions/fish"
for tool in $tools; do
    "$bin/$tool" --generate-completion-script bash >"$out/completions/bash/$tool"
    "$bin/$tool" --generate-completion-script zsh >"$out/completions/zsh/_$tool"
    "$bin/$tool" --generate-completion-script fish >"$out/completions/fish/$tool.fish"
done

# --- Man pages ------------------------------------------------------------------------------------------------
generator=${GENERATE_MANUAL:-}
if [ -z "$generator" ]; then
    (cd "$repository" && swift build --product generate-manual >/dev/null) || {
        echo "generate-docs.sh: could not build swift-argument-parser's generate-manual tool" \
            "(swift build --product generate-manual); set GENERATE_MANUAL to one" >&2
        exit 1
    }
    generator="$(cd "$repository" && swift build --show-bin-path)/generate-manual"
fi
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
elif ! date=$(git -C "$repository" log -1 --format=%cd --date=format:%Y-%m-%d 2>/dev/null) || [ -z "$date" ]; then
    date=$(date -u +%Y-%m-%d)
fi
version=$("$bin/divvyd" --version)
for tool in $tools; do
    page="$out/man1/$tool.1"
    "$generator" "$bin/$tool" --date "$date" --section 1 --output-directory "$out/man1"
    # Three touch-ups of the generated mdoc:
    #  - a blank line in a command's discussion comes out as an empty input line, which mdoc warns about (and
    #    renders as a blank line anyway): make it the paragraph break it means;
    #  - the footer names the release instead of the default "BSD";
    #  - a command whose only subcommand is ArgumentParser's built-in `help` (divvyd) is not shown as
    #    `divvyd subcommand …` with a `help` entry: `divvyd --help` is what its users want.
    sed -i -e 's/^$/.Pp/' -e "s/^\.Os\$/.Os Divvy $version/" "$page"
    if [ "$(grep -c '^\.It Em ' "$page")" = 1 ] && grep -q '^\.It Em help$' "$page"; then
        awk '
            /^\.Sh SYNOPSIS$/ { synopsis = 1 }
            /^\.Sh DESCRIPTION$/ { synopsis = 0 }
            synopsis && /^\.Ar subcommand$/ { next }
            /^\.It Em help$/ { skipping = 1; next }
            skipping { if ($0 == ".El") skipping = 0; next }
            { print }
        ' "$page" >"$page.tmp"
        mv "$page.tmp" "$page"
    fi
done
echo "generated $out/man1/{divvyd,divvyctl}.1 and bash, zsh and fish completions in $out/completions"

[ "$check" = yes ] || exit 0

# --- Checks ---------------------------------------------------------------------------------------------------
. "$here/check-lib.sh"
if ! command -v groff >/dev/null 2>&1; then
    echo "generate-docs.sh: groff is missing: installing Debian's groff-base package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends groff-base >/dev/null
fi
subcommands="status classes clients verify top metrics disconnect config"
for tool in $tools; do
    page="$out/man1/$tool.1"
    # -ww: every warning; -z: no output. mdoc's own diagnostics ("mdoc warning: …") go to stderr too.
    warnings=$(groff -mandoc -Tutf8 -ww -z "$page" 2>&1) || true
    text=$(groff -mandoc -Tutf8 "$page" 2>/dev/null | sed 's/.\x08//g') || true
    if [ -n "$warnings" ]; then
        fail "$page renders without warnings" "$warnings"
    elif ! printf '%s\n' "$text" | grep -q "^NAME"; then
        fail "$page renders (no NAME section)" "$(printf '%s\n' "$text" | head -n 5)"
    else
        pass "$page renders ($(printf '%s\n' "$text" | wc -l) lines)"
    fi
    if [ "$tool" = divvyctl ]; then
        missing=""
        for subcommand in $subcommands; do
            printf '%s\n' "$text" | grep -Eq "^ +$subcommand( |$)" || missing="$missing $subcommand"
        done
        if [ -z "$missing" ]; then pass "$page documents every subcommand"; else
            fail "$page lacks subcommands:$missing"; fi
    fi
done

for tool in $tools; do
    script="$out/completions/bash/$tool"
    if output=$(bash -c ". '$script' && complete -p $tool" 2>&1) \
        && printf '%s' "$output" | grep -q "complete .* $tool\$"; then
        pass "bash completion for $tool loads ($output)"
    else
        fail "bash completion for $tool loads" "$output"
    fi
done
# Ask the loaded function what `divvyctl st<TAB>` and `divvyctl <TAB>` offer, the way bash would.
function=$(bash -c ". '$out/completions/bash/divvyctl' && complete -p divvyctl" | sed -n 's/.*-F \([^ ]*\).*/\1/p')
offered=$(bash -c ". '$out/completions/bash/divvyctl'
    COMP_WORDS=(divvyctl ''); COMP_CWORD=1; COMP_LINE='divvyctl '; COMP_POINT=\${#COMP_LINE}
    $function divvyctl '' divvyctl; printf '%s\n' \"\${COMPREPLY[@]}\"" 2>&1) || true
missing=""
for subcommand in $subcommands; do
    printf '%s\n' "$offered" | grep -qx "$subcommand" || missing="$missing $subcommand"
done
if [ -z "$missing" ]; then pass "bash completes divvyctl's subcommands"; else
    fail "bash completion of 'divvyctl <TAB>' lacks:$missing" "$offered"; fi

for shell in zsh fish; do
    if command -v "$shell" >/dev/null 2>&1; then
        for file in "$out/completions/$shell"/*; do
            if output=$("$shell" -n "$file" 2>&1); then pass "$shell -n $file"; else
                fail "$shell -n $file" "$output"; fi
        done
    else
        echo "skip $shell completions ($shell is not installed)"
    fi
done

if [ "$failures" -ne 0 ]; then
    echo "generate-docs.sh: $failures check(s) failed"
    exit 1
fi
echo "generate-docs.sh: all checks passed"
