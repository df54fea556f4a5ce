# Layer 1: the ring. A thin owner of ul_ring (ring.c) that turns -errno into exceptions and
# counts what the loop exposes in ring_stats().

from libc.errno cimport EINTR, EBUSY, EAGAIN, EINVAL, EOPNOTSUPP
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport strerror, memmove
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1


cdef inline double monotonic():
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline unsigned next_power_of_two(unsigned n):
    cdef unsigned p = 1
    while p < n:
        p <<= 1
    return p


cdef inline bint ring_size_fits(unsigned sq_entries, unsigned need):
    """The ring-size invariant (DESIGN.md): `need` is the smallest power of two above the
    pending count, capped at the kernel's largest SQ; the ring holds it or the next one up."""
    return need <= sq_entries <= (2 * need if need < UL_SQ_MAX else UL_SQ_MAX)


cdef class RingCounters:
    pass


# Testing aid, not a setting: with it every ring does without what kernels after 6.1 added
# and the loop can live without (in-place resizing: it migrates; READ_MULTISHOT: pipes read
# one buffer per READ; NO_SQARRAY; the bounded batch wait), so the whole suite covers those
# paths on any kernel.
cdef bint AS_OLDEST_KERNEL = bool(os.environ.get('URINGLOOP_TEST_AS_OLDEST_KERNEL'))
cdef unsigned OP_READ_MULTISHOT = 49


