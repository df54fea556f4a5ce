/* What io_uring's optional features save per operation, outside the loop (raw syscalls).
 *
 *   cc -O2 -o /tmp/features_probe benchmarks/features_probe.c
 *   perf stat --no-inherit -e instructions:u,instructions:k /tmp/features_probe echo 65536 zc 20000
 *
 * echo SIZE plain|fixed|zc ROUNDS: this process is a loopback TCP echo server on CPU 0 (one RECV
 *   until SIZE bytes are in, then one SEND of them, each submitted and reaped in one enter); a
 *   forked client on CPU 1 sends SIZE bytes and reads them back, ROUNDS times. `fixed` uses the
 *   socket through a registered file index (IOSQE_FIXED_FILE), `zc` answers with SEND_ZC and
 *   waits for its notification, counting the ones the kernel reports as copied.
 * recv SIZE plain|fixed COUNT: COUNT RECVs of SIZE bytes, 64 per enter, from a Unix socket this
 *   process keeps full, so the per-SQE cost (where a fixed file saves the fd lookup) dominates.
 * bufs SIZE plain|inc ROUNDS: 100 Unix socket pairs, one multishot RECV each on a ring of 128
 *   provided 64 KiB buffers; each round writes SIZE bytes into every pair and reaps the 100
 *   receives, copying each out (as the loop does) and giving its buffer back at the tail.
 *   `inc` registers the ring with IOU_PBUF_RING_INC (6.12+): a buffer is consumed in pieces
 *   and comes back only when used up. Prints the pool's resident memory (mincore); the CPU
 *   figure is per round of 100 messages.
 * read SIZE plain|fixed COUNT: READ of SIZE bytes from a cached 64 MiB file into a fresh
 *   malloc'd buffer (what uringloop.files does with a bytes object), or READ_FIXED into one
 *   registered buffer followed by a copy into a fresh malloc'd buffer.
 * With --no-inherit, perf counts only this process (the server), not the client. Each run also
 * prints this process's user and system CPU per round-trip (or read), from getrusage. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

struct ring {
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    struct io_uring_sqe *sqes;
    unsigned tail;
};

static void die(const char *what, int err) {
    fprintf(stderr, "%s: %s\n", what, strerror(err));
    exit(1);
}

static void ring_init(struct ring *r) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    r->fd = (int)syscall(__NR_io_uring_setup, 256, &p);
    if (r->fd < 0) die("io_uring_setup", errno);
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t len = sq_len > cq_len ? sq_len : cq_len;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   IORING_OFF_SQ_RING);
    if (m == MAP_FAILED) die("mmap", errno);
    r->sq_head = (unsigned *)(m + p.sq_off.head);
    r->sq_tail = (unsigned *)(m + p.sq_off.tail);
    r->sq_mask = (unsigned *)(m + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(m + p.sq_off.array);
    r->cq_head = (unsigned *)(m + p.cq_off.head);
    r->cq_tail = (unsigned *)(m + p.cq_off.tail);
    r->cq_mask = (unsigned *)(m + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(m + p.cq_off.cqes);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) die("mmap sqes", errno);
    r->tail = *r->sq_tail;
}

static struct io_uring_sqe *get_sqe(struct ring *r) {
    unsigned i = r->tail & *r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[i];
    memset(sqe, 0, sizeof *sqe);
    r->sq_array[i] = i;
    r->tail++;
    return sqe;
}

/* Submit what is queued, wait for `want` CQEs and hand them back. */
static void submit_wait(struct ring *r, unsigned submit, unsigned want,
                        struct io_uring_cqe *out) {
    __atomic_store_n(r->sq_tail, r->tail, __ATOMIC_RELEASE);
    unsigned got = 0;
    while (got < want) {
        int n = (int)syscall(__NR_io_uring_enter, r->fd, submit, want - got,
                             IORING_ENTER_GETEVENTS, NULL, 0);
        if (n < 0 && errno != EINTR) die("io_uring_enter", errno);
        submit = 0;
        unsigned head = *r->cq_head;
        unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        while (head != tail && got < want)
            out[got++] = r->cqes[head++ & *r->cq_mask];
        __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    }
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

static void client(int fd, size_t size, long rounds) {
    char *buf = malloc(size);
    memset(buf, 'x', size);
    pin(1);
    for (long i = 0; i < rounds; i++) {
        if (send(fd, buf, size, 0) != (ssize_t)size) die("client send", errno);
        size_t got = 0;
        while (got < size) {
            ssize_t n = recv(fd, buf + got, size - got, 0);
            if (n <= 0) die("client recv", errno);
            got += (size_t)n;
        }
    }
    _exit(0);
}

static int echo(size_t size, const char *variant, long rounds) {
    int fixed = strcmp(variant, "fixed") == 0, zc = strcmp(variant, "zc") == 0;
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(lfd, (void *)&a, sizeof a) || listen(lfd, 1) || getsockname(lfd, (void *)&a, &alen))
        die("listen", errno);
    int cfd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(cfd, (void *)&a, sizeof a)) die("connect", errno);
    int sfd = accept(lfd, NULL, NULL);
    setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pid_t pid = fork();
    if (pid == 0) { close(sfd); client(cfd, size, rounds); }
    close(cfd);
    pin(0);
    struct ring r;
    ring_init(&r);
    int target = sfd;
    unsigned sqe_flags = 0;
    if (fixed) {
        /* A sparse table of 16 slots, the socket put in slot 3 (as a loop would keep one). */
        int files[16];
        for (int i = 0; i < 16; i++) files[i] = -1;
        files[3] = sfd;
        if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_FILES, files, 16) < 0)
            die("IORING_REGISTER_FILES", errno);
        target = 3;
        sqe_flags = IOSQE_FIXED_FILE;
    }
    char *buf = malloc(size);
    long copied = 0, notifs = 0, zc_sends = 0;
    struct io_uring_cqe cqe[2];
    for (long i = 0; i < rounds; i++) {
        size_t got = 0;
        while (got < size) {
            struct io_uring_sqe *sqe = get_sqe(&r);
            sqe->opcode = IORING_OP_RECV;
            sqe->fd = target;
            sqe->flags = sqe_flags;
            sqe->addr = (uint64_t)(uintptr_t)(buf + got);
            sqe->len = (uint32_t)(size - got);
            submit_wait(&r, 1, 1, cqe);
            if (cqe[0].res <= 0) die("RECV", -cqe[0].res);
            got += (size_t)cqe[0].res;
        }
        struct io_uring_sqe *sqe = get_sqe(&r);
        sqe->opcode = zc ? IORING_OP_SEND_ZC : IORING_OP_SEND;
        sqe->fd = target;
        sqe->flags = sqe_flags;
        sqe->addr = (uint64_t)(uintptr_t)buf;
        sqe->len = (uint32_t)size;
        sqe->msg_flags = MSG_WAITALL | MSG_NOSIGNAL;
        if (zc) sqe->ioprio = IORING_SEND_ZC_REPORT_USAGE;
        /* SEND_ZC: the result (F_MORE), then the notification once the buffer is free. */
        submit_wait(&r, 1, zc ? 2 : 1, cqe);
        if (cqe[0].res != (int)size) die("SEND", cqe[0].res < 0 ? -cqe[0].res : EIO);
        if (zc) {
            zc_sends++;
            if (cqe[1].flags & IORING_CQE_F_NOTIF) {
                notifs++;
                if ((unsigned)cqe[1].res & IORING_NOTIF_USAGE_ZC_COPIED) copied++;
            }
        }
    }
    int status;
    waitpid(pid, &status, 0);
    if (zc)
        fprintf(stderr, "SEND_ZC: %ld sends, %ld notifications, %ld reported as copied\n",
                zc_sends, notifs, copied);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

