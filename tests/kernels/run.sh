#!/usr/bin/env bash
# tests/kernels/run.sh: run the project's test suite on a real Debian kernel booted under qemu.
#
# Usage, from anywhere (needs root):
#   tests/kernels/run.sh 6.1                  # Debian 12's kernel (bookworm): the whole suite
#   tests/kernels/run.sh all                  # 6.1, then 6.12: the whole suite on each, counts at the end
#   tests/kernels/run.sh 6.12 -k ring         # Debian 13's kernel (trixie); the rest goes to pytest
#   tests/kernels/run.sh 5.10 --python -c 'import uringloop; print(uringloop.check_support())'
#                                             # Debian 11's kernel; --python runs the venv's python
#                                             # with these arguments instead of pytest
#
# Needs: root, apt-get (Debian 12 or newer host, after apt-get update; installs qemu-system-x86,
# busybox-static, cpio, xz-utils, zstd when missing), network access to a Debian mirror, and the
# project's venv already built on the host (.venv with uringloop's extension built in place).
# KVM is not used (TCG): on these machines the guest hung under KVM.
#
# What it does:
#   1. downloads the kernel's linux-image package (the one Debian's linux-image-amd64 depends on
#      in that release) through a temporary apt configuration kept in the cache directory, and
#      extracts it there (each step is skipped when already done);
#   2. builds an initramfs: busybox, the 9p/virtio modules from the same package, and an /init
#      that mounts the host's root filesystem read-only over virtio-9p, puts tmpfs on /tmp,
#      /var/tmp, /run and /dev/shm, and chroots into it at the project's path;
#   3. boots it under qemu-system-x86_64 -accel tcg,thread=multi (8 GiB, 2 vCPUs, one host
#      thread each) with a time bound and runs
#      `<venv python> -m pytest -q -p no:cacheprovider --tb=native -o timeout=<120 s x factor> [ARGS]` in the
#      project, with the same paths as on the host, so the host's venv and interpreter are used;
#   4. prints the guest's output, and exits with pytest's status (124 when the time ran out).
# The guest writes nothing to the host: the tree, the venv and the *.so stay as the host built them.
#
# Environment: URINGLOOP_KERNEL_CACHE (default /var/cache/uringloop-kernels),
# URINGLOOP_KERNEL_TIMEOUT (seconds, default 4800), URINGLOOP_KERNEL_MEM (default 8G),
# URINGLOOP_KERNEL_TIME_FACTOR (default 10: how much longer the guest takes than the host; the
# guest gets it as URINGLOOP_TEST_TIME_FACTOR, which tests/timebounds.py applies to the bounds
# of tests that wait on real work such as servers starting; no assertion changes with it),
# URINGLOOP_KERNEL_PYTHON (default <project>/.venv/bin/python), URINGLOOP_KERNEL_MIRROR
# (default deb.debian.org, or archive.debian.org for releases no longer on it).
# Remove everything: rm -rf "$URINGLOOP_KERNEL_CACHE".
set -euo pipefail

die() { echo "kernels: $*" >&2; exit 2; }
say() { echo "kernels: $*" >&2; }

[ $# -ge 1 ] || die "usage: run.sh VERSION|all [PYTEST ARGS...]   (VERSION: 5.10, 6.1, 6.12)"
VERSION=$1; shift

# `all`: the supported kernels one after another (one guest at a time: each takes both
# vCPUs), then one line of counts per kernel; the status is the first non-zero one.
if [ "$VERSION" = all ]; then
    status=0
    lines=()
    for v in 6.1 6.12; do
        out=$(mktemp)
        rc=0
        "$0" "$v" "$@" 2> >(tee "$out" >&2) || rc=$?
        sleep 1   # let tee finish writing
        lines+=("$(grep '^kernels: kernel ' "$out" | tail -n1 || echo "kernels: $v: no result (exit $rc)")")
        rm -f "$out"
        [ $status != 0 ] || status=$rc
    done
    printf '%s\n' "${lines[@]}"
    exit $status
fi
case "$VERSION" in
    5.10) SUITE=bullseye ;;
    6.1) SUITE=bookworm ;;
    6.12) SUITE=trixie ;;
    *) die "unknown kernel '$VERSION' (want 5.10, 6.1 or 6.12: Debian 11, 12, 13)" ;;
esac

if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "needs root (apt-get)"
    exec sudo --preserve-env=URINGLOOP_KERNEL_CACHE,URINGLOOP_KERNEL_TIMEOUT,URINGLOOP_KERNEL_MEM,URINGLOOP_KERNEL_TIME_FACTOR,URINGLOOP_KERNEL_PYTHON,URINGLOOP_KERNEL_MIRROR "$0" "$VERSION" "$@"
fi

