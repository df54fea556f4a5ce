# Layer 1: the ring. A thin owner of ul_ring (ring.c) that turns -errno into exceptions and
# counts what the loop exposes in ring_stats().

from libc.errno cimport EINTR, EBUSY, EAGAIN
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport strerror


cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1


cdef inline unsigned next_power_of_two(unsigned n):
    cdef unsigned p = 1
    while p < n:
        p <<= 1
    return p


cdef class Ring:
    def __cinit__(self):
        self.r.fd = -1
        self.harvest = NULL
        self.harvest_len = 0

    def __dealloc__(self):
        self.close()

    cdef int open(self, unsigned entries) except -1:
        cdef int err = ul_ring_init(&self.r, entries)
        if err < 0:
            raise unavailable_error(-err, "io_uring_setup")
        # A kernel without IORING_REGISTER_RESIZE_RINGS (before 6.13) cannot keep the
        # invariant the loop is built on: find out now, with a same-size resize.
        err = ul_ring_probe_resize(&self.r)
        if err < 0:
            ul_ring_exit(&self.r)
            raise unavailable_error(-err, "IORING_REGISTER_RESIZE_RINGS")
        self.opened = True
        self.fit_harvest()
        return 0

    cdef int fit_harvest(self) except -1:
        # The CQ can never hold more than cq_entries completions at once.
        cdef ul_cqe *buf
        if self.harvest_len != self.r.cq_entries:
            buf = <ul_cqe *>realloc(self.harvest, self.r.cq_entries * sizeof(ul_cqe))
            if buf == NULL:
                raise MemoryError()
            self.harvest = buf
            self.harvest_len = self.r.cq_entries
        return 0

    cdef int check_thread(self) except -1:
        if self.enabled and threading.get_ident() != self.owner_thread:
            raise RuntimeError(
                "this uringloop loop already ran in another thread; its io_uring is bound "
                "to that thread (IORING_SETUP_SINGLE_ISSUER): create one loop per thread")
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
        cdef int err = ul_ring_resize(&self.r, sq_entries)
        if err < 0:
            raise OSError(-err, "IORING_REGISTER_RESIZE_RINGS to %d entries: %s"
                          % (sq_entries, strerror(-err).decode()))
        if sq_entries > before:
            self.resizes_up += 1
        elif sq_entries < before:
            self.resizes_down += 1
        self.fit_harvest()
        return 0

    cdef unsigned kernel_sq_entries(self):
        # Read back from the shared ring header, which the kernel writes: what it really has.
        return ul_kernel_sq_entries(&self.r)

    cdef io_uring_sqe *get_sqe(self) except NULL:
        cdef io_uring_sqe *sqe = ul_get_sqe(&self.r)
        if sqe == NULL:
            # The iteration queued more than the ring holds: grow now, like a stack on
            # overflow; the next iteration entry sets the size the pending count asks for.
            self.resize(self.r.sq_entries * 2)
            sqe = ul_get_sqe(&self.r)
            if sqe == NULL:
                raise RuntimeError("io_uring SQ full after growing")
        return sqe

    cdef int enter(self, unsigned wait_nr, long long timeout_ns,
                   unsigned min_wait_us=0) except -1:
        cdef unsigned before = ul_sq_queued(&self.r)
        cdef int ret
        with nogil:
            ret = ul_submit_and_wait_batch(&self.r, wait_nr, timeout_ns, min_wait_us)
        self.submitted += before - ul_sq_queued(&self.r)
        if ret >= 0 or ret == -ETIME or ret == -EBUSY or ret == -EAGAIN:
            return 0
        if ret == -EINTR:
            # Run Python-level signal handlers now (KeyboardInterrupt, asyncio.Runner's SIGINT).
            PyErr_CheckSignals()
            return 0
        raise OSError(-ret, "io_uring_enter: " + strerror(-ret).decode())

    cdef unsigned reap(self) except? 0:
        cdef unsigned n = ul_reap(&self.r, self.harvest, self.harvest_len)
        self.completed += n
        return n

    cdef void close(self):
        if self.r.fd >= 0:
            ul_ring_exit(&self.r)
        self.opened = False
        if self.harvest != NULL:
            free(self.harvest)
            self.harvest = NULL
            self.harvest_len = 0
