# Layer 4, the provided-buffer ring that multishot receives pick their buffers from.
#
# Why it is built this way: a multishot RECV (or READ) asks the kernel to choose a buffer from a
# registered group each time data arrives, so one op per connection serves every message. The
# group's size is a pool like any other in the loop: sized from the structure's need (the
# receives armed on it), grown when the kernel reports ENOBUFS, shrunk when connections go, and
# never a knob. A fixed pool is what kills loops that pre-size it: once the receives outnumber
# the buffers, every receive ends with ENOBUFS and data stalls.
#
# The kernel cannot resize a registered buffer ring. Resizing therefore registers a new group
# (new bgid), makes it current, and asks every receive still armed on the old group to end
# (ASYNC_CANCEL); each re-arms on the current group from its final CQE, which is the same path
# a multishot op takes whenever F_MORE is absent. The old group is unregistered and its memory
# freed only when the last receive armed on it has delivered its final CQE (its record holds a
# reference to the group until then), so the kernel is never left with a buffer we freed.

from libc.stdlib cimport malloc, free
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize

# One buffer is 64 KiB, so a 64 KiB message arrives in one completion and one data_received()
# (smaller buffers split it, and each piece made its own write). The memory is an anonymous
# mapping, reserved, not touched: the kernel only faults in the pages it writes, so many
# connections exchanging small messages keep one page per buffer resident.
#
# Every buffer starts on a page boundary, and that is a measured necessity, not tidiness. The
# kernel copies received data with `rep movsb`, which on some CPUs is many times slower when the
# destination sits 1 to 31 bytes past the source modulo 4 KiB (benchmarks/copy_alignment.py
# measures it). Loopback and page-fragment skbs hold data from a page boundary, so buffers at
# malloc's usual page + 16 hit exactly that window (benchmarks/README.md, "64 KiB: where in a
# page the receive lands").
cdef unsigned PBUF_SIZE = 65536
cdef unsigned PBUF_MIN = 8
cdef unsigned PBUF_MAX = 32768     # the kernel's limit on a buffer ring's entries


# Buffers are handed out hottest first. The kernel takes buffers from the ring's head in
# order, and buffers given back at the tail come round again only after every other one:
# with many connections every receive landed in cold memory, and both copies (the kernel's
# into the buffer, ours out of it) paid for it. So the buffers
# given back in an iteration are put at the front of the ring, where the kernel picks next,
# and the ones they displace go to the back. That rewrites entries the kernel has not
# consumed, which is safe only when
#   - nothing selects buffers while we write: with DEFER_TASKRUN a socket receive runs only
#     inside our own io_uring_enter (task work or inline issue), never from another thread.
#     A read on a pipe or a tty might be served by an io-wq worker, so a group keeps the
#     plain order while any such receive is armed on it (`offthread_users`);
#   - we know the kernel's head exactly: it advances once per buffer it consumes, and every
#     consumed buffer is reported by a CQE with F_BUFFER, so the head is the count of those.
#     That count is exact only once every CQE is in: publishing happens right before the
#     enter, and falls back to the plain order if the CQ still holds completions, the kernel
#     holds some back (CQ overflow), or a buffer CQE ever went unaccounted for.
# In debug mode every front publish first checks the count against the kernel's own head
# (IORING_REGISTER_PBUF_STATUS).


