#!/usr/bin/env bash
# Checks that the configuration table (the one in Sources/DivvyClient/DivvyClient.docc/RunningDivvyd.md; other docs
# link to it) has a row for every key of `ServerConfiguration.keys` (Sources/DivvyServer/ServerConfiguration.swift)
# and no row for a key that does not exist, and that its "on reload" column says `applied` exactly for the keys of
# `ConfigurationReload.reloadableKeys` (Sources/DivvyServer/ConfigurationReload.swift) and `restart` for the others.
# Exit 1 on a mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."
table=Sources/DivvyClient/DivvyClient.docc/RunningDivvyd.md
source=Sources/DivvyServer/ServerConfiguration.swift
# The array literal after `public static let keys = [`, up to the closing `]`.
keys=$(awk '/static let keys = \[/ { inside = 1; next } inside && /^ *\]/ { exit } inside' "$source" |
    grep -o '"[a-z0-9-]*"' | tr -d '"' | sort)
# The rows of the table whose header starts "| config key", up to the first line that is not a table row.
rows=$(awk '/^\| config key/ { inside = 1; next } inside && !/^\|/ { exit } inside' "$table" |
    grep -o '^| `[a-z0-9-]*` |' | sed 's/^| `\(.*\)` |$/\1/' | sort)
[ -n "$keys" ] || { echo "check-config-table: found no keys in $source" >&2; exit 1; }
missing=$(comm -23 <(echo "$keys") <(echo "$rows"))
extra=$(comm -13 <(echo "$keys") <(echo "$rows"))
if [ -n "$missing$extra" ]; then
    [ -n "$missing" ] && echo "check-config-table: $table lacks a row for: $(echo $missing)" >&2
    [ -n "$extra" ] && echo "check-config-table: $table has rows for unknown keys: $(echo $extra)" >&2
    exit 1
fi
# The reload column: the third cell of each row.
reload_source=Sources/DivvyServer/ConfigurationReload.swift
reloadable=$(awk '/static let reloadableKeys: Set<String> = \[/ { inside = 1; next } inside && /^ *\]/ { exit } inside' \
    "$reload_source" | grep -o '"[a-z0-9-]*"' | tr -d '"' | sort)
[ -n "$reloadable" ] || { echo "check-config-table: found no reloadable keys in $reload_source" >&2; exit 1; }
applied=$(awk '/^\| config key/ { inside = 1; next } inside && !/^\|/ { exit } inside' "$table" |
    awk -F' \\| ' '$3 == "applied" { print $1 }' | sed 's/^| `\(.*\)`$/\1/' | sort)
restart=$(awk '/^\| config key/ { inside = 1; next } inside && !/^\|/ { exit } inside' "$table" |
    awk -F' \\| ' '$3 == "restart"' | wc -l | tr -d ' ')
if [ "$applied" != "$reloadable" ] || [ $((restart + $(echo "$applied" | wc -l))) -ne "$(echo "$keys" | wc -l)" ]; then
    echo "check-config-table: $table's 'on reload' column must say applied for exactly: $(echo $reloadable)" \
        "(and restart for every other key); it says applied for: $(echo $applied)" >&2
    exit 1
fi
echo "config table: $(echo "$keys" | wc -l | tr -d ' ') keys documented, $(echo "$reloadable" | wc -l | tr -d ' ') reloadable"