static int recvsmall(size_t size, const char *variant, long count) {
    int fixed = strcmp(variant, "fixed") == 0, sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair", errno);
    pin(0);
    struct ring r;
    ring_init(&r);
    int target = sv[0];
    unsigned sqe_flags = 0;
    if (fixed) {
        int files[16];
        for (int i = 0; i < 16; i++) files[i] = -1;
        files[3] = sv[0];
        if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_FILES, files, 16) < 0)
            die("IORING_REGISTER_FILES", errno);
        target = 3;
        sqe_flags = IOSQE_FIXED_FILE;
    }
    const size_t fill = 64 * size;
    char *src = calloc(1, fill), *buf = malloc(size);
    struct io_uring_cqe cqe[64];
    for (long done = 0; done < count; done += 64) {
        if (write(sv[1], src, fill) != (ssize_t)fill) die("write", errno);
        for (int k = 0; k < 64; k++) {
            struct io_uring_sqe *sqe = get_sqe(&r);
            sqe->opcode = IORING_OP_RECV;
            sqe->fd = target;
            sqe->flags = sqe_flags;
            sqe->addr = (uint64_t)(uintptr_t)buf;
            sqe->len = (uint32_t)size;
        }
        submit_wait(&r, 64, 64, cqe);
        for (int k = 0; k < 64; k++)
            if (cqe[k].res != (int)size) die("RECV", cqe[k].res < 0 ? -cqe[k].res : EIO);
    }
    return 0;
}


