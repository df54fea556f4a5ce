/*
 * The ring layer (see ring.h for why it exists).
 *
 * Memory ordering: the kernel reads the SQ tail and writes the SQ head; it writes the CQ tail
 * and reads the CQ head. Every index the kernel writes is loaded with acquire semantics, every
 * index we publish is stored with release semantics, so SQE contents are visible before the
 * tail that exposes them, and CQE contents are read only after the tail that exposed them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

#define UL_CACHELINE 64u
#define UL_ALIGN(x, a) (((x) + (a) - 1) & ~((size_t)(a) - 1))

static inline unsigned load_acquire(const unsigned *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void store_release(unsigned *p, unsigned v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    long r = syscall(__NR_io_uring_setup, entries, p);
    return r < 0 ? -errno : (int)r;
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags,
                     void *arg, size_t argsz)
{
    long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
    return r < 0 ? -errno : (int)r;
}

static int sys_register(int fd, unsigned opcode, void *arg, unsigned nr_args)
{
    long r = syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
    return r < 0 ? -errno : (int)r;
}

/* The size of the rings region as the kernel lays it out: the CQ ring header and its CQEs,
 * then (without NO_SQARRAY) the SQ index array on the next cache line. */
static size_t rings_size(unsigned setup_flags, const struct io_cqring_offsets *cq_off,
                         unsigned sq_entries, unsigned cq_entries, size_t *sq_array_off)
{
    size_t off = cq_off->cqes + (size_t)cq_entries * sizeof(struct io_uring_cqe);
    if (setup_flags & IORING_SETUP_NO_SQARRAY) {
        *sq_array_off = 0;
        return off;
    }
    off = UL_ALIGN(off, UL_CACHELINE);
    *sq_array_off = off;
    return off + (size_t)sq_entries * sizeof(unsigned);
}

static void unmap_rings(ul_ring *ring)
{
    if (ring->ring_map) {
        munmap(ring->ring_map, ring->ring_map_size);
        ring->ring_map = NULL;
    }
    if (ring->sqes) {
        munmap(ring->sqes, ring->sqes_map_size);
        ring->sqes = NULL;
    }
}

static unsigned failing_maps;

void ul_ring_fail_next_maps(unsigned n)
{
    failing_maps = n;
}

/* Map both regions for the geometry in p and point every field at them. sq_array_off is
 * passed in because a resize on Linux 6.18 does not report sq_off.array. */
static int map_rings(ul_ring *ring, const struct io_uring_params *p)
{
    size_t sq_array_off;
    size_t size = rings_size(ring->setup_flags, &p->cq_off, p->sq_entries, p->cq_entries,
                             &sq_array_off);
    if (failing_maps) {
        failing_maps--;
        return -ENOMEM;
    }
    void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring->fd,
                     IORING_OFF_SQ_RING);
    if (map == MAP_FAILED)
        return -errno;
    size_t sqes_size = (size_t)p->sq_entries * sizeof(struct io_uring_sqe);
    void *sqes = mmap(NULL, sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      ring->fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) {
        int err = -errno;
        munmap(map, size);
        return err;
    }
    char *base = map;
    ring->ring_map = map;
    ring->ring_map_size = size;
    ring->sqes = sqes;
    ring->sqes_map_size = sqes_size;
    ring->sq_off = p->sq_off;
    ring->cq_off = p->cq_off;
    ring->sq_khead = (unsigned *)(base + p->sq_off.head);
    ring->sq_ktail = (unsigned *)(base + p->sq_off.tail);
    ring->sq_kflags = (unsigned *)(base + p->sq_off.flags);
    ring->sq_entries = p->sq_entries;
    ring->sq_mask = p->sq_entries - 1;
    ring->cq_khead = (unsigned *)(base + p->cq_off.head);
    ring->cq_ktail = (unsigned *)(base + p->cq_off.tail);
    ring->cqes = (struct io_uring_cqe *)(base + p->cq_off.cqes);
    ring->cq_entries = p->cq_entries;
    ring->cq_mask = p->cq_entries - 1;
    if (ring->setup_flags & IORING_SETUP_NO_SQARRAY) {
        ring->sq_array = NULL;
    } else {
        /* The index array is the identity: SQE i is always submitted from slot i. A resized
         * ring starts with a zeroed array, which would submit every entry as SQE 0. */
        ring->sq_array = (unsigned *)(base + sq_array_off);
        for (unsigned i = 0; i < p->sq_entries; i++)
            ring->sq_array[i] = i;
    }
    return 0;
}

