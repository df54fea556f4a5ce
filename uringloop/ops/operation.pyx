# Layer 2: operation records. One record per operation handed to the kernel; the CQE finds
# it through user_data = generation << 32 | slot, so a completion that arrives for a slot that
# has since been reused (or an fd that was closed and reopened) is recognised and dropped.
#
# A record keeps every object whose memory the kernel may touch (buffers, sockaddrs, the
# record itself) until the final CQE, the one without IORING_CQE_F_MORE. Cancelling is a
# request (ASYNC_CANCEL) whose answer is that final CQE; nothing is released before it.

from libc.stdint cimport uint64_t, int32_t, uint32_t
from libc.stdlib cimport malloc, realloc, free


cdef uint32_t SLAB_MIN = 8


cdef class Operation:
    cdef inline uint64_t user_data(self):
        return (<uint64_t>self.generation << 32) | self.slot

    cdef io_uring_sqe *prepare(self) except NULL:
        """Register with the slab (it now counts as pending) and return a zeroed SQE of the
        loop's ring whose user_data points back here."""
        return self.prepare_on(self.io.ring)

    cdef io_uring_sqe *prepare_on(self, Ring ring) except NULL:
        cdef io_uring_sqe *sqe
        self.io.check_usable()
        self.io.slab.acquire(self)
        try:
            sqe = ring.get_sqe()
        except BaseException:
            self.io.slab.release(self)
            raise
        self.ring = ring
        ring.live += 1
        sqe.user_data = self.user_data()
        return sqe

    cdef bint movable(self):
        """Whether a ring migration moves this operation (cancel on the old ring, resubmit()
        on the new one). Operations that may wait in the kernel for as long as a peer likes
        say yes; the others finish on the ring they started on."""
        return False

    cdef int resubmit(self) except -1:
        """A migration cancelled this operation before it took effect: prepare the same
        request on the loop's current ring and return 1; or return 0 to be completed with
        -ECANCELED as usual (the operation re-arms itself from there, or is no longer
        wanted)."""
        return 0

    cdef io_uring_sqe *prepare_poll(self, int fd, uint32_t events) except NULL:
        """prepare() for a one-shot POLL_ADD: readiness comes back, never data, so cancelling
        it can lose nothing."""
        cdef io_uring_sqe *sqe = self.prepare()
        sqe.opcode = IORING_OP_POLL_ADD
        sqe.fd = fd
        sqe.poll32_events = events
        return sqe

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        return 0

    cdef int stage(self) except -1:
        """Ask for flush() to run right before the loop's next io_uring_enter. An operation
        that a completion handler starts is prepared then, not now, so it is submitted, and
        usually completed and reaped, within one iteration instead of counting in `pending`
        at the next ring fit; work that piles up meanwhile leaves in the same SQE."""
        if not self.staged:
            self.staged = True
            self.io.staged.append(self)
        return 0

    cdef int flush(self) except -1:
        """Prepare the SQE that stage() deferred (or nothing, if the need went away)."""
        return 0

    cdef int cancel(self) except -1:
        if self.generation == 0:
            return 0
        if self.cancelling:
            # A migration's cancel is on its way: let it end the operation for good.
            self.moving = False
            return 0
        cdef CancelOp req = CancelOp.__new__(CancelOp)
        req.io = self.io
        req.target = self
        # Marked only once the request exists: if preparing it fails, a later cancel (or
        # close()'s drain) asks again instead of waiting for an answer that never comes.
        # The request goes to the ring the target was submitted through.
        cdef io_uring_sqe *sqe = req.prepare_on(self.ring)
        self.cancelling = True
        sqe.opcode = IORING_OP_ASYNC_CANCEL
        sqe.fd = -1
        sqe.addr = self.user_data()
        return 0


cdef class CancelOp(Operation):
    """An ASYNC_CANCEL request; its own CQE only says whether the target was found. The target's
    final CQE (usually -ECANCELED) is what ends the target."""
    cdef Operation target

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        self.target = None
        return 0


cdef class OpSlab:
    def __cinit__(self):
        self.records = [None] * SLAB_MIN
        self.capacity = SLAB_MIN
        self.free_slots = <uint32_t *>malloc(SLAB_MIN * sizeof(uint32_t))
        if self.free_slots == NULL:
            raise MemoryError()
        self.nfree = 0
        cdef uint32_t i
        for i in range(SLAB_MIN):
            self.free_slots[self.nfree] = SLAB_MIN - 1 - i
            self.nfree += 1
        self.live = 0
        self.next_generation = 1

    def __dealloc__(self):
        if self.free_slots != NULL:
            free(self.free_slots)

    cdef int acquire(self, Operation op) except -1:
        cdef uint32_t slot
        if op.generation != 0:
            raise RuntimeError("operation record registered twice")
        if self.nfree == 0:
            self.fit(self.capacity * 2)
        self.nfree -= 1
        slot = self.free_slots[self.nfree]
        op.slot = slot
        op.generation = self.next_generation
        op.cancelling = False       # a new kernel request: no cancel has been asked for it
        self.next_generation += 1
        if self.next_generation == 0:
            self.next_generation = 1
        self.records[slot] = op
        self.live += 1
        return 0

    cdef void release(self, Operation op):
        if op.generation == 0:
            return
        self.records[op.slot] = None
        self.free_slots[self.nfree] = op.slot
        self.nfree += 1
        op.generation = 0
        self.live -= 1
        if op.ring is not None:
            op.ring.live -= 1
            op.ring = None

    cdef Operation lookup(self, uint64_t user_data):
        cdef uint32_t slot = <uint32_t>(user_data & 0xffffffffu)
        cdef uint32_t generation = <uint32_t>(user_data >> 32)
        cdef Operation op
        if slot >= self.capacity:
            return None
        op = <Operation>self.records[slot]
        if op is None or op.generation != generation:
            return None
        return op

    cdef int fit(self, uint32_t floor) except -1:
        """Size the slab to the smallest power of two >= floor that still covers every live
        slot: grown when full, shrunk when the ring shrinks, never below SLAB_MIN."""
        cdef uint32_t highest = 0, i, cap
        cdef uint32_t *buf
        for i in range(self.capacity):
            if self.records[i] is not None:
                highest = i + 1
        cap = next_power_of_two(max(floor, highest, SLAB_MIN))
        if cap == self.capacity:
            return 0
        buf = <uint32_t *>realloc(self.free_slots, cap * sizeof(uint32_t))
        if buf == NULL:
            raise MemoryError()
        self.free_slots = buf
        if cap > self.capacity:
            self.records.extend([None] * (cap - self.capacity))
        else:
            del self.records[cap:]
        self.capacity = cap
        # Lowest slots on top of the stack, so live records gather at the bottom and a later
        # shrink finds the top of the slab empty.
        self.nfree = 0
        i = cap
        while i > 0:
            i -= 1
            if self.records[i] is None:
                self.free_slots[self.nfree] = i
                self.nfree += 1
        return 0
