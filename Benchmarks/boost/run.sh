#!/usr/bin/env bash
# Builds and runs the Boost.Interprocess driver (shm_boost.cpp): prints "name<TAB>ns/op p50<TAB>p25<TAB>p75", or with
# arguments (pairs, metadata, fragmentation: see shm_boost.cpp) the figures shm-targets.sh merges into its tables.
# Installs Debian's libboost-dev and g++ first if they are missing (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d /usr/include/boost/interprocess ] || ! command -v g++ >/dev/null; then
    sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get update -qq
    $sudo_ apt-get install -y -qq libboost-dev g++ >/dev/null
fi
out="${TMPDIR:-/tmp}/divvy-shm-boost"
g++ -O2 -std=c++17 -DNDEBUG -o "$out" shm_boost.cpp -lrt -lpthread
"$out" "$@"