static int setup_with(ul_ring *ring, unsigned entries, unsigned flags)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = flags;
    p.cq_entries = entries * 2;
    int fd = sys_setup(entries, &p);
    if (fd < 0)
        return fd;
    ring->fd = fd;
    ring->setup_flags = flags;
    ring->features = p.features;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_EXT_ARG) ||
        !(p.features & IORING_FEAT_NODROP)) {
        close(fd);
        ring->fd = -1;
        return -ENOSYS;
    }
    int err = map_rings(ring, &p);
    if (err) {
        close(fd);
        ring->fd = -1;
        return err;
    }
    ring->sq_tail = ring->sq_published = load_acquire(ring->sq_ktail);
    return 0;
}

int ul_ring_init_sqarray(ul_ring *ring, unsigned entries, int use_sq_array)
{
    memset(ring, 0, sizeof(*ring));
    ring->fd = -1;
    unsigned base = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                    IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_TASKRUN_FLAG;
    /* Disabled until the thread that runs the loop enables it: under SINGLE_ISSUER that
     * thread becomes the only one allowed to submit, and loops are often created in one
     * thread and run in another. */
    base |= IORING_SETUP_R_DISABLED;
    int err = -EINVAL;
    if (!use_sq_array)
        err = setup_with(ring, entries, base | IORING_SETUP_NO_SQARRAY);
    if (err == -EINVAL) /* kernels before 6.6 have no NO_SQARRAY; the resize probe decides */
        err = setup_with(ring, entries, base);
    return err;
}

int ul_ring_init(ul_ring *ring, unsigned entries)
{
    return ul_ring_init_sqarray(ring, entries, 0);
}

void ul_ring_exit(ul_ring *ring)
{
    unmap_rings(ring);
    if (ring->fd >= 0) {
        close(ring->fd);
        ring->fd = -1;
    }
}

int ul_ring_resize(ul_ring *ring, unsigned sq_entries)
{
    /* Only entries between the kernel's head and the published tail are carried over. */
    if (ring->sq_published != ring->sq_tail) {
        store_release(ring->sq_ktail, ring->sq_tail);
        ring->sq_published = ring->sq_tail;
    }
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.sq_entries = sq_entries;
    p.cq_entries = sq_entries * 2 < UL_CQ_MAX ? sq_entries * 2 : UL_CQ_MAX;
    p.flags = IORING_SETUP_CQSIZE;
    int err = sys_register(ring->fd, UL_REGISTER_RESIZE_RINGS, &p, 1);
    if (err < 0)
        return err;
    /* The old mapping is dead from here on: the kernel never updates it again. */
    void *old_map = ring->ring_map;
    size_t old_map_size = ring->ring_map_size;
    void *old_sqes = ring->sqes;
    size_t old_sqes_size = ring->sqes_map_size;
    ring->ring_map = NULL;
    ring->sqes = NULL;
    err = map_rings(ring, &p);
    munmap(old_map, old_map_size);
    munmap(old_sqes, old_sqes_size);
    return err;
}

int ul_ring_regrow_disabled(ul_ring *ring, unsigned sq_entries)
{
    ul_ring fresh;
    unsigned queued = ring->sq_tail - load_acquire(ring->sq_khead);
    if (sq_entries < queued)
        return -EINVAL;
    int err = ul_ring_init_sqarray(&fresh, sq_entries, ring->sq_array != NULL);
    if (err < 0)
        return err;
    unsigned head = load_acquire(ring->sq_khead);
    for (unsigned i = 0; i < queued; i++) {
        struct io_uring_sqe *sqe = ul_get_sqe(&fresh);
        memcpy(sqe, &ring->sqes[(head + i) & ring->sq_mask], sizeof(*sqe));
    }
    fresh.enters = ring->enters;
    ul_ring_exit(ring);
    *ring = fresh;
    return 0;
}

