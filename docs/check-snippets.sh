#!/usr/bin/env bash
# Compiles every Swift snippet of the documentation, as pasted.
#
# Finds each ```swift fenced block in README.md, docs/**/*.md and Sources/**/*.docc/**/*.md, and in the `///` doc
# comments of Sources/**/*.swift (the `/// ` prefix removed; DocC shows these as the symbols' documentation), and
# writes it as the main.swift of its own executable target in one scratch package, which depends on this repository
# by path, then builds that package once. Every target may import Divvy, DivvyShm, DivvyClient and DivvyProtocol; a
# block that imports DivvyServer (or Logging, for the Logger it takes) also gets DivvyServer and swift-log's Logging.
# Blocks are compiled as pasted, with one exception: a doc-comment block is shown inside its module's documentation,
# so it gets `import <Module>` (the name of its directory under Sources/) prepended unless it imports it itself.
# Doc-comment blocks may only be in the modules above: DivvyMalloc and DivvyC are libraries for C callers (write
# their examples as ```c) and the other targets cannot be imported by another package. A block is skipped only when
# the line just before its fence is exactly
#
#     <!-- snippet: fragment -->              (in Markdown)
#     /// <!-- snippet: fragment -->          (in a doc comment; DocC does not render it)
#
# (Package.swift lines, declarations shown for reference). On failure it prints where each failing block came from
# (file:line:column of the error, in the Markdown or Swift file) with the compiler's messages, and exits 1.
#
# Usage: docs/check-snippets.sh [--list]
#   --list        only list the blocks found (file:line, compiled or fragment), build nothing
# Environment: DIVVY_SNIPPETS_DIR  the scratch package (default: .build-snippets in the repository; .gitignore has it).
# The scratch package keeps its .build between runs, so later runs rebuild only the changed snippets.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
scratch=${DIVVY_SNIPPETS_DIR:-$root/.build-snippets}
list_only=0
for argument in "$@"; do
    case "$argument" in
    --list) list_only=1 ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-snippets: unknown argument '$argument' (see --help)" >&2; exit 64 ;;
    esac
done

cd "$root"
# Every Markdown file that may hold snippets, in a stable order. `find` rather than globstar: bash 3 has none.
files=()
[ -f README.md ] && files+=(README.md)
while IFS= read -r file; do files+=("$file"); done < <(
    { [ -d docs ] && find docs -name '*.md' -type f; find Sources -path '*.docc/*' -name '*.md' -type f; } | LC_ALL=C sort
)

mkdir -p "$scratch"
rm -rf "$scratch/Sources"
mkdir -p "$scratch/Sources"
# target (or "fragment") <TAB> file <TAB> line of the block's first line of code <TAB> lines prepended to it
# <TAB> columns removed from each of its lines
map="$scratch/snippets.map"
: >"$map"
rm -f "$scratch/.count"