PROJECT=$(cd "$(dirname "$0")/../.." && pwd -P)
PYTHON=${URINGLOOP_KERNEL_PYTHON:-$PROJECT/.venv/bin/python}
[ -x "$PYTHON" ] || die "no venv python at $PYTHON: build the project's venv on the host first"
CACHE=${URINGLOOP_KERNEL_CACHE:-/var/cache/uringloop-kernels}
TIME_LIMIT=${URINGLOOP_KERNEL_TIMEOUT:-4800}   # a whole suite took 39 min beside another guest
TIME_FACTOR=${URINGLOOP_KERNEL_TIME_FACTOR:-10}
# The 2 GiB write test peaks at 6.3 GB resident on asyncio's loop (its own write buffer holds a
# second copy) and 4.2 GB on uringloop (measured on the host): 6G was killed there, 8G fits.
MEM=${URINGLOOP_KERNEL_MEM:-8G}
T0=$(date +%s)

# 0. Host tools.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v depmod >/dev/null || [ -x /sbin/depmod ] || need+=(kmod)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2; }
fi
# The initramfs needs a statically linked busybox (busybox-static installs it as /bin/busybox).
file -L /bin/busybox 2>/dev/null | grep -q 'dynamically linked' && die "/bin/busybox is not static: install busybox-static"

