#!/usr/bin/env bash
# Runs the test suite, and the demo with DeprecationWarnings as errors, on Pythons newer than
# this machine's, each in the Debian chroot that tests/pythons/chroot.sh makes (the first run
# bootstraps it and installs the Pythons, PostgreSQL and Redis: a few minutes). .ci/run calls it.
#
#   tests/pythons/run.sh              # 3.14 and 3.15
#   tests/pythons/run.sh 3.15         # one version
#
# The versions run one after the other (the suite has timing-sensitive tests that a second
# suite on the same cores would only make flakier). Each is bounded by PYTHONS_TIMEOUT seconds
# (default 1500). Prints one line per version and exits non-zero if any version's suite or demo
# failed or ran out of time. Needs root.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LIMIT=${PYTHONS_TIMEOUT:-1500}
[ $# -gt 0 ] || set -- 3.14 3.15

status=0
summary=()
for version in "$@"; do
    log=$(mktemp "${TMPDIR:-/tmp}/uringloop-py$version.XXXXXX.log")
    echo "pythons: Python $version (log: $log)" >&2
    start=$(date +%s)
    timeout --kill-after=30 "$LIMIT" "$HERE/chroot.sh" "$version" bash -c '
        python -m pytest -q -p no:cacheprovider -rfE; suite=$?
        python -W error::DeprecationWarning examples/demo.py > /tmp/demo.out 2>&1; demo=$?
        tail -n 5 /tmp/demo.out
        echo "demo: exit $demo"
        exit $(( suite || demo ))' > "$log" 2>&1
    rc=$?
    minutes=$(( ($(date +%s) - start + 30) / 60 ))
    counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$log" | tail -n 1 | tr -d '=' |
             sed 's/^ *//; s/ *$//')
    demo=$(grep -E '^demo: exit [0-9]+$' "$log" | tail -n 1)
    case $rc in
        0) outcome=ok ;;
        124|137) outcome="timed out after ${LIMIT}s" ;;
        *) outcome="FAILED (exit $rc; see $log)" ;;
    esac
    summary+=("Python $version: ${counts:-no test result}; ${demo:-demo not run}; $outcome; $minutes min")
    [ $rc -eq 0 ] || status=1
    tail -n 25 "$log" >&2
done
printf '%s\n' "${summary[@]}"
exit $status