cdef class BufGroup:
    """One registered provided-buffer ring and the memory of its buffers (fields: _core.pxd)."""

    cdef int setup(self, Ring ring, unsigned nbufs, uint16_t bgid) except -1:
        cdef unsigned i
        cdef int err
        cdef void *mem = mmap(NULL, <size_t>nbufs * PBUF_SIZE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if mem == MAP_FAILED:
            raise MemoryError()
        self.mem = <char *>mem
        self.mem_len = <size_t>nbufs * PBUF_SIZE
        self.returned = <uint16_t *>malloc(nbufs * sizeof(uint16_t))
        if self.returned == NULL:
            self.unmap()
            raise MemoryError()
        err = ul_pbuf_ring_register(&ring.r, &self.pbr, nbufs, bgid)
        if err < 0:
            self.unmap()
            raise OSError(-err, 'IORING_REGISTER_PBUF_RING: ' + os.strerror(-err))
        self.ring = ring
        self.registered = True
        self.nbufs = nbufs
        for i in range(nbufs):
            ul_pbuf_ring_add(&self.pbr, self.mem + <size_t>i * PBUF_SIZE, PBUF_SIZE,
                             <uint16_t>i, <int>i)
        ul_pbuf_ring_advance(&self.pbr, <int>nbufs)
        return 0

    cdef inline char *buffer(self, uint16_t bid):
        return self.mem + <size_t>bid * PBUF_SIZE

    cdef inline bint give_back(self, uint16_t bid):
        """The data has been copied out: the kernel may fill this buffer again from the next
        publish. True when the group was clean until now."""
        self.returned[self.nreturned] = bid
        self.nreturned += 1
        return self.nreturned == 1

    cdef int publish(self, bint front, bint verify) except -1:
        cdef int kernel_head
        if self.nreturned == 0:
            return 0
        if front and self.offthread_users == 0:
            if verify:
                kernel_head = ul_pbuf_ring_head(&self.ring.r, &self.pbr)
                if kernel_head >= 0 and <uint16_t>kernel_head != self.head:
                    raise AssertionError(
                        'provided-buffer ring %d: kernel head %d, counted %d'
                        % (self.pbr.bgid, kernel_head, self.head))
            ul_pbuf_ring_push_front(&self.pbr, self.head, self.returned, self.nreturned,
                                    self.mem, PBUF_SIZE)
        else:
            ul_pbuf_ring_push_back(&self.pbr, self.returned, self.nreturned, self.mem, PBUF_SIZE)
        self.nreturned = 0
        return 0

    def __dealloc__(self):
        # Reached only when no armed receive references the group any more (each record
        # holds it until its final CQE), or when the ring itself is gone.
        cdef ul_ring dead
        if self.registered:
            if self.ring is not None and self.ring.r.fd >= 0:
                ul_pbuf_ring_unregister(&self.ring.r, &self.pbr)
            else:
                dead.fd = -1        # the ring is gone: only our mapping is left to undo
                ul_pbuf_ring_unregister(&dead, &self.pbr)
            self.registered = False
        self.unmap()
        free(self.returned)
        self.returned = NULL

    cdef void unmap(self):
        if self.mem != NULL:
            munmap(self.mem, self.mem_len)
            self.mem = NULL


cdef class BufPool:
    """The loop's provided buffers: the current group and the receives armed on groups
    (fields: _core.pxd)."""

    def __cinit__(self):
        self.receivers = set()
        self.dirty = []
        self.next_bgid = 1

    cdef inline void give_back(self, BufGroup group, uint16_t bid):
        if group.give_back(bid):
            self.dirty.append(group)

    cdef int publish(self, bint every_cqe_claimed, bint verify) except -1:
        """Right before an enter: offer again what was given back, hottest first when the
        head count is known to be exact (see the top of this file). every_cqe_claimed: no
        CQE with F_BUFFER went unaccounted for; verify: check the count with the kernel."""
        cdef BufGroup g
        cdef bint front
        if not self.dirty:
            return 0
        front = (ul_cq_ready(&self.ring.r) == 0 and self.ring.backlog_empty()
                 and not ul_cq_overflowed(&self.ring.r) and every_cqe_claimed)
        try:
            for g in self.dirty:
                # A group of a ring replaced by a migration: its head count is not checked
                # against that ring's completions, so it gets the plain order.
                g.publish(front and g.ring is self.ring, verify)
                self.front_publishes += front and g.ring is self.ring and g.offthread_users == 0
        finally:
            self.dirty.clear()
        return 0

    cdef int follow_ring(self, Ring ring) except -1:
        """A migration replaced the loop's ring. Buffer groups are registered with one ring:
        receives re-armed on the new ring pick from a group registered there; the old ones
        go when their last receive ends."""
        self.ring = ring
        self.current = None
        return 0

    cdef unsigned need(self):
        return next_power_of_two(max(PBUF_MIN, <unsigned>len(self.receivers)))

    cdef BufGroup group_for_arm(self):
        """The group a receive arms on now; creates or resizes the current group so that it
        holds at least one buffer per armed receive."""
        cdef unsigned n = len(self.receivers) + 1
        if self.current is None:
            self.switch(next_power_of_two(max(PBUF_MIN, n)))
        elif n > self.current.nbufs and self.current.nbufs < PBUF_MAX:
            self.grows += 1
            self.switch(min(PBUF_MAX, next_power_of_two(n) * 2))
        return self.current

    cdef int on_enobufs(self, BufGroup group) except -1:
        """The kernel found `group` empty. Several receives may report it in one batch: only
        the first one for the current group grows it."""
        self.enobufs += 1
        if group is self.current and group.nbufs < PBUF_MAX:
            self.grows += 1
            self.switch(min(PBUF_MAX, group.nbufs * 2))
        return 0

    cdef int on_receiver_gone(self) except -1:
        # Shrink with hysteresis (a quarter) so a connection coming and going at a size
        # boundary does not move every receive each time.
        cdef unsigned want
        if self.current is None:
            return 0
        want = self.need()
        if want * 4 <= self.current.nbufs:
            self.shrinks += 1
            self.switch(want * 2 if want * 2 >= PBUF_MIN else PBUF_MIN)
        return 0

    cdef int switch(self, unsigned nbufs) except -1:
        cdef BufGroup g = BufGroup.__new__(BufGroup)
        cdef BufGroup old = self.current
        cdef int tries = 0
        while True:
            try:
                g.setup(self.ring, nbufs, self.next_bgid)
                break
            except OSError as exc:
                # A bgid still held by a retiring group: take the next one.
                self.next_bgid = <uint16_t>(self.next_bgid + 1) or 1
                tries += 1
                if exc.errno != errno_module.EEXIST or tries > 64:
                    raise
        self.next_bgid = <uint16_t>(self.next_bgid + 1) or 1
        self.current = g
        if old is not None:
            # The receives still on the old group must move; their owners do that (this
            # layer knows buffers, not receives): see move_off_retired() in stream_ops.pyx.
            self.retired = old
        return 0

    cdef tuple stats(self):
        return (self.current.nbufs if self.current is not None else 0, len(self.receivers),
                self.grows, self.shrinks, self.enobufs, self.front_publishes)
