# Layer 4, the operation records a stream transport keeps in flight: what every kind shares.
# Each transport kind's file (socket.pyx, pipes.pyx) subclasses them with the opcode it uses.
#   - RecvOp: one multishot receive per connection, picking buffers from the loop's
#     provided-buffer ring. It stays armed across messages, so `pending` counts it once; when
#     a CQE comes without F_MORE (ENOBUFS, CQ overflow, a buffer-group move) it is re-armed
#     if reading is wanted.
#   - SendOp: at most one SEND or WRITE in flight; writes made meanwhile are queued and leave
#     together in the next one, so a busy connection batches its writes.

# The most bytes one read or write syscall (or SQE) moves: INT_MAX rounded down to a page.
cdef Py_ssize_t MAX_RW_COUNT = 0x7ffff000


cdef inline bint enter_context(context) except -1:
    """Enter a transport's contextvars context around a completion. False when it is
    already the current one (a completion reaped from inside one of its own callbacks):
    a context cannot be entered twice, and the callbacks then run in it anyway."""
    try:
        PyContext_Enter(context)
    except RuntimeError:
        return False
    return True


cdef class StreamOp(LoopOperation):
    """An operation a Stream owns. Its completion is handled with the loop's
    in_stream_completion flag set, so the callbacks it triggers run in the next iteration, as
    asyncio schedules them from an fd's I/O callback."""
    cdef Stream stream

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        cdef CoreLoop loop = self.loop
        # The protocol's callbacks run in the transport's context, as asyncio runs them.
        cdef object context = self.stream.context
        cdef bint entered = enter_context(context)
        loop.in_stream_completion = True
        try:
            return self.handle(res, flags, final)
        finally:
            loop.in_stream_completion = False
            if entered:
                PyContext_Exit(context)

    cdef int handle(self, int32_t res, uint32_t flags, bint final) except -1:
        return 0


cdef StreamOp bind_op(StreamOp op, Stream stream):
    """op, made the operation of stream (on stream's loop)."""
    attach(op, stream.loop)
    op.stream = stream
    return op


cdef int move_off_retired(BufPool pool) except -1:
    """Ask the receives still armed on the group the pool just replaced to move: each
    re-arms on the current group from its final CQE."""
    cdef BufGroup old = pool.retired
    cdef RecvOp op
    if old is None:
        return 0
    pool.retired = None
    for op in list(pool.receivers):
        if op.group is old:
            op.rearm = True
            op.cancel()
    return 0


cdef class RecvOp(StreamOp):
    """The multishot receive of one Stream, on a buffer group of the loop's pool."""
    cdef BufGroup group          # the group the receive is armed on
    cdef bint rearm              # re-arm when the pending cancel lands (group move, resume)

    cdef int arm(self) except -1:
        return self.arm_multishot()

    cdef int arm_multishot(self) except -1:
        cdef BufPool pool = self.io.bufpool
        cdef BufGroup g = pool.group_for_arm()
        move_off_retired(pool)
        cdef io_uring_sqe *sqe = self.prepare()
        self.cancelling = False
        self.group = g
        g.users += 1
        pool.receivers.add(self)
        sqe.fd = self.stream.fd
        sqe.flags = IOSQE_BUFFER_SELECT
        sqe.buf_group = g.pbr.bgid
        return self.set_opcode(sqe, g)

    cdef int set_opcode(self, io_uring_sqe *sqe, BufGroup g) except -1:
        """Make sqe the receive this kind of stream uses, picking a buffer from g."""
        raise NotImplementedError

    cdef void leave_group(self, BufGroup g):
        g.users -= 1

    cdef bint picks_buffers(self):
        """Whether the receive in flight takes its buffers from the pool."""
        return True

    cdef bint movable(self):
        return True

    cdef int resubmit(self) except -1:
        # finish() re-arms on the current ring, and on the current buffer group.
        self.rearm = True
        return 0

    cdef int handle(self, int32_t res, uint32_t flags, bint final) except -1:
        return self.handle_multishot(res, flags, final)

    cdef int handle_multishot(self, int32_t res, uint32_t flags, bint final) except -1:
        cdef Stream s = self.stream
        cdef BufGroup g = self.group
        cdef uint16_t bid
        cdef NativeLoop loop = <NativeLoop>self.loop
        if final:
            self.group = None
            self.leave_group(g)
            loop.io.bufpool.receivers.discard(self)
        try:
            if flags & IORING_CQE_F_BUFFER:
                bid = <uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT)
                g.head += 1             # the kernel consumed the buffer at its head
                try:
                    if res > 0:
                        s.on_chunk(g.buffer(bid), res)
                finally:
                    loop.io.bufpool.give_back(g, bid)
            if res == 0:
                if final:
                    s.on_eof()
            elif res == -ENOBUFS:
                # No data was taken: it waits in the socket for the re-armed receive.
                loop.io.bufpool.on_enobufs(g)
                move_off_retired(loop.io.bufpool)
            elif res < 0 and res != -ECANCELED:
                self.on_error(res)
        finally:
            if final:
                self.finish(res)
        return 0

    cdef int on_error(self, int32_t res) except -1:
        return self.stream.on_read_error(res)

    cdef int finish(self, int32_t res) except -1:
        """The receive's final CQE has been handled: arm the next one if reading is wanted.
        After ECANCELED, re-arm only when asked to (the buffer pool moved the receive to a new
        group, or reading resumed before the pause's cancel landed): any other cancel comes
        from close() or from loop.close() draining the ring."""
        cdef NativeLoop loop = <NativeLoop>self.loop
        self.cancelling = False
        rearm = self.rearm
        self.rearm = False
        if res != 0 and (res != -ECANCELED or rearm) and self.stream.wants_read() \
                and not loop.io.closing and self.generation == 0:
            self.arm()
        elif self.generation == 0 and self.picks_buffers():
            loop.io.bufpool.on_receiver_gone()
            move_off_retired(loop.io.bufpool)
        return 0


