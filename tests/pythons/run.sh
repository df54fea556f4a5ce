#!/usr/bin/env bash
# Runs the test suite on Pythons newer than this machine's, through the py-next recipe
# (../shared/tools/py-next.sh beside the clone: a Debian testing chroot with Debian's
# python3.14 / python3.15; the first run builds the chroot, about a minute).
#
#   tests/pythons/run.sh              # 3.14 and 3.15
#   tests/pythons/run.sh 3.15         # one version
#
# Each version's run is bounded by PYTHONS_TIMEOUT seconds (default 2400: on a loaded 2-core
# machine the build and the suite took more than 15 minutes). Prints one line of counts per
# version and exits non-zero if any version failed or timed out. The chroot's editable install
# writes its own extension (_core.cpython-3XY-*.so) into the tree.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY_NEXT=${PY_NEXT:-$ROOT/../shared/tools/py-next.sh}
LIMIT=${PYTHONS_TIMEOUT:-2400}
[ -x "$PY_NEXT" ] || { echo "pythons: $PY_NEXT not found (expected beside the clone)" >&2; exit 2; }
[ $# -gt 0 ] || set -- 3.14 3.15

cd "$ROOT"
status=0
# The application tests (tests/apps) need real PostgreSQL and Redis servers, inside the
# chroot like the Python itself (once; policy-rc.d keeps their packages from starting services).
for version in "$@"; do
    PY_NEXT_INSTALL= timeout 900 "$PY_NEXT" "$version" -- bash -c '
        ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && command -v redis-server >/dev/null && exit 0
        printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        pkgs="postgresql redis-server"
        apt-get install -y -q --no-install-recommends $pkgs >/dev/null ||
            { apt-get update -q && apt-get install -y -q --no-install-recommends $pkgs >/dev/null; }' \
        || { echo "pythons: cannot install postgresql and redis-server in the chroot" >&2; exit 2; }
    break   # one chroot serves every version
done
summary=()
for version in "$@"; do
    log=$(mktemp "${TMPDIR:-/tmp}/uringloop-py$version.XXXXXX.log")
    echo "pythons: Python $version (log: $log)" >&2
    # The editable build is redone before the run, so that the .pyx sources in the tree are
    # the ones tested (py-next.sh only reinstalls by itself when pyproject.toml changes).
    timeout --kill-after=30 "$LIMIT" "$PY_NEXT" "$version" -- bash -c \
        'pip install -q -e ".[test]" && python -m pytest -q -p no:cacheprovider -rfE' \
        > "$log" 2>&1
    rc=$?
    counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$log" | tail -n 1 | tr -d '=')
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        counts="timed out after ${LIMIT}s ${counts}"
    fi
    [ -n "$counts" ] || counts="no result (exit $rc); see $log"
    summary+=("Python $version: $counts")
    [ $rc -eq 0 ] || status=1
done
printf '%s\n' "${summary[@]}"
exit $status
