#!/usr/bin/env bash
# Dev measurements for the large-block and many-thread-burst work (not the official suite): builds large.c and
# bursts.c plus the official four workloads, runs each under glibc, mimalloc, jemalloc and the given Divvy libraries,
# interleaved, REPS times, and prints medians: time, peak RSS, minor faults, system time.
#   Benchmarks/malloc/dev/run.sh NAME=/path/libDivvyMalloc.so [NAME=/path …]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-/tmp/divvy-dev-bench}
reps=${REPS:-5}
workloads=(${WORKLOADS:-large bursts churn prodcons server realloc})
mkdir -p "$out"
rm -f "$out"/*.result
cc -O2 -o "$out/large" "$here/large.c"
cc -O2 -o "$out/bursts" "$here/bursts.c" -lpthread
for w in churn prodcons server realloc; do cc -O2 -o "$out/$w" "$here/../$w.c" -lpthread; done
declare -A lib=([glibc]="" [mimalloc]=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 [jemalloc]=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2)
names=(glibc mimalloc jemalloc)
for spec in "$@"; do names+=("${spec%%=*}"); lib[${spec%%=*}]=${spec#*=}; done
for ((r = 1; r <= reps; r++)); do
    for w in "${workloads[@]}"; do
        for a in "${names[@]}"; do
            # Lines: name ms rssKiB minflt sysms [checksum]; the official four print name ms rss checksum.
            /usr/bin/time -f "%e %S %R %M" -o "$out/time.tmp" env LD_PRELOAD="${lib[$a]}" "$out/$w" >"$out/line.tmp"
            read -r _ ms rss _ <"$out/line.tmp"
            read -r _ sys faults _ <"$out/time.tmp"
            echo "$ms $rss $faults $sys" >>"$out/$w.$a.result"
        done
    done
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
echo "median of $reps; $(uptime)"
printf '%-9s %-10s %9s %9s %9s %8s\n' workload allocator ms peakMiB minflt sys_s
for w in "${workloads[@]}"; do
    for a in "${names[@]}"; do
        f=$out/$w.$a.result
        printf '%-9s %-10s %9.0f %9.1f %9.0f %8.2f\n' "$w" "$a" "$(awk '{print $1}' "$f" | median)" \
            "$(awk '{print $2/1024}' "$f" | median)" "$(awk '{print $3}' "$f" | median)" "$(awk '{print $4}' "$f" | median)"
    done
done
