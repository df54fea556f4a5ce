# Layer 2: the I/O manager, the one object through which the loop core drives the kernel. It
# owns the ring, the operation slab, the provided-buffer pool and the resize budget; it fits
# the ring at every iteration entry (migrating where the kernel cannot resize), submits the
# staged operations, enters and reaps, and hands each completion to its operation. The loop
# core (loop/core.pyx) calls it through fit(), wait(), dispatch_completions(), submit_now()
# and close(); it knows nothing of the loop above it, and reports failures through the
# callable it was given.

from libc.stdint cimport uint64_t, int32_t

# How long an enter that submitted staged SENDs on a busy loop holds out for two events beyond
# their own completions (see IOManager.wait): the most latency that batching can add.
cdef unsigned BATCH_WAIT_US = 50
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

# Records whose final CQE never came before their ring was closed (close() from a thread the
# ring is not bound to, or a drain that timed out). The kernel may still write into their
# memory while it tears the ring down, so they are kept alive for the life of the process.
cdef list _orphaned_operations = []

cdef object _all_io_managers = weakref.WeakSet()


def _after_fork_in_child():
    for io in list(_all_io_managers):
        (<IOManager>io).forked = True


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


cdef class IOManager:
    def __cinit__(self):
        self.ring = Ring()
        self.bufpool = BufPool.__new__(BufPool)
        self.bufpool.ring = self.ring
        self.resize_budget = ResizeBudget()
        self.slab = OpSlab()
        self.staged = []
        self.draining = []

    def __init__(self, report_error):
        # Sized for its idle state: the loop's wake-up read is always pending.
        self.ring.open(2)
        self.report_error = report_error
        _all_io_managers.add(self)

    cdef int check_usable(self) except -1:
        if not self.ring.opened:
            raise RuntimeError('Event loop is closed')
        self.ring.check_mapped()
        if self.forked:
            raise RuntimeError(
                'this uringloop loop was created in the parent process before fork(); its '
                'io_uring belongs to the parent. Create a new loop in the child '
                '(uringloop.new_event_loop()).')
        return 0

    # -- at the iteration entry: the ring follows `pending` ---------------------------------

    cdef int fit(self, bint verify) except -1:
        """Size the ring for the operations pending at this iteration entry (DESIGN.md). With
        `need` the smallest power of two above `pending` (capped at the kernel's largest), the
        SQ holds `need` or the next power of two up. A ring below that grows to `need` at once.
        A ring above it shrinks to `need`, as a dynamic array shrinks at a quarter full, as
        soon as the resize budget allows; until then it keeps its size. So a pending count
        wavering around a power of two resizes nothing, and no workload spends more than its
        budget's share of the loop's time resizing. verify: check the invariant afterwards."""
        cdef unsigned want, need, size
        cdef int attempts = 0
        cdef bint shrink_deferred = False
        while True:
            want = next_power_of_two(self.slab.live + 1)
            need = want if want < UL_SQ_MAX else UL_SQ_MAX
            size = self.ring.r.sq_entries
            if ring_size_fits(size, need):
                break
            # The credit is brought up to date only when it decides something: it grows
            # with time alone between two resizes, and every resize is charged just below.
            self.resize_budget.refill(monotonic(), self.ring.counters.resize_time)
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
        if verify:
            cap = self.ring.kernel_sq_entries()
            if cap < need or (cap > 2 * need and not shrink_deferred) or \
                    self.ring.r.cq_entries != 2 * cap:
                raise AssertionError(
                    'ring invariant broken at iteration entry: SQ %d CQ %d for %d pending'
                    % (cap, self.ring.r.cq_entries, self.slab.live))
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
            self.report_error({
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
                    self.report_error({
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

    # -- the poll: submit, wait, reap ------------------------------------------------------

    cdef int submit_staged(self, bint verify) except -1:
        cdef list ops = self.staged
        cdef Operation op
        cdef Py_ssize_t i = 0
        # Buffers given back are offered to the kernel again before it is entered.
        self.bufpool.publish(self.unowned_buffer_cqes == 0, verify)
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

    cdef int submit_now(self, bint verify) except -1:
        """Hand the kernel what is staged and queued without waiting (the loop stops: a
        write made just before stop() is not held back until it runs again)."""
        self.submit_staged(verify)
        if ul_sq_queued(&self.ring.r):
            self.ring.enter(0, 0)
        return 0

    cdef int wait(self, long long timeout_ns, bint verify) except -1:
        """The iteration's poll: submit what is staged and queued and wait in one enter for
        the first completion, at most timeout_ns (-1: no bound), then copy every completion
        into the backlog for dispatch_completions(). The wait is shortened for a completion
        already in the backlog, a shrink the resize budget put off, and rings still draining
        after a migration."""
        cdef double timeout
        cdef long long timeout_ns_shrink
        cdef unsigned queued, sends
        cdef uint64_t completed, events
        if timeout_ns != 0 and not self.ring.backlog_empty():
            timeout_ns = 0
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
            sends = 0
            completed = self.ring.counters.completed
        else:
            queued = ul_sq_queued(&self.ring.r)
            self.submit_staged(verify)
            sends = ul_sq_queued(&self.ring.r) - queued
            completed = self.ring.counters.completed
            self.enter_and_reap(timeout_ns, sends)
        completed = self.ring.counters.completed - completed
        events = completed - sends if completed > sends else 0
        self.batching = events >= 2
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

    # -- completions -------------------------------------------------------------------------

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
                    if c.res == -ECANCELED and not self.closing and op.resubmit():
                        continue
                op.complete(c.res, c.flags, final)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.report_error({
                    'message': 'Exception in completion of %r' % (op,),
                    'exception': exc,
                })

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

    cdef int close(self, double deadline) except -1:
        """Cancel and reap every operation in flight (until deadline), then release the
        rings. Completions handled from here on see `closing` and do not re-arm."""
        self.closing = True
        if self.ring.enabled and not self.forked and not self.ring.broken and \
                threading.get_ident() == self.ring.owner_thread:
            self.drain_operations(deadline)
        self.orphan_live_operations()
        self.staged.clear()         # never prepared: the kernel has not seen them
        self.ring.close()
        for ring in self.draining:
            (<Ring>ring).close()
        self.draining.clear()
        return 0

    cdef void orphan_live_operations(self):
        # The kernel may still write into these records' memory while it tears the ring
        # down: they must outlive this manager.
        if self.ring is not None and self.ring.opened and self.slab is not None \
                and self.slab.live and self.ring.enabled:
            _orphaned_operations.extend(r for r in self.slab.records if r is not None)

    def __dealloc__(self):
        self.orphan_live_operations()
