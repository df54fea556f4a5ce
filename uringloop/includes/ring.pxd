# Declarations of the C ring layer (ring.h); the logic lives in ring.c and ring.pyx.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t


cdef extern from "ring.h" nogil:
    struct io_uring_sqe:
        uint8_t opcode
        uint8_t flags
        uint16_t ioprio
        int32_t fd
        uint64_t off
        uint64_t addr
        uint32_t len
        uint32_t rw_flags
        uint32_t msg_flags
        uint32_t poll32_events
        uint32_t accept_flags
        uint32_t cancel_flags
        uint32_t timeout_flags
        uint64_t user_data
        uint16_t buf_group
        uint32_t splice_fd_in
        uint32_t file_index
        uint64_t addr3

    ctypedef struct ul_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    ctypedef struct ul_ring:
        int fd
        unsigned setup_flags
        unsigned features
        unsigned sq_entries
        unsigned cq_entries
        uint64_t enters
        void *ring_map

    ctypedef struct ul_pbuf_ring:
        unsigned entries
        unsigned mask
        uint16_t bgid
        uint16_t tail

    enum:
        UL_SQ_MAX
        UL_CQ_MAX
        UL_FEAT_MIN_TIMEOUT

    int ul_ring_init(ul_ring *ring, unsigned entries)
    void ul_ring_exit(ul_ring *ring)
    int ul_ring_resize(ul_ring *ring, unsigned sq_entries)
    void ul_ring_fail_next_maps(unsigned n)
    int ul_ring_regrow_disabled(ul_ring *ring, unsigned sq_entries)
    int ul_ring_init_sqarray(ul_ring *ring, unsigned entries, int use_sq_array)
    int ul_ring_probe_opcode(ul_ring *ring, unsigned op)
    int ul_ring_probe_resize(ul_ring *ring)
    int ul_queue_taskrun_reset(ul_ring *ring)
    int ul_ring_enable(ul_ring *ring)
    io_uring_sqe *ul_get_sqe(ul_ring *ring)
    unsigned ul_sq_queued(const ul_ring *ring)
    unsigned ul_kernel_sq_entries(const ul_ring *ring)
    int ul_submit_and_wait(ul_ring *ring, unsigned wait_nr, long long timeout_ns)
    int ul_submit_and_wait_batch(ul_ring *ring, unsigned wait_nr, long long timeout_ns,
                                 unsigned min_wait_us)
    int ul_submit_last_alone(ul_ring *ring, long long timeout_ns)
    int ul_wait_cqe(ul_ring *ring, unsigned to_submit, long long timeout_ns)
    unsigned ul_reap(ul_ring *ring, ul_cqe *out, unsigned maxn)
    unsigned ul_cq_ready(const ul_ring *ring)
    int ul_has_work(const ul_ring *ring)
    int ul_cq_overflowed(const ul_ring *ring)

    int ul_pbuf_ring_register(ul_ring *ring, ul_pbuf_ring *pbr, unsigned entries, uint16_t bgid)
    int ul_pbuf_ring_unregister(ul_ring *ring, ul_pbuf_ring *pbr)
    void ul_pbuf_ring_add(ul_pbuf_ring *pbr, void *addr, unsigned length, uint16_t bid, int offset)
    void ul_pbuf_ring_advance(ul_pbuf_ring *pbr, int count)
    void ul_pbuf_ring_push_back(ul_pbuf_ring *pbr, const uint16_t *bids, unsigned n,
                                char *base, unsigned size)
    void ul_pbuf_ring_push_front(ul_pbuf_ring *pbr, uint16_t head, const uint16_t *bids,
                                 unsigned n, char *base, unsigned size)
    int ul_pbuf_ring_head(ul_ring *ring, ul_pbuf_ring *pbr)
    uint16_t ul_pbuf_ring_bid_at(const ul_pbuf_ring *pbr, uint16_t pos)

    void ul_prep_rw(io_uring_sqe *sqe, int op, int fd, const void *addr, unsigned length,
                    uint64_t off, uint64_t user_data)

    enum:
        IORING_OP_NOP
        IORING_OP_READV
        IORING_OP_WRITEV
        IORING_OP_POLL_ADD
        IORING_OP_POLL_REMOVE
        IORING_OP_SENDMSG
        IORING_OP_RECVMSG
        IORING_OP_TIMEOUT
        IORING_OP_ACCEPT
        IORING_OP_ASYNC_CANCEL
        IORING_OP_CONNECT
        IORING_OP_CLOSE
        IORING_OP_READ
        IORING_OP_WRITE
        IORING_OP_SEND
        IORING_OP_RECV
        IORING_OP_SHUTDOWN
        IORING_OP_SPLICE
        IORING_OP_SEND_ZC
        UL_OP_WAITID

        IORING_CQE_F_BUFFER
        IORING_CQE_F_MORE
        IORING_CQE_F_SOCK_NONEMPTY
        IORING_CQE_F_NOTIF
        IORING_CQE_BUFFER_SHIFT

        IOSQE_FIXED_FILE
        IOSQE_IO_LINK
        IOSQE_ASYNC
        IOSQE_BUFFER_SELECT
        IOSQE_CQE_SKIP_SUCCESS

        IORING_ACCEPT_MULTISHOT
        IORING_RECV_MULTISHOT
        IORING_POLL_ADD_MULTI
        IORING_ASYNC_CANCEL_ALL
        IORING_ASYNC_CANCEL_ANY

        IORING_SETUP_NO_SQARRAY