cdef class SendOp(StreamOp):
    """The one SEND/WRITE of a Stream; `pinned` holds the bytes until the final CQE. It is staged
    (see Operation.stage): the SQE is made right before the loop's next enter, so what the
    stream's writes of one iteration add meanwhile leaves in the same SEND."""
    cdef object data             # what is still to be written (None once aborted)
    cdef Py_ssize_t offset
    cdef bint polling            # waiting for POLLOUT after the kernel said EAGAIN

    cdef int start(self, bytes data, Py_ssize_t offset=0) except -1:
        """Send data[offset:] (the head already went out with a direct send())."""
        self.data = data
        self.pinned = data
        self.offset = offset
        self.polling = False
        return self.stage()

    cdef int flush(self) except -1:
        if self.data is None:
            self.pinned = None            # aborted before it reached the kernel
            return 0
        self.take_queued()
        return self.submit()

    cdef int take_queued(self) except -1:
        """Fold the writes queued behind a staged SEND that has not reached the kernel yet
        into its data (the old bytes are ours alone: nothing in flight points at them)."""
        cdef WriteQueue queue = self.stream.write_queue
        if queue.size and self.offset == 0 and not self.polling and self.generation == 0:
            self.data = queue.take(self.data)
            self.pinned = self.data
        return 0

    cdef int submit(self) except -1:
        cdef io_uring_sqe *sqe = self.prepare()
        self.cancelling = False
        sqe.fd = self.stream.fd
        if self.polling:
            sqe.opcode = IORING_OP_POLL_ADD
            sqe.poll32_events = POLLOUT
            return 0
        sqe.addr = <uint64_t><size_t>(PyBytes_AS_STRING(self.pinned) + self.offset)
        # One SEND or WRITE carries at most MAX_RW_COUNT bytes (the kernel refuses a longer
        # one): a larger write leaves in several, each staged again from the last one's CQE.
        sqe.len = <uint32_t>min(PyBytes_GET_SIZE(self.pinned) - self.offset, MAX_RW_COUNT)
        return self.set_opcode(sqe)

    cdef int set_opcode(self, io_uring_sqe *sqe) except -1:
        """Make sqe the write this kind of stream uses."""
        raise NotImplementedError

    cdef bint movable(self):
        return True     # a SEND to a peer that does not read can wait for ever

    cdef int resubmit(self) except -1:
        if self.data is None:
            return 0
        self.submit()
        return 1

    cdef Py_ssize_t remaining(self):
        if self.data is None:
            return 0
        return PyBytes_GET_SIZE(self.data) - self.offset

    cdef int handle(self, int32_t res, uint32_t flags, bint final) except -1:
        cdef Stream s = self.stream
        if not final:
            return 0
        self.cancelling = False
        if self.data is None or res == -ECANCELED:
            # Aborted: the bytes were only kept for the kernel, which is done with them now.
            self.pinned = None
            self.data = None
            return 0
        if self.polling:
            self.polling = False
            return self.stage()
        if res == -EAGAIN:
            # A non-blocking pipe makes the kernel answer EAGAIN instead of waiting.
            self.polling = True
            return self.stage()
        if res < 0:
            self.data = None
            self.pinned = None
            return s.on_write_error(res)
        self.offset += res
        if self.offset < PyBytes_GET_SIZE(self.data):
            return self.stage()
        self.data = None
        self.pinned = None
        return s.on_write_done()
