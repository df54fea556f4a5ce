# What the running kernel's io_uring offers, probed once per process: the loop picks its path
# from this (resize in place or migrate, multishot or re-armed receives), and check_support() and
# the tests can name what a kernel lacks. The trials live in kernel_features.c.

cdef extern from "kernel_features.h" nogil:
    int ulf_try_setup(unsigned flags, unsigned *features)
    int ulf_probe_opcodes(unsigned char *supported, unsigned n)
    int ulf_try_pbuf_ring(int *pbuf_status, int *recv_multishot)
    int ulf_try_accept_multishot()
    int ulf_try_resize()

cdef extern from "ring.h":
    enum:
        IORING_SETUP_SINGLE_ISSUER
        IORING_SETUP_DEFER_TASKRUN
        UL_FEAT_MIN_TIMEOUT

KernelFeatures = collections.namedtuple('KernelFeatures', (
    'release available error setup_errno setup_features opcodes '
    'single_issuer defer_taskrun no_sqarray ext_arg nodrop min_timeout '
    'pbuf_ring pbuf_status recv_multishot accept_multishot read_multishot resize_rings'))

# The UAPI's opcode numbers (enum io_uring_op), for readable reports.
_OPCODE_NAMES = (
    'NOP READV WRITEV FSYNC READ_FIXED WRITE_FIXED POLL_ADD POLL_REMOVE SYNC_FILE_RANGE SENDMSG '
    'RECVMSG TIMEOUT TIMEOUT_REMOVE ACCEPT ASYNC_CANCEL LINK_TIMEOUT CONNECT FALLOCATE OPENAT '
    'CLOSE FILES_UPDATE STATX READ WRITE FADVISE MADVISE SEND RECV OPENAT2 EPOLL_CTL SPLICE '
    'PROVIDE_BUFFERS REMOVE_BUFFERS TEE SHUTDOWN RENAMEAT UNLINKAT MKDIRAT SYMLINKAT LINKAT '
    'MSG_RING FSETXATTR SETXATTR FGETXATTR GETXATTR SOCKET URING_CMD SEND_ZC SENDMSG_ZC '
    'READ_MULTISHOT WAITID FUTEX_WAIT FUTEX_WAKE FUTEX_WAITV FIXED_FD_INSTALL FTRUNCATE BIND '
    'LISTEN RECV_ZC EPOLL_WAIT READV_FIXED WRITEV_FIXED').split()

cdef enum:
    _FEAT_NODROP = 1 << 1
    _FEAT_EXT_ARG = 1 << 8

_kernel_features = None


def _probe_kernel_features():
    import os
    cdef unsigned setup_features = 0
    cdef unsigned ignored = 0
    cdef unsigned char supported[256]
    cdef int pbuf_status = 0, recv_multishot = 0
    release = os.uname().release
    err = ulf_try_setup(0, &setup_features)
    if err < 0:
        return KernelFeatures(
            release, False, str(unavailable_error(-err, "io_uring_setup")), -err, 0, frozenset(),
            *([False] * 12))
    last_op = ulf_probe_opcodes(supported, 256)
    if last_op < 0:   # IORING_REGISTER_PROBE is 5.6: older kernels tell nothing opcode by opcode
        opcodes = frozenset()
    else:
        opcodes = frozenset(
            _OPCODE_NAMES[op] if op < len(_OPCODE_NAMES) else 'OP_%d' % op
            for op in range(256) if supported[op])
    pbuf_ring = ulf_try_pbuf_ring(&pbuf_status, &recv_multishot) == 1
    return KernelFeatures(
        release=release,
        available=True,
        error=None,
        setup_errno=0,
        setup_features=setup_features,
        opcodes=opcodes,
        single_issuer=ulf_try_setup(IORING_SETUP_SINGLE_ISSUER, &ignored) == 0,
        defer_taskrun=ulf_try_setup(
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, &ignored) == 0,
        no_sqarray=ulf_try_setup(IORING_SETUP_NO_SQARRAY, &ignored) == 0,
        ext_arg=bool(setup_features & _FEAT_EXT_ARG),
        nodrop=bool(setup_features & _FEAT_NODROP),
        min_timeout=bool(setup_features & UL_FEAT_MIN_TIMEOUT),
        pbuf_ring=pbuf_ring,
        pbuf_status=pbuf_ring and bool(pbuf_status),
        recv_multishot=pbuf_ring and bool(recv_multishot),
        accept_multishot=ulf_try_accept_multishot() == 1,
        read_multishot='READ_MULTISHOT' in opcodes,
        resize_rings=ulf_try_resize() == 0,
    )


def kernel_features():
    """Return what this kernel's io_uring offers, as a KernelFeatures named tuple.

    Each flag comes from the kernel itself (setup flags tried, opcodes probed, small real
    trials on throwaway rings), never from the version number. The answer is computed once
    per process. ``available`` is False (with the reason in ``error`` and the kernel's errno
    in ``setup_errno``) when io_uring cannot be used at all; then every feature is False.
    Never raises.
    """
    global _kernel_features
    if _kernel_features is None:
        _kernel_features = _probe_kernel_features()
    return _kernel_features


# What the loop cannot run without, with the mainline release that brought it (the probe, not
# the version, decides: distribution kernels backport). Resizing in place (6.13) is not here:
# without it the ring migrates.
REQUIRED_FEATURES = (
    ('ext_arg', '5.11', 'timed waits in io_uring_enter'),
    ('nodrop', '5.5', 'no completion lost when the CQ is full'),
    ('pbuf_ring', '5.19', 'provided-buffer rings for receives'),
    ('accept_multishot', '5.19', 'one accept request per listening socket'),
    ('single_issuer', '6.0', 'a ring owned by the loop thread'),
    ('recv_multishot', '6.0', 'one receive request per connection'),
    ('defer_taskrun', '6.1', 'completions run only when the loop asks for them'),
)
MINIMUM_KERNEL = '6.1'


def missing_kernel_features(features=None):
    """Return the names of the required io_uring features this kernel lacks ([] when none)."""
    if features is None:
        features = kernel_features()
    return [name for name, _, _ in REQUIRED_FEATURES if not getattr(features, name)]


def unsupported_kernel_error(features=None):
    """Return an IoUringUnavailable naming what this kernel lacks, or None if it has it all."""
    if features is None:
        features = kernel_features()
    if not features.available:
        return unavailable_error(features.setup_errno, "io_uring_setup")
    missing = missing_kernel_features(features)
    if not missing:
        return None
    needs = ['%s (%s, Linux %s)' % (name, why, release)
             for name, release, why in REQUIRED_FEATURES if name in missing]
    return IoUringUnavailable(
        'uringloop needs Linux %s or newer: this kernel (%s) lacks the io_uring features %s. '
        'Fix: run on Linux >= %s (Ubuntu 22.04: the HWE kernel, linux-generic-hwe-22.04).'
        % (MINIMUM_KERNEL, features.release, ', '.join(needs), MINIMUM_KERNEL),
        0, 'old-kernel')
