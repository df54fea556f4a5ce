#!/bin/busybox sh
# /init of the initramfs that tests/kernels/run.sh boots: mount the host's root filesystem
# (read-only, virtio-9p) with tmpfs wherever the tests write, run the command that run.sh put on
# the kernel command line inside it, report its exit status on the console and power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in $(cat /modules/order); do
    insmod "/modules/$m" || echo "guest: insmod $m failed"
done

R=/mnt/root
# cache=loose: the host tree does not change under a run, and 9p round trips are slow under TCG.
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot "$R"; then
    echo "guest: cannot mount the host's root over 9p"
    echo "uringloop-guest-exit=3"
    poweroff -f
fi
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t devtmpfs devtmpfs "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -sf pts/ptmx "$R/dev/ptmx" 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
for d in /tmp /var/tmp /run; do
    mount -t tmpfs -o mode=1777 tmpfs "$R$d"
done
ip link set lo up

# uringloop.cmd=<base64 of a shell command line>; uringloop.nofile=<the host's open-file limit>
# (the kernel starts init with 1024, too few for the tests that open a thousand connections)
cmd=
for word in $(cat /proc/cmdline); do
    case "$word" in
        uringloop.cmd=*) cmd=$(echo "${word#uringloop.cmd=}" | base64 -d) ;;
        uringloop.nofile=*) ulimit -n "${word#uringloop.nofile=}" ;;
    esac
done
echo "guest: kernel $(uname -r), running: $cmd"
mkdir -p "$R/tmp/home"
chroot "$R" /usr/bin/env -i HOME=/tmp/home TMPDIR=/tmp LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 \
    /bin/sh -c "$cmd" < /dev/console
echo "uringloop-guest-exit=$?"
poweroff -f
