# Layer 3: the loop core. Scheduling (ready queue, timer heap), the iteration, and the ring's
# self-sizing. Generic asyncio logic that does not touch the mechanism (executors, DNS,
# exception handler, task factory, async generators, create_connection's address juggling)
# comes from asyncio.BaseEventLoop, which the public Loop class also inherits: that is the
# split CPython draws between base_events.py and its selector/proactor mechanisms.

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
# How long an enter that submitted staged SENDs on a busy loop holds out for two events beyond
# their own completions (see CoreLoop.poll): the most latency that batching can add.
cdef unsigned BATCH_WAIT_US = 50
# A heap with more cancelled timers than this share of its size gets compacted.
cdef Py_ssize_t MIN_CANCELLED_TIMERS = 100
cdef double MIN_CANCELLED_FRACTION = 0.5
# The longest wait while a ring replaced by a migration still has completions to come: they
# cannot end the current ring's io_uring_enter, so the loop looks at the old ring this often.
cdef long long DRAINING_WAIT_NS = 1000 * 1000
# How many migrations one iteration entry may make while settling changes `pending`.
cdef int MIGRATION_ATTEMPTS = 4
# The most a migration waits at the iteration entry for the old ring's answers. Cancelled
# armed operations answer at once; only work the kernel does off our thread (io-wq) can
# take longer, and what is left then drains in later iterations.
cdef double MIGRATION_SETTLE = 0.25
# Resizing may take at most this fraction of the loop's time, plus RESIZE_BURST: a shrink
# waits until the loop has earned it (ResizeBudget), so no workload spends its time resizing.
cdef double RESIZE_SHARE = 1.0 / 64
cdef double RESIZE_BURST = 0.02
# The longest a shrink waits: a ring oversized by one huge resize (a migration of tens of
# thousands of operations) still comes back to size soon after the load has gone.
cdef double MAX_SHRINK_DELAY = 2.0
# How long close() waits for cancelled operations to deliver their final CQE.
cdef double DRAIN_TIMEOUT = 5.0

# Records whose final CQE never came before their ring was closed (close() from a thread the
# ring is not bound to, or a drain that timed out). The kernel may still write into their
# memory while it tears the ring down, so they are kept alive for the life of the process.
cdef list _orphaned_operations = []

cdef object _all_loops = weakref.WeakSet()


def _after_fork_in_child():
    for loop in list(_all_loops):
        (<CoreLoop>loop).forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


cdef class ResizeBudget:
    """What bounds the cost of following `pending`. Resizing is a syscall that copies the
    rings (a migration before Linux 6.13 also moves every armed operation), so a pending count
    that swings widely at every round-trip could spend most of the loop's time resizing. The
    loop earns RESIZE_SHARE of the time that passes as credit (at most RESIZE_BURST banked),
    every resize spends what it took, and a shrink waits while the credit is negative (at
    most MAX_SHRINK_DELAY). Growing never waits: only shrinks make room for the next grow, so
    bounding shrinks bounds both."""

    def __cinit__(self):
        self.credit = RESIZE_BURST
        self.refilled_at = monotonic()

    cdef int refill(self, double now, double spent) except -1:
        """Credit the time since the last refill and charge the resizing done since."""
        self.credit += (now - self.refilled_at) * RESIZE_SHARE - (spent - self.spent_seen)
        if self.credit > RESIZE_BURST:
            self.credit = RESIZE_BURST
        elif self.credit < -MAX_SHRINK_DELAY * RESIZE_SHARE:
            self.credit = -MAX_SHRINK_DELAY * RESIZE_SHARE
        self.refilled_at = now
        self.spent_seen = spent
        return 0

    cdef double shrink_due(self):
        """When a deferred shrink may go ahead: the monotonic time the credit is back at 0."""
        if self.credit >= 0:
            return self.refilled_at
        return self.refilled_at - self.credit / RESIZE_SHARE