cdef class Ring:
    """The loop's io_uring. Completions are copied out of the CQ into `harvest`, a backlog the
    loop dispatches from in order: a CQE leaves the kernel's queue only to enter ours, so a
    resize never finds the CQ fuller than its new size, and a dispatch cut short by an
    exception leaves the rest of the batch where the next one starts."""

    def __cinit__(self):
        self.r.fd = -1
        self.harvest = NULL
        self.harvest_cap = 0
        self.harvest_head = 0
        self.harvest_tail = 0

    def __dealloc__(self):
        self.close()

    cdef int open(self, unsigned entries, bint probe=True) except -1:
        """Create the ring (disabled until enable()). With probe, find out whether the
        kernel can resize it in place (Linux 6.13+); a ring made by a migration inherits
        the answer instead."""
        cdef int err = ul_ring_init_sqarray(&self.r, entries, AS_OLDEST_KERNEL)
        if err == -EINVAL:
            # The setup flags were refused: name what this kernel lacks (5.x kernels).
            try:
                exc = unsupported_kernel_error()
            except Exception:
                exc = None
            raise exc if exc is not None else unavailable_error(-err, "io_uring_setup")
        if err < 0:
            raise unavailable_error(-err, "io_uring_setup")
        if AS_OLDEST_KERNEL:
            self.r.features &= ~UL_FEAT_MIN_TIMEOUT
        if self.counters is None:
            self.counters = RingCounters.__new__(RingCounters)
        if probe:
            # A same-size resize: EINVAL where the kernel has no IORING_REGISTER_RESIZE_RINGS.
            err = ul_ring_probe_resize(&self.r)
            if err < 0 and err != -EINVAL and err != -EOPNOTSUPP:
                ul_ring_exit(&self.r)
                raise unavailable_error(-err, "IORING_REGISTER_RESIZE_RINGS")
            self.can_resize = err == 0 and not AS_OLDEST_KERNEL
            if err == 0:
                # Its SQE goes with the first enter, once the loop runs the ring.
                ul_queue_taskrun_reset(&self.r)
            self.read_multishot = (ul_ring_probe_opcode(&self.r, OP_READ_MULTISHOT) == 1
                                   and not AS_OLDEST_KERNEL)
        self.opened = True
        return 0

    cdef int check_thread(self) except -1:
        if self.enabled and threading.get_ident() != self.owner_thread:
            raise RuntimeError(
                "this uringloop loop already ran in another thread; its io_uring is bound "
                "to that thread (IORING_SETUP_SINGLE_ISSUER): create one loop per thread")
        return 0

    cdef int check_mapped(self) except -1:
        if self.broken:
            raise RuntimeError(
                "this uringloop loop lost its io_uring: the kernel resized the ring but "
                "mapping the resized ring failed (out of memory); close the loop")
        return 0

    cdef int enable(self) except -1:
        cdef int err
        self.check_thread()
        if self.enabled:
            return 0
        err = ul_ring_enable(&self.r)
        if err < 0:
            raise OSError(-err, "io_uring enable: " + strerror(-err).decode())
        self.enabled = True
        self.owner_thread = threading.get_ident()
        return 0

    cdef int resize(self, unsigned sq_entries) except -1:
        cdef unsigned before = self.r.sq_entries
        cdef double started = monotonic()
        cdef int err
        self.check_mapped()
        # The kernel refuses (EOVERFLOW) a CQ that holds more than the new size, and SQEs
        # not yet submitted beyond the new SQ size: hand both over first.
        if ul_sq_queued(&self.r) > sq_entries:
            self.enter(0, 0)
        self.reap()
        err = ul_ring_resize(&self.r, sq_entries)
        self.counters.resize_time += monotonic() - started
        if err < 0:
            if self.r.ring_map == NULL:
                self.broken = True
                self.check_mapped()
            raise OSError(-err, "IORING_REGISTER_RESIZE_RINGS to %d entries: %s"
                          % (sq_entries, strerror(-err).decode()))
        if sq_entries > before:
            self.counters.resizes_up += 1
        elif sq_entries < before:
            self.counters.resizes_down += 1
        if ul_queue_taskrun_reset(&self.r) and self.enabled:
            # Submitted now rather than with the iteration's SQEs, where it would take the SQ
            # slot of an operation (the fit just sized the SQ for those). Last, so that a
            # signal raised from the enter finds the resize fully accounted.
            self.enter(0, 0)
        return 0

    cdef int regrow_disabled(self, unsigned sq_entries) except -1:
        cdef double started = monotonic()
        cdef int err = ul_ring_regrow_disabled(&self.r, sq_entries)
        self.counters.resize_time += monotonic() - started
        if err < 0:
            raise OSError(-err, "io_uring_setup of %d entries: %s"
                          % (sq_entries, strerror(-err).decode()))
        self.counters.resizes_up += 1
        self.counters.migrations += 1
        return 0

    cdef unsigned kernel_sq_entries(self):
        # Read back from the shared ring header, which the kernel writes: what it really has.
        if self.broken:
            return 0
        return ul_kernel_sq_entries(&self.r)

    cdef io_uring_sqe *get_sqe(self) except NULL:
        cdef io_uring_sqe *sqe
        cdef int tries = 0
        if self.failing_sqes:
            self.failing_sqes -= 1
            raise OSError(errno_module.ENOMEM, "io_uring SQE: injected failure (testing aid)")
        sqe = ul_get_sqe(&self.r)
        while sqe == NULL:
            self.check_mapped()
            if self.can_resize and self.r.sq_entries < UL_SQ_MAX:
                # The iteration queued more than the ring holds: grow now, like a stack on
                # overflow; the next iteration entry sets the size the pending count asks for.
                self.resize(min(self.r.sq_entries * 2, UL_SQ_MAX))
            elif not self.enabled and self.r.sq_entries < UL_SQ_MAX:
                # Queued before the loop first runs, on a kernel that resizes only by
                # migration: the kernel has seen none of these SQEs, so a bigger ring can
                # simply take them over.
                self.regrow_disabled(min(self.r.sq_entries * 2, UL_SQ_MAX))
            else:
                # The SQ is full and cannot grow here (the kernel's largest, or a kernel that
                # resizes only by migration, which waits for the iteration entry): hand what
                # is queued to the kernel so the slots come free (their completions wait in
                # the CQ, or in the kernel's overflow list, for the next reap).
                self.enter(0, 0)
                if ul_sq_queued(&self.r) >= self.r.sq_entries:
                    self.reap()      # room in the CQ lets the kernel flush its overflow
                    tries += 1
                    if tries > 1000:
                        raise OSError(errno_module.EBUSY,
                                      "io_uring SQ stays full: the kernel takes no more SQEs")
            sqe = ul_get_sqe(&self.r)
        return sqe

    cdef int enter(self, unsigned wait_nr, long long timeout_ns,
                   unsigned min_wait_us=0) except -1:
        cdef unsigned before = ul_sq_queued(&self.r)
        cdef int ret
        self.check_mapped()
        with nogil:
            ret = ul_submit_and_wait_batch(&self.r, wait_nr, timeout_ns, min_wait_us)
        self.counters.submitted += before - ul_sq_queued(&self.r)
        self.counters.enters += 1
        if ret >= 0 or ret == -ETIME or ret == -EBUSY or ret == -EAGAIN:
            return 0
        if ret == -EINTR:
            # Run Python-level signal handlers now (KeyboardInterrupt, asyncio.Runner's SIGINT).
            PyErr_CheckSignals()
            return 0
        raise OSError(-ret, "io_uring_enter: " + strerror(-ret).decode())

    cdef int await_last(self, uint64_t user_data, int32_t *res, long long timeout_ns) except -1:
        """Submit the SQE queued last (user_data), alone and ahead of the others queued, and
        wait on this thread until its CQE has been reaped, for at most timeout_ns: return 1
        with its result in res, or 0 if it did not come in time. For the few answers asyncio's
        semantics need before a call returns. The other SQEs stay queued for the loop's next
        enter (a completion handler's re-arm goes in only after its callback has run); every
        CQE reaped meanwhile, this one included, waits in the backlog for the normal dispatch,
        in the kernel's order."""
        # Counted from the backlog's head, which stays put here (nothing is dispatched) while
        # reap() may move the whole backlog to the start of its buffer.
        cdef size_t seen = self.harvest_tail - self.harvest_head
        cdef size_t i
        cdef int ret
        cdef unsigned total = ul_sq_queued(&self.r)
        cdef unsigned queued = total
        cdef unsigned left_queued
        cdef double deadline = time.monotonic() + timeout_ns * 1e-9
        cdef long long left = timeout_ns
        self.check_mapped()
        if total == 0:
            raise RuntimeError("await_last: nothing is queued")
        with nogil:
            ret = ul_submit_last_alone(&self.r, left)
        while True:
            self.counters.enters += 1
            left_queued = ul_sq_queued(&self.r)
            self.counters.submitted += queued - left_queued
            # Only ours is ever submitted here: it has gone in once the queue is shorter
            # (EBUSY or EAGAIN can leave it queued, still first in line).
            queued = left_queued
            if ret == -EINTR:
                # A signal: its Python handler runs now. A KeyboardInterrupt propagates; the
                # CQE still reaches its operation through the normal dispatch.
                PyErr_CheckSignals()
            elif ret < 0 and ret != -ETIME and ret != -EBUSY and ret != -EAGAIN:
                raise OSError(-ret, "io_uring_enter: " + strerror(-ret).decode())
            self.reap()
            i = self.harvest_head + seen
            while i < self.harvest_tail:
                if self.harvest[i].user_data == user_data:
                    res[0] = self.harvest[i].res
                    return 1
                i += 1
            seen = self.harvest_tail - self.harvest_head
            left = <long long>((deadline - time.monotonic()) * 1e9)
            if left <= 0:
                return 0
            with nogil:
                ret = ul_wait_cqe(&self.r, 1 if queued == total else 0, left)

    cdef unsigned reap(self) except? 0:
        """Move every completion the CQ holds to the end of the backlog; return how many."""
        cdef unsigned ready, n
        cdef ul_cqe *buf
        cdef size_t cap
        if self.broken:
            return 0
        ready = ul_cq_ready(&self.r)
        if ready == 0:
            return 0
        if self.harvest_head == self.harvest_tail:
            self.harvest_head = self.harvest_tail = 0
        if self.harvest_tail + ready > self.harvest_cap:
            if self.harvest_head:
                memmove(self.harvest, self.harvest + self.harvest_head,
                        (self.harvest_tail - self.harvest_head) * sizeof(ul_cqe))
                self.harvest_tail -= self.harvest_head
                self.harvest_head = 0
            cap = self.harvest_cap if self.harvest_cap > 64 else 64
            while cap < self.harvest_tail + ready:
                cap *= 2
            if cap != self.harvest_cap:
                buf = <ul_cqe *>realloc(self.harvest, cap * sizeof(ul_cqe))
                if buf == NULL:
                    raise MemoryError()
                self.harvest = buf
                self.harvest_cap = cap
        n = ul_reap(&self.r, self.harvest + self.harvest_tail, ready)
        self.harvest_tail += n
        self.counters.completed += n
        return n

    cdef inline bint backlog_empty(self):
        return self.harvest_head == self.harvest_tail

    cdef bint drained(self):
        """Nothing submitted through this ring waits for a completion any more."""
        return (self.live == 0 and self.harvest_head == self.harvest_tail
                and (self.broken or self.r.fd < 0 or
                     (ul_cq_ready(&self.r) == 0 and not ul_has_work(&self.r))))

    cdef void close(self):
        if self.r.fd >= 0:
            ul_ring_exit(&self.r)
        self.opened = False
        if self.harvest != NULL:
            free(self.harvest)
            self.harvest = NULL
        self.harvest_cap = self.harvest_head = self.harvest_tail = 0


def _fail_next_ring_maps(unsigned n):
    """Testing aid: the next n mappings of a resized ring fail as if memory ran out."""
    ul_ring_fail_next_maps(n)
