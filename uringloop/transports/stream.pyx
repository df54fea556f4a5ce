# Layer 4, stream transports: what TCP and Unix sockets, read pipes and write pipes share.
#
# A Stream is the state machine asyncio's selector transports keep (closing, paused, eof,
# connection lost) plus the parts it is built from: the operation records that do the kernel's
# side (stream_ops.pyx: a receive armed while reading is wanted, at most one write in flight),
# the write queue with its flow control (write_queue.pyx) and what arrived while reading was
# paused (received_while_paused.pyx). Each transport kind subclasses Stream and its records in
# its own file (socket.pyx, pipes.pyx) and overrides what differs: the opcodes, EOF, closing,
# error reporting. The asyncio-facing transport objects delegate to it (asyncio_facing.pyx).

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

import stat

from asyncio import (constants as _constants, protocols as _protocols, trsock as _trsock,
                     transports as _transports)

cdef extern from "sys/socket.h":
    enum:
        MSG_NOSIGNAL
        MSG_WAITALL
        MSG_DONTWAIT
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags) nogil

cdef extern from "errno.h":
    enum:
        EAGAIN_ "EAGAIN"
        EINTR_ "EINTR"


# The write path, chosen by measurement (benchmarks/README.md, "The write path, measured").
# A write smaller than DIRECT_WRITE_MIN is staged: its SEND is made right before the
# iteration's io_uring_enter and leaves in it, so a server answering many connections makes one
# syscall per iteration instead of one send() per write. A larger write goes out with a direct
# non-blocking send() first and only what the socket did not take is staged: a staged write
# keeps its bytes alive across the enter, and with many connections the allocator then hands
# those pages back to the kernel and faults them in again every iteration, while the syscall
# saved is worth less and less beside the copy.
cdef Py_ssize_t DIRECT_WRITE_MIN = 32768


# What Stream.call_protocol returns when the protocol raised (None is a valid result).
cdef object PROTOCOL_FAILED = object()


def _call_soon_later(loop, callback, args, context):
    loop.call_soon(callback, *args, context=context)


