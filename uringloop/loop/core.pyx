# Layer 3: the loop core, the runner. Scheduling (ready queue, timer heap), the iteration's
# order, stop and close, call_soon_threadsafe's wake-up; the ring and everything in flight on
# it belong to the I/O manager it owns (ops/io_manager.pyx). Generic asyncio logic that does
# not touch the mechanism (executors, DNS, exception handler, task factory, async generators,
# create_connection's address juggling) comes from asyncio.BaseEventLoop, which the public
# Loop class also inherits: the split CPython draws between base_events.py and its
# selector/proactor mechanisms.

from libc.stdint cimport uint64_t, int32_t
from libc.errno cimport errno
from posix.unistd cimport close as fd_close, write as fd_write

cdef extern from "sys/eventfd.h" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_CLOEXEC
        EFD_NONBLOCK

# The longest single wait; asyncio uses the same bound (24 hours) for selectors.
cdef double MAXIMUM_WAIT = 24 * 3600.0
# A heap with more cancelled timers than this share of its size gets compacted.
cdef Py_ssize_t MIN_CANCELLED_TIMERS = 100
cdef double MIN_CANCELLED_FRACTION = 0.5
# How long close() waits for cancelled operations to deliver their final CQE.
cdef double DRAIN_TIMEOUT = 5.0

cdef class LoopOperation(Operation):
    """An operation that belongs to a loop (its transports, watches, servers, requests), not
    only to the loop's I/O manager."""
    cdef CoreLoop loop


cdef inline LoopOperation attach(LoopOperation op, CoreLoop loop):
    """op, made an operation of loop (and of loop's I/O manager)."""
    op.loop = loop
    op.io = loop.io
    return op


cdef class WakeupRead(LoopOperation):
    """An eventfd READ kept in flight so call_soon_threadsafe and signals can wake the loop
    out of io_uring_enter. The kernel writes into `value`, a field of this record."""
    cdef uint64_t value

    cdef int arm(self) except -1:
        cdef io_uring_sqe *sqe = self.prepare()
        sqe.opcode = IORING_OP_READ
        sqe.fd = self.loop.wakeup_fd
        sqe.addr = <uint64_t><size_t>&self.value
        sqe.len = 8
        sqe.off = <uint64_t>-1
        return 0

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        self.loop.wakeup_armed_write = False
        if not self.io.closing and not self.cancelling:
            self.arm()
        return 0

    cdef bint movable(self):
        return True

    cdef int resubmit(self) except -1:
        self.arm()
        return 1


