/*
 * Exercises uringloop's C ring layer directly, in both SQ layouts (with and without the SQ
 * index array): SQEs queued before a resize must each execute as themselves afterwards, CQEs
 * queued before a resize must survive it, and a ring may grow and shrink repeatedly.
 * Prints "ok <layout>" per layout and exits non-zero on the first broken expectation.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ring.h"

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); exit(1); } } while (0)

static void queue_nop(ul_ring *r, uint64_t tag)
{
    struct io_uring_sqe *sqe = ul_get_sqe(r);
    CHECK(sqe != NULL, "SQ full");
    sqe->opcode = IORING_OP_NOP;
    sqe->user_data = tag;
}

static unsigned reap_tags(ul_ring *r, uint64_t *seen, unsigned max)
{
    ul_cqe c[256];
    unsigned n = 0, got;
    while ((got = ul_reap(r, c, 256)) > 0) {
        for (unsigned i = 0; i < got; i++) {
            CHECK(c[i].res == 0, "NOP failed: %d", c[i].res);
            CHECK(c[i].user_data < max, "unexpected tag %llu", (unsigned long long)c[i].user_data);
            seen[c[i].user_data]++;
            n++;
        }
    }
    return n;
}

static void run(int use_sq_array)
{
    ul_ring r;
    int err = ul_ring_init_sqarray(&r, 4, use_sq_array);
    CHECK(err == 0, "init: %s", strerror(-err));
    if (!use_sq_array && !(r.setup_flags & IORING_SETUP_NO_SQARRAY)) {
        /* Before 6.6 there is no NO_SQARRAY: the ring fell back to the other layout. */
        printf("skip no-sq-array: this kernel has no IORING_SETUP_NO_SQARRAY\n");
        ul_ring_exit(&r);
        return;
    }
    CHECK(((r.setup_flags & IORING_SETUP_NO_SQARRAY) != 0) == !use_sq_array, "layout");
    if (ul_ring_probe_resize(&r) != 0) {
        printf("skip resize %s: this kernel cannot resize rings (before 6.13)\n",
               use_sq_array ? "sq-array" : "no-sq-array");
        ul_ring_exit(&r);
        return;
    }
    CHECK(ul_ring_enable(&r) == 0, "enable");
    CHECK(r.sq_entries == 4 && r.cq_entries == 8, "geometry %u/%u", r.sq_entries, r.cq_entries);

    enum { TAGS = 64 };
    uint64_t seen[TAGS];
    memset(seen, 0, sizeof(seen));

    /* Queue 3 SQEs, then grow: the copies must keep their identity (without the SQ array
     * rebuild on 6.18 they would all run as SQE 0). */
    for (uint64_t t = 0; t < 3; t++)
        queue_nop(&r, t);
    CHECK(ul_ring_resize(&r, 32) == 0, "grow");
    CHECK(r.sq_entries == 32 && r.cq_entries == 64, "grown geometry");
    CHECK(ul_kernel_sq_entries(&r) == 32, "kernel sees %u", ul_kernel_sq_entries(&r));
    for (uint64_t t = 3; t < 20; t++)
        queue_nop(&r, t);
    CHECK(ul_submit_and_wait(&r, 20, 1000000000LL) >= 0, "enter");

    /* Completions waiting in the CQ survive a shrink that still fits them. */
    CHECK(ul_cq_ready(&r) == 20, "cq ready %u", ul_cq_ready(&r));
    CHECK(ul_ring_resize(&r, 16) == 0, "shrink with CQEs queued");
    CHECK(reap_tags(&r, seen, TAGS) == 20, "lost completions over resize");

    /* Shrink while SQEs are queued, then grow and shrink repeatedly. */
    for (uint64_t t = 20; t < 24; t++)
        queue_nop(&r, t);
    CHECK(ul_ring_resize(&r, 8) == 0, "shrink with SQEs queued");
    for (unsigned size = 1; size <= 256; size *= 2)
        CHECK(ul_ring_resize(&r, size > 4 ? size : 8) == 0, "resize to %u", size);
    CHECK(ul_ring_resize(&r, 8) == 0, "back to 8");
    for (uint64_t t = 24; t < 28; t++)
        queue_nop(&r, t);
    CHECK(ul_submit_and_wait(&r, 8, 1000000000LL) >= 0, "enter 2");
    CHECK(reap_tags(&r, seen, TAGS) == 8, "second batch");

    for (unsigned t = 0; t < 28; t++)
        CHECK(seen[t] == 1, "tag %u completed %llu times", t, (unsigned long long)seen[t]);

    /* Too many queued SQEs for the new size is refused, not truncated. */
    for (uint64_t t = 28; t < 36; t++)
        queue_nop(&r, t);
    CHECK(ul_ring_resize(&r, 4) == -EOVERFLOW, "overfull shrink must fail with EOVERFLOW");
    CHECK(ul_submit_and_wait(&r, 8, 1000000000LL) >= 0, "enter 3");
    CHECK(reap_tags(&r, seen, TAGS) == 8, "third batch");

    ul_ring_exit(&r);
    printf("ok %s\n", use_sq_array ? "sq-array" : "no-sq-array");
}

/* A ring that was never enabled (the kernel has seen none of its SQEs) regrows by moving its
 * queued SQEs into a bigger ring, in order: how a loop grows before it first runs on kernels
 * that cannot resize. Works on every kernel. */
static void run_regrow(int use_sq_array)
{
    ul_ring r;
    uint64_t seen[16];
    memset(seen, 0, sizeof(seen));
    CHECK(ul_ring_init_sqarray(&r, 4, use_sq_array) == 0, "init");
    for (uint64_t t = 0; t < 4; t++)
        queue_nop(&r, t);
    CHECK(ul_get_sqe(&r) == NULL, "a 4-entry SQ takes 4 SQEs");
    CHECK(ul_ring_regrow_disabled(&r, 16) == 0, "regrow");
    CHECK(r.sq_entries == 16 && r.cq_entries == 32, "regrown geometry %u/%u", r.sq_entries,
          r.cq_entries);
    for (uint64_t t = 4; t < 10; t++)
        queue_nop(&r, t);
    CHECK(ul_ring_enable(&r) == 0, "enable");
    CHECK(ul_submit_and_wait(&r, 10, 1000000000LL) >= 0, "enter");
    CHECK(reap_tags(&r, seen, 16) == 10, "regrown batch");
    for (unsigned t = 0; t < 10; t++)
        CHECK(seen[t] == 1, "tag %u completed %llu times", t, (unsigned long long)seen[t]);
    ul_ring_exit(&r);
    printf("ok regrow %s\n", use_sq_array ? "sq-array" : "no-sq-array");
}

int main(void)
{
    run(0);
    run(1);
    run_regrow(0);
    run_regrow(1);
    return 0;
}