#define IOU_PBUF_RING_INC_FLAG 2u
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif
static int bufs(size_t size, const char *variant, long rounds) {
    int inc = strcmp(variant, "inc") == 0;
    enum { PAIRS = 100, NBUFS = 128, BUFSZ = 65536 };
    int sv[PAIRS][2];
    pin(0);
    struct ring r;
    ring_init(&r);
    struct io_uring_buf_ring *br = mmap(NULL, NBUFS * sizeof(struct io_uring_buf),
                                        PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *mem = mmap(NULL, (size_t)NBUFS * BUFSZ, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)br;
    reg.ring_entries = NBUFS;
    reg.bgid = 1;
    reg.pad = inc ? IOU_PBUF_RING_INC_FLAG : 0;      /* `flags` in headers after 6.1 */
    if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0)
        die("IORING_REGISTER_PBUF_RING", errno);
    unsigned short tail = 0;
    size_t used[NBUFS];
    for (int b = 0; b < NBUFS; b++) {
        struct io_uring_buf *e = &br->bufs[tail++ & (NBUFS - 1)];
        e->addr = (uint64_t)(uintptr_t)(mem + (size_t)b * BUFSZ);
        e->len = BUFSZ; e->bid = (unsigned short)b; used[b] = 0;
    }
    __atomic_store_n(&br->tail, tail, __ATOMIC_RELEASE);
    for (int i = 0; i < PAIRS; i++) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv[i])) die("socketpair", errno);
        struct io_uring_sqe *sqe = get_sqe(&r);
        sqe->opcode = IORING_OP_RECV; sqe->fd = sv[i][0]; sqe->flags = IOSQE_BUFFER_SELECT;
        sqe->buf_group = 1; sqe->ioprio = IORING_RECV_MULTISHOT; sqe->user_data = (uint64_t)i;
    }
    char *src = calloc(1, size), *copy = malloc(BUFSZ);
    struct io_uring_cqe cqe[1];
    unsigned submit = PAIRS;
    long cqes = 0;
    for (long round = 0; round < rounds; round++) {
        for (int i = 0; i < PAIRS; i++)
            if (write(sv[i][1], src, size) != (ssize_t)size) die("write", errno);
        size_t got = 0;
        while (got < (size_t)PAIRS * size) {
            submit_wait(&r, submit, 1, cqe);
            submit = 0; cqes++;
            if (!(cqe[0].flags & IORING_CQE_F_MORE) || cqe[0].res <= 0)
                die("multishot RECV ended", cqe[0].res < 0 ? -cqe[0].res : EIO);
            unsigned bid = cqe[0].flags >> IORING_CQE_BUFFER_SHIFT;
            memcpy(copy, mem + (size_t)bid * BUFSZ + used[bid], (size_t)cqe[0].res);
            got += (size_t)cqe[0].res;
            if (inc && (cqe[0].flags & IORING_CQE_F_BUF_MORE)) { used[bid] += (size_t)cqe[0].res; continue; }
            used[bid] = 0;
            struct io_uring_buf *e = &br->bufs[tail++ & (NBUFS - 1)];
            e->addr = (uint64_t)(uintptr_t)(mem + (size_t)bid * BUFSZ); e->len = BUFSZ; e->bid = (unsigned short)bid;
            __atomic_store_n(&br->tail, tail, __ATOMIC_RELEASE);
        }
    }
    static unsigned char vec[(size_t)NBUFS * BUFSZ / 4096];
    mincore(mem, (size_t)NBUFS * BUFSZ, vec);
    size_t resident = 0;
    for (size_t i = 0; i < sizeof vec; i++) resident += vec[i] & 1;
    fprintf(stderr, "%s: pool resident %zu KiB, %.2f CQEs per message\n", variant, resident * 4, (double)cqes / ((double)rounds * PAIRS));
    return 0;
}

