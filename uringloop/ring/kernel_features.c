/*
 * What the running kernel's io_uring offers, found by asking it: setup flags by trying them,
 * opcodes through IORING_REGISTER_PROBE, and, where neither tells (flags on an existing opcode,
 * register operations), by a small real trial on a throwaway ring. Independent of ring.c:
 * every trial opens, maps and closes its own ring.
 */
#include "kernel_features.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "ring.h"

#ifndef IORING_REGISTER_PROBE
#define IORING_REGISTER_PROBE 8
#endif

static int ulf_setup(unsigned entries, struct io_uring_params *p)
{
    long r = syscall(__NR_io_uring_setup, entries, p);
    return r < 0 ? -errno : (int)r;
}

static int ulf_register(int fd, unsigned op, void *arg, unsigned nr)
{
    long r = syscall(__NR_io_uring_register, fd, op, arg, nr);
    return r < 0 ? -errno : (int)r;
}

int ulf_try_setup(unsigned flags, unsigned *features)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = flags;
    int fd = ulf_setup(4, &p);
    if (fd < 0)
        return fd;
    if (features)
        *features = p.features;
    close(fd);
    return 0;
}

int ulf_probe_opcodes(unsigned char *supported, unsigned n)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    int fd = ulf_setup(4, &p);
    if (fd < 0)
        return fd;
    size_t size = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = calloc(1, size);
    if (!probe) {
        close(fd);
        return -ENOMEM;
    }
    int err = ulf_register(fd, IORING_REGISTER_PROBE, probe, 256);
    close(fd);
    if (err < 0) {
        free(probe);
        return err;
    }
    memset(supported, 0, n);
    for (unsigned i = 0; i < probe->ops_len && i < n; i++)
        supported[probe->ops[i].op] = (probe->ops[i].flags & IO_URING_OP_SUPPORTED) != 0;
    int last = probe->last_op;
    free(probe);
    return last;
}

/* A plain ring (no setup flags, so any io_uring kernel takes it), mapped for one SQE. */
typedef struct ulf_ring {
    int fd;
    void *map;
    size_t map_size;
    struct io_uring_sqe *sqes;
    size_t sqes_size;
    struct io_uring_params p;
} ulf_ring;

static void ulf_ring_close(ulf_ring *r)
{
    if (r->sqes)
        munmap(r->sqes, r->sqes_size);
    if (r->map)
        munmap(r->map, r->map_size);
    if (r->fd >= 0)
        close(r->fd);
}

/* One region of the ring mapped, or NULL with errno set. */
static void *ulf_map(int fd, size_t size, off_t offset)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, offset);
    return p == MAP_FAILED ? NULL : p;
}

static int ulf_ring_open(ulf_ring *r)
{
    memset(r, 0, sizeof(*r));
    r->fd = ulf_setup(4, &r->p);
    if (r->fd < 0)
        return r->fd;
    if (!(r->p.features & IORING_FEAT_SINGLE_MMAP)) {   /* 5.4: every kernel worth probing */
        ulf_ring_close(r);
        return -ENOSYS;
    }
    size_t sq_size = r->p.sq_off.array + r->p.sq_entries * sizeof(unsigned);
    size_t cq_size = r->p.cq_off.cqes + r->p.cq_entries * sizeof(struct io_uring_cqe);
    r->map_size = sq_size > cq_size ? sq_size : cq_size;
    r->sqes_size = r->p.sq_entries * sizeof(struct io_uring_sqe);
    r->map = ulf_map(r->fd, r->map_size, IORING_OFF_SQ_RING);
    r->sqes = r->map ? ulf_map(r->fd, r->sqes_size, IORING_OFF_SQES) : NULL;
    if (r->sqes == NULL) {
        int err = -errno;      /* from the mmap that failed */
        ulf_ring_close(r);
        return err;
    }
    return 0;
}

/* Submit the one SQE in slot 0 and wait up to timeout_ms for its first completion.
 * Returns 1 with *res and *flags set, 0 when nothing completed in time, or -errno. */
static int ulf_ring_submit_one(ulf_ring *r, int timeout_ms, int *res, unsigned *flags)
{
    char *base = r->map;
    unsigned *sq_tail = (unsigned *)(base + r->p.sq_off.tail);
    unsigned *sq_array = (unsigned *)(base + r->p.sq_off.array);
    unsigned tail = __atomic_load_n(sq_tail, __ATOMIC_RELAXED);
    sq_array[tail & (r->p.sq_entries - 1)] = 0;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    long n = syscall(__NR_io_uring_enter, r->fd, 1, 0, 0, NULL, 0);
    if (n < 0)
        return -errno;
    /* The ring's fd polls readable once a completion is posted (no DEFER_TASKRUN here). */
    struct pollfd pfd = {.fd = r->fd, .events = POLLIN};
    if (poll(&pfd, 1, timeout_ms) <= 0)
        return 0;
    unsigned *cq_head = (unsigned *)(base + r->p.cq_off.head);
    unsigned *cq_tail = (unsigned *)(base + r->p.cq_off.tail);
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(base + r->p.cq_off.cqes);
    unsigned head = __atomic_load_n(cq_head, __ATOMIC_RELAXED);
    if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE))
        return 0;
    struct io_uring_cqe *cqe = &cqes[head & (r->p.cq_entries - 1)];
    *res = cqe->res;
    *flags = cqe->flags;
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    return 1;
}

