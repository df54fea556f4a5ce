# Layer 4, the TCP and Unix stream socket transport: a multishot RECV per connection (or, for
# a BufferedProtocol, a one-shot RECV straight into the protocol's own buffer), SENDs, and
# write_eof() as a shutdown of the write side.


cdef class SocketRecvOp(RecvOp):
    """A socket's receive: a multishot RECV picking buffers from the pool. A BufferedProtocol
    gets a one-shot RECV into the buffer its get_buffer() returned instead (re-armed from each
    CQE, so still one op per connection): the kernel writes straight into the protocol's
    memory, which stays exported until the CQE."""
    cdef bint into_protocol_buffer   # the receive in flight is a one-shot RECV into `view`
    cdef Py_buffer view          # that buffer, exported until the CQE (`pinned` holds its owner)
    cdef bint has_view

    cdef int arm(self) except -1:
        if self.stream.buffered:
            return self.arm_into()
        return self.arm_multishot()

    cdef int set_opcode(self, io_uring_sqe *sqe, BufGroup g) except -1:
        self.into_protocol_buffer = False
        sqe.opcode = IORING_OP_RECV
        sqe.ioprio = IORING_RECV_MULTISHOT
        return 0

    cdef bint picks_buffers(self):
        return not self.into_protocol_buffer

    cdef int arm_into(self) except -1:
        """A BufferedProtocol on a socket: the kernel receives straight into the buffer that
        get_buffer() returns (no copy). One RECV at a time, re-armed from its CQE, so the
        connection still counts once in `pending`. The buffer stays exported, and its owner
        referenced, until the CQE: a cancelled receive never writes memory we let go of."""
        cdef Stream s = self.stream
        cdef io_uring_sqe *sqe
        try:
            buf = s.protocol.get_buffer(-1)
            PyObject_GetBuffer(buf, &self.view, PyBUF_WRITABLE)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            s.fatal_error(exc, 'Fatal error: protocol.get_buffer() call failed.')
            return 0
        if self.view.len == 0:
            PyBuffer_Release(&self.view)
            s.fatal_error(RuntimeError('get_buffer() returned an empty buffer'),
                          'Fatal error: protocol.get_buffer() call failed.')
            return 0
        try:
            sqe = self.prepare()
        except BaseException:
            PyBuffer_Release(&self.view)
            raise
        self.has_view = True
        self.pinned = buf
        self.cancelling = False
        self.into_protocol_buffer = True
        sqe.opcode = IORING_OP_RECV
        sqe.fd = s.fd
        sqe.addr = <uint64_t><size_t>self.view.buf
        sqe.len = <uint32_t>(self.view.len if self.view.len < 0x7fffffff else 0x7fffffff)
        return 0

    cdef void release_view(self):
        if self.has_view:
            self.has_view = False
            PyBuffer_Release(&self.view)
        self.pinned = None

    cdef int handle(self, int32_t res, uint32_t flags, bint final) except -1:
        if self.into_protocol_buffer:
            return self.handle_into(res)
        return self.handle_multishot(res, flags, final)

    cdef int handle_into(self, int32_t res) except -1:
        cdef Stream s = self.stream
        cdef bytes data
        try:
            if res > 0:
                if s.closing or s.eof_seen:
                    self.release_view()
                elif s.holding_reads() or not s.buffered:
                    # Paused meanwhile (or the protocol changed): the bytes are in the old
                    # buffer; keep a copy for whoever reads next.
                    data = PyBytes_FromStringAndSize(<char *>self.view.buf, res)
                    self.release_view()
                    s.on_received(data)
                else:
                    # Released first: buffer_updated() may resize the buffer it handed out.
                    self.release_view()
                    s.call_protocol('buffer_updated', (res,))
            else:
                self.release_view()
                if res == 0:
                    s.on_eof()
                elif res != -ECANCELED:
                    s.on_read_error(res)
        finally:
            # Also when the protocol raised SystemExit or KeyboardInterrupt: the connection
            # keeps receiving once the loop runs again.
            self.finish(res)
        return 0

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)


cdef class SocketSendOp(SendOp):
    """A socket's write: a SEND."""
    cdef int set_opcode(self, io_uring_sqe *sqe) except -1:
        sqe.opcode = IORING_OP_SEND
        # WAITALL: the kernel retries a short send itself instead of completing early.
        sqe.msg_flags = MSG_NOSIGNAL | MSG_WAITALL
        return 0