cdef class CoreLoop:
    def __cinit__(self):
        self.ring = Ring()
        self.bufpool = BufPool.__new__(BufPool)
        self.bufpool.ring = self.ring
        self.resize_budget = ResizeBudget()
        self.slab = OpSlab()
        self.ready = []
        self.ready_spare = []
        self.staged = []
        self.draining = []
        self.ready_threadsafe = collections.deque()
        self.timers = []
        self.closed_flag = True        # until the ring exists: __del__ must not warn
        self.wakeup_fd = -1

    def __init__(self):
        cdef int fd
        # Sized for its idle state: the wake-up read is always pending.
        self.ring.open(2)
        fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if fd < 0:
            self.ring.close()
            err = errno
            raise OSError(err, 'eventfd: ' + os.strerror(err))
        self.wakeup_fd = fd
        self.owner_pid = os.getpid()
        self.clock_resolution = time.get_clock_info('monotonic').resolution
        self.closed_flag = False
        self.wakeup_op = WakeupRead.__new__(WakeupRead)
        self.wakeup_op.loop = self
        (<WakeupRead>self.wakeup_op).arm()
        _all_loops.add(self)

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
        return self.timers

    @_scheduled.setter
    def _scheduled(self, value):
        pass

    cdef int check_usable(self) except -1:
        if self.closed_flag:
            raise RuntimeError('Event loop is closed')
        self.ring.check_mapped()
        if self.forked:
            raise RuntimeError(
                'this uringloop loop was created in the parent process before fork(); its '
                'io_uring belongs to the parent. Create a new loop in the child '
                '(uringloop.new_event_loop()).')
        return 0

    def _check_closed(self):
        # Also the forked-child refusal: BaseEventLoop checks this before creating tasks,
        # futures and running, so the child gets the clear error on every path.
        if self.closed_flag or self.forked:
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
        if self.closed_flag or self.forked:
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
        if self.closed_flag or self.forked:
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
        if self.closed_flag or self.forked:
            self.check_usable()
        if self.debug_flag:
            self._check_thread()
            self._check_callback(callback, 'call_later')
        return self.schedule_timer(monotonic() + d, callback, args, context)

    def call_at(self, when, callback, *args, context=None):
        """Arrange for a callback to be called at absolute time `when` (loop.time())."""
        if when is None:
            raise TypeError("when cannot be None")
        if self.closed_flag or self.forked:
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
        self.push_timer(th)
        return th

    def create_future(self):
        """Create a Future object attached to the loop."""
        return Future(loop=self)

    def _timer_handle_cancelled(self, handle):
        if (<TimerHandle>handle).scheduled:
            self.timers_cancelled += 1

    cdef int push_timer(self, TimerHandle th) except -1:
        cdef list heap = self.timers
        cdef Py_ssize_t pos, parent
        cdef TimerHandle p
        th.seq = self.timer_seq
        self.timer_seq += 1
        th.scheduled = True
        heap.append(th)
        pos = len(heap) - 1
        while pos > 0:
            parent = (pos - 1) >> 1
            p = <TimerHandle>heap[parent]
            if p.when_ < th.when_ or (p.when_ == th.when_ and p.seq < th.seq):
                break
            heap[pos] = p
            pos = parent
        heap[pos] = th
        return 0

    cdef TimerHandle pop_timer(self):
        cdef list heap = self.timers
        cdef TimerHandle top = <TimerHandle>heap[0]
        cdef TimerHandle last = <TimerHandle>heap.pop()
        cdef Py_ssize_t n = len(heap), pos = 0, child
        cdef TimerHandle c, r
        top.scheduled = False
        if n == 0:
            return top
        while True:
            child = 2 * pos + 1
            if child >= n:
                break
            c = <TimerHandle>heap[child]
            if child + 1 < n:
                r = <TimerHandle>heap[child + 1]
                if r.when_ < c.when_ or (r.when_ == c.when_ and r.seq < c.seq):
                    child += 1
                    c = r
            if last.when_ < c.when_ or (last.when_ == c.when_ and last.seq < c.seq):
                break
            heap[pos] = c
            pos = child
        heap[pos] = last
        return top

    cdef int rebuild_timers(self) except -1:
        cdef list live = []
        cdef TimerHandle th
        for th in self.timers:
            if th.is_cancelled:
                th.scheduled = False
            else:
                live.append(th)
        self.timers = []
        self.timers_cancelled = 0
        # Re-push in (when, seq) order keeps FIFO among equal deadlines.
        live.sort(key=_timer_key)
        for th in live:
            self.timers.append(th)
            th.scheduled = True
        return 0

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
        if self.ring.opened:
            cap = self.ring.kernel_sq_entries()
            cq = self.ring.r.cq_entries
        else:
            cap = cq = 0
        cdef RingCounters n = self.ring.counters
        return RingStats(cap, cq, self.slab.live, n.resizes_up, n.resizes_down, n.submitted,
                         n.completed, n.enters, self.iterations, n.migrations,
                         'in-place' if self.ring.can_resize else 'migration',
                         n.resize_time, n.shrinks_deferred)

    def _resize_by_migration(self):
        """Testing aid: from now on this loop resizes its ring as on a kernel without
        IORING_REGISTER_RESIZE_RINGS."""
        self.ring.can_resize = False

    def _fail_next_sqes(self, unsigned n):
        """Testing aid: the next n requests for an SQE fail with ENOMEM."""
        self.ring.failing_sqes = n

    def _set_iteration_observer(self, observer):
        """Testing aid: observer(ring_stats()) is called at every iteration entry, right after
        the ring has been sized, before anything is submitted. None removes it."""
        self.iteration_observer = observer

    cdef int fit_ring(self) except -1:
        """Size the ring for the operations pending at this iteration entry (DESIGN.md). With
        `need` the smallest power of two above `pending` (capped at the kernel's largest), the
        SQ holds `need` or the next power of two up. A ring below that grows to `need` at once.
        A ring above it shrinks to `need`, as a dynamic array shrinks at a quarter full, as
        soon as the resize budget allows; until then it keeps its size. So a pending count
        wavering around a power of two resizes nothing, and no workload spends more than its
        budget's share of the loop's time resizing."""
        cdef unsigned want, need, size
        cdef int attempts = 0
        cdef bint shrink_deferred = False
        self.resize_budget.refill(monotonic(), self.ring.counters.resize_time)
        while True:
            want = next_power_of_two(self.slab.live + 1)
            need = want if want < UL_SQ_MAX else UL_SQ_MAX
            size = self.ring.r.sq_entries
            if ring_size_fits(size, need):
                break
            if size > need and self.resize_budget.credit < 0:
                shrink_deferred = True
                self.ring.counters.shrinks_deferred += 1
                break
            if self.ring.can_resize:
                self.ring.resize(need)
                self.slab.fit(want)
                break
            # A migration settles the old ring's completions, which can change `pending`
            # again (a receive that ended for good, a connection that arrived): fit again.
            attempts += 1
            if attempts > MIGRATION_ATTEMPTS or not self.migrate(need):
                break
            self.slab.fit(want)
        if self.ring.counters.resize_time != self.resize_budget.spent_seen:
            self.resize_budget.refill(monotonic(), self.ring.counters.resize_time)
        self.shrink_wake_at = self.resize_budget.shrink_due() if shrink_deferred else 0
        if self.debug_flag:
            cap = self.ring.kernel_sq_entries()
            if cap < need or (cap > 2 * need and not shrink_deferred) or \
                    self.ring.r.cq_entries != 2 * cap:
                raise AssertionError(
                    'ring invariant broken at iteration entry: SQ %d CQ %d for %d pending'
                    % (cap, self.ring.r.cq_entries, self.slab.live))
        if self.iteration_observer is not None:
            self.iteration_observer(self.ring_stats())
        return 0

    cdef bint migrate(self, unsigned sq_entries) except -1:
        """Resize where the kernel cannot resize a ring in place (before Linux 6.13): a new
        ring of the right size takes every submission from now on, and each operation that
        may wait on the old one for as long as a peer likes (receives, accepts, polls, the
        wake-up read) is cancelled there and resubmitted here once its cancellation is
        reaped (Operation.resubmit). Operations that finish promptly finish where they are.
        The old ring is serviced at every iteration until its last completion is in, then
        closed. A cancelled multishot receive loses nothing: unread bytes stay in the socket,
        and what it had already received arrives before its final CQE.

        When the kernel will not give a new ring (out of memory, out of file descriptors),
        the failure is reported and the loop carries on with the ring it has: it still takes
        every submission (a full SQ is flushed), and the next iteration entry tries again.
        Returns whether the ring was replaced."""
        cdef Ring old = self.ring
        cdef Ring new = Ring.__new__(Ring)
        cdef double started = monotonic()
        new.counters = old.counters
        try:
            new.open(sq_entries, False)
            new.can_resize = False
            new.read_multishot = old.read_multishot
            new.enable()
        except (IoUringUnavailable, OSError) as exc:
            new.close()
            self.call_exception_handler({
                'message': 'uringloop could not move to a ring of %d entries; it keeps its '
                           'ring of %d for now' % (sq_entries, old.r.sq_entries),
                'exception': exc,
            })
            new.counters.resize_time += monotonic() - started
            return False
        if ul_sq_queued(&old.r):
            old.enter(0, 0)
        self.ring = new
        self.draining.append(old)
        self.bufpool.follow_ring(new)
        self.move_operations()
        # Settle now, at the iteration entry: the cancellations of armed operations are
        # answered at once, and every moved operation is back in `pending` exactly once,
        # on the new ring, before anything else is counted. What the old ring still has
        # after that (work the kernel is doing off our thread) drains in later iterations.
        deadline = monotonic() + MIGRATION_SETTLE
        old.enter(0, 0)
        while True:
            self.dispatch_ring(old)
            if old.live == 0 or monotonic() >= deadline:
                break
            old.enter(1, DRAINING_WAIT_NS)
        self.settled_at_entry = True
        if sq_entries > old.r.sq_entries:
            new.counters.resizes_up += 1
        else:
            new.counters.resizes_down += 1
        new.counters.migrations += 1
        new.counters.resize_time += monotonic() - started
        return True

    cdef int move_operations(self) except -1:
        """Ask every movable operation still on a replaced ring to move (see migrate()).
        One that cannot be asked now (its cancel request failed) is reported and asked
        again at the next iteration."""
        cdef Operation op
        for op in [r for r in self.slab.records if r is not None]:
            if op.ring is not None and op.ring is not self.ring and not op.cancelling \
                    and op.movable():
                try:
                    op.cancel()
                except Exception as exc:
                    self.call_exception_handler({
                        'message': 'uringloop could not move %r to its new ring yet' % (op,),
                        'exception': exc,
                    })
                    self.moves_failed = True
                    continue
                op.moving = True
        return 0

    cdef int service_draining(self) except -1:
        """Submit what rings replaced by a migration have queued (cancel requests), run their
        task work and collect their completions; close those with nothing left in flight."""
        cdef Ring r
        for r in list(self.draining):
            if r.drained():
                r.close()
                self.draining.remove(r)
            elif not r.broken:
                r.enter(0, 0)
                r.reap()
        if self.draining and self.moves_failed:
            self.moves_failed = False
            self.move_operations()
        return 0

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
        self.fit_ring()
        self.poll()
        self.run_ready()
        if self.stopping_flag:
            # The batch that called stop() is the last one; what it staged still goes to the
            # kernel now, so a write made just before stop() is not held back until the loop
            # runs again. Its completion waits for the next dispatch.
            self.submit_staged()
            if ul_sq_queued(&self.ring.r):
                self.ring.enter(0, 0)
        return 0

    cdef int submit_staged(self) except -1:
        cdef list ops = self.staged
        cdef Operation op
        cdef Py_ssize_t i = 0
        # Buffers given back are offered to the kernel again before it is entered.
        self.bufpool.publish(self.unowned_buffer_cqes == 0, self.debug_flag)
        if not ops:
            return 0
        self.staged = []
        try:
            while i < len(ops):
                op = <Operation>ops[i]
                i += 1
                op.staged = False
                op.flush()
        finally:
            if i < len(ops):
                # A flush raised: the rest stay staged for the next submission, not forgotten
                # with their writes still counted as pending output.
                self.staged[:0] = ops[i:]
        return 0

    cdef int poll(self) except -1:
        """Submit what is queued, wait for the first completion (or the next timer), and turn
        completions, cross-thread calls and due timers into the next batch."""
        cdef Py_ssize_t ntimers
        cdef TimerHandle th
        cdef double timeout, end_time
        cdef long long timeout_ns, timeout_ns_shrink
        cdef unsigned queued, sends
        cdef uint64_t completed, events

        ntimers = len(self.timers)
        if (ntimers > MIN_CANCELLED_TIMERS and
                self.timers_cancelled > ntimers * MIN_CANCELLED_FRACTION):
            self.rebuild_timers()
        else:
            while self.timers and (<TimerHandle>self.timers[0]).is_cancelled:
                self.pop_timer()
                self.timers_cancelled -= 1

        if (self.ready or self.ready_threadsafe or self.stopping_flag or
                not self.ring.backlog_empty()):
            timeout_ns = 0
        elif self.timers:
            timeout = (<TimerHandle>self.timers[0]).when_ - monotonic()
            if timeout < 0:
                timeout = 0
            elif timeout > MAXIMUM_WAIT:
                timeout = MAXIMUM_WAIT
            timeout_ns = <long long>(timeout * 1e9)
        else:
            timeout_ns = -1

        if self.shrink_wake_at:
            # An idle loop would otherwise keep an oversized ring until its next event.
            timeout = self.shrink_wake_at - monotonic()
            timeout_ns_shrink = <long long>(timeout * 1e9) if timeout > 0 else 0
            if timeout_ns < 0 or timeout_ns > timeout_ns_shrink:
                timeout_ns = timeout_ns_shrink

        if self.draining:
            self.service_draining()
            if self.draining and (timeout_ns < 0 or timeout_ns > DRAINING_WAIT_NS):
                # Completions on a replaced ring cannot end this ring's wait.
                timeout_ns = DRAINING_WAIT_NS

        if self.settled_at_entry:
            # A migration at this entry already dispatched completions; what they re-armed
            # must not be submitted before their callbacks run (a level-triggered poll would
            # fire a second time for the same readiness), so this iteration makes no enter.
            self.settled_at_entry = False
            timeout_ns = 0
            sends = 0
            completed = self.ring.counters.completed
        else:
            queued = ul_sq_queued(&self.ring.r)
            self.submit_staged()
            sends = ul_sq_queued(&self.ring.r) - queued
            completed = self.ring.counters.completed
            self.enter_and_reap(timeout_ns, sends)
        completed = self.ring.counters.completed - completed
        events = completed - sends if completed > sends else 0
        self.batching = events >= 2

        while self.ready_threadsafe:
            self.ready.append(self.ready_threadsafe.popleft())
        # As in asyncio, the I/O of this poll runs after the callbacks already queued and
        # before the timers that are due now.
        self.io_position = len(self.ready)

        end_time = monotonic() + self.clock_resolution
        while self.timers:
            th = <TimerHandle>self.timers[0]
            if th.is_cancelled:
                self.pop_timer()
                self.timers_cancelled -= 1
                continue
            if th.when_ >= end_time:
                break
            self.pop_timer()
            self.ready.append(th)
        return 0

    cdef int enter_and_reap(self, long long timeout_ns, unsigned sends) except -1:
        if timeout_ns != 0:
            if sends and self.batching and \
                    (timeout_ns < 0 or timeout_ns > BATCH_WAIT_US * 1000):
                # Staged SENDs nearly always complete inline, during the submission, and
                # their CQEs alone would end the wait at once: one more enter per iteration
                # just to go back to sleep. On a busy loop (its last poll brought two events
                # or more) more events are near: wait for the SENDs plus two events, for at
                # most BATCH_WAIT_US; after that any completion ends the wait. So batching
                # costs at most that much latency (one event waiting for a second that does
                # not come, or a SEND held back by a full socket), never a hang. A loop
                # serving one request at a time would mostly see that bound expire, a second
                # wake-up per round-trip, and does not batch.
                self.ring.enter(2 + sends, timeout_ns, BATCH_WAIT_US)
            else:
                self.ring.enter(1, timeout_ns)
        elif ul_sq_queued(&self.ring.r) or ul_has_work(&self.ring.r):
            # Nothing to wait for, but SQEs to submit or completions to collect. When neither
            # holds (TASKRUN_FLAG tells us), a busy iteration skips the syscall entirely.
            self.ring.enter(0, 0)
        self.ring.reap()
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
                    self.dispatch_completions()
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

    cdef int dispatch_completions(self) except -1:
        """Hand every completion to its operation, in the kernel's order. Each CQE is taken
        off the backlog before its handler runs: a handler that raises SystemExit or
        KeyboardInterrupt has had its completion, and the rest of the batch waits in the
        backlog for the next dispatch, none lost and none delivered twice."""
        cdef Ring ring
        if self.draining:
            for ring in list(self.draining):
                self.dispatch_ring(ring)
        return self.dispatch_ring(self.ring)

    cdef int dispatch_ring(self, Ring ring) except -1:
        cdef ul_cqe c
        cdef Operation op
        cdef bint final
        while True:
            if ring.harvest_head == ring.harvest_tail and ring.reap() == 0:
                return 0
            c = ring.harvest[ring.harvest_head]
            ring.harvest_head += 1
            op = self.slab.lookup(c.user_data)
            if op is None:
                # A stale completion for a slot that moved on. If it carried a provided
                # buffer, the buffer ring's head count is off from now on.
                if c.flags & IORING_CQE_F_BUFFER:
                    self.unowned_buffer_cqes += 1
                continue
            final = (c.flags & IORING_CQE_F_MORE) == 0
            if final:
                self.slab.release(op)
            try:
                if final and op.moving:
                    op.moving = False
                    op.cancelling = False        # the migration's cancel, answered now
                    if c.res == -ECANCELED and not self.closing_flag and op.resubmit():
                        continue
                op.complete(c.res, c.flags, final)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.call_exception_handler({
                    'message': 'Exception in completion of %r' % (op,),
                    'exception': exc,
                })

    def _check_running(self):
        if self.running_flag:
            raise RuntimeError('This event loop is already running')
        if events._get_running_loop() is not None:
            raise RuntimeError('Cannot run the event loop while another loop is running')
        # Refuse before run_until_complete wraps its argument in a task that would never run.
        self.check_usable()
        self.ring.check_thread()

    def run_forever(self):
        """Run the event loop until stop() is called."""
        self._check_closed()
        self._check_running()
        self.ring.enable()
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

    cdef int drain_operations(self, double deadline) except -1:
        """Cancel every operation still in the kernel and reap until each final CQE is in.
        Completions handled meanwhile may re-arm operations (a level-triggered poll, a
        multishot receive): every pass cancels whatever is live and not yet cancelled."""
        cdef Operation op
        while self.slab.live and monotonic() < deadline:
            for op in [r for r in self.slab.records if r is not None]:
                if not op.cancelling and not isinstance(op, CancelOp):
                    op.cancel()
            if self.draining:
                self.service_draining()
            self.ring.enter(1, DRAINING_WAIT_NS if self.draining else 50 * 1000 * 1000)
            self.dispatch_completions()
        return 0

    def close(self):
        """Close the event loop: cancel and reap every in-flight operation, release the ring,
        shut the default executor down without waiting. The loop must not be running."""
        if self.running_flag:
            raise RuntimeError("Cannot close a running event loop")
        if self.closed_flag:
            return
        if self.debug_flag:
            logger.debug("Close %r", self)
        self.closing_flag = True
        if self.ring.enabled and not self.forked and not self.ring.broken and \
                threading.get_ident() == self.ring.owner_thread:
            self.drain_operations(monotonic() + DRAIN_TIMEOUT)
        if self.slab.live and self.ring.enabled:
            # The kernel may still write into these records' memory while it tears the ring
            # down: they must outlive this loop.
            _orphaned_operations.extend(r for r in self.slab.records if r is not None)
        self.closed_flag = True
        self.staged.clear()         # never prepared: the kernel has not seen them
        self.ready.clear()
        self.ready_threadsafe.clear()
        self.timers.clear()
        self.ring.close()
        for ring in self.draining:
            (<Ring>ring).close()
        self.draining.clear()
        if self.wakeup_fd >= 0:
            fd_close(self.wakeup_fd)
            self.wakeup_fd = -1
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def __dealloc__(self):
        if self.ring is not None and self.ring.opened and self.slab is not None \
                and self.slab.live and self.ring.enabled:
            _orphaned_operations.extend(r for r in self.slab.records if r is not None)
        if self.wakeup_fd >= 0:
            fd_close(self.wakeup_fd)
            self.wakeup_fd = -1


def _timer_key(TimerHandle th):
    return (th.when_, th.seq)
