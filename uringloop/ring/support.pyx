# Where io_uring cannot run: turn the kernel's refusal into an error that names the cause and
# the fix. Nothing falls back silently to another mechanism.

from libc.errno cimport EPERM, EACCES, ENOSYS, ENOMEM, EINVAL, EOPNOTSUPP


class IoUringUnavailable(RuntimeError):
    """Raised by new_event_loop() when this machine cannot run a uringloop loop.

    ``errno`` is the kernel's error; ``cause`` is one of 'seccomp', 'disabled', 'memlock',
    'nosys', 'old-kernel', 'other'.
    """

    def __init__(self, message, errno, cause):
        super().__init__(message)
        self.errno = errno
        self.cause = cause


def _io_uring_disabled_sysctl():
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None


def unavailable_error(int err, str call):
    import os
    name = os.strerror(err)
    if err in (EPERM, EACCES):
        disabled = _io_uring_disabled_sysctl()
        if disabled:
            return IoUringUnavailable(
                "io_uring is disabled on this machine: sysctl kernel.io_uring_disabled=%d (%s). "
                "Fix: `sysctl -w kernel.io_uring_disabled=0` (or, with 1, add this user to "
                "kernel.io_uring_group)." % (disabled, name), err, "disabled")
        return IoUringUnavailable(
            "io_uring_setup was refused (%s) although kernel.io_uring_disabled=0: a seccomp "
            "filter blocks io_uring, as Docker >= 25, containerd and many sandboxes do by "
            "default. Fix: allow io_uring_setup/io_uring_enter/io_uring_register in the seccomp "
            "profile (`python -m uringloop.seccomp default.json > uringloop-seccomp.json`, then "
            "`docker run --security-opt seccomp=uringloop-seccomp.json ...`), or run outside "
            "the sandbox." % name, err, "seccomp")
    elif err == ENOSYS:
        return IoUringUnavailable(
            "this kernel has no io_uring (%s): uringloop needs Linux 6.1 or newer built with "
            "CONFIG_IO_URING, with the setup features SINGLE_ISSUER, DEFER_TASKRUN and EXT_ARG."
            % name, err, "nosys")
    elif err == ENOMEM:
        return IoUringUnavailable(
            "io_uring_setup failed for lack of memory (%s): most often the locked-memory limit "
            "(RLIMIT_MEMLOCK, `ulimit -l`) is too low for the ring. Fix: raise it (`ulimit -l "
            "unlimited`, LimitMEMLOCK= in systemd, --ulimit memlock=-1 in Docker)." % name,
            err, "memlock")
    elif err == EINVAL and call == "io_uring_setup":
        return IoUringUnavailable(
            "io_uring_setup rejected the ring's flags (%s): this kernel (%s) predates "
            "SINGLE_ISSUER/DEFER_TASKRUN (Linux 6.1). Fix: run on Linux >= 6.1."
            % (name, os.uname().release),
            err, "old-kernel")
    return IoUringUnavailable("%s failed: %s" % (call, name), err, "other")


def check_support():
    """Tell whether this machine can run a uringloop loop: Support(ok, reason).

    Creates and destroys a real ring, so the answer reflects seccomp filters, sysctls and
    resource limits in force for this process. Never raises.
    """
    cdef Ring ring = Ring()
    try:
        ring.open(1)
    except IoUringUnavailable as exc:
        return Support(False, str(exc))
    finally:
        ring.close()
    if ring.can_resize:
        return Support(True, "io_uring is available; the ring is resized in place "
                             "(IORING_REGISTER_RESIZE_RINGS)")
    return Support(True, "io_uring is available; this kernel cannot resize a ring in place "
                         "(before Linux 6.13), so the ring is resized by migration to a new one")
