#!/usr/bin/env bash
# The malloc shim benchmarks: four workloads under glibc, jemalloc, mimalloc and libDivvyMalloc (LD_PRELOAD), each
# run REPS times (interleaved, so machine noise spreads over all allocators); prints a Markdown table of median wall
# time and peak RSS as ratios to glibc.
#
#   Benchmarks/malloc/run.sh            # 5 repetitions
#   REPS=9 Benchmarks/malloc/run.sh
#
# Builds the workloads with `cc -O2`, installs libjemalloc2 and libmimalloc2.0 with apt-get if they are missing,
# and builds libDivvyMalloc in release (`swift build -c release --product DivvyMalloc` at the repository root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
reps=${REPS:-5}
out=${OUT:-$root/.build/malloc-bench}
workloads=(churn prodcons server realloc)
allocators=(glibc jemalloc mimalloc divvy)
mkdir -p "$out"
rm -f "$out"/*.result

echo "building the workloads (cc -O2) in $out" >&2
for w in "${workloads[@]}"; do cc -O2 -o "$out/$w" "$here/$w.c" -lpthread; done

. "$here/allocators.sh"
install_allocators libjemalloc2 libmimalloc2.0

echo "building libDivvyMalloc (release)" >&2
(cd "$root" && swift build -c release --product DivvyMalloc >&2)

preload() {
    case $1 in
    glibc) echo "" ;;
    jemalloc) echo "$libdir/libjemalloc.so.2" ;;
    mimalloc) echo "$libdir/libmimalloc.so.2" ;;
    divvy) echo "$root/.build/release/libDivvyMalloc.so" ;;
    esac
}

for ((r = 1; r <= reps; r++)); do
    echo "repetition $r of $reps" >&2
    for w in "${workloads[@]}"; do
        for a in "${allocators[@]}"; do
            # Each workload prints "<name> <ms> <peak RSS KiB> <checksum>" (timed inside, around the work only).
            LD_PRELOAD=$(preload "$a") "$out/$w" >>"$out/$w.$a.result"
        done
    done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

echo
echo "Median of $reps runs; time and peak RSS as ratios to glibc (lower is better); $(nproc) CPUs, $(uname -r)."
echo
printf '%s%s\n' "| workload | glibc time | jemalloc | mimalloc | Divvy | Divvy / mimalloc " \
    "| glibc peak RSS | jemalloc | mimalloc | Divvy |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for w in "${workloads[@]}"; do
    declare -A ms rss
    for a in "${allocators[@]}"; do
        ms[$a]=$(awk '{ print $2 }' "$out/$w.$a.result" | median)
        rss[$a]=$(awk '{ print $3 }' "$out/$w.$a.result" | median)
    done
    awk -v w="$w" -v g="${ms[glibc]}" -v j="${ms[jemalloc]}" -v m="${ms[mimalloc]}" -v d="${ms[divvy]}" \
        -v gr="${rss[glibc]}" -v jr="${rss[jemalloc]}" -v mr="${rss[mimalloc]}" -v dr="${rss[divvy]}" 'BEGIN {
        printf "| %s | %.0f ms | %.2f× | %.2f× | **%.2f×** | %.2f× | %.1f MiB | %.2f× | %.2f× | **%.2f×** |\n",
            w, g, j / g, m / g, d / g, d / m, gr / 1024, jr / gr, mr / gr, dr / gr }'
    unset ms rss
done
