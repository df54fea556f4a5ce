/*
 * uringloop's ring layer: raw io_uring syscalls, the shared-memory rings and their resize.
 *
 * Why not liburing: no release before 2.9 can resize a ring, Debian 12 ships 2.3 (which also
 * corrupts the ring header under IORING_SETUP_NO_SQARRAY), and the project must build with a C
 * compiler and the Python headers alone. The layer is small on purpose: everything above it
 * (operation records, the loop) is Cython.
 */
#ifndef URINGLOOP_RING_H
#define URINGLOOP_RING_H

#include <stddef.h>
#include <stdint.h>
#include <linux/io_uring.h>

/* The system UAPI header may be older than the kernel (Debian 12 ships 6.1's): define what
 * appeared since, guarded so a newer header wins. */
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16)
#endif
#ifndef IORING_SQ_TASKRUN
#define IORING_SQ_TASKRUN (1U << 2)
#endif
#ifndef IORING_ENTER_EXT_ARG
#define IORING_ENTER_EXT_ARG (1U << 3)
#endif
#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif
#ifndef IORING_ACCEPT_MULTISHOT
#define IORING_ACCEPT_MULTISHOT (1U << 0)
#endif
#ifndef IORING_RECV_MULTISHOT
#define IORING_RECV_MULTISHOT (1U << 1)
#endif
#ifndef IORING_POLL_ADD_MULTI
#define IORING_POLL_ADD_MULTI (1U << 0)
#endif
#define UL_REGISTER_ENABLE_RINGS 12
#define UL_REGISTER_PBUF_RING 22
#define UL_UNREGISTER_PBUF_RING 23
#define UL_REGISTER_PBUF_STATUS 26
#define UL_REGISTER_RESIZE_RINGS 33
#define UL_OP_WAITID 50
#define UL_OFF_PBUF_RING 0x80000000ULL
/* The kernel's largest rings (IORING_MAX_ENTRIES, IORING_MAX_CQ_ENTRIES): setup and resize
 * refuse anything bigger, so past UL_SQ_MAX pending operations the SQ stops following them. */
#define UL_SQ_MAX 32768u
#define UL_CQ_MAX 65536u

/* One completion copied out of the CQ, so the CQ can be resized while it is being handled. */
typedef struct ul_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
} ul_cqe;

typedef struct ul_ring {
    int fd;
    unsigned setup_flags;
    unsigned features;

    void *ring_map;        /* SQ and CQ rings share one mapping (IORING_FEAT_SINGLE_MMAP) */
    size_t ring_map_size;
    struct io_uring_sqe *sqes;
    size_t sqes_map_size;

    unsigned *sq_khead;
    unsigned *sq_ktail;
    unsigned *sq_kflags;
    unsigned *sq_array;    /* NULL under IORING_SETUP_NO_SQARRAY */
    unsigned sq_entries;
    unsigned sq_mask;
    unsigned sq_tail;      /* ours: SQEs handed out; published to *sq_ktail on submit */
    unsigned sq_published; /* the tail value the kernel has been shown */

    unsigned *cq_khead;
    unsigned *cq_ktail;
    struct io_uring_cqe *cqes;
    unsigned cq_entries;
    unsigned cq_mask;

    struct io_sqring_offsets sq_off;
    struct io_cqring_offsets cq_off;

    uint64_t enters;
} ul_ring;

/* All return 0 (or a count) on success and -errno on failure. */
int ul_ring_init(ul_ring *ring, unsigned entries);
/* With use_sq_array, keep the SQ index array (the layout of kernels before 6.6); tests use it
 * to exercise the resize path that must rebuild that array. */
int ul_ring_init_sqarray(ul_ring *ring, unsigned entries, int use_sq_array);
void ul_ring_exit(ul_ring *ring);
/* On failure the ring keeps its old size, except when the kernel resized it and mapping the
 * new rings failed: then ring_map is NULL and the ring can only be closed. */
int ul_ring_resize(ul_ring *ring, unsigned sq_entries);
/* Replace a ring that has never been enabled (IORING_SETUP_R_DISABLED, so the kernel has seen
 * none of its SQEs) by a new one with sq_entries entries holding the same queued SQEs, in
 * order. How a ring grows before its loop first runs where the kernel cannot resize. */
int ul_ring_regrow_disabled(ul_ring *ring, unsigned sq_entries);
/* Testing aid: make the next n mappings of a resized ring fail with ENOMEM. */
void ul_ring_fail_next_maps(unsigned n);
int ul_ring_probe_resize(ul_ring *ring);
/* 1 if the kernel supports opcode op (IORING_REGISTER_PROBE), 0 if not, or -errno. */
int ul_ring_probe_opcode(ul_ring *ring, unsigned op);
int ul_ring_enable(ul_ring *ring);

