#!/usr/bin/env bash
# The malloc workload suite: eleven workloads (seven new ones of the kinds the standard allocator suites use, and
# run.sh's four), each run under glibc, jemalloc, mimalloc, tcmalloc and libDivvyMalloc (LD_PRELOAD) in one run,
# REPS times interleaved. Prints a Markdown table of median wall time and peak RSS as ratios to glibc, Divvy's
# ratios to mimalloc, and ✓/✗ against libDivvyMalloc v2's targets; then the same time targets against CPU time
# (user + system), with page faults and system time per allocator.
#
#   Benchmarks/malloc/suite.sh                      # 3 repetitions of every workload
#   Benchmarks/malloc/suite.sh --reps 5 --only large,handoff
#   DIVVY_MALLOC_LIBRARY=/path/libDivvyMalloc.so Benchmarks/malloc/suite.sh
#
# Options:
#   --reps N         repetitions per workload and allocator (default $REPS, else 3); the median is reported
#   --only A,B,...   run only these workloads (names as in the table)
#   --out DIR        build and result directory (default $OUT, else .build/malloc-suite)
#   --help           this text
# Environment:
#   DIVVY_MALLOC_LIBRARY   the libDivvyMalloc.so to test; without it the suite builds the no-runtime library, the
#                          one that ships, with deploy/build-libdivvymalloc.sh (about 15-30 s)
#
# Each workload is a C program built with `cc -O2 -pthread`; its comment says what program it models and what it
# stresses. It prints `<name> <ms> <peak RSS KiB> <checksum>`; every allocator must give the same checksum (the suite
# fails otherwise). Time and peak RSS come from `measure` (measure.c): the child's wall time from fork to exit and
# wait4's rusage for it alone, so start-up and teardown count and the preload applies to the workload only.
# Targets (libDivvyMalloc v2), per workload in one run: Divvy faster than glibc; within 1.1x of mimalloc's time;
# peak RSS within 1.2x of mimalloc's, and of glibc's where glibc's is lower.
# Installs libjemalloc2, libmimalloc2.0 and libtcmalloc-minimal4 with apt-get if they are missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
reps=${REPS:-3}
out=${OUT:-$root/.build/malloc-suite}
only=""
while [ $# -gt 0 ]; do
    case $1 in
    --reps) reps=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "suite.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# name and argument (the amount of work; see each program's bench_count). Each takes 0.2-2 s under glibc on the