/* A provided-buffer ring of 8 buffers in group bgid, on memory we own. */
typedef struct ulf_pbuf {
    void *mem;
    size_t size;
} ulf_pbuf;

static int ulf_pbuf_register(ulf_ring *r, ulf_pbuf *b, unsigned short bgid)
{
    const unsigned entries = 8, buf_len = 64;
    b->size = 4096 + entries * buf_len;
    b->mem = mmap(NULL, b->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b->mem == MAP_FAILED) {
        b->mem = NULL;
        return -errno;
    }
    struct io_uring_buf_ring *br = b->mem;
    char *bufs = (char *)b->mem + 4096;
    for (unsigned i = 0; i < entries; i++) {
        br->bufs[i].addr = (uint64_t)(uintptr_t)(bufs + i * buf_len);
        br->bufs[i].len = buf_len;
        br->bufs[i].bid = (unsigned short)i;
    }
    __atomic_store_n(&br->tail, (unsigned short)entries, __ATOMIC_RELEASE);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)br;
    reg.ring_entries = entries;
    reg.bgid = bgid;
    return ulf_register(r->fd, UL_REGISTER_PBUF_RING, &reg, 1);
}

static void ulf_pbuf_free(ulf_pbuf *b)
{
    if (b->mem)
        munmap(b->mem, b->size);
}

int ulf_try_pbuf_ring(int *pbuf_status, int *recv_multishot)
{
    *pbuf_status = 0;
    *recv_multishot = 0;
    ulf_ring r;
    int err = ulf_ring_open(&r);
    if (err < 0)
        return err;
    ulf_pbuf b = {0};
    err = ulf_pbuf_register(&r, &b, 1);
    if (err < 0) {
        ulf_ring_close(&r);
        ulf_pbuf_free(&b);
        return err;
    }
    /* IORING_REGISTER_PBUF_STATUS (6.8): the kernel's head of the ring. */
    struct { uint32_t buf_group; uint32_t head; uint32_t resv[8]; } status;
    memset(&status, 0, sizeof(status));
    status.buf_group = 1;
    *pbuf_status = ulf_register(r.fd, UL_REGISTER_PBUF_STATUS, &status, 1) == 0;

    /* Multishot RECV (6.0) is a flag on an opcode older than the probe: ask for it on a socket
     * that already holds data. A kernel without it fails the request with -EINVAL; one with it
     * posts the data with IORING_CQE_F_MORE (the request stays armed). */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
        if (write(sv[1], "x", 1) == 1) {
            struct io_uring_sqe *sqe = &r.sqes[0];
            memset(sqe, 0, sizeof(*sqe));
            sqe->opcode = IORING_OP_RECV;
            sqe->fd = sv[0];
            sqe->ioprio = IORING_RECV_MULTISHOT;
            sqe->flags = IOSQE_BUFFER_SELECT;
            sqe->buf_group = 1;
            int res = 0;
            unsigned flags = 0;
            if (ulf_ring_submit_one(&r, 2000, &res, &flags) == 1)
                *recv_multishot = res == 1 && (flags & IORING_CQE_F_MORE) != 0;
        }
        close(sv[0]);
        close(sv[1]);
    }
    ulf_ring_close(&r);   /* closing the ring cancels the armed receive */
    ulf_pbuf_free(&b);
    return 1;
}

int ulf_try_accept_multishot(void)
{
    ulf_ring r;
    int err = ulf_ring_open(&r);
    if (err < 0)
        return err;
    int result = 0;
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    /* Binding only the family autobinds: the kernel picks a free abstract name. */
    socklen_t len = sizeof(addr);
    if (lfd >= 0 && cfd >= 0 && bind(lfd, (struct sockaddr *)&addr, sizeof(sa_family_t)) == 0 &&
        listen(lfd, 4) == 0 && getsockname(lfd, (struct sockaddr *)&addr, &len) == 0) {
        if (connect(cfd, (struct sockaddr *)&addr, len) == 0) {
            struct io_uring_sqe *sqe = &r.sqes[0];
            memset(sqe, 0, sizeof(*sqe));
            sqe->opcode = IORING_OP_ACCEPT;
            sqe->fd = lfd;
            sqe->ioprio = IORING_ACCEPT_MULTISHOT;
            sqe->accept_flags = SOCK_CLOEXEC;
            int res = 0;
            unsigned flags = 0;
            if (ulf_ring_submit_one(&r, 2000, &res, &flags) == 1) {
                result = res >= 0 && (flags & IORING_CQE_F_MORE) != 0;
                if (res >= 0)
                    close(res);
            }
        }
    }
    if (lfd >= 0)
        close(lfd);
    if (cfd >= 0)
        close(cfd);
    ulf_ring_close(&r);
    return result;
}

int ulf_try_resize(void)
{
    /* RESIZE_RINGS (6.13) only takes DEFER_TASKRUN rings. Unmapped: nothing to remap after. */
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int fd = ulf_setup(4, &p);
    if (fd < 0)
        return fd;
    memset(&p, 0, sizeof(p));
    p.sq_entries = 8;
    p.cq_entries = 16;
    p.flags = IORING_SETUP_CQSIZE;
    int err = ulf_register(fd, UL_REGISTER_RESIZE_RINGS, &p, 1);
    close(fd);
    return err;
}
