# Declarations of the core's cdef classes that more than one layer of DESIGN.md uses:
# ring (ring/ring.pyx, ring/bufring.pyx), operations and the I/O manager (ops/operation.pyx,
# ops/io_manager.pyx), the loop core (loop/handles.pyx, loop/timer_heap.pyx,
# loop/core.pyx). Every .pyx file is included into _core.pyx so calls
# between layers stay C calls.

cimport cython
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int32_t
from cpython.object cimport PyObject

from uringloop.includes.ring cimport ul_ring, ul_cqe, io_uring_sqe, ul_pbuf_ring


cdef class RingCounters:
    """What ring_stats() reports, shared by every ring a loop has had: a migration replaces
    the ring, not the history."""
    cdef uint64_t resizes_up
    cdef uint64_t resizes_down
    cdef uint64_t migrations      # resizes done by moving to a new ring (kernels before 6.13)
    cdef uint64_t submitted
    cdef uint64_t completed
    cdef uint64_t enters
    cdef double resize_time       # seconds spent resizing or migrating, settling included
    cdef uint64_t shrinks_deferred  # entries where a due shrink waited for the resize budget


cdef class Ring:
    cdef ul_ring r
    cdef RingCounters counters
    cdef ul_cqe *harvest          # completions copied out of the CQ, not yet dispatched
    cdef size_t harvest_cap
    cdef size_t harvest_head      # next to dispatch
    cdef size_t harvest_tail
    cdef Py_ssize_t live          # registered operations submitted through this ring
    cdef bint opened
    cdef bint enabled
    cdef bint can_resize          # IORING_REGISTER_RESIZE_RINGS works (else: migration)
    cdef bint read_multishot      # IORING_OP_READ_MULTISHOT (6.7) exists
    cdef bint broken              # resized by the kernel but not re-mapped: unusable
    cdef unsigned failing_sqes    # testing aid: get_sqe() fails this many more times
    cdef unsigned long owner_thread

    cdef int open(self, unsigned entries, bint probe=*) except -1
    cdef int check_thread(self) except -1
    cdef int check_mapped(self) except -1
    cdef int enable(self) except -1
    cdef int resize(self, unsigned sq_entries) except -1
    cdef int regrow_disabled(self, unsigned sq_entries) except -1
    cdef unsigned kernel_sq_entries(self)
    cdef io_uring_sqe *get_sqe(self) except NULL
    cdef int await_last(self, uint64_t user_data, int32_t *res, long long timeout_ns) except -1
    cdef int enter(self, unsigned wait_nr, long long timeout_ns,
                   unsigned min_wait_us=*) except -1
    cdef unsigned reap(self) except? 0
    cdef inline bint backlog_empty(self)
    cdef bint drained(self)
    cdef void close(self)


cdef class BufGroup:
    cdef Ring ring
    cdef ul_pbuf_ring pbr
    cdef char *mem               # page-aligned (see ring/bufring.pyx)
    cdef size_t mem_len
    cdef unsigned nbufs
    cdef bint registered
    cdef unsigned users          # receives armed on this group (final CQE not yet seen)
    cdef uint16_t head           # the kernel's head: buffers it has reported consumed
    cdef uint16_t *returned      # given back since the last publish, oldest first
    cdef unsigned nreturned
    cdef unsigned offthread_users  # armed receives the kernel might serve off our thread

    cdef int setup(self, Ring ring, unsigned nbufs, uint16_t bgid) except -1
    cdef inline char *buffer(self, uint16_t bid)
    cdef inline bint give_back(self, uint16_t bid)
    cdef int publish(self, bint front, bint verify) except -1
    cdef void unmap(self)


cdef class BufPool:
    cdef Ring ring
    cdef BufGroup current
    cdef uint16_t next_bgid
    cdef set receivers           # receive operations armed right now, on any group
    cdef BufGroup retired        # replaced by switch(); its receives not yet asked to move
    cdef list dirty              # groups with buffers given back since the last publish
    cdef uint64_t front_publishes
    cdef uint64_t grows
    cdef uint64_t shrinks
    cdef uint64_t enobufs

    cdef inline void give_back(self, BufGroup group, uint16_t bid)
    cdef int publish(self, bint every_cqe_claimed, bint verify) except -1
    cdef int follow_ring(self, Ring ring) except -1
    cdef unsigned need(self)
    cdef BufGroup group_for_arm(self)
    cdef int on_enobufs(self, BufGroup group) except -1
    cdef int on_receiver_gone(self) except -1
    cdef int switch(self, unsigned nbufs) except -1
    cdef tuple stats(self)


cdef class Operation:
    cdef IOManager io             # registers it, submits it and dispatches its completions
    cdef uint32_t slot
    cdef uint32_t generation      # 0 while the record is not registered with the slab
    cdef bint cancelling
    cdef bint staged              # in the loop's `staged` list: its SQE is made at submission
    cdef object pinned            # everything the kernel may read or write until the final CQE
    cdef Ring ring                # the ring it was submitted through, until its final CQE
    cdef bint moving              # cancelled by a ring migration: resubmit on the new ring

    cdef inline uint64_t user_data(self)
    cdef io_uring_sqe *prepare(self) except NULL
    cdef io_uring_sqe *prepare_on(self, Ring ring) except NULL
    cdef bint movable(self)
    cdef int resubmit(self) except -1
    cdef io_uring_sqe *prepare_poll(self, int fd, uint32_t events) except NULL
    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1
    cdef int cancel(self) except -1
    cdef int stage(self) except -1
    cdef int flush(self) except -1


