#!/bin/sh
# Memory safety in one command: the C ring layer's own test and uringloop's Python test suites,
# both under AddressSanitizer.
#
#   tests/memcheck/run.sh                  # C test, then the default Python suites
#   tests/memcheck/run.sh tests/test_core.py -k timer    # C test, then these pytest arguments
#   MEMCHECK_UVLOOP_SUITE=1 tests/memcheck/run.sh        # and then uvloop's suite on uringloop
#
# The extension is rebuilt with -fsanitize=address into a scratch directory (the working copy's
# own build is left alone) and imported from there, with libasan preloaded into CPython, which
# is not built with it. PYTHONMALLOC=malloc sends Python's objects through malloc so that ASan
# sees them; detect_leaks=0 because CPython keeps memory until exit by design. Any report
# aborts the run with a non-zero status. Set PYTHON to choose the interpreter (default: the
# working copy's .venv, else python3) and MEMCHECK_DIR to keep the build between runs.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
CC=${CC:-gcc}
WORK=${MEMCHECK_DIR:-$(mktemp -d /tmp/uringloop-memcheck.XXXXXX)}
mkdir -p "$WORK"
LIBASAN=$($CC -print-file-name=libasan.so)
SAN="-fsanitize=address -fno-omit-frame-pointer -g -O1"

[ -e "$LIBASAN" ] || { echo "memcheck: $CC has no libasan ($LIBASAN)" >&2; exit 2; }
LIBASAN=$(readlink -f "$LIBASAN")
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export URINGLOOP_MEMCHECK=1   # tests/reliability: RSS says nothing under ASan's quarantine
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

echo "== C ring layer (tests/c/ring_check.c) under ASan and UBSan"
$CC $SAN -fsanitize=undefined -Wall -Werror -I "$ROOT/uringloop/ring" \
    "$ROOT/tests/c/ring_check.c" "$ROOT/uringloop/ring/ring.c" -o "$WORK/ring_check"
"$WORK/ring_check"

echo "== building the extension with ASan into $WORK/lib"
mkdir -p "$WORK/lib/uringloop"
cp "$ROOT"/uringloop/*.py "$ROOT"/uringloop/*.pyi "$WORK/lib/uringloop/"
(cd "$ROOT" && CFLAGS="$SAN" LDFLAGS="-fsanitize=address" "$PYTHON" setup.py -q build_ext \
    --build-lib "$WORK/lib" --build-temp "$WORK/build" >"$WORK/build.log" 2>&1) \
    || { cat "$WORK/build.log" >&2; exit 1; }
LOADED=$(cd "$WORK/lib" && LD_PRELOAD="$LIBASAN" PYTHONMALLOC=malloc \
    "$PYTHON" -c 'import uringloop._core as c; print(c.__file__)')
case "$LOADED" in
    "$WORK/lib/"*) ;;
    *) echo "memcheck: imported $LOADED instead of the ASan build" >&2; exit 1 ;;
esac

echo "== Python suites with the ASan build ($LOADED)"
if [ $# -eq 0 ]; then
    set -- tests --ignore=tests/test_ecosystem.py
fi
# From the working copy (pytest arguments are relative to it), with the ASan build first on
# sys.path in place of the working directory.
cd "$ROOT"
set +e
LD_PRELOAD="$LIBASAN" PYTHONMALLOC=malloc "$PYTHON" -c '
import sys
sys.path[0] = sys.argv.pop(1)
import pytest, uringloop._core
assert uringloop._core.__file__.startswith(sys.path[0]), uringloop._core.__file__
raise SystemExit(pytest.main(sys.argv[1:]))' "$WORK/lib" -q -p no:cacheprovider "$@"
status=$?
set -e
if [ $status -eq 0 ] && [ -n "${MEMCHECK_UVLOOP_SUITE:-}" ]; then
    echo "== uvloop's suite on uringloop with the ASan build"
    # Its children run outside the working copy, so PYTHONPATH puts the ASan build first.
    PYTHONPATH="$WORK/lib" LD_PRELOAD="$LIBASAN" PYTHONMALLOC=malloc "$PYTHON" \
        "$ROOT/tests/conformance/run_uvloop_suite.py" --loop uringloop -v --logs "$WORK/uvloop-logs"
    status=$?
    if grep -l "ERROR: AddressSanitizer" "$WORK"/uvloop-logs/*.log; then
        status=134
    fi
fi
if [ $status -eq 0 ]; then
    echo "== memcheck: passed, no AddressSanitizer report (work directory: $WORK)"
elif [ $status -ge 128 ]; then
    echo "== memcheck: ABORTED (status $status): the AddressSanitizer report is above"
else
    echo "== memcheck: no AddressSanitizer report, but tests failed (pytest status $status)"
fi
exit $status
