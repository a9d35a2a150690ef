#!/bin/sh
# Checks that a package depending on Divvy's libraries with the Server trait off fetches only swift-atomics and
# swift-system, and builds.
set -eu

case "${1:-}" in
-h | --help)
    cat <<USAGE
usage: deploy/check-lean-deps.sh [-h] [--resolve-only]

Creates a scratch package that depends on this repository by path with \`traits: []\` and uses the products
Divvy, DivvyShm and DivvyClient; resolves it and fails unless the fetched packages are exactly swift-atomics and
swift-system; then builds it (unless --resolve-only). docs/packaging.md explains the Server trait.
USAGE
    exit 0
    ;;
--resolve-only | "") ;;
*) echo "check-lean-deps: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/divvy-lean.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/Sources/LeanConsumer"
cat >"$work/Package.swift" <<MANIFEST
// swift-tools-version: 6.2
import PackageDescription

let package = Package(
    name: "LeanConsumer",
    dependencies: [.package(path: "$root", traits: [])],
    targets: [
        .executableTarget(
            name: "LeanConsumer",
            dependencies: [
                .product(name: "Divvy", package: "$(basename "$root")"),
                .product(name: "DivvyShm", package: "$(basename "$root")"),
                .product(name: "DivvyClient", package: "$(basename "$root")"),
            ])
    ]
)
MANIFEST
cat >"$work/Sources/LeanConsumer/main.swift" <<'SOURCE'
import Divvy
import DivvyClient
import DivvyShm

print("Divvy \(DivvyVersion.string) without the Server trait")
SOURCE

(cd "$work" && swift package resolve >/dev/null)
fetched=$(ls "$work/.build/checkouts" | sort | tr '\n' ' ')
if [ "$fetched" != "swift-atomics swift-system " ]; then
    echo "check-lean-deps: FAILED: with traits: [] the package fetches: $fetched" >&2
    exit 1
fi
echo "check-lean-deps: traits: [] fetches only: $fetched"
if [ "${1:-}" != --resolve-only ]; then
    (cd "$work" && swift build 2>&1 | tail -n 1)
    "$work/.build/debug/LeanConsumer"
fi
echo "check-lean-deps: ok"