int ul_queue_taskrun_reset(ul_ring *ring)
{
    static const struct __kernel_timespec one_ns = {0, 1};
    if (!(load_acquire(ring->sq_kflags) & IORING_SQ_TASKRUN))
        return 0;
    struct io_uring_sqe *sqe = ul_get_sqe(ring);
    if (!sqe)
        return 0;
    ul_prep_rw(sqe, IORING_OP_TIMEOUT, -1, &one_ns, 1, 0, UL_IGNORED_USER_DATA);
    return 1;
}

int ul_ring_enable(ul_ring *ring)
{
    return sys_register(ring->fd, UL_REGISTER_ENABLE_RINGS, NULL, 0);
}

int ul_ring_probe_resize(ul_ring *ring)
{
    return ul_ring_resize(ring, ring->sq_entries);
}

int ul_ring_probe_opcode(ul_ring *ring, unsigned op)
{
    enum { NOPS = 256 };
    size_t len = sizeof(struct io_uring_probe) + NOPS * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = calloc(1, len);
    if (!probe)
        return -ENOMEM;
    int err = sys_register(ring->fd, IORING_REGISTER_PROBE, probe, NOPS);
    int supported = 0;
    if (err < 0)
        supported = err;
    else if (op <= probe->last_op && op < probe->ops_len)
        supported = (probe->ops[op].flags & IO_URING_OP_SUPPORTED) != 0;
    free(probe);
    return supported;
}

unsigned ul_kernel_sq_entries(const ul_ring *ring)
{
    return load_acquire((const unsigned *)((const char *)ring->ring_map + ring->sq_off.ring_entries));
}

unsigned ul_sq_queued(const ul_ring *ring)
{
    return ring->sq_tail - load_acquire(ring->sq_khead);
}

struct io_uring_sqe *ul_get_sqe(ul_ring *ring)
{
    unsigned tail = ring->sq_tail;
    if (tail - load_acquire(ring->sq_khead) >= ring->sq_entries)
        return NULL;
    struct io_uring_sqe *sqe = &ring->sqes[tail & ring->sq_mask];
    memset(sqe, 0, sizeof(*sqe));
    ring->sq_tail = tail + 1;
    return sqe;
}

/* struct io_uring_getevents_arg as of 6.12, where `pad` became min_wait_usec: declared here
 * so the build does not depend on how new the system's uapi header is. */
struct ul_getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t min_wait_usec;
    uint64_t ts;
};

int ul_submit_and_wait(ul_ring *ring, unsigned wait_nr, long long timeout_ns)
{
    return ul_submit_and_wait_batch(ring, wait_nr, timeout_ns, 0);
}

/* Publish the SQ tail and enter: submit to_submit SQEs (the kernel takes them from its head in
 * order, so the ones behind stay queued) and wait for wait_nr completions, for at most
 * timeout_ns (< 0: no bound) and, with min_wait_us, in a batch bounded by that wait. */
static int enter_published(ul_ring *ring, unsigned to_submit, unsigned wait_nr,
                           long long timeout_ns, unsigned min_wait_us)
{
    if (ring->sq_published != ring->sq_tail) {
        store_release(ring->sq_ktail, ring->sq_tail);
        ring->sq_published = ring->sq_tail;
    }
    unsigned flags = IORING_ENTER_GETEVENTS;
    void *arg = NULL;
    size_t argsz = _NSIG / 8;
    struct __kernel_timespec ts;
    struct ul_getevents_arg ext;
    if (wait_nr && (timeout_ns >= 0 || min_wait_us)) {
        memset(&ext, 0, sizeof(ext));
        if (timeout_ns >= 0) {
            ts.tv_sec = timeout_ns / 1000000000LL;
            ts.tv_nsec = timeout_ns % 1000000000LL;
            ext.ts = (uint64_t)(uintptr_t)&ts;
        }
        ext.min_wait_usec = min_wait_us;
        arg = &ext;
        argsz = sizeof(ext);
        flags |= IORING_ENTER_EXT_ARG;
    }
    ring->enters++;
    return sys_enter(ring->fd, to_submit, wait_nr, flags, arg, argsz);
}

