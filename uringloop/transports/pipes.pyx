# Layer 4, the pipe transports (pipes, FIFOs, sockets and character devices handed to
# connect_read_pipe() and connect_write_pipe()): READ_MULTISHOT or one-shot READs into the
# pool's buffers on the read end, WRITEs and a watch for the reader going away on the write
# end. A pipe is written directly first, as asyncio does: code that writes to a pipe and then
# reads its other end with a blocking os.read() relies on it.

cdef extern from "unistd.h":
    ssize_t c_write "write"(int fd, const void *buf, size_t n) nogil

cdef int UL_OP_READ_MULTISHOT = 49


cdef class PipeReadOp(RecvOp):
    """A read pipe's receive: READ_MULTISHOT (Linux 6.7), or before it one READ per buffer,
    re-armed from each CQE by the same final-CQE path."""
    cdef bint polling            # a POLL_ADD for readability before the next one-shot READ

    cdef int arm(self) except -1:
        if self.polling:
            # A one-shot READ (kernels before 6.7) of a non-blocking pipe answers EAGAIN
            # rather than waiting: wait for readability first.
            self.prepare_poll(self.stream.fd, POLLIN)
            self.cancelling = False
            return 0
        return self.arm_multishot()

    cdef int set_opcode(self, io_uring_sqe *sqe, BufGroup g) except -1:
        sqe.opcode = UL_OP_READ_MULTISHOT if self.ring.read_multishot else IORING_OP_READ
        sqe.off = <uint64_t>-1
        g.offthread_users += 1  # a pipe or tty read may run on an io-wq worker
        return 0

    cdef void leave_group(self, BufGroup g):
        g.users -= 1
        g.offthread_users -= 1

    cdef int handle(self, int32_t res, uint32_t flags, bint final) except -1:
        if self.polling:
            self.polling = False
            if res < 0 and res != -ECANCELED:
                try:
                    self.stream.on_read_error(res)
                finally:
                    self.finish(res)
                return 0
            return self.finish(res)
        return self.handle_multishot(res, flags, final)

    cdef int on_error(self, int32_t res) except -1:
        if res == -EAGAIN:
            self.polling = True     # a one-shot READ found the pipe empty
            return 0
        return self.stream.on_read_error(res)


cdef class PipeWriteOp(SendOp):
    """A write pipe's write: a WRITE at the current position."""
    cdef int set_opcode(self, io_uring_sqe *sqe) except -1:
        sqe.opcode = IORING_OP_WRITE
        sqe.off = <uint64_t>-1
        return 0


cdef class PeerWatch(StreamOp):
    """Readability of a write pipe's fd: for a pipe it only happens when the reader goes
    away (POLLERR); asyncio's write pipe transport watches the same to notice it."""

    cdef int arm(self) except -1:
        self.prepare_poll(self.stream.fd, POLLIN)
        return 0

    cdef bint movable(self):
        return True

    cdef int resubmit(self) except -1:
        if self.stream.conn_lost or self.stream.sock is None:
            return 0
        self.arm()
        return 1

    cdef int handle(self, int32_t res, uint32_t flags, bint final) except -1:
        if res == -ECANCELED or self.stream.conn_lost or self.stream.sock is None:
            return 0
        (<WritePipeStream>self.stream).on_peer_gone()
        return 0


cdef class ReadPipeStream(Stream):
    """The state of a read pipe transport."""

    cdef int add_ops(self) except -1:
        self.recv_op = <RecvOp>bind_op(PipeReadOp.__new__(PipeReadOp), self)
        return 0

    cdef str transport_kind(self):
        return 'pipe transport'

    cdef bint quiet_error(self, exc):
        return isinstance(exc, OSError) and exc.errno == errno_module.EIO

    cdef int eof_received(self) except -1:
        self.closing = True
        self.call_soon_like_asyncio(self.protocol.eof_received, ())
        self.call_soon_like_asyncio(self.call_connection_lost, (None,))
        return 0

    def close(self):
        if self.closing:
            return
        self.closing = True
        self.stop_reading()
        self.call_soon_like_asyncio(self.call_connection_lost, (None,))