cdef class CoreLoop:
    def __cinit__(self):
        self.ready = []
        self.ready_spare = []
        self.ready_threadsafe = collections.deque()
        self.timers = TimerHeap()
        self.closed_flag = True        # until the ring exists: __del__ must not warn
        self.wakeup_fd = -1

    def __init__(self):
        cdef int fd
        self.io = IOManager(self.call_exception_handler)
        fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if fd < 0:
            self.io.ring.close()
            err = errno
            raise OSError(err, 'eventfd: ' + os.strerror(err))
        self.wakeup_fd = fd
        self.owner_pid = os.getpid()
        self.clock_resolution = time.get_clock_info('monotonic').resolution
        self.closed_flag = False
        self.wakeup_op = attach(WakeupRead.__new__(WakeupRead), self)
        (<WakeupRead>self.wakeup_op).arm()

    # -- state, as asyncio's private attributes other asyncio code reads ------------------

    @property
    def _closed(self):
        return self.closed_flag

    @_closed.setter
    def _closed(self, value):
        # BaseEventLoop.__init__ assigns False; the ring decides whether the loop is open.
        pass

    @property
    def _stopping(self):
        return self.stopping_flag

    @_stopping.setter
    def _stopping(self, value):
        self.stopping_flag = bool(value)

    @property
    def _debug(self):
        return self.debug_flag

    @_debug.setter
    def _debug(self, value):
        self.debug_flag = bool(value)

    @property
    def _ready(self):
        return self.ready

    @_ready.setter
    def _ready(self, value):
        pass

    @property
    def _scheduled(self):
        return list(self.timers.handles)

    @_scheduled.setter
    def _scheduled(self, value):
        pass

    cdef int check_usable(self) except -1:
        if self.closed_flag:
            raise RuntimeError('Event loop is closed')
        return self.io.check_usable()

    def _check_closed(self):
        # Also the forked-child refusal: BaseEventLoop checks this before creating tasks,
        # futures and running, so the child gets the clear error on every path.
        if self.closed_flag or self.io.forked:
            self.check_usable()

    def is_closed(self):
        """Return True if the event loop was closed."""
        return self.closed_flag

    def is_running(self):
        """Return True if the event loop is running."""
        return self.running_flag

    def get_debug(self):
        return self.debug_flag

    def set_debug(self, enabled):
        self.debug_flag = bool(enabled)
        if self.running_flag:
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, self.debug_flag)

    def time(self):
        """Return the time according to the event loop's clock (time.monotonic())."""
        return monotonic()

    # -- scheduling -------------------------------------------------------------------------

    cdef inline Handle new_handle(self, callback, tuple args, context):
        cdef Handle h = Handle.__new__(Handle)
        h.callback = callback
        h.args = args
        h.loop = self
        h.context = PyContext_CopyCurrent() if context is None else context
        if self.debug_flag:
            # Cython functions push no frame: frame 0 is already the Python caller.
            h.source_traceback = format_helpers.extract_stack(sys._getframe(0))
        return h

    def call_soon(self, callback, *args, context=None):
        """Arrange for a callback to be called as soon as possible, in FIFO order."""
        if self.closed_flag or self.io.forked:
            self.check_usable()
        if self.debug_flag:
            self._check_thread()
            self._check_callback(callback, 'call_soon')
        cdef Handle h = self.new_handle(callback, args, context)
        if self.ready_threadsafe:
            # Callbacks another thread queued before this call come first (asyncio keeps one
            # FIFO for both).
            while self.ready_threadsafe:
                self.ready.append(self.ready_threadsafe.popleft())
        self.ready.append(h)
        return h

    def call_soon_threadsafe(self, callback, *args, context=None):
        """Like call_soon(), but thread-safe: wakes the loop from another thread."""
        if self.closed_flag or self.io.forked:
            self.check_usable()
        if self.debug_flag:
            self._check_callback(callback, 'call_soon_threadsafe')
        cdef Handle h = self.new_handle(callback, args, context)
        self.ready_threadsafe.append(h)
        self.wake()
        return h

    def _write_to_self(self):
        self.wake()

    cdef void wake(self):
        cdef uint64_t one = 1
        # One write per wake-up is enough: the flag is cleared when the eventfd READ
        # completes, before the thread-safe queue is drained, so no callback is stranded.
        if self.wakeup_armed_write or self.wakeup_fd < 0:
            return
        self.wakeup_armed_write = True
        # Keep the GIL: an eventfd write never blocks, and releasing the GIL here hands it to
        # the loop thread once per callback posted, which halves throughput under load.
        fd_write(self.wakeup_fd, &one, 8)

    def call_later(self, delay, callback, *args, context=None):
        """Arrange for a callback to be called after `delay` seconds."""
        if delay is None:
            raise TypeError('delay must not be None')
        cdef double d = delay
        if self.closed_flag or self.io.forked:
            self.check_usable()
        if self.debug_flag:
            self._check_thread()
            self._check_callback(callback, 'call_later')
        return self.schedule_timer(monotonic() + d, callback, args, context)

    def call_at(self, when, callback, *args, context=None):
        """Arrange for a callback to be called at absolute time `when` (loop.time())."""
        if when is None:
            raise TypeError("when cannot be None")
        if self.closed_flag or self.io.forked:
            self.check_usable()
        if self.debug_flag:
            self._check_thread()
            self._check_callback(callback, 'call_at')
        return self.schedule_timer(when, callback, args, context)

    cdef TimerHandle schedule_timer(self, double when, callback, tuple args, context):
        cdef TimerHandle th = TimerHandle.__new__(TimerHandle)
        th.callback = callback
        th.args = args
        th.loop = self
        th.context = PyContext_CopyCurrent() if context is None else context
        if self.debug_flag:
            th.source_traceback = format_helpers.extract_stack(sys._getframe(0))
        th.when_ = when
        self.timers.push(th)
        return th

    def create_future(self):
        """Create a Future object attached to the loop."""
        return Future(loop=self)

    def _timer_handle_cancelled(self, handle):
        if (<TimerHandle>handle).scheduled:
            self.timers.cancelled += 1

    def stop(self):
        """Stop running the event loop after the current iteration."""
        self.stopping_flag = True

    # -- the iteration ------------------------------------------------------------------------

    def ring_stats(self):
        """A read-only snapshot of the ring: capacity (SQ entries, as the kernel reports them),
        cq_capacity, pending operations, resizes up and down, SQEs submitted, CQEs completed,
        io_uring_enter calls, loop iterations, how many resizes were migrations to a new ring,
        how this kernel resizes ('in-place', or 'migration' before Linux 6.13), the seconds
        spent resizing (settling a migration included), and how many iteration entries kept
        an oversized ring because the resize budget was spent."""
        cdef Ring ring = self.io.ring
        if ring.opened:
            cap = ring.kernel_sq_entries()
            cq = ring.r.cq_entries
        else:
            cap = cq = 0
        cdef RingCounters n = ring.counters
        return RingStats(cap, cq, self.io.slab.live, n.resizes_up, n.resizes_down, n.submitted,
                         n.completed, n.enters, self.iterations, n.migrations,
                         'in-place' if ring.can_resize else 'migration',
                         n.resize_time, n.shrinks_deferred)

    def _resize_by_migration(self):
        """Testing aid: from now on this loop resizes its ring as on a kernel without
        IORING_REGISTER_RESIZE_RINGS."""
        self.io.ring.can_resize = False

    def _fail_next_sqes(self, unsigned n):
        """Testing aid: the next n requests for an SQE fail with ENOMEM."""
        self.io.ring.failing_sqes = n

    def _set_iteration_observer(self, observer):
        """Testing aid: observer(ring_stats()) is called at every iteration entry, right after
        the ring has been sized, before anything is submitted. None removes it."""
        self.iteration_observer = observer

    cdef int run_once(self) except -1:
        """One iteration, asyncio's cycle: size the ring to what is pending, poll (submit and
        wait in one io_uring_enter, then collect), run the batch that is ready: the callbacks
        queued before the poll, then the completions, then the timers that are due.

        Operations that a batch or a completion handler starts are staged (Operation.stage):
        their SQEs are made in poll(), after this entry's ring fit and right before the
        enter, so a SEND that completes inline is submitted and reaped between two entries
        and never counts in `pending`. Prepared on the spot, each in-flight SEND would count
        at the next entry and swing `pending` across a power of two every few iterations."""
        self.iterations += 1
        self.io.fit(self.debug_flag)
        if self.iteration_observer is not None:
            self.iteration_observer(self.ring_stats())
        self.poll()
        self.run_ready()
        if self.stopping_flag:
            # The batch that called stop() is the last one; what it staged still goes to the
            # kernel now. Its completion waits for the next dispatch.
            self.io.submit_now(self.debug_flag)
        return 0

    cdef int poll(self) except -1:
        """Submit what is queued, wait for the first completion (or the next timer), and turn
        completions, cross-thread calls and due timers into the next batch."""
        cdef TimerHeap timers = self.timers
        cdef list heap = timers.handles
        cdef Py_ssize_t ntimers = len(heap)
        cdef TimerHandle th
        cdef double timeout, end_time
        cdef long long timeout_ns

        if (ntimers > MIN_CANCELLED_TIMERS and
                timers.cancelled > ntimers * MIN_CANCELLED_FRACTION):
            timers.drop_cancelled()
            heap = timers.handles
        else:
            while heap and (<TimerHandle>heap[0]).is_cancelled:
                timers.pop()
                timers.cancelled -= 1

        if self.ready or self.ready_threadsafe or self.stopping_flag:
            timeout_ns = 0
        elif heap:
            timeout = timers.keys[0].when - monotonic()
            if timeout < 0:
                timeout = 0
            elif timeout > MAXIMUM_WAIT:
                timeout = MAXIMUM_WAIT
            timeout_ns = <long long>(timeout * 1e9)
        else:
            timeout_ns = -1

        self.io.wait(timeout_ns, self.debug_flag)

        while self.ready_threadsafe:
            self.ready.append(self.ready_threadsafe.popleft())
        # As in asyncio, the I/O of this poll runs after the callbacks already queued and
        # before the timers that are due now.
        self.io_position = len(self.ready)

        if not heap:
            return 0
        end_time = monotonic() + self.clock_resolution
        while heap:
            if timers.keys[0].when >= end_time:
                break
            th = timers.pop()
            if th.is_cancelled:
                timers.cancelled -= 1
            else:
                self.ready.append(th)
        return 0

    cdef int run_ready(self) except -1:
        """Run the handles that are ready now, with the completions the poll collected at
        io_position among them; callbacks they schedule wait for the next batch, after the
        ring has been polled again."""
        cdef Py_ssize_t i, ntodo, io_position
        cdef Handle h
        cdef list todo = self.ready
        self.ready = self.ready_spare
        ntodo = len(todo)
        io_position = self.io_position
        self.io_position = 0
        i = 0
        try:
            while True:
                if i == io_position:
                    self.io.dispatch_completions()
                if i >= ntodo:
                    break
                h = <Handle>todo[i]
                # Drop the queue's reference now, as asyncio does: an object whose last owner
                # is this handle (a finished task) must be finalized before the next one runs.
                todo[i] = None
                i += 1
                if h.is_cancelled:
                    continue
                self.run_handle(h)
                h = None
        finally:
            h = None
            if i < ntodo:
                # A callback raised SystemExit/KeyboardInterrupt: keep the rest for later.
                self.ready[:0] = todo[i:ntodo]
            todo.clear()
            self.ready_spare = todo
        return 0

    cdef int run_handle(self, Handle h) except -1:
        cdef double t0, dt
        if self.debug_flag:
            self._current_handle = h
            t0 = monotonic()
            try:
                h.run()
            finally:
                self._current_handle = None
            dt = monotonic() - t0
            if dt >= self.slow_callback_duration:
                logger.warning('Executing %s took %.3f seconds',
                               base_events._format_handle(h), dt)
        else:
            h.run()
        return 0

    def _check_running(self):
        if self.running_flag:
            raise RuntimeError('This event loop is already running')
        if events._get_running_loop() is not None:
            raise RuntimeError('Cannot run the event loop while another loop is running')
        # Refuse before run_until_complete wraps its argument in a task that would never run.
        self.check_usable()
        self.io.ring.check_thread()

    def run_forever(self):
        """Run the event loop until stop() is called."""
        self._check_closed()
        self._check_running()
        self.io.ring.enable()
        self._set_coroutine_origin_tracking(self.debug_flag)
        old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                               finalizer=self._asyncgen_finalizer_hook)
        self.running_flag = True
        try:
            events._set_running_loop(self)
            while True:
                self.run_once()
                if self.stopping_flag:
                    break
        finally:
            self.stopping_flag = False
            self.running_flag = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    # -- closing ------------------------------------------------------------------------------

    def close(self):
        """Close the event loop: cancel and reap every in-flight operation, release the ring,
        shut the default executor down without waiting. The loop must not be running."""
        if self.running_flag:
            raise RuntimeError("Cannot close a running event loop")
        if self.closed_flag:
            return
        if self.debug_flag:
            logger.debug("Close %r", self)
        self.io.close(monotonic() + DRAIN_TIMEOUT)
        self.closed_flag = True
        self.ready.clear()
        self.ready_threadsafe.clear()
        self.timers.clear()
        if self.wakeup_fd >= 0:
            fd_close(self.wakeup_fd)
            self.wakeup_fd = -1
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def __dealloc__(self):
        if self.wakeup_fd >= 0:
            fd_close(self.wakeup_fd)
            self.wakeup_fd = -1
