#!/usr/bin/env bash
# Issue 11's shared-heap figures in one run, each beside its baseline, as Markdown tables ready to paste into
# docs/benchmarks.md ("Shared heap: issue 11 figures"):
#
#   ./shm-targets.sh                       # all three (≈ 3 min after the release build)
#   ./shm-targets.sh ratios|metadata|fragmentation
#
# 1. direct-ratios: glibc malloc+free, SharedHeap participant pair, DivvyClient direct pair, libdivvy
#    divvy_alloc/divvy_free (C ABI, from C), and Boost cached_node_allocator allocate_one/deallocate_one and
#    managed_shared_memory's default allocator (boost/run.sh pairs), all as ratios to glibc.
# 2. shm-metadata: metadata committed per data byte and per block, 16 B … 1 MiB, 256 MiB and 1 GiB data areas,
#    beside Boost's per-block overhead (boost/run.sh metadata).
# 3. shm-fragmentation: mixed sizes, long churn, SharedHeap and Boost on the same seeded sequence
#    (boost/run.sh fragmentation).
# Environment: SAMPLES (51), DATA_SIZES_MIB (256,1024), FRAG_DATA_MIB (256), FRAG_SLOTS ("512 2048": one run per
# live-set size, ≈ 20 and ≈ 80 MiB live), FRAG_STEPS (2000000), FRAG_SEED (42), FRAG_MAX (524288: the default heap's
# largest block), FRAG_SNAPSHOTS (5).
set -euo pipefail
cd "$(dirname "$0")"

what="${1:-all}"
SAMPLES="${SAMPLES:-51}"
DATA_SIZES_MIB="${DATA_SIZES_MIB:-256,1024}"
FRAG_DATA_MIB="${FRAG_DATA_MIB:-256}"
FRAG_SLOTS="${FRAG_SLOTS:-512 2048}"
FRAG_STEPS="${FRAG_STEPS:-2000000}"
FRAG_SEED="${FRAG_SEED:-42}"
FRAG_MAX="${FRAG_MAX:-524288}"
FRAG_SNAPSHOTS="${FRAG_SNAPSHOTS:-5}"

swift build -c release --product direct-ratios >&2
swift build -c release --product shm-metadata >&2
swift build -c release --product shm-fragmentation >&2
bin=$(swift build -c release --show-bin-path)
# direct-ratios links the `divvy` product as a program linked against libdivvy does: it records the SONAME
# libdivvy.so.1, which SwiftPM does not create; the loader finds it beside the executable (rpath $ORIGIN).
ln -sf libdivvy.so "$bin/libdivvy.so.1"
boost=$(mktemp)
trap 'rm -f "$boost"' EXIT

echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m), $(nproc) CPUs, $(uname -r); commit" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo '?'); load average at start $(cut -d' ' -f1-3 /proc/loadavg)."
echo

if [ "$what" = all ] || [ "$what" = ratios ]; then
    echo "### Direct-path pairs, ratios to glibc (\`./shm-targets.sh ratios\`)"
    echo
    boost/run.sh pairs "$SAMPLES" >"$boost"
    "$bin/direct-ratios" --samples "$SAMPLES" --boost "$boost"
    echo
fi
if [ "$what" = all ] || [ "$what" = metadata ]; then
    echo "### Metadata per data byte and per block (\`./shm-targets.sh metadata\`)"
    echo
    bytes=""
    for mib in ${DATA_SIZES_MIB//,/ }; do bytes="$bytes $((mib << 20))"; done
    # shellcheck disable=SC2086
    boost/run.sh metadata $bytes >"$boost"
    "$bin/shm-metadata" --data "$DATA_SIZES_MIB" --boost "$boost"
    echo
fi
if [ "$what" = all ] || [ "$what" = fragmentation ]; then
    for slots in $FRAG_SLOTS; do
        echo "### Fragmentation under churn, $slots slots (\`./shm-targets.sh fragmentation\`)"
        echo
        boost/run.sh fragmentation $((FRAG_DATA_MIB << 20)) "$slots" "$FRAG_STEPS" "$FRAG_SEED" "$FRAG_MAX" \
            "$FRAG_SNAPSHOTS" >"$boost"
        "$bin/shm-fragmentation" --data "$FRAG_DATA_MIB" --slots "$slots" --steps "$FRAG_STEPS" \
            --seed "$FRAG_SEED" --max "$FRAG_MAX" --snapshots "$FRAG_SNAPSHOTS" --boost "$boost"
        echo
    done
fi