# Extract. A fence is "```swift" (any indentation, which is then removed from the block's lines) up to the next line
# that is only "```" at the same or less indentation. The line before a skipped block's fence is the marker.
for file in "${files[@]}"; do
    awk -v file="$file" -v out="$scratch/Sources" -v map="$map" -v count_file="$scratch/.count" '
        BEGIN { n = 0; if ((getline n < count_file) <= 0) n = 0; close(count_file); inside = 0; previous = "" }
        function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
        {
            if (!inside) {
                line = $0; sub(/\r$/, "", line)
                if (match(line, /^[ \t]*```[ \t]*swift[ \t]*$/)) {
                    indent = line; sub(/```.*$/, "", indent)
                    if (trim(previous) == "<!-- snippet: fragment -->") {
                        inside = 2
                        printf "fragment\t%s\t%d\t0\t0\n", file, NR + 1 >> map
                    } else {
                        inside = 1; n++
                        target = sprintf("snippet_%03d", n)
                        dir = out "/" target
                        system("mkdir -p \"" dir "\"")
                        path = dir "/main.swift"
                        printf "" > path
                        printf "%s\t%s\t%d\t0\t%d\n", target, file, NR + 1, length(indent) >> map
                    }
                    previous = line
                    next
                }
                previous = $0
                next
            }
            line = $0; sub(/\r$/, "", line)
            if (match(line, /^[ \t]*```[ \t]*$/)) {
                if (inside == 1) close(path)
                inside = 0; previous = line
                next
            }
            if (inside == 1) {
                if (indent != "" && substr(line, 1, length(indent)) == indent) line = substr(line, length(indent) + 1)
                print line > path
            }
        }
        END {
            if (inside) { printf "check-snippets: %s: a ```swift block is never closed\n", file > "/dev/stderr"; exit 1 }
            print n > count_file
        }
    ' "$file"
done

# The doc comments. The same fences, in runs of `///` lines: a line's `///` (and whatever precedes it) and one space
# after it are removed, then the fence's own indentation as above. A block that does not import its module (the
# directory under Sources/) gets `import <Module>` as its first line.
swift_files=()
while IFS= read -r file; do swift_files+=("$file"); done < <(
    find Sources -name '*.swift' -type f -not -path '*.docc/*' | LC_ALL=C sort
)
[ "${#swift_files[@]}" -gt 0 ] && awk -v out="$scratch/Sources" -v map="$map" -v count_file="$scratch/.count" \
    -v importable=" Divvy DivvyShm DivvyClient DivvyProtocol DivvyServer " '
    BEGIN { n = 0; if ((getline n < count_file) <= 0) n = 0; close(count_file); inside = 0; bad = 0 }
    function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
    function unclosed() {
        printf "check-snippets: %s:%d: a ```swift block in a doc comment is never closed\n", file, start - 1 \
            > "/dev/stderr"
        bad = 1; inside = 0
    }
    FNR == 1 {
        if (inside) unclosed()
        file = FILENAME; module = file; sub(/^Sources\//, "", module); sub(/\/.*$/, "", module)
        previous = ""
    }
    {
        line = $0; sub(/\r$/, "", line)
        is_comment = match(line, /^[ \t]*\/\/\/ ?/)
        if (is_comment) { prefix = RLENGTH; text = substr(line, prefix + 1) } else text = ""
        if (inside && !is_comment) unclosed()
        if (!inside) {
            if (is_comment && match(text, /^[ \t]*```[ \t]*swift[ \t]*$/)) {
                indent = text; sub(/```.*$/, "", indent)
                start = FNR + 1
                if (trim(previous) == "<!-- snippet: fragment -->") {
                    inside = 2
                    printf "fragment\t%s\t%d\t0\t0\n", file, start >> map
                } else if (index(importable, " " module " ") == 0) {
                    printf "check-snippets: %s:%d: a ```swift example in the doc comments of %s, which a Swift " \
                        "program cannot import (DivvyMalloc and DivvyC are libraries for C callers: write theirs " \
                        "as ```c); mark it as a fragment or move it\n", file, FNR, module > "/dev/stderr"
                    bad = 1; inside = 2
                } else {
                    inside = 1; count = 0; imports = 0; offset = prefix + length(indent)
                }
            }
            previous = text
            next
        }
        if (match(text, /^[ \t]*```[ \t]*$/)) {
            if (inside == 1) {
                n++
                target = sprintf("snippet_%03d", n)
                dir = out "/" target
                system("mkdir -p \"" dir "\"")
                path = dir "/main.swift"
                printf "" > path
                if (!imports) print "import " module > path
                for (i = 1; i <= count; i++) print block[i] > path
                close(path)
                printf "%s\t%s\t%d\t%d\t%d\n", target, file, start, imports ? 0 : 1, offset >> map
            }
            inside = 0; previous = text
            next
        }
        if (inside == 1) {
            if (indent != "" && substr(text, 1, length(indent)) == indent) text = substr(text, length(indent) + 1)
            block[++count] = text
            if (text ~ ("^[ \t]*(@[A-Za-z_]+[ \t]+)*import[ \t]+" module "[ \t]*(//.*)?$")) imports = 1
        }
    }
    END {
        if (inside) unclosed()
        print n > count_file
        exit bad
    }
' "${swift_files[@]}"
rm -f "$scratch/.count"

compiled=$(awk -F'\t' '$1 != "fragment"' "$map" | wc -l | tr -d ' ')
skipped=$(awk -F'\t' '$1 == "fragment"' "$map" | wc -l | tr -d ' ')

if [ "$list_only" = 1 ]; then
    awk -F'\t' '{ printf "%s:%d\t%s\n", $2, $3, ($1 == "fragment" ? "fragment (skipped)" : $1) }' "$map"
    echo "snippets: $compiled found, $skipped fragments"
    exit 0
fi

if [ "$compiled" = 0 ]; then
    echo "snippets: 0 compiled, $skipped fragments skipped"
    exit 0
fi

# The package: one executable target per snippet (less those already known to fail), each depending on the four
# public library products, and on DivvyServer and Logging too when it imports either (so that the others do not link
# the daemon's stack). swift-log at the version this repository asks for.
identity=$(basename "$root" | tr '[:upper:]' '[:lower:]')
swift_log=$(grep -o '\.package(url: "[^"]*/swift-log", from: "[^"]*")' Package.swift | head -n 1)
[ -n "$swift_log" ] || { echo "check-snippets: Package.swift names no swift-log dependency" >&2; exit 1; }
for target in $(awk -F'\t' '$1 != "fragment" { print $1 }' "$map"); do
    if grep -Eq '^[[:space:]]*(@[A-Za-z_]+[[:space:]]+)*import[[:space:]]+(DivvyServer|Logging)([[:space:]]|$)' \
        "$scratch/Sources/$target/main.swift"; then
        echo "$target"
    fi
done >"$scratch/server-snippets"
write_package() {
    {
        echo '// swift-tools-version: 6.2'
        echo '// Generated by docs/check-snippets.sh: every ```swift block of the docs as its own executable. Do not edit.'
        echo 'import PackageDescription'
        echo
        echo 'let products: [Target.Dependency] = ['
        for product in Divvy DivvyShm DivvyClient DivvyProtocol; do
            echo "    .product(name: \"$product\", package: \"$identity\"),"
        done
        echo ']'
        echo 'let serverProducts: [Target.Dependency] = products + ['
        echo "    .product(name: \"DivvyServer\", package: \"$identity\"),"
        echo '    .product(name: "Logging", package: "swift-log"),'
        echo ']'
        echo
        echo 'let package = Package('
        echo '    name: "DivvySnippets",'
        echo "    dependencies: [.package(path: \"$root\"), $swift_log],"
        echo '    targets: ['
        awk -F'\t' -v failed="$scratch/failed" -v server="$scratch/server-snippets" '
            BEGIN {
                while ((getline t < failed) > 0) skip[t] = 1
                while ((getline t < server) > 0) needs_server[t] = 1
            }
            $1 != "fragment" && !($1 in skip) {
                printf "        .executableTarget(name: \"%s\", dependencies: %s),\n", $1,
                    ($1 in needs_server) ? "serverProducts" : "products"
            }
        ' "$map"
        echo '    ]'
        echo ')'
    } >"$scratch/Package.swift"
}

# Build once. SwiftPM stops at the first module that fails, so when some snippets fail, build again without them
# (incrementally: only what was not built yet is compiled) until the rest builds, to report every failing snippet.
log="$scratch/build.log"
errors="$scratch/errors.log"
: >"$scratch/failed"
: >"$errors"
while true; do
    write_package
    status=0
    (cd "$scratch" && swift build >"$log" 2>&1) || status=$?
    [ "$status" = 0 ] && break
    newly=$(grep -o 'Sources/snippet_[0-9]*/main\.swift:[0-9]*:[0-9]*: error' "$log" | cut -d/ -f2 | sort -u || true)
    if [ -z "$newly" ]; then
        echo "check-snippets: the build failed outside the snippets; the end of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    echo "$newly" >>"$scratch/failed"
    cat "$log" >>"$errors"
    # No snippet left to build: stop.
    [ "$(awk -F'\t' '$1 != "fragment"' "$map" | wc -l)" -le "$(sort -u "$scratch/failed" | wc -l)" ] && break
done

if [ -s "$scratch/failed" ]; then
    # Map "…/Sources/snippet_NNN/main.swift:L:C: error: …" back to the Markdown file and line, and print the
    # compiler's message with its source excerpt.
    awk -F'\t' -v logfile="$errors" '
        FILENAME != logfile {
            origin_file[$1] = $2; origin_line[$1] = $3; origin_prepended[$1] = $4; origin_columns[$1] = $5; next
        }
        {
            if (match($0, /Sources\/snippet_[0-9]+\/main\.swift:[0-9]+:[0-9]+: /)) {
                spot = substr($0, RSTART, RLENGTH)
                split(spot, parts, "/")
                target = parts[2]
                split(parts[3], position, ":")
                where = origin_file[target] ":" (origin_line[target] + position[2] - 1 - origin_prepended[target]) \
                    ":" (position[3] + origin_columns[target])
                rest = substr($0, RSTART + RLENGTH)
                if (seen[where rest]++) { showing = 0; next }     # the compiler repeats itself per build step
                if (rest ~ /^error:/) failing[target] = 1
                printf "%s: %s   [%s]\n", where, rest, target
                showing = 1
                next
            }
            if ($0 ~ /^\[[0-9]+\/[0-9]+\]/ || $0 ~ /^(Building|Compiling|Write|error: emit-module|error: compile)/) {
                showing = 0; next
            }
            if (showing) print
        }
        END {
            for (t in failing) count++
            printf "\ncheck-snippets: %d snippet(s) failed to compile:\n", count
            for (t in failing) printf "  %s:%d (%s)\n", origin_file[t], origin_line[t], t
        }
    ' "$map" "$errors" >&2
    failed_count=$(sort -u "$scratch/failed" | wc -l | tr -d ' ')
    echo "snippets: $((compiled - failed_count)) compiled, $failed_count FAILED, $skipped fragments skipped" >&2
    exit 1
fi

echo "snippets: $compiled compiled, $skipped fragments skipped"
