#!/usr/bin/env bash
# Builds the DocC documentation of the Divvy, DivvyShm and DivvyClient modules — their catalogs
# (Sources/<Module>/<Module>.docc) and every public symbol's `///` comment — and fails on any DocC diagnostic: a
# ``Symbol`` or <doc:Article> link that does not resolve, a malformed Topics section, a missing summary.
#
#   docs/check-docc.sh
#
# Archives: .build/plugins/Swift-DocC/outputs/<Module>.doccarchive. Time on the 2-core machine: ≈ 5 min from an
# empty .build (a debug build of the three modules and their dependencies, plus the plugin's own tools), ≈ 35 s
# once they are built. Compiler warnings printed by that build are not DocC's and are not counted.
set -euo pipefail
cd "$(dirname "$0")/.."

# Package.swift adds swift-docc-plugin only when DIVVY_DOCS is set, so that library users never fetch it.
export DIVVY_DOCS=1

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

status=0
swift package generate-documentation \
    --target Divvy --target DivvyShm --target DivvyClient \
    --warnings-as-errors 2>&1 | tee "$log" || status=$?

# DocC prints its diagnostics between "Building documentation for '<Module>'..." and the module's "Finished" line
# (as errors, because of --warnings-as-errors).
diagnostics=$(awk '/^Building documentation for/ { on = 1 }
                   /^(Finished building documentation|Generated .*documentation archive)/ { on = 0 }
                   on && /(warning|error):/' "$log" | wc -l)

echo "check-docc: ${diagnostics} DocC diagnostic(s) in Divvy, DivvyShm and DivvyClient; plugin exit status ${status}"
if [ "$status" -ne 0 ] || [ "$diagnostics" -ne 0 ]; then
    echo "check-docc: FAILED (fix the links and comments listed above)" >&2
    exit 1
fi
