#!/usr/bin/env bash
# Runs a command in this project under Debian's own pythonVERSION (3.14, 3.15: newer than the
# Pythons Debian stable ships), in a Debian chroot made here from nothing but the Debian mirror
# this machine's apt already uses and PyPI:
#
#   tests/pythons/chroot.sh 3.14 python -m pytest -q     # from anywhere; runs in the project root
#   tests/pythons/chroot.sh 3.15                         # an interactive shell there
#
# What it sets up, each step once (later runs reuse it):
#   1. a minimal Debian $PYTHONS_SUITE (default forky, the testing release) bootstrapped into
#      $PYTHONS_ROOT/<suite> (default /var/lib/uringloop-pythons);
#   2. pythonVERSION with its -dev and -venv packages, gcc, and the PostgreSQL and Redis servers
#      that tests/apps starts;
#   3. a venv for this project and version inside the chroot, into which every run installs the
#      project editable with its test extras (the tree's .pyx sources are the ones built; the
#      extension lands in the tree as _core.cpython-3XY-*.so, beside the host's).
# The command runs in a private mount namespace (the chroot's /proc, /sys, /dev and the project,
# bind-mounted at the same path), so nothing stays mounted when it ends. Needs root.
# Remove everything with: rm -rf "$PYTHONS_ROOT".
set -euo pipefail

say() { echo "pythons: $*" >&2; }
die() { say "$*"; exit 2; }

