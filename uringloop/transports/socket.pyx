# Layer 4, the TCP and Unix stream socket transport: a multishot RECV per connection (or, for
# a BufferedProtocol, a one-shot RECV straight into the protocol's own buffer; for a connection
# whose reads are large, a one-shot RECV into the bytes object data_received() will get), SENDs,
# and write_eof() as a shutdown of the write side.

from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF

cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize) except -1

cdef extern from "ring.h":
    enum:
        IORING_RECVSEND_POLL_FIRST


# Receiving into the bytes object handed to data_received() saves copying every chunk out of a
# pool buffer, but costs a RECV to submit per chunk (the multishot one stays armed) and a bytes
# object of OWN_BUFFER_SIZE held by each such connection while it waits. That pays for large
# reads only (benchmarks/README.md, "64 KiB: receiving into the bytes"), so the choice follows
# the connection's recent read sizes: a running average (weight 1/4 per read) at or above
# OWN_BUFFER_READ_MIN moves the receive into its own bytes, one below a quarter of that moves it
# back; the gap keeps a connection whose reads vary from flapping between the two.
cdef Py_ssize_t OWN_BUFFER_SIZE = 65536       # as a pool buffer: the same chunks either way
cdef Py_ssize_t OWN_BUFFER_READ_MIN = 32768
# A loop keeps at most this many such receives armed: each holds its own buffer, and past a
# few dozen those no longer stay in the CPU's cache, where the pool reuses its hottest ones.
cdef unsigned OWN_BUFFER_RECEIVES_MAX = 16


cdef class SocketRecvOp(RecvOp):
    """A socket's receive: a multishot RECV picking buffers from the pool. A BufferedProtocol
    gets a one-shot RECV into the buffer its get_buffer() returned instead (re-armed from each
    CQE, so still one op per connection): the kernel writes straight into the protocol's
    memory, which stays exported until the CQE. A plain Protocol whose reads are large gets a
    one-shot RECV into a new bytes object, which data_received() receives as it is."""
    cdef bint into_protocol_buffer   # the receive in flight is a one-shot RECV into `view`
    cdef Py_buffer view          # that buffer, exported until the CQE (`pinned` holds its owner)
    cdef bint has_view
    cdef bint into_own_bytes     # the receive in flight is a one-shot RECV into `pinned`
    cdef bint more_waiting       # the last receive left data in the socket
    cdef Py_ssize_t read_size_avg  # running average of this connection's read sizes

    cdef int arm(self) except -1:
        if self.stream.buffered:
            return self.arm_into()
        if self.wants_own_bytes():
            return self.arm_own_bytes()
        return self.arm_multishot()

    cdef bint wants_own_bytes(self):
        return (self.read_size_avg >= OWN_BUFFER_READ_MIN and
                self.io.bufpool.own_buffer_receives < OWN_BUFFER_RECEIVES_MAX)

    cdef int set_opcode(self, io_uring_sqe *sqe, BufGroup g) except -1:
        self.into_protocol_buffer = False
        self.into_own_bytes = False
        sqe.opcode = IORING_OP_RECV
        sqe.ioprio = IORING_RECV_MULTISHOT
        return 0

    cdef bint picks_buffers(self):
        return not (self.into_protocol_buffer or self.into_own_bytes)

    cdef inline void count_read(self, int32_t res):
        if res > 0:
            self.read_size_avg += (res - self.read_size_avg) // 4

    cdef int arm_own_bytes(self) except -1:
        """A one-shot RECV into a new bytes object. `pinned` owns it until the final CQE; only
        then is it shrunk to what arrived and handed on, so no one else ever sees memory the
        kernel may still write."""
        cdef bytes data = PyBytes_FromStringAndSize(NULL, OWN_BUFFER_SIZE)
        cdef io_uring_sqe *sqe = self.prepare()
        self.pinned = data
        self.cancelling = False
        self.into_protocol_buffer = False
        self.into_own_bytes = True
        self.io.bufpool.own_buffer_receives += 1
        sqe.opcode = IORING_OP_RECV
        sqe.fd = self.stream.fd
        sqe.addr = <uint64_t><size_t>PyBytes_AS_STRING(data)
        sqe.len = <uint32_t>OWN_BUFFER_SIZE
        if not self.more_waiting:
            # The last receive drained the socket: wait for data before trying to receive.
            sqe.ioprio = IORING_RECVSEND_POLL_FIRST
        return 0

    cdef bytes take_own_bytes(self, Py_ssize_t n):
        """The bytes the finished receive wrote into, cut to its n bytes (in place: the
        object has no other reference once `pinned` lets it go)."""
        cdef PyObject *raw = <PyObject *>self.pinned
        cdef bytes data
        Py_INCREF(self.pinned)
        self.pinned = None
        if n == PyBytes_GET_SIZE(<bytes>raw):
            data = <bytes>raw
        else:
            _PyBytes_Resize(&raw, n)        # on failure it has dropped the reference
            data = <bytes>raw
        Py_DECREF(data)
        return data

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
        self.into_own_bytes = False
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
        if self.into_own_bytes:
            self.io.bufpool.own_buffer_receives -= 1
            self.more_waiting = (flags & IORING_CQE_F_SOCK_NONEMPTY) != 0
            return self.handle_own_bytes(res)
        self.count_read(res)
        self.handle_multishot(res, flags, final)
        if self.wants_own_bytes() and self.generation != 0 \
                and not self.cancelling and self.stream.wants_read():
            # Reads became large: end the multishot receive; finish() re-arms it into bytes.
            self.rearm = True
            self.cancel()
        return 0

    cdef int handle_own_bytes(self, int32_t res) except -1:
        cdef Stream s = self.stream
        self.count_read(res)
        try:
            if res > 0:
                s.on_received(self.take_own_bytes(res))
            else:
                self.pinned = None
                s.on_read_end(res)
        finally:
            self.finish(res)
        return 0

    cdef int handle_into(self, int32_t res) except -1:
        cdef Stream s = self.stream
        cdef bytes data
        try:
            if res > 0:
                if s.closing or s.eof_seen:
                    self.release_view()
                elif s.paused or s.received_while_paused or not s.buffered:
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
                s.on_read_end(res)
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
        if self.empty_waiter is not None:
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
        return _stream(self).protocol_paused

    def _make_empty_waiter(self):
        s = _stream(self)
        if s.empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        s.empty_waiter = s.loop.create_future()
        if not s.writing():
            s.empty_waiter.set_result(None)
        return s.empty_waiter

    def _force_close(self, exc):
        # asyncio's SSL protocol closes its transport this way after a handshake failure.
        _stream(self).close_now(exc)

    def _reset_empty_waiter(self):
        _stream(self).empty_waiter = None

    @property
    def _sock(self):
        return _stream(self).sock


cdef object new_socket_transport(SocketLoop loop, sock, protocol, waiter, extra, server,
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