int ul_submit_and_wait_batch(ul_ring *ring, unsigned wait_nr, long long timeout_ns,
                             unsigned min_wait_us)
{
    /* Everything the kernel has not consumed, including SQEs a resize already published. */
    unsigned to_submit = ring->sq_tail - load_acquire(ring->sq_khead);
    if (min_wait_us && !(ring->features & UL_FEAT_MIN_TIMEOUT)) {
        /* Without the bounded batch wait, waiting for more than one could wait forever. */
        min_wait_us = 0;
        if (wait_nr > 1)
            wait_nr = 1;
    }
    return enter_published(ring, to_submit, wait_nr, timeout_ns, min_wait_us);
}

int ul_submit_last_alone(ul_ring *ring, long long timeout_ns)
{
    unsigned head = load_acquire(ring->sq_khead);
    unsigned tail = ring->sq_tail;
    if (tail == head)
        return -EINVAL;
    /* The kernel takes SQEs from its head in order: put the last one there and shift the
     * others up a slot (the SQ index array, where there is one, is the identity). */
    struct io_uring_sqe last = ring->sqes[(tail - 1) & ring->sq_mask];
    for (unsigned i = tail - 1; i != head; i--)
        ring->sqes[i & ring->sq_mask] = ring->sqes[(i - 1) & ring->sq_mask];
    ring->sqes[head & ring->sq_mask] = last;
    return ul_wait_cqe(ring, 1, timeout_ns);
}

int ul_wait_cqe(ul_ring *ring, unsigned to_submit, long long timeout_ns)
{
    return enter_published(ring, to_submit, 1, timeout_ns, 0);
}

unsigned ul_cq_ready(const ul_ring *ring)
{
    return load_acquire(ring->cq_ktail) - *ring->cq_khead;
}

int ul_cq_overflowed(const ul_ring *ring)
{
    return (load_acquire(ring->sq_kflags) & IORING_SQ_CQ_OVERFLOW) != 0;
}