cdef class Stream:
    """The state of one stream transport; its subclasses (SocketStream, ReadPipeStream,
    WritePipeStream) add their operation records and what their kind does differently."""
    cdef NativeLoop loop
    cdef object transport          # the asyncio-facing object (strong until connection lost)
    cdef object protocol
    cdef object sock               # socket.socket or the pipe's file object
    cdef int fd
    cdef bint buffered
    cdef bint closing
    cdef bint eof_seen             # the peer's EOF arrived: no more reads
    cdef bint paused
    cdef bint protocol_connected
    cdef int conn_lost
    cdef RecvOp recv_op            # None on a write pipe
    cdef SendOp send_op            # None on a read pipe
    cdef ReceivedWhilePaused while_paused  # what arrived while reading was paused
    cdef WriteQueue write_queue    # the writes behind the one in flight, and flow control
    cdef object server
    cdef object context            # contextvars context of the creating call: protocol
                                   # callbacks run in it (asyncio since 3.11, explicit in 3.15)

    def __cinit__(self):
        self.fd = -1
        self.while_paused = ReceivedWhilePaused.__new__(ReceivedWhilePaused)
        self.write_queue = WriteQueue.__new__(WriteQueue)

    cdef int init(self, NativeLoop loop, transport, sock, int fd, protocol, server,
                  context) except -1:
        self.loop = loop
        self.context = PyContext_CopyCurrent() if context is None else context
        self.transport = transport
        self.sock = sock
        self.fd = fd
        self.server = server
        self.set_protocol(protocol)
        return self.add_ops()

    cdef int add_ops(self) except -1:
        """Create the operation records this kind of stream keeps in flight."""
        raise NotImplementedError

    cdef str transport_kind(self):
        """What the transport is called in error messages."""
        raise NotImplementedError

    cdef int add_repr_info(self, list info) except -1:
        """Append the state the transport's repr shows while it is open."""
        info.append('open')
        return 0

    cdef call_soon_like_asyncio(self, callback, tuple args):
        """call_soon() with asyncio's timing: when the call comes from a completion (where
        asyncio would be running the fd's I/O callback), the callback runs in the next
        iteration, not in the one that is handling the completion."""
        if self.loop.in_stream_completion:
            self.loop.call_soon(_call_soon_later, self.loop, callback, args, self.context,
                                context=self.context)
        else:
            self.loop.call_soon(callback, *args, context=self.context)

    cdef set_protocol(self, protocol):
        self.protocol = protocol
        self.buffered = isinstance(protocol, _protocols.BufferedProtocol)
        self.protocol_connected = True

    # -- reading ------------------------------------------------------------------------------

    cdef bint wants_read(self):
        return (not self.closing and not self.paused and not self.eof_seen
                and self.conn_lost == 0)

    def start_reading(self):
        if not self.wants_read() or self.loop.io.closing:
            return
        if self.recv_op.generation == 0:
            self.recv_op.arm()
        elif self.recv_op.cancelling:
            self.recv_op.rearm = True

    cdef int stop_reading(self) except -1:
        if self.recv_op is not None and self.recv_op.generation != 0:
            self.recv_op.cancel()
        return 0

    @cython.final
    cdef inline bint holding_reads(self) noexcept:
        """Whether received data waits for resume_reading() (behind what already waits)."""
        return self.paused or self.while_paused.holds_data()

    cdef int on_chunk(self, char *p, Py_ssize_t n) except -1:
        """n received bytes at p, in memory the caller reuses once this returns."""
        if self.closing or self.eof_seen:
            return 0
        if self.buffered and not self.holding_reads():
            return self.feed_buffered(p, n)
        return self.on_received(PyBytes_FromStringAndSize(p, n))

    cdef int on_received(self, bytes data) except -1:
        """Received bytes in an object of their own, which no one else references."""
        if self.closing or self.eof_seen:
            return 0                 # asyncio stops reading at close(): late bytes are dropped
        if self.holding_reads():
            return self.while_paused.keep(data)
        if self.buffered:
            return self.feed_buffered(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        self.call_protocol('data_received', (data,))
        return 0

    cdef int feed_buffered(self, char *p, Py_ssize_t n) except -1:
        """Copy received bytes into the BufferedProtocol's own buffers."""
        cdef Py_buffer view
        cdef Py_ssize_t k
        while n > 0:
            try:
                buf = self.protocol.get_buffer(n)
                PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
                try:
                    if view.len == 0:
                        raise RuntimeError('get_buffer() returned an empty buffer')
                    k = view.len if view.len < n else n
                    memcpy(view.buf, p, k)
                finally:
                    PyBuffer_Release(&view)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.fatal_error(exc, 'Fatal error: protocol.get_buffer() call failed.')
                return 0
            if self.call_protocol('buffer_updated', (k,)) is PROTOCOL_FAILED:
                return 0
            p += k
            n -= k
            if self.closing or self.paused:
                if n > 0 and self.paused and not self.closing:
                    # In front: when this chunk came from there, newer chunks wait behind it.
                    self.while_paused.keep_in_front(PyBytes_FromStringAndSize(p, n))
                return 0
        return 0

    def deliver_received_while_paused(self):
        """Hand over what arrived while reading was paused (after resume_reading())."""
        cdef ReceivedWhilePaused held = self.while_paused
        cdef bytes data
        while held.holds_data() and not self.paused and not self.closing:
            data = held.take_oldest()
            if self.buffered:
                self.feed_buffered(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            elif self.call_protocol('data_received', (data,)) is PROTOCOL_FAILED:
                return
        if not held.holds_data() and held.eof and not self.paused and not self.closing:
            held.eof = False
            self.on_eof()

    cdef int on_eof(self) except -1:
        if self.closing or self.conn_lost:
            return 0
        if self.holding_reads():
            self.while_paused.eof = True
            self.eof_seen = True
            return 0
        self.eof_seen = True
        if self.loop.debug_flag:
            logger.debug("%r received EOF", self.transport)
        return self.eof_received()

    cdef int eof_received(self) except -1:
        """Tell the protocol about the peer's EOF (reading has ended)."""
        raise NotImplementedError

    cdef int on_read_error(self, int32_t res) except -1:
        # OSError(errno, text) is already the subclass Python raises (ConnectionResetError...).
        exc = OSError(-res, os.strerror(-res))
        return self.fatal_error(exc, f'Fatal read error on {self.transport_kind()}')

    def pause_reading(self):
        if self.closing or self.paused:
            return
        self.paused = True
        self.stop_reading()
        if self.loop.debug_flag:
            logger.debug("%r pauses reading", self.transport)

    def resume_reading(self):
        if self.closing or not self.paused:
            return
        self.paused = False
        if self.while_paused.holds_data() or self.while_paused.eof:
            self.loop.call_soon(self.deliver_received_while_paused, context=self.context)
        self.start_reading()
        if self.loop.debug_flag:
            logger.debug("%r resumes reading", self.transport)

    def is_reading(self):
        return not self.paused and not self.closing

    # -- writing ------------------------------------------------------------------------------

    cdef Py_ssize_t write_buffer_size(self):
        cdef Py_ssize_t n = self.write_queue.size
        if self.send_op is not None:
            n += self.send_op.remaining()
        return n

    cdef bint writing(self):
        return self.send_op.data is not None or self.write_queue.size > 0

    def write(self, data):
        cdef bytes b
        cdef Py_ssize_t n, sent = 0
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'data argument must be a bytes-like object, '
                            f'not {type(data).__name__!r}')
        self.check_writable()
        if type(data) is bytes:
            b = <bytes>data
        else:
            b = bytes(data)
        n = PyBytes_GET_SIZE(b)
        if n == 0:
            return
        if self.write_refused():
            if self.conn_lost >= _constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning(self.lost_write_warning())
            self.conn_lost += 1
            return
        if self.writing():
            self.write_queue.push(b)
        else:
            if self.writes_directly(n):
                sent = self.write_now(PyBytes_AS_STRING(b), n)
                if sent < 0:
                    if errno != EAGAIN_ and errno != EINTR_:
                        err = errno
                        self.write_failed(OSError(err, os.strerror(err)))
                        return
                    sent = 0
                if sent == n:
                    return
            self.send_op.start(b, sent)
        self.maybe_pause_protocol()

    def writelines(self, list_of_data):
        self.write(b''.join(list_of_data))

    cdef int check_writable(self) except -1:
        """Raise if write() may not be called now."""
        return 0

    cdef bint write_refused(self):
        """Whether write() drops data (counted in conn_lost) instead of sending it."""
        return self.conn_lost != 0

    cdef str lost_write_warning(self):
        raise NotImplementedError

    cdef bint writes_directly(self, Py_ssize_t n):
        """Whether a write of n bytes with nothing queued goes out with a direct syscall
        first (what it leaves is queued for the kernel)."""
        return True

    cdef Py_ssize_t write_now(self, char *p, Py_ssize_t n) noexcept:
        """The direct, non-blocking syscall: bytes written, or -1 with errno set."""
        return -1

    cdef int write_failed(self, exc) except -1:
        return self.fatal_error(exc, f'Fatal write error on {self.transport_kind()}')

    cdef int on_write_done(self) except -1:
        cdef WriteQueue queue = self.write_queue
        if queue.size:
            self.send_op.start(queue.take())
            self.maybe_resume_protocol()
            return 0
        self.maybe_resume_protocol()
        if self.writing():
            return 0                  # resume_writing() wrote more: not drained after all
        if queue.drain_waiter is not None:
            queue.drain_waiter.set_result(None)
        return self.on_drained()

    cdef int on_drained(self) except -1:
        """Every write has reached the kernel and been answered."""
        if self.closing and self.conn_lost == 0:
            self.conn_lost += 1
            self.call_connection_lost(None)
        return 0

    cdef int on_write_error(self, int32_t res) except -1:
        exc = OSError(-res, os.strerror(-res))
        if self.write_queue.drain_waiter is not None:
            self.write_queue.drain_waiter.set_exception(exc)
        return self.write_failed(exc)

    cdef int maybe_pause_protocol(self) except -1:
        if self.write_queue.pause_due(self.write_buffer_size()):
            return self.tell_protocol('pause_writing')
        return 0

    cdef int maybe_resume_protocol(self) except -1:
        if self.write_queue.protocol_paused \
                and self.write_queue.resume_due(self.write_buffer_size()):
            return self.tell_protocol('resume_writing')
        return 0

    cdef object call_protocol(self, str method, tuple args):
        """protocol.<method>(*args), as asyncio's transports call the protocol's data and EOF
        callbacks: an exception (other than SystemExit and KeyboardInterrupt) is a fatal error
        of the transport, and PROTOCOL_FAILED comes back instead of a result."""
        try:
            return getattr(self.protocol, method)(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fatal_error(exc, f'Fatal error: protocol.{method}() call failed.')
            return PROTOCOL_FAILED

    cdef int tell_protocol(self, str method) except -1:
        # Flow-control callbacks: a protocol that fails here is reported, as asyncio does,
        # and the transport carries on.
        try:
            getattr(self.protocol, method)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.loop.call_exception_handler({
                'message': f'protocol.{method}() failed',
                'exception': exc,
                'transport': self.transport,
                'protocol': self.protocol,
            })
        return 0

    def set_write_buffer_limits(self, high=None, low=None):
        self.write_queue.set_limits(high, low)
        self.maybe_pause_protocol()

    # -- closing ------------------------------------------------------------------------------

    def abort(self):
        self.close_now(None)

    cdef int close_now(self, exc) except -1:
        """asyncio's _force_close/_close: drop queued writes and lose the connection soon."""
        if self.send_op is not None and self.writing():
            self.send_staged_now()
            self.write_queue.drop()
            self.send_op.data = None          # `pinned` still holds the bytes for the kernel
            if self.send_op.generation != 0:
                self.send_op.cancel()
        self.closing = True
        self.stop_reading()
        self.conn_lost += 1
        self.call_soon_like_asyncio(self.call_connection_lost, (exc,))
        return 0

    cdef int send_staged_now(self) except -1:
        """Hand a staged write to the kernel now, before abort() drops the rest."""
        return 0

    cdef int fatal_error(self, exc, message) except -1:
        if self.quiet_error(exc):
            if self.loop.debug_flag:
                logger.debug("%r: %s", self.transport, message, exc_info=True)
        else:
            self.loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self.transport,
                'protocol': self.protocol,
            })
        self.close_now(exc)
        return 0

    cdef bint quiet_error(self, exc):
        """Whether a fatal error is only logged in debug mode, as asyncio's transports do
        for OS errors, rather than reported to the exception handler."""
        return isinstance(exc, OSError)

    def call_connection_lost(self, exc):
        if self.sock is None:
            return
        try:
            if self.protocol_connected:
                self.protocol.connection_lost(exc)
        finally:
            # The receive and any poll hold the file in the kernel until they end: ask them
            # to end so the peer sees the close now.
            self.stop_reading()
            self.sock.close()
            self.sock = None
            self.protocol = None
            transport = self.transport
            self.transport = None        # breaks the transport <-> stream cycle
            server = self.server
            if server is not None:
                self.server = None
                _server_detach(server, transport)


if sys.version_info >= (3, 13):
    def _server_attach(server, transport):
        server._attach(transport)

    def _server_detach(server, transport):
        server._detach(transport)
else:
    def _server_attach(server, transport):
        server._attach()

    def _server_detach(server, transport):
        server._detach()
