#!/usr/bin/env bash
# Builds uringloop's sdist and a manylinux wheel from this checkout, then proves the wheel
# stands on its own: it installs into a fresh venv on a PATH with no C compiler and runs the
# demo from outside the source tree. One command, from the repository root:
#
#     tests/wheel/run.sh            # artifacts land in dist/ and wheelhouse/
#
# Needs Python 3.10+ with venv and a C compiler for the build itself; pip fetches `build`,
# `auditwheel` and `patchelf` into a private venv. Prints the wheel's name and the demo's
# last line; exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}

"$PY" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install --quiet build auditwheel patchelf

rm -rf dist wheelhouse
timeout 900 "$WORK/tools/bin/python" -m build --outdir dist . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; exit 1; }
# auditwheel finds patchelf on PATH; it tags the wheel with the oldest glibc its symbols need.
PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair --wheel-dir wheelhouse \
    dist/*.whl >"$WORK/repair.log" 2>&1 || { cat "$WORK/repair.log"; exit 1; }
WHEEL=$(ls wheelhouse/uringloop-*manylinux*.whl)
echo "wheel: $WHEEL"

# A fresh venv whose PATH has no compiler: pip must take the wheel as it is.
"$PY" -m venv "$WORK/user"
mkdir "$WORK/nocc"
ln -s "$WORK/user/bin/python" "$WORK/nocc/python"
ln -s "$(command -v env)" "$WORK/nocc/env"
ln -s "$(command -v timeout)" "$WORK/nocc/timeout"
env -i HOME="$WORK" PATH="$WORK/nocc" CC=/nonexistent \
    "$WORK/user/bin/pip" install --quiet --no-index --no-build-isolation "$ROOT/$WHEEL"
if env -i PATH="$WORK/nocc" sh -c 'command -v gcc cc' >/dev/null 2>&1; then
    echo "a compiler is still reachable" >&2; exit 1
fi
cp examples/demo.py "$WORK/demo.py"
cd "$WORK"
env -i HOME="$WORK" PATH="$WORK/nocc" "$WORK/user/bin/python" -c \
    'import uringloop, sys; assert "site-packages" in uringloop.__file__, uringloop.__file__'
env -i HOME="$WORK" PATH="$WORK/nocc" timeout 300 "$WORK/user/bin/python" demo.py | tail -3
