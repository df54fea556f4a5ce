/*
 * Kernel feature probe: trials on throwaway rings (kernel_features.c). Each returns 0 or 1 for "no" or
 * "yes", or -errno when the trial could not run at all (no io_uring, a seccomp filter, ...).
 */
#ifndef URINGLOOP_FEATURES_H
#define URINGLOOP_FEATURES_H

/* io_uring_setup with these flags: 0 when accepted (with the ring's feature bits in
 * *features, if not NULL), else -errno (-EINVAL: a flag this kernel does not know). */
int ulf_try_setup(unsigned flags, unsigned *features);
/* IORING_REGISTER_PROBE: supported[op] = 1 for each opcode the kernel supports (n >= 256).
 * Returns the kernel's last opcode, or -errno. */
int ulf_probe_opcodes(unsigned char *supported, unsigned n);
/* 1 when a provided-buffer ring registers (IORING_REGISTER_PBUF_RING), with *pbuf_status
 * (IORING_REGISTER_PBUF_STATUS) and *recv_multishot (IORING_RECV_MULTISHOT) found by trial. */
int ulf_try_pbuf_ring(int *pbuf_status, int *recv_multishot);
/* 1 when an ACCEPT with IORING_ACCEPT_MULTISHOT stays armed after its first connection. */
int ulf_try_accept_multishot(void);
/* 0 when IORING_REGISTER_RESIZE_RINGS resizes a DEFER_TASKRUN ring, else -errno. */
int ulf_try_resize(void);

#endif