cdef class WritePipeStream(Stream):
    """The state of a write pipe transport; closing it is its EOF."""
    cdef PeerWatch peer_watch      # set for pipes and sockets, whose reader can go away

    cdef int add_ops(self) except -1:
        self.send_op = <SendOp>bind_op(PipeWriteOp.__new__(PipeWriteOp), self)
        return 0

    cdef str transport_kind(self):
        return 'pipe transport'

    cdef int add_repr_info(self, list info) except -1:
        info.append('open')
        info.append(f'bufsize={self.write_buffer_size()}')
        return 0

    cdef bint wants_read(self):
        return False

    cdef int stop_reading(self) except -1:
        # The peer watch is the only read this end has.
        if self.peer_watch is not None and self.peer_watch.generation != 0:
            self.peer_watch.cancel()
        return 0

    cdef bint write_refused(self):
        return self.conn_lost != 0 or self.closing

    cdef str lost_write_warning(self):
        return 'pipe closed by peer or os.write(pipe, data) raised exception.'

    cdef Py_ssize_t write_now(self, char *p, Py_ssize_t n) noexcept:
        return c_write(self.fd, p, n)

    cdef int write_failed(self, exc) except -1:
        self.conn_lost += 1
        return Stream.write_failed(self, exc)

    cdef int on_peer_gone(self) except -1:
        if self.loop.debug_flag:
            logger.info("%r was closed by peer", self.transport)
        if self.writing():
            self.close_now(BrokenPipeError())
        else:
            self.close_now(None)
        return 0

    def write_eof(self):
        if self.closing:
            return
        self.closing = True
        if not self.writing():
            self.call_soon_like_asyncio(self.call_connection_lost, (None,))

    def close(self):
        if self.sock is not None and not self.closing:
            self.write_eof()


class _PipeMixin:
    """asyncio's pipe transports expose the pipe as `_pipe`."""
    __slots__ = ()

    @property
    def _pipe(self):
        return _stream(self).sock

    @_pipe.setter
    def _pipe(self, value):
        # asyncio's tests detach the pipe this way after closing it themselves.
        _stream(self).sock = value


class ReadPipeTransport(_PipeMixin, _TransportBase, _ReadingMixin, asyncio.ReadTransport):
    """The read end of a pipe (or FIFO, socket, character device) driven by io_uring."""
    # __dict__ as on asyncio's transports: code (CPython's tests among it) sets attributes.
    __slots__ = ('_stream', '__weakref__', '__dict__')


class WritePipeTransport(_PipeMixin, _TransportBase, _WritingMixin,
                         _transports._FlowControlMixin):
    """The write end of a pipe (or FIFO, socket, character device) driven by io_uring."""
    # __dict__ as on asyncio's transports: code (CPython's tests among it) sets attributes.
    __slots__ = ('_stream', '__weakref__', '__dict__')

    def can_write_eof(self):
        """Return True: closing the pipe is its EOF."""
        return True


cdef object new_pipe_transport(NativeLoop loop, pipe, protocol, waiter, extra, bint reading):
    cdef Stream s
    cdef WritePipeStream writer
    cls = ReadPipeTransport if reading else WritePipeTransport
    transport = cls.__new__(cls)
    transport._extra = {} if extra is None else extra
    transport._extra['pipe'] = pipe
    fd = pipe.fileno()
    mode = os.fstat(fd).st_mode
    is_fifo = stat.S_ISFIFO(mode)
    is_socket = stat.S_ISSOCK(mode)
    if not (is_fifo or is_socket or stat.S_ISCHR(mode)):
        if reading:
            raise ValueError("Pipe transport is for pipes/sockets only.")
        raise ValueError("Pipe transport is only for pipes, sockets and character devices")
    s = ReadPipeStream.__new__(ReadPipeStream) if reading else \
        WritePipeStream.__new__(WritePipeStream)
    transport._stream = s
    os.set_blocking(fd, False)
    s.init(loop, transport, pipe, fd, protocol, None, None)
    loop._transports[fd] = transport
    loop.call_soon(protocol.connection_made, transport, context=s.context)
    if reading:
        loop.call_soon(s.start_reading, context=s.context)
    elif is_socket or is_fifo:
        writer = <WritePipeStream>s
        writer.peer_watch = <PeerWatch>bind_op(PeerWatch.__new__(PeerWatch), s)
        loop.call_soon(_arm_peer_watch, writer, context=s.context)
    if waiter is not None:
        loop.call_soon(futures._set_result_unless_cancelled, waiter, None, context=s.context)
    return transport


def _arm_peer_watch(WritePipeStream s):
    if s.sock is not None and not s.closing and s.peer_watch.generation == 0:
        s.peer_watch.arm()
