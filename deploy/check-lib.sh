# Shared by the deploy/ check scripts (sourced, not run): `pass NAME` and `fail NAME [DETAIL]` print one line each
# and count failures in $failures, so a script runs every check and exits non-zero at the end if any failed.
failures=0
pass() { echo "ok   $1"; }
fail() {
    echo "FAIL $1"
    [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/     /'
    failures=$((failures + 1))
}