/* NULL when all sq_entries slots hold SQEs the kernel has not consumed yet. */
struct io_uring_sqe *ul_get_sqe(ul_ring *ring);
/* The user_data of an SQE the ring layer makes for itself: no operation record has it. */
#define UL_IGNORED_USER_DATA (~(uint64_t)0)
/* Rings resized by the kernel come with IORING_SQ_TASKRUN set, and an enter clears it only when
 * it runs deferred work: until then ul_has_work() is true and a busy loop that never waits
 * makes one needless enter per iteration. This queues a 1 ns TIMEOUT (user_data
 * UL_IGNORED_USER_DATA), which completes through deferred work when it is submitted and so
 * clears the flag. Returns 1 if it queued one, 0 if the flag was clear or the SQ full. */
int ul_queue_taskrun_reset(ul_ring *ring);
unsigned ul_sq_queued(const ul_ring *ring);
unsigned ul_kernel_sq_entries(const ul_ring *ring);

/* Publish queued SQEs and, in the same io_uring_enter, wait for wait_nr completions for at
 * most timeout_ns (< 0: no limit). Returns the number of SQEs consumed, or -errno; -ETIME and
 * -EINTR are reported as such. */
int ul_submit_and_wait(ul_ring *ring, unsigned wait_nr, long long timeout_ns);
/* Wait for wait_nr completions for at most min_wait_us, then for any one (until timeout_ns,
 * -1 for none). The bounded batch needs IORING_FEAT_MIN_TIMEOUT (6.12); without it the call
 * waits for one completion, since an unbounded wait for several could wait forever. */
int ul_submit_and_wait_batch(ul_ring *ring, unsigned wait_nr, long long timeout_ns,
                             unsigned min_wait_us);
/* Submit only the SQE queued last, ahead of the others queued (they keep their order and
 * wait for the next submission), and wait up to timeout_ns for a completion. -EINVAL if
 * nothing is queued. */
int ul_submit_last_alone(ul_ring *ring, long long timeout_ns);
/* Submit at most to_submit queued SQEs (0: none) and wait up to timeout_ns (< 0: no limit)
 * for one completion. */
int ul_wait_cqe(ul_ring *ring, unsigned to_submit, long long timeout_ns);
#define UL_FEAT_MIN_TIMEOUT (1U << 15)   /* IORING_FEAT_MIN_TIMEOUT, absent from older headers */
/* Copy up to max ready CQEs into out and release their slots. */
unsigned ul_reap(ul_ring *ring, ul_cqe *out, unsigned max);
unsigned ul_cq_ready(const ul_ring *ring);
/* True when completions or deferred task work wait for an io_uring_enter(GETEVENTS). */
int ul_has_work(const ul_ring *ring);
/* True while completions wait in the kernel because the CQ had no room for them. */
int ul_cq_overflowed(const ul_ring *ring);

/* Provided-buffer ring (IORING_REGISTER_PBUF_RING with IOU_PBUF_RING_MMAP unused: we own the
 * memory). entries must be a power of two. */
typedef struct ul_pbuf_ring {
    struct io_uring_buf_ring *br;
    size_t map_size;
    unsigned entries;
    unsigned mask;
    unsigned short bgid;
    unsigned short tail;   /* ours; published with a release store */
} ul_pbuf_ring;

int ul_pbuf_ring_register(ul_ring *ring, ul_pbuf_ring *pbr, unsigned entries, unsigned short bgid);
int ul_pbuf_ring_unregister(ul_ring *ring, ul_pbuf_ring *pbr);
void ul_pbuf_ring_add(ul_pbuf_ring *pbr, void *addr, unsigned len, unsigned short bid, int offset);
void ul_pbuf_ring_advance(ul_pbuf_ring *pbr, int count);
/* Offer the buffers bids[0..n) (each base + bid * size, size bytes long) again: behind those
 * already offered, or in front of them, bids[n-1] first. push_front rewrites entries the
 * kernel has not consumed, so `head` must be its exact head and nothing may select from the
 * ring meanwhile (see bufring.pyx for when that holds). */
void ul_pbuf_ring_push_back(ul_pbuf_ring *pbr, const unsigned short *bids, unsigned n,
                            char *base, unsigned size);
void ul_pbuf_ring_push_front(ul_pbuf_ring *pbr, unsigned short head, const unsigned short *bids,
                             unsigned n, char *base, unsigned size);
unsigned short ul_pbuf_ring_bid_at(const ul_pbuf_ring *pbr, unsigned short pos);
/* The kernel's head of the ring (IORING_REGISTER_PBUF_STATUS, 6.8+), or -errno. */
int ul_pbuf_ring_head(ul_ring *ring, ul_pbuf_ring *pbr);

/* SQE preparation: every field the op uses is set; the SQE was zeroed by ul_get_sqe. */
static inline void ul_prep_rw(struct io_uring_sqe *sqe, int op, int fd, const void *addr,
                              unsigned len, uint64_t off, uint64_t user_data)
{
    sqe->opcode = (uint8_t)op;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->off = off;
    sqe->user_data = user_data;
}

#endif
