#!/bin/sh
# Checks, by tracing a real divvyd, the assumptions behind divvyd.service's sandbox: every system call it makes
# is in @system-service and none is in @privileged (SystemCallFilter=), it never maps memory writable and
# executable (MemoryDenyWriteExecute=), and it only creates AF_UNIX sockets (RestrictAddressFamilies=).
# The workload: direct and mediated clients churning, a direct client SIGKILLed mid-traffic (recovery), a named
# region (/dev/shm) and an anonymous one (memfd), and a graceful SIGTERM.
#
# Not part of CI (it needs strace and ptrace permission). Run it after changing divvyd or its dependencies:
#   swift build && deploy/check-sandbox.sh [.build/debug]
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$(dirname "$here")/.build/debug}
for tool in strace systemd-analyze; do
    command -v "$tool" >/dev/null 2>&1 || { echo "check-sandbox.sh: $tool is needed" >&2; exit 1; }
done
for product in divvyd divvy-client-helper; do
    [ -x "$bin/$product" ] || { echo "check-sandbox.sh: no $bin/$product: swift build first" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The system calls of a syscall-filter group, with nested groups expanded.
expand() {
    systemd-analyze syscall-filter "$1" 2>/dev/null | awk 'NR > 1 && $1 !~ /^#/ { print $1 }' | while read -r name; do
        case "$name" in @*) expand "$name" ;; *) echo "$name" ;; esac
    done
}
expand @system-service | sort -u > "$work/allowed"
expand @privileged | sort -u > "$work/privileged"

run() {  # run LABEL DIVVYD-ARGUMENTS...
    label=$1
    shift
    socket="$work/$label.sock"
    strace -f -qq -o "$work/$label.trace" "$bin/divvyd" --socket "$socket" --data-size 64M --page-size 16K "$@" \
        > "$work/$label.log" 2>&1 &
    tracer=$!
    tries=0
    while [ ! -S "$socket" ] && [ $tries -lt 600 ]; do sleep 0.1; tries=$((tries + 1)); done
    "$bin/divvy-client-helper" "$socket" direct churn 2000 1 > /dev/null
    "$bin/divvy-client-helper" "$socket" mediated churn 2000 2 > /dev/null
    "$bin/divvy-client-helper" "$socket" direct churn 1000000 3 > /dev/null &
    victim=$!
    sleep 0.5
    kill -KILL "$victim" 2> /dev/null || true  # (it may have ended already)
    wait "$victim" || true
    # The daemon is strace's child: signal it by its pid (strace itself does not forward SIGTERM).
    daemon=$(ps -o pid= --ppid "$tracer" | tr -d ' ')
    kill -TERM "$daemon"
    wait "$tracer"
}
run anonymous
run named --region-name "sandbox-check-$$"

failures=0
awk '{ sub(/^[0-9]+ +/, ""); if (match($0, /^[a-z_0-9]+\(/)) print substr($0, 1, RLENGTH - 1) }' "$work"/*.trace \
    | sort -u > "$work/used"
echo "divvyd made $(wc -l < "$work/used") distinct system calls"
outside=$(grep -vxF -f "$work/allowed" "$work/used" || true)
if [ -n "$outside" ]; then echo "FAIL not in @system-service:" $outside; failures=$((failures + 1)); else
    echo "ok   all in @system-service"; fi
privileged=$(grep -xF -f "$work/privileged" "$work/used" || true)
if [ -n "$privileged" ]; then echo "FAIL in @privileged:" $privileged; failures=$((failures + 1)); else
    echo "ok   none in @privileged"; fi
if grep -E 'PROT_(READ\|)?WRITE\|PROT_EXEC|PROT_(READ\|)?EXEC\|PROT_WRITE' "$work"/*.trace > "$work/wx"; then
    echo "FAIL writable and executable mappings:"; head -3 "$work/wx"; failures=$((failures + 1)); else
    echo "ok   no writable-and-executable mappings"; fi
families=$(grep -ohE 'socket\(AF_[A-Z0-9]+' "$work"/*.trace | sed 's/socket(//' | sort -u | tr '\n' ' ')
case "$families" in
    "AF_UNIX ") echo "ok   sockets: AF_UNIX only" ;;
    *) echo "FAIL socket families: $families"; failures=$((failures + 1)) ;;
esac
grep -q 'memfd_create' "$work/anonymous.trace" && echo "ok   anonymous region: memfd_create traced" || {
    echo "FAIL the anonymous run made no memfd_create"; failures=$((failures + 1)); }
grep -q '/dev/shm/divvy-sandbox-check' "$work/named.trace" && echo "ok   named region: /dev/shm traced" || {
    echo "FAIL the named run did not open its region in /dev/shm"; failures=$((failures + 1)); }
[ "$failures" -eq 0 ] || exit 1
echo "check-sandbox.sh: divvyd fits divvyd.service's sandbox"