[ $# -ge 1 ] || die "usage: tests/pythons/chroot.sh VERSION [COMMAND...]"
VERSION=$1; shift
[[ $VERSION =~ ^3\.[0-9]+$ ]] || die "VERSION is like 3.14, not '$VERSION'"
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"

PROJECT=$(cd "$(dirname "$0")/../.." && pwd -P)
BASE=${PYTHONS_ROOT:-/var/lib/uringloop-pythons}
SUITE=${PYTHONS_SUITE:-forky}
CHROOT=$BASE/$SUITE
case "$PROJECT/" in "$BASE"/*) die "the project must not lie inside $BASE" ;; esac
mkdir -p "$BASE"

# The mirror of this machine's own release in its apt sources (one-line or deb822 format);
# security and third-party repositories name other suites and are passed over.
host_mirror() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v cn="$codename" '$1 == "deb" { sub(/ \[[^]]*\]/, ""); if ($3 == cn) print $2 }'
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # One stanza per paragraph: print its first URI when it is a deb entry for our release.
        awk -v cn="$codename" -v RS= '
            /(^|\n)Enabled: *[Nn]o/ { next }
            {
                deb = 0; uri = ""; ours = 0
                n = split($0, lines, "\n")
                for (i = 1; i <= n; i++) {
                    split(lines[i], w, /[ \t]+/)
                    if (w[1] == "Types:" && (" " lines[i] " ") ~ / deb /) deb = 1
                    if (w[1] == "URIs:") uri = w[2]
                    if (w[1] == "Suites:" && (" " lines[i] " ") ~ (" " cn " ")) ours = 1
                }
                if (deb && ours && uri != "") print uri
            }' "$f"
    done
}

# Runs a shell snippet in the chroot, in a private mount namespace, with a clean environment
# (the variables below pass through: CI's, pytest's, pip's, the proxies, the test switches).
in_chroot() {   # in_chroot WITH_PROJECT SNIPPET [ARGS...]
    local with_project=$1 snippet=$2; shift 2
    local -a env=(HOME=/root LANG=C.UTF-8 "TERM=${TERM:-dumb}" DEBIAN_FRONTEND=noninteractive
                  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
                  PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
    local name
    for name in $(compgen -e); do
        case $name in
            CI|COLUMNS|PYTEST_ADDOPTS|PYTHONWARNINGS|PYTHONFAULTHANDLER|PYTHONUNBUFFERED|\
            PYTHON_GIL|PIP_DEFAULT_TIMEOUT|PIP_DISABLE_PIP_VERSION_CHECK|PIP_INDEX_URL|\
            [Hh][Tt][Tt][Pp]_[Pp][Rr][Oo][Xx][Yy]|[Hh][Tt][Tt][Pp][Ss]_[Pp][Rr][Oo][Xx][Yy]|\
            [Nn][Oo]_[Pp][Rr][Oo][Xx][Yy]|URINGLOOP_*) env+=("$name=${!name}") ;;
        esac
    done
    local project=
    [ "$with_project" = 1 ] && project=$PROJECT
    unshare --mount --propagation private /bin/sh -eu -c '
        root=$1 project=$2; shift 2
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        if [ -n "$project" ]; then
            mkdir -p "$root$project" && mount --bind "$project" "$root$project"
        fi
        exec chroot "$root" "$@"' _ "$CHROOT" "$project" \
        /usr/bin/env -i "${env[@]}" /bin/bash -euo pipefail -c "$snippet" _ "$@"
}

exec 9>"$BASE/.lock"
flock 9   # one setup (and one editable build in the shared tree) at a time

# 1. The chroot.
if [ ! -e "$CHROOT/.bootstrapped" ]; then
    start=$(date +%s)
    command -v debootstrap >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
    mirror=${PYTHONS_MIRROR:-$(host_mirror | head -n 1)}
    [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources*; set PYTHONS_MIRROR"
    say "bootstrapping Debian $SUITE from $mirror into $CHROOT"
    # A debootstrap older than the suite has no script by its name; sid's fits every new suite.
    script=/usr/share/debootstrap/scripts/$SUITE
    [ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
    rm -rf "$CHROOT.partial"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$CHROOT.partial" \
        "$mirror" "$script" > "$BASE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $BASE/debootstrap.log"
    echo "deb $mirror $SUITE main" > "$CHROOT.partial/etc/apt/sources.list"
    # No documentation, manuals or translations: a smaller chroot, faster installs.
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-exclude /usr/share/man/*' \
        'path-exclude /usr/share/locale/*' > "$CHROOT.partial/etc/dpkg/dpkg.cfg.d/01-nodoc"
    # Packages must not start their services (PostgreSQL, Redis) in the chroot: the tests
    # start their own.
    printf '#!/bin/sh\nexit 101\n' > "$CHROOT.partial/usr/sbin/policy-rc.d"
    chmod +x "$CHROOT.partial/usr/sbin/policy-rc.d"
    touch "$CHROOT.partial/.bootstrapped"
    mv "$CHROOT.partial" "$CHROOT"
    say "bootstrapped in $(( $(date +%s) - start ))s"
fi

# What lets apt and pip inside reach what the host reaches: name resolution, the host's apt
# proxy and date-check settings (a frozen mirror), and its local certificate authorities.
cp -L /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
apt-config dump Acquire | grep -E '^Acquire::(Check-Valid-Until|Check-Date|[A-Za-z]+::Proxy)' \
    > "$CHROOT/etc/apt/apt.conf.d/00host-acquire" || true
cas=$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | md5sum | cut -d' ' -f1)
if [ "$(cat "$CHROOT/.host-cas" 2>/dev/null)" != "$cas" ]; then
    mkdir -p "$CHROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$CHROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
    in_chroot 0 'update-ca-certificates >/dev/null 2>&1'
    echo "$cas" > "$CHROOT/.host-cas"
fi

# 2. The interpreter and the servers the application tests start.
if [ ! -e "$CHROOT/.packages-$VERSION" ]; then
    start=$(date +%s)
    say "installing python$VERSION, gcc, postgresql and redis-server in the chroot"
    in_chroot 0 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null &&
                 apt-get clean' \
        "python$VERSION" "python$VERSION-dev" "python$VERSION-venv" gcc libc6-dev \
        postgresql redis-server
    touch "$CHROOT/.packages-$VERSION"
    say "installed in $(( $(date +%s) - start ))s"
fi

# 3. The project's venv, and the project built from the tree's sources.
VENV=/opt/venvs/$(basename "$PROJECT")-$(echo -n "$PROJECT" | md5sum | cut -c1-8)/$VERSION
if [ ! -e "$CHROOT$VENV/pyvenv.cfg" ]; then
    in_chroot 0 'python$1 -m venv "$2" && "$2/bin/python" -m pip install -q --upgrade pip' \
        "$VERSION" "$VENV"
fi
start=$(date +%s)
in_chroot 1 'cd "$1" && "$2/bin/python" -m pip install -q -e ".[test]"' "$PROJECT" "$VENV" ||
    die "Python $VERSION: installing the project failed"
say "Python $VERSION: project installed in $(( $(date +%s) - start ))s"
flock -u 9; exec 9>&-

# 4. The command.
[ $# -gt 0 ] || set -- bash -i
in_chroot 1 'cd "$1" && export VIRTUAL_ENV=$2 PATH="$2/bin:$PATH" && shift 2 && exec "$@"' \
    "$PROJECT" "$VENV" "$@"