cdef class SocketStream(Stream):
    """The state of a TCP or Unix stream socket transport."""
    cdef bint eof_requested        # write_eof() called

    cdef int add_ops(self) except -1:
        self.recv_op = <RecvOp>bind_op(SocketRecvOp.__new__(SocketRecvOp), self)
        self.send_op = <SendOp>bind_op(SocketSendOp.__new__(SocketSendOp), self)
        return 0

    cdef str transport_kind(self):
        return 'socket transport'

    cdef int add_repr_info(self, list info) except -1:
        info.append('read=paused' if self.paused else 'read=polling')
        info.append(f'write=<bufsize={self.write_buffer_size()}>')
        return 0

    cdef int eof_received(self) except -1:
        keep_open = self.call_protocol('eof_received', ())
        if keep_open is PROTOCOL_FAILED:
            return 0
        if not keep_open:
            self.close()
        return 0

    # -- writing ------------------------------------------------------------------------------

    cdef int check_writable(self) except -1:
        if self.eof_requested:
            raise RuntimeError('Cannot call write() after write_eof()')
        if self.write_queue.drain_waiter is not None:
            raise RuntimeError('unable to write; sendfile is in progress')
        return 0

    cdef str lost_write_warning(self):
        return 'socket.send() raised exception.'

    cdef bint writes_directly(self, Py_ssize_t n):
        # A socket written to while the loop is not running writes directly: no enter is
        # coming to carry the write.
        return n >= DIRECT_WRITE_MIN or not self.loop.running_flag

    cdef Py_ssize_t write_now(self, char *p, Py_ssize_t n) noexcept:
        return c_send(self.fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT)

    cdef int on_drained(self) except -1:
        if self.closing:
            return Stream.on_drained(self)
        if self.eof_requested:
            self.shutdown_write()
        return 0

    cdef shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def write_eof(self):
        if self.closing or self.eof_requested:
            return
        self.eof_requested = True
        if not self.writing():
            self.shutdown_write()

    # -- closing ------------------------------------------------------------------------------

    def close(self):
        if self.closing:
            return
        self.closing = True
        self.stop_reading()
        if not self.writing():
            self.conn_lost += 1
            self.call_soon_like_asyncio(self.call_connection_lost, (None,))

    cdef int close_now(self, exc) except -1:
        if self.conn_lost:
            return 0
        return Stream.close_now(self, exc)

    cdef int send_staged_now(self) except -1:
        """A staged write that never reached the kernel is one asyncio's write() would already
        have handed to the socket: abort() must not take it back. Give it to the socket now,
        without blocking, before the rest is dropped."""
        cdef SendOp op = self.send_op
        if not op.staged or op.offset != 0 or op.polling or op.data is None \
                or self.sock is None:
            return 0
        op.take_queued()
        c_send(self.fd, PyBytes_AS_STRING(op.data), PyBytes_GET_SIZE(op.data),
               MSG_NOSIGNAL | MSG_DONTWAIT)        # best effort, as asyncio's write() was
        return 0


class SocketTransport(_TransportBase, _ReadingMixin, _WritingMixin,
                      _transports._FlowControlMixin):
    """A TCP or Unix stream socket transport driven by io_uring."""
    # __dict__ as on asyncio's transports: code (CPython's tests among it) sets attributes.
    __slots__ = ('_stream', '__weakref__', '__dict__')

    # BaseEventLoop.start_tls() wraps only transports that say they can be wrapped, and
    # loop.sendfile() tries the native path only on transports that say so.
    _start_tls_compatible = True
    _sendfile_compatible = _constants._SendfileMode.TRY_NATIVE

    @property
    def _sock_fd(self):
        return _stream(self).fd

    # asyncio's sendfile fallback reads the flow-control state as _FlowControlMixin keeps it.
    @property
    def _protocol_paused(self):
        return _stream(self).write_queue.protocol_paused

    def _make_empty_waiter(self):
        s = _stream(self)
        queue = s.write_queue
        if queue.drain_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        queue.drain_waiter = s.loop.create_future()
        if not s.writing():
            queue.drain_waiter.set_result(None)
        return queue.drain_waiter

    def _force_close(self, exc):
        # asyncio's SSL protocol closes its transport this way after a handshake failure.
        _stream(self).close_now(exc)

    def _reset_empty_waiter(self):
        _stream(self).write_queue.drain_waiter = None

    @property
    def _sock(self):
        return _stream(self).sock


cdef object new_socket_transport(NativeLoop loop, sock, protocol, waiter, extra, server,
                                 context=None):
    cdef Stream s = SocketStream.__new__(SocketStream)
    transport = SocketTransport.__new__(SocketTransport)
    transport._extra = {} if extra is None else extra
    transport._stream = s
    transport._loop = loop
    ext = transport._extra
    ext['socket'] = _trsock.TransportSocket(sock)
    try:
        ext['sockname'] = sock.getsockname()
    except OSError:
        ext['sockname'] = None
    if 'peername' not in ext:
        try:
            ext['peername'] = sock.getpeername()
        except OSError:
            ext['peername'] = None
    base_events._set_nodelay(sock)
    fd = sock.fileno()
    s.init(loop, transport, sock, fd, protocol, server, context)
    loop._transports[fd] = transport
    if server is not None:
        _server_attach(server, transport)
    loop.call_soon(protocol.connection_made, transport, context=s.context)
    loop.call_soon(s.start_reading, context=s.context)
    if waiter is not None:
        loop.call_soon(futures._set_result_unless_cancelled, waiter, None, context=s.context)
    return transport