# 1. The kernel package, through an apt configuration private to this suite.
KDIR=$CACHE/$SUITE
mkdir -p "$KDIR"
exec 9>"$KDIR/.lock"
flock 9
if [ ! -e "$KDIR/.extracted" ]; then
    APTDIR=$KDIR/apt
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/archives/partial" "$APTDIR/deb"
    mirrors=${URINGLOOP_KERNEL_MIRROR:-http://deb.debian.org/debian http://archive.debian.org/debian}
    apt_opts=()
    ok=0
    for mirror in $mirrors; do
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $SUITE main" \
            > "$APTDIR/sources.list"
        apt_opts=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                  -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache::Archives=$APTDIR/archives"
                  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Get::List-Cleanup=0"
 -o "APT::Sandbox::User=root"
                  -o "Acquire::Languages=none" -o "APT::Architecture=amd64" -o "APT::Architectures=amd64")
        say "apt-get update for $SUITE from $mirror"
        if apt-get "${apt_opts[@]}" update -q >&2 &&
                apt-cache "${apt_opts[@]}" show linux-image-amd64 >/dev/null 2>&1; then
            ok=1; break
        fi
    done
    [ $ok = 1 ] || die "no mirror offers $SUITE's linux-image-amd64"
    # linux-image-amd64 is a metapackage: the kernel is the linux-image-* package it depends on.
    pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 |
          awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    [ -n "$pkg" ] || die "cannot tell which kernel package $SUITE's linux-image-amd64 depends on"
    say "downloading $pkg"
    rm -f "$APTDIR"/deb/*.deb
    (cd "$APTDIR/deb" && apt-get "${apt_opts[@]}" download -q "$pkg" >&2)
    rm -rf "$KDIR/root"
    mkdir -p "$KDIR/root"
    dpkg-deb -x "$APTDIR"/deb/*.deb "$KDIR/root"
    rm -f "$APTDIR"/deb/*.deb   # the extracted tree is what is kept
    touch "$KDIR/.extracted"
fi
VMLINUZ=$(ls "$KDIR"/root/boot/vmlinuz-* | head -n1)
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR=$KDIR/root/lib/modules/$KVER
[ -d "$MODDIR" ] || MODDIR=$KDIR/root/usr/lib/modules/$KVER
[ -d "$MODDIR" ] || die "no modules for $KVER in the package"
# The package leaves modules.dep to its postinst: make it here, as depmod would on install.
if [ ! -e "$MODDIR/modules.dep" ]; then
    base=$KDIR/depmod-base
    rm -rf "$base"; mkdir -p "$base/lib/modules"
    ln -s "$MODDIR" "$base/lib/modules/$KVER"
    PATH=$PATH:/sbin:/usr/sbin depmod -b "$base" "$KVER"
    rm -rf "$base"
fi

# 2. The initramfs (rebuilt when this script changes).
INITRD=$KDIR/initrd-$KVER.gz
stamp=$(cat "$0" "$(dirname "$0")/guest-init.sh" | md5sum | cut -d' ' -f1)
if [ ! -e "$INITRD" ] || [ "$(cat "$KDIR/.initrd-stamp" 2>/dev/null)" != "$stamp" ]; then
    say "building the initramfs for $KVER"
    IR=$KDIR/initramfs
    rm -rf "$IR"
    mkdir -p "$IR"/{bin,dev,proc,sys,mnt/root,modules}
    cp /bin/busybox "$IR/bin/busybox"
    # The modules the 9p mount needs, with what they depend on, in load order (dependencies
    # first); modules built into this kernel are absent from modules.dep and are skipped.
    declare -A seen=()
    order=()
    add_module() {   # add_module NAME
        local rel deps d line
        line=$(grep -E "(^|/)$1\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" | head -n1) || return 0
        rel=${line%%:*}
        [ -n "${seen[$rel]:-}" ] && return 0
        seen[$rel]=1
        deps=${line#*:}
        for d in $deps; do
            d=${d##*/}; d=${d%%.ko*}
            add_module "$d"
        done
        order+=("$rel")
    }
    for m in virtio virtio_ring virtio_pci 9pnet 9pnet_virtio netfs fscache 9p virtio-rng virtio_rng; do
        add_module "$m"
    done
    : > "$IR/modules/order"
    for rel in "${order[@]}"; do
        name=${rel##*/}; name=${name%%.ko*}.ko
        case "$rel" in
            *.ko.xz) xz -dc "$MODDIR/$rel" > "$IR/modules/$name" ;;
            *.ko.zst) zstd -qdc "$MODDIR/$rel" > "$IR/modules/$name" ;;
            *.ko.gz) gzip -dc "$MODDIR/$rel" > "$IR/modules/$name" ;;
            *) cp "$MODDIR/$rel" "$IR/modules/$name" ;;
        esac
        echo "$name" >> "$IR/modules/order"
    done
    cp "$(dirname "$0")/guest-init.sh" "$IR/init"
    chmod +x "$IR/init"
    (cd "$IR" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    echo "$stamp" > "$KDIR/.initrd-stamp"
    rm -rf "$IR"
fi
flock -u 9; exec 9>&-

# 3. The command the guest runs, passed on the kernel command line as one shell-quoted word
#    list (base64, so that no quoting survives the trip through the boot loader).
if [ "${1:-}" = "--python" ]; then
    shift
    cmd=("$PYTHON" "$@")
else
    # TCG runs several times slower than the host: the per-test timeout (pytest-timeout, 120 s
    # in pyproject.toml) grows by the same factor as the tests' own bounds.
    # --tb=native: pytest's own traceback formatting (ast.parse of each frame's source) died
    # with "SystemError: AST constructor recursion depth mismatch" (CPython 3.11.7) in the
    # guest, ending the session two thirds in; the native format parses nothing.
    cmd=("$PYTHON" -m pytest -q -p no:cacheprovider --tb=native -rfE -o "timeout=$(awk -v f="$TIME_FACTOR" 'BEGIN { print 120 * f }')" "$@")
fi
cmdline=$(printf '%q ' "${cmd[@]}")
script="cd $(printf %q "$PROJECT") && export URINGLOOP_TEST_TIME_FACTOR=$(printf %q "$TIME_FACTOR") && exec $cmdline"
encoded=$(printf '%s' "$script" | base64 -w0)
[ ${#encoded} -lt 1500 ] || die "the command is too long for the kernel command line"

# A log of its own per run: several runs may share the cache (and the kernel) at once.
LOG=$(mktemp "$KDIR/run.XXXXXX.log")
say "booting $KVER under qemu (multi-threaded TCG, $MEM, 2 vCPUs, at most ${TIME_LIMIT}s); log: $LOG"
set +e
timeout --foreground -k 10 "$TIME_LIMIT" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -smp 2 -m "$MEM" -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$VMLINUZ" -initrd "$INITRD" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -device virtio-rng-pci \
    -append "console=ttyS0 panic=-1 edd=off quiet loglevel=3 random.trust_cpu=on uringloop.cmd=$encoded uringloop.nofile=$(ulimit -n)" \
    < /dev/null 2>&1 | sed -u 's/\r$//' | tee "$LOG"
qemu_status=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - T0 ))
mv -f "$LOG" "$KDIR/last-run.log"
LOG=$KDIR/last-run.log
if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
    # Progress marks (`.sFE` lines, default verbosity) or one outcome per test (`-v -v`).
    marks=$(grep -E '^[.sFEx]+ +\[ *[0-9]+%\]$' "$LOG" | tr -cd '.sFEx'
            sed -nE 's/^[^ ]+::.* (PASSED|FAILED|ERROR|SKIPPED|XFAIL)( .*)? +\[ *[0-9]+%\]$/\1/p' "$LOG" |
                sed 's/PASSED/./; s/FAILED/F/; s/ERROR/E/; s/SKIPPED/s/; s/XFAIL/x/' | tr -d '\n')
    say "kernel $KVER: timed out after ${TIME_LIMIT}s; last counts seen: $(echo "$marks" | awk '{ print gsub(/\./, "") " passed, " gsub(/F/, "") " failed, " gsub(/E/, "") " errors, " gsub(/s/, "") " skipped" }')"
    exit 124
fi
rc=$(sed -n 's/^uringloop-guest-exit=\([0-9]*\)$/\1/p' "$LOG" | tail -n1)
[ -n "$rc" ] || { say "the guest did not report an exit status (qemu exited with $qemu_status)"; exit 3; }
summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)|(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' "$LOG" | tail -n1)
say "kernel $KVER: ${summary:-no pytest summary}; exit status $rc; ${elapsed}s in all"
exit "$rc"
