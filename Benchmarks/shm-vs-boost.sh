#!/usr/bin/env bash
# DivvyShm's SharedHeap against glibc (same run) and Boost.Interprocess managed_shared_memory (same sizes, same
# counts), then the two-process handover throughput. Prints Markdown tables; docs/benchmarks.md's figures come from it.
#
#   ./shm-vs-boost.sh
#
# 1. ./ratios.sh on the SharedHeap benchmarks and the glibc baselines (release build, ordo-one/benchmark);
# 2. boost/run.sh (installs libboost-dev and g++ if missing, builds shm_boost.cpp with -O2, runs it);
# 3. the ratio table: Boost's ns/op over ours (how many times faster ours is), per workload;
# 4. swift run -c release shm-two-process (ops/s per process with cross-process frees).
set -euo pipefail
cd "$(dirname "$0")"

ours=$(mktemp)
theirs=$(mktemp)
trap 'rm -f "$ours" "$theirs"' EXIT

./ratios.sh --filter 'SharedHeap.*' --filter 'baseline: glibc.*' | tee "$ours"
echo
boost/run.sh | tee "$theirs"
echo

python3 - "$ours" "$theirs" <<'PY'
import re, sys

ours = {}
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 4 and cells[0].startswith("SharedHeap participant"):
        ours[cells[0]] = float(cells[1])
theirs = {}
for line in open(sys.argv[2]):
    parts = line.rstrip("\n").split("\t")
    if len(parts) == 4:
        theirs[parts[0].replace("16 B-1 KiB", "16 B–1 KiB")] = float(parts[1])

print("| workload | SharedHeap ns/op | Boost default ns/op | × faster | Boost cached_node_allocator ns/op | × faster |")
print("|:--|--:|--:|--:|--:|--:|")
for name, value in sorted(ours.items()):
    m = re.match(r"SharedHeap participant (pair|burst) \((.*)\)$", name)
    if not m:
        continue
    kind, workload = m.groups()
    default = theirs.get(f"boost default {kind} ({workload})")
    cached = theirs.get(f"boost cached_node_allocator {kind} ({workload})")
    def cell(x):
        return ("—", "—") if x is None else (f"{x:.2f}", f"{x / value:.1f}")
    d, dx = cell(default)
    c, cx = cell(cached)
    print(f"| {kind} ({workload}) | {value:.2f} | {d} | {dx} | {c} | {cx} |")
PY
echo
swift run -c release shm-two-process 2>&1 | grep -v '^\[' | grep -v '^Building\|^Compiling\|^Build'