static int readfile(size_t size, const char *variant, long count) {
    int fixed = strcmp(variant, "fixed") == 0;
    const size_t file_len = 64 << 20;
    char path[] = "/tmp/features_probe.XXXXXX";
    int fd = mkstemp(path);
    unlink(path);
    char *chunk = malloc(1 << 20);
    memset(chunk, 'y', 1 << 20);
    for (size_t off = 0; off < file_len; off += 1 << 20)
        if (write(fd, chunk, 1 << 20) != 1 << 20) die("write", errno);
    pin(0);
    struct ring r;
    ring_init(&r);
    char *reg = NULL;
    if (fixed) {
        reg = aligned_alloc(4096, size);
        struct iovec iov = {reg, size};
        if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0)
            die("IORING_REGISTER_BUFFERS", errno);
    }
    struct io_uring_cqe cqe;
    unsigned long sum = 0;
    for (long i = 0; i < count; i++) {
        char *out = malloc(size);
        struct io_uring_sqe *sqe = get_sqe(&r);
        sqe->opcode = fixed ? IORING_OP_READ_FIXED : IORING_OP_READ;
        sqe->fd = fd;
        sqe->addr = (uint64_t)(uintptr_t)(fixed ? reg : out);
        sqe->len = (uint32_t)size;
        sqe->off = ((uint64_t)i * size) % file_len;
        sqe->buf_index = 0;
        submit_wait(&r, 1, 1, &cqe);
        if (cqe.res != (int)size) die("READ", cqe.res < 0 ? -cqe.res : EIO);
        if (fixed) memcpy(out, reg, size);
        sum += (unsigned char)out[size - 1];
        free(out);
    }
    return sum == 0;
}

static void report_cpu(long count) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    printf("user %.3f us, sys %.3f us per op\n",
           (u.ru_utime.tv_sec * 1e6 + u.ru_utime.tv_usec) / count,
           (u.ru_stime.tv_sec * 1e6 + u.ru_stime.tv_usec) / count);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s echo|recv|bufs|read SIZE VARIANT COUNT\n", argv[0]);
        return 2;
    }
    size_t size = strtoul(argv[2], NULL, 0);
    long count = strtol(argv[4], NULL, 0);
    int rc = strcmp(argv[1], "echo") == 0 ? echo(size, argv[3], count)
           : strcmp(argv[1], "recv") == 0 ? recvsmall(size, argv[3], count)
           : strcmp(argv[1], "bufs") == 0 ? bufs(size, argv[3], count)
                                          : readfile(size, argv[3], count);
    report_cpu(count);
    return rc;
}
