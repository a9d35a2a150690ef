#!/usr/bin/env bash
# Runs the benchmarks once and prints a Markdown table of nanoseconds per operation (median of the samples) and
# the ratio to the glibc malloc+free baseline measured in the same run. The tables in docs/benchmarks.md come from this script.
#
#   ./ratios.sh                        # all benchmarks
#   ./ratios.sh --filter 'Slab.*'      # any extra arguments go to `swift package benchmark`
#
# Every sample runs 100,000 operations (see Benchmarks/Allocators/Allocators.swift), so ns/op = p50 / 100,000.
# "burst" benchmarks are compared with the glibc burst baseline, the others with the glibc pair baseline.
set -euo pipefail
cd "$(dirname "$0")"

raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
swift package benchmark --format markdown --path stdout --no-progress "$@" >"$raw" 2>&1 || {
    cat "$raw" >&2
    exit 1
}

python3 - "$raw" <<'PY'
import re, sys

OPS = 100_000  # operations per sample
text = open(sys.argv[1]).read()
results = {}  # name -> (p25, p50, p75) in ns per sample
for section in re.split(r"^### ", text, flags=re.M)[1:]:
    name = section.splitlines()[0].strip()
    for line in section.splitlines():
        if line.startswith("| Time (wall clock)"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            unit = re.search(r"\((\w+)\)\s*\*?$", cells[0]).group(1)
            scale = {"ns": 1, "us": 1e3, "μs": 1e3, "ms": 1e6}[unit]
            p25, p50, p75 = (float(cells[i].replace(",", "")) * scale for i in (2, 3, 4))
            results[name] = (p25, p50, p75)

pair = "baseline: glibc malloc+free (32 B)"
burst = "baseline: glibc malloc+free burst (32 B)"
if pair not in results or burst not in results:
    sys.exit("baseline benchmarks missing from the run (do not filter them out)")

def baseline(name):
    """The glibc baseline of the same kind (pair or burst) and, if there is one, the same workload in parentheses."""
    kind = "burst" in name
    workload = re.search(r"\(([^)]*)\)\s*$", name)
    for candidate in results:
        if candidate != name and candidate.startswith("baseline: glibc") and ("burst" in candidate) == kind and workload:
            if candidate.endswith(f"({workload.group(1)})"):
                return candidate
    return burst if kind else pair

print("| benchmark | ns/op (p50) | p25–p75 | × glibc malloc+free (same workload) |")
print("|:--|--:|--:|--:|")
for name in sorted(results, key=lambda n: (not n.startswith("baseline"), n)):
    p25, p50, p75 = results[name]
    base = baseline(name)
    print(f"| {name} | {p50 / OPS:.2f} | {p25 / OPS:.2f}–{p75 / OPS:.2f} | {p50 / results[base][1]:.2f} |")
PY