# 2-CPU VM the table in docs/benchmarks.md comes from; run.sh's four are scaled down from their run.sh defaults.
workloads=(
    "large 240"       # large-block churn, 5-25 MiB (malloc-large's kind)
    "bursts 60"       # many threads in bursts, created and joined repeatedly (mstress's kind)
    "handoff 700000"  # realistic sizes, cross-thread frees through queues (rptest's and xmalloc-test's kind)
    "prodcons 2000000" # producer/consumer: every free is a remote free
    "larson 100000"   # server-style: threads replacing slots of a shared table (larson's kind)
    "fragment 10"     # fragmentation-heavy long run; peak RSS is the key figure
    "tree 1"          # small objects: trees and graphs (barnes', cfrac's kind)
    "strings 1500000" # small objects: strings (espresso's, glibc-simple's kind)
    "churn 10000000"  # small-object churn, one thread (alloc-test's kind)
    "server 60000"    # request bursts, realloc'd bodies, a shared cache
    "realloc 600000"  # realloc growth chains
)
if [ -n "$only" ]; then
    selected=()
    for spec in "${workloads[@]}"; do
        case ",$only," in *",${spec%% *},"*) selected+=("$spec") ;; esac
    done
    [ ${#selected[@]} -gt 0 ] || { echo "suite.sh: --only $only matches no workload" >&2; exit 2; }
    workloads=("${selected[@]}")
fi
allocators=(glibc jemalloc mimalloc tcmalloc divvy)
mkdir -p "$out"
results=$out/results.txt
: >"$results"

echo "building the workloads (cc -O2 -pthread) in $out" >&2
cc -O2 -Wall -o "$out/measure" "$here/measure.c"
for spec in "${workloads[@]}"; do
    w=${spec%% *}
    cc -O2 -pthread -o "$out/$w" "$here/$w.c"
done

. "$here/allocators.sh"
install_allocators libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4

if [ -n "${DIVVY_MALLOC_LIBRARY:-}" ]; then
    divvy=$DIVVY_MALLOC_LIBRARY
else
    echo "building libDivvyMalloc without the Swift runtime (deploy/build-libdivvymalloc.sh)" >&2
    divvy=$("$root/deploy/build-libdivvymalloc.sh" "$out/divvy" | tail -n 1)
fi
[ -f "$divvy" ] || { echo "suite.sh: no libDivvyMalloc at $divvy" >&2; exit 2; }

preload() {
    case $1 in
    glibc) echo none ;;
    jemalloc) echo "$libdir/libjemalloc.so.2" ;;
    mimalloc) echo "$libdir/libmimalloc.so.2" ;;
    tcmalloc) echo "$libdir/libtcmalloc_minimal.so.4" ;;
    divvy) echo "$divvy" ;;
    esac
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u '+%Y-%m-%d %H:%M UTC')
failed=0
for ((r = 1; r <= reps; r++)); do
    echo "repetition $r of $reps (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    for spec in "${workloads[@]}"; do
        w=${spec%% *}
        argument=${spec#* }
        # Rotate the allocators' order from one repetition to the next, so none always runs right after another's
        # heavy teardown or always first.
        for ((k = 0; k < ${#allocators[@]}; k++)); do
            a=${allocators[$(((k + r - 1) % ${#allocators[@]}))]}
            if ! output=$("$out/measure" "$(preload "$a")" "$out/$w" "$argument" 2>"$out/$w.$a.stderr"); then
                echo "suite.sh: $w under $a failed: $(tail -n 3 "$out/$w.$a.stderr" | tr '\n' ' ')$output" >&2
                failed=1
            fi
            report=$(grep -v '^measure ' <<<"$output" | tail -n 1)
            stats=$(grep '^measure ' <<<"$output" | tail -n 1)
            # workload allocator wall_ms rss_kib minflt majflt user_ms sys_ms status checksum
            # shellcheck disable=SC2086
            set -- $stats
            echo "$w $a $2 $3 $4 $5 $6 $7 $8 $(awk '{ print $4 }' <<<"$report")" >>"$results"
        done
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
glibc_version=$(ldd --version | head -n 1 | awk '{ print $NF }')
echo "Measured $started on $(nproc) CPUs, $(uname -r), glibc $glibc_version," \
    "jemalloc $(dpkg-query -W -f '${Version}' libjemalloc2)," \
    "mimalloc $(dpkg-query -W -f '${Version}' libmimalloc2.0)," \
    "tcmalloc $(dpkg-query -W -f '${Version}' libtcmalloc-minimal4);" \
    "load average $load_before before, $load_after after."
echo "Median of $reps runs. Time is the whole process's wall time; time and peak RSS as ratios to glibc (lower is" \
    "better). Targets for Divvy: time < 1.00× glibc, ≤ 1.10× mimalloc; peak RSS ≤ 1.2× the lower of glibc and mimalloc."
echo
order=$(for spec in "${workloads[@]}"; do printf '%s ' "${spec%% *}"; done)
awk -v order="$order" '
    function median(key,   n, i, j, t, v) {
        n = split(samples[key], v, " ")
        for (i = 2; i <= n; i++)
            for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function med(w, a, field) { return median(w SUBSEP a SUBSEP field) }
    function add(field, value) { samples[$1 SUBSEP $2 SUBSEP field] = samples[$1 SUBSEP $2 SUBSEP field] " " value }
    function mark(ok) { return ok ? "✓" : "✗" }
    {
        add("ms", $3); add("rss", $4); add("flt", $5); add("sys", $8); add("cpu", $7 + $8)
        if ($9 != 0) bad[$1] = bad[$1] " " $2 " exited " $9
        if (!(($1, "sum") in first)) first[$1, "sum"] = $10
        else if (first[$1, "sum"] != $10) bad[$1] = bad[$1] " " $2 " checksum " $10 " != " first[$1, "sum"]
    }
    END {
        n = split(order, names, " ")
        split("glibc jemalloc mimalloc tcmalloc divvy", as, " ")
        print "| workload | glibc time | jemalloc | mimalloc | tcmalloc | Divvy | Divvy / mimalloc " \
            "| glibc peak RSS | jemalloc | mimalloc | tcmalloc | Divvy | Divvy / mimalloc " \
            "| Divvy / min(glibc, mimalloc) RSS |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            w = names[i]
            for (k = 1; k <= 5; k++) { ms[as[k]] = med(w, as[k], "ms"); rss[as[k]] = med(w, as[k], "rss") }
            g = ms["glibc"]; gr = rss["glibc"]
            dm = ms["divvy"] / ms["mimalloc"]; drm = rss["divvy"] / rss["mimalloc"]
            low = rss["glibc"] < rss["mimalloc"] ? rss["glibc"] : rss["mimalloc"]
            printf "| %s | %.0f ms | %.2f× | %.2f× | %.2f× | **%.2f×** %s | **%.2f×** %s ", w, g,
                ms["jemalloc"] / g, ms["mimalloc"] / g, ms["tcmalloc"] / g, ms["divvy"] / g, mark(ms["divvy"] < g),
                dm, mark(dm <= 1.10)
            printf "| %.1f MiB | %.2f× | %.2f× | %.2f× | **%.2f×** | %.2f× | **%.2f×** %s |\n", gr / 1024,
                rss["jemalloc"] / gr, rss["mimalloc"] / gr, rss["tcmalloc"] / gr, rss["divvy"] / gr, drm,
                rss["divvy"] / low, mark(rss["divvy"] <= 1.2 * low)
        }
        print ""
        print "CPU time (user + system) is steadier than wall time when other work shares the CPUs; the same targets" \
            " against it, with minor page faults and system time (medians per run):"
        print ""
        print "| workload | CPU glibc | Divvy / glibc | Divvy / mimalloc " \
            "| faults glibc | jemalloc | mimalloc | tcmalloc | Divvy " \
            "| sys glibc | jemalloc | mimalloc | tcmalloc | Divvy |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            w = names[i]
            g = med(w, "glibc", "cpu"); m = med(w, "mimalloc", "cpu"); d = med(w, "divvy", "cpu")
            line = sprintf("| %s | %.0f ms | %.2f× %s | %.2f× %s", w, g, d / g, mark(d < g), d / m, mark(d <= 1.10 * m))
            for (k = 1; k <= 5; k++) line = line sprintf(" | %d", med(w, as[k], "flt"))
            for (k = 1; k <= 5; k++) line = line sprintf(" | %d ms", med(w, as[k], "sys"))
            print line " |"
        }
        status = 0
        for (w in bad) { print "FAILED " w ":" bad[w] > "/dev/stderr"; status = 1 }
        exit status
    }' "$results" || failed=1
echo
echo "Raw results (workload allocator wall_ms rss_kib minflt majflt user_ms sys_ms status checksum): $results"
exit $failed