int ul_has_work(const ul_ring *ring)
{
    return ul_cq_ready(ring) != 0 ||
           (load_acquire(ring->sq_kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;
}

unsigned ul_reap(ul_ring *ring, ul_cqe *out, unsigned max)
{
    unsigned head = *ring->cq_khead;
    unsigned ready = load_acquire(ring->cq_ktail) - head;
    unsigned n = ready < max ? ready : max;
    for (unsigned i = 0; i < n; i++) {
        const struct io_uring_cqe *c = &ring->cqes[(head + i) & ring->cq_mask];
        out[i].user_data = c->user_data;
        out[i].res = c->res;
        out[i].flags = c->flags;
    }
    if (n)
        store_release(ring->cq_khead, head + n);
    return n;
}

/* Provided-buffer rings. Layout per the UAPI: an array of struct io_uring_buf whose first
 * entry's last 16 bits double as the ring's tail. */
struct ul_buf_reg {
    uint64_t ring_addr;
    uint32_t ring_entries;
    uint16_t bgid;
    uint16_t flags;
    uint64_t resv[3];
};

int ul_pbuf_ring_register(ul_ring *ring, ul_pbuf_ring *pbr, unsigned entries, unsigned short bgid)
{
    memset(pbr, 0, sizeof(*pbr));
    size_t size = (size_t)entries * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return -errno;
    struct ul_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)mem;
    reg.ring_entries = entries;
    reg.bgid = bgid;
    int err = sys_register(ring->fd, UL_REGISTER_PBUF_RING, &reg, 1);
    if (err < 0) {
        munmap(mem, size);
        return err;
    }
    pbr->br = mem;
    pbr->map_size = size;
    pbr->entries = entries;
    pbr->mask = entries - 1;
    pbr->bgid = bgid;
    pbr->tail = 0;
    return 0;
}

int ul_pbuf_ring_unregister(ul_ring *ring, ul_pbuf_ring *pbr)
{
    int err = 0;
    if (!pbr->br)
        return 0;
    if (ring->fd >= 0) {
        struct ul_buf_reg reg;
        memset(&reg, 0, sizeof(reg));
        reg.bgid = pbr->bgid;
        err = sys_register(ring->fd, UL_UNREGISTER_PBUF_RING, &reg, 1);
    }
    munmap(pbr->br, pbr->map_size);
    pbr->br = NULL;
    return err < 0 ? err : 0;
}

void ul_pbuf_ring_add(ul_pbuf_ring *pbr, void *addr, unsigned len, unsigned short bid, int offset)
{
    struct io_uring_buf *buf = &pbr->br->bufs[(pbr->tail + offset) & pbr->mask];
    buf->addr = (uint64_t)(uintptr_t)addr;
    buf->len = len;
    buf->bid = bid;
}

void ul_pbuf_ring_advance(ul_pbuf_ring *pbr, int count)
{
    pbr->tail = (unsigned short)(pbr->tail + count);
    __atomic_store_n(&pbr->br->tail, pbr->tail, __ATOMIC_RELEASE);
}

static void pbuf_put(ul_pbuf_ring *pbr, unsigned short pos, char *addr, unsigned len,
                     unsigned short bid)
{
    /* Only addr, len and bid: the first entry's last field is the shared tail. */
    struct io_uring_buf *buf = &pbr->br->bufs[pos & pbr->mask];
    buf->addr = (uint64_t)(uintptr_t)addr;
    buf->len = len;
    buf->bid = bid;
}

void ul_pbuf_ring_push_back(ul_pbuf_ring *pbr, const unsigned short *bids, unsigned n,
                            char *base, unsigned size)
{
    for (unsigned j = 0; j < n; j++)
        pbuf_put(pbr, (unsigned short)(pbr->tail + j), base + (size_t)bids[j] * size, size,
                 bids[j]);
    ul_pbuf_ring_advance(pbr, (int)n);
}

void ul_pbuf_ring_push_front(ul_pbuf_ring *pbr, unsigned short head, const unsigned short *bids,
                             unsigned n, char *base, unsigned size)
{
    /* The window [head, tail) keeps its buffers; the first min(n, avail) of them move behind
     * it (to the old tail, or behind the n new ones when those outnumber it) so that the n
     * given back take its front, bids[n-1] at head. */
    unsigned short avail = (unsigned short)(pbr->tail - head);
    unsigned moved = n < avail ? n : avail;
    unsigned short dest = (unsigned short)(head + (n > avail ? n : avail));
    for (unsigned j = 0; j < moved; j++) {
        const struct io_uring_buf *from = &pbr->br->bufs[(unsigned short)(head + j) & pbr->mask];
        pbuf_put(pbr, (unsigned short)(dest + j), (char *)(uintptr_t)from->addr, from->len,
                 from->bid);
    }
    for (unsigned j = 0; j < n; j++) {
        unsigned short bid = bids[n - 1 - j];
        pbuf_put(pbr, (unsigned short)(head + j), base + (size_t)bid * size, size, bid);
    }
    ul_pbuf_ring_advance(pbr, (int)n);
}

unsigned short ul_pbuf_ring_bid_at(const ul_pbuf_ring *pbr, unsigned short pos)
{
    return pbr->br->bufs[pos & pbr->mask].bid;
}

struct ul_buf_status {
    uint32_t buf_group;
    uint32_t head;
    uint32_t resv[8];
};

int ul_pbuf_ring_head(ul_ring *ring, ul_pbuf_ring *pbr)
{
    struct ul_buf_status st;
    memset(&st, 0, sizeof(st));
    st.buf_group = pbr->bgid;
    int err = sys_register(ring->fd, UL_REGISTER_PBUF_STATUS, &st, 1);
    return err < 0 ? err : (int)(st.head & 0xffff);
}