cdef class OpSlab:
    cdef list records             # slot -> Operation or None
    cdef uint32_t *free_slots
    cdef uint32_t nfree
    cdef uint32_t capacity
    cdef uint32_t live
    cdef uint32_t next_generation

    cdef int acquire(self, Operation op) except -1
    cdef void release(self, Operation op)
    cdef Operation lookup(self, uint64_t user_data)
    cdef int fit(self, uint32_t floor) except -1


cdef class Handle:
    cdef object callback
    cdef object args
    cdef object context
    cdef CoreLoop loop
    cdef bint is_cancelled
    cdef object source_traceback
    cdef object repr_cache
    cdef object __weakref__       # asyncio's handles can be weakly referenced

    cdef int run(self) except -1
    cdef list repr_parts(self)


cdef class TimerHandle(Handle):
    cdef double when_
    cdef bint scheduled            # in its loop's TimerHeap


cdef struct TimerKey:
    double when
    uint64_t seq                  # order of scheduling: FIFO among equal deadlines


@cython.final
cdef class TimerHeap:
    cdef list handles              # TimerHandles in heap order (loop._scheduled)
    cdef TimerKey *keys            # keys[i] belongs to handles[i]
    cdef Py_ssize_t key_capacity
    cdef uint64_t next_seq
    cdef Py_ssize_t cancelled      # cancelled handles still in the heap

    cdef int reserve(self, Py_ssize_t n) except -1
    cdef int push(self, TimerHandle th) except -1
    cdef TimerHandle pop(self)
    cdef void sift_down(self, PyObject **items, Py_ssize_t pos, Py_ssize_t n, TimerKey key,
                        PyObject *handle) noexcept
    cdef int drop_cancelled(self) except -1
    cdef void clear(self)


cdef class ResizeBudget:
    cdef double credit            # seconds of resizing the loop may still spend on a shrink
    cdef double refilled_at
    cdef double spent_seen        # RingCounters.resize_time when last refilled
    cdef int refill(self, double now, double spent) except -1
    cdef double shrink_due(self)


@cython.final
cdef class IOManager:
    cdef Ring ring
    cdef OpSlab slab
    cdef BufPool bufpool           # provided buffers: registered with the ring, follow it
    cdef ResizeBudget resize_budget
    cdef double shrink_wake_at     # a shrink waits for the budget: wake up for it then (or 0)
    cdef list draining             # rings replaced by a migration, until their last CQE
    cdef bint moves_failed         # an operation could not be asked to move: ask again
    cdef bint settled_at_entry     # a migration dispatched completions at this entry
    cdef list staged               # Operations whose SQE is made right before the next enter
    cdef bint batching             # busy: an enter that submits SENDs waits for 2 more CQEs
    cdef uint64_t unowned_buffer_cqes  # CQEs with F_BUFFER that no operation claimed
    cdef bint closing              # close() is draining: completions must not re-arm
    cdef bint forked               # in a child after fork(): the ring is the parent's
    cdef object report_error       # the loop's call_exception_handler
    cdef object __weakref__

    cdef int check_usable(self) except -1
    cdef int fit(self, bint verify) except -1
    cdef bint migrate(self, unsigned sq_entries) except -1
    cdef int move_operations(self) except -1
    cdef int service_draining(self) except -1
    cdef int submit_staged(self, bint verify) except -1
    cdef int submit_now(self, bint verify) except -1
    cdef int wait(self, long long timeout_ns, bint verify) except -1
    cdef int enter_and_reap(self, long long timeout_ns, unsigned sends) except -1
    cdef int dispatch_completions(self) except -1
    cdef int dispatch_ring(self, Ring ring) except -1
    cdef int drain_operations(self, double deadline) except -1
    cdef int close(self, double deadline) except -1
    cdef void orphan_live_operations(self)


cdef class CoreLoop:
    cdef IOManager io              # the ring and everything in flight on it
    cdef list ready
    cdef list ready_spare
    cdef Py_ssize_t io_position    # handles of the batch that run before its completions
    cdef object ready_threadsafe   # collections.deque: appended from other threads
    cdef TimerHeap timers
    cdef bint closed_flag
    cdef bint stopping_flag
    cdef bint running_flag
    cdef bint debug_flag
    cdef bint in_stream_completion # a transport's completion is being handled right now
    cdef object owner_pid
    cdef double clock_resolution
    cdef object iteration_observer
    cdef uint64_t iterations
    cdef Operation wakeup_op
    cdef int wakeup_fd
    cdef bint wakeup_armed_write   # a write to wakeup_fd is on its way and not yet consumed
    cdef object __weakref__

    cdef inline Handle new_handle(self, callback, tuple args, context)
    cdef int run_handle(self, Handle h) except -1
    cdef void wake(self)
    cdef TimerHandle schedule_timer(self, double when, callback, tuple args, context)
    cdef int run_once(self) except -1
    cdef int poll(self) except -1
    cdef int run_ready(self) except -1
    cdef int check_usable(self) except -1
