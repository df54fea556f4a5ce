# Layer 4, stream transports: what TCP and Unix sockets, read pipes and write pipes share.
#
# A Stream is the state machine asyncio's selector transports keep (closing, paused, eof,
# connection lost, write buffer and its water marks) plus the operation records that do the
# kernel's side (stream_ops.pyx): a receive armed while reading is wanted, at most one write in
# flight. Each transport kind subclasses Stream and its records in its own file (socket.pyx,
# pipes.pyx) and overrides what differs: the opcodes, EOF, closing, error reporting.
# The asyncio-facing objects (SocketTransport, ReadPipeTransport, WritePipeTransport) are
# Python classes deriving from asyncio's transport classes, because asyncio.BaseTransport has
# __slots__ and user code checks isinstance(); each holds its Stream and delegates to it.
#
# Data that the kernel delivers after pause_reading() asked the receive to stop (CQEs already
# on their way) is kept and handed to the protocol after resume_reading(): nothing is lost.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

import stat
import warnings

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
    cdef SocketLoop loop
    cdef object transport          # the asyncio-facing object (strong until connection lost)
    cdef object protocol
    cdef object sock               # socket.socket or the pipe's file object
    cdef int fd
    cdef bint buffered
    cdef bint closing
    cdef bint eof_seen             # the peer's EOF arrived: no more reads
    cdef bint paused
    cdef bint protocol_paused
    cdef bint protocol_connected
    cdef int conn_lost
    cdef RecvOp recv_op            # None on a write pipe
    cdef SendOp send_op            # None on a read pipe
    cdef list received_while_paused  # data that arrived while reading was paused, in order
    cdef bint eof_while_paused       # and the peer's EOF after it
    cdef list wbuf                 # queued writes not yet handed to the kernel
    cdef Py_ssize_t wbuf_size
    cdef Py_ssize_t high_water
    cdef Py_ssize_t low_water
    cdef object server
    cdef object empty_waiter
    cdef object context            # contextvars context of the creating call: protocol
                                   # callbacks run in it (asyncio since 3.11, explicit in 3.15)

    def __cinit__(self):
        self.wbuf = []
        self.received_while_paused = []
        self.fd = -1
        self.high_water = 64 * 1024
        self.low_water = 16 * 1024

    cdef int init(self, SocketLoop loop, transport, sock, int fd, protocol, server,
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

    cdef int on_chunk(self, char *p, Py_ssize_t n) except -1:
        """n received bytes at p, in memory the caller reuses once this returns."""
        if self.closing or self.eof_seen:
            return 0
        if self.buffered and not (self.paused or self.received_while_paused):
            return self.feed_buffered(p, n)
        return self.on_received(PyBytes_FromStringAndSize(p, n))

    cdef int on_received(self, bytes data) except -1:
        """Received bytes in an object of their own, which no one else references."""
        if self.closing or self.eof_seen:
            return 0                 # asyncio stops reading at close(): late bytes are dropped
        if self.paused or self.received_while_paused:
            self.received_while_paused.append(data)
            return 0
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
                    # In front: when this chunk came from that list, newer chunks wait there.
                    self.received_while_paused.insert(0, PyBytes_FromStringAndSize(p, n))
                return 0
        return 0

    def deliver_received_while_paused(self):
        """Hand over what arrived while reading was paused (after resume_reading())."""
        cdef bytes data
        while self.received_while_paused and not self.paused and not self.closing:
            data = self.received_while_paused.pop(0)
            if self.buffered:
                self.feed_buffered(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            elif self.call_protocol('data_received', (data,)) is PROTOCOL_FAILED:
                return
        if not self.received_while_paused and self.eof_while_paused and not self.paused \
                and not self.closing:
            self.eof_while_paused = False
            self.on_eof()

    cdef int on_eof(self) except -1:
        if self.closing or self.conn_lost:
            return 0
        if self.paused or self.received_while_paused:
            self.eof_while_paused = True
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
        if self.received_while_paused or self.eof_while_paused:
            self.loop.call_soon(self.deliver_received_while_paused, context=self.context)
        self.start_reading()
        if self.loop.debug_flag:
            logger.debug("%r resumes reading", self.transport)

    def is_reading(self):
        return not self.paused and not self.closing

    # -- writing ------------------------------------------------------------------------------

    cdef Py_ssize_t write_buffer_size(self):
        cdef Py_ssize_t n = self.wbuf_size
        if self.send_op is not None:
            n += self.send_op.remaining()
        return n

    cdef bint writing(self):
        return self.send_op.data is not None or self.wbuf_size > 0

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
            self.wbuf.append(b)
            self.wbuf_size += n
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
        cdef bytes data
        if self.wbuf:
            if len(self.wbuf) == 1:
                data = self.wbuf[0]
            else:
                data = b''.join(self.wbuf)
            self.wbuf.clear()
            self.wbuf_size = 0
            self.send_op.start(data)
            self.maybe_resume_protocol()
            return 0
        self.maybe_resume_protocol()
        if self.writing():
            return 0                  # resume_writing() wrote more: not drained after all
        if self.empty_waiter is not None:
            self.empty_waiter.set_result(None)
        return self.on_drained()

    cdef int on_drained(self) except -1:
        """Every write has reached the kernel and been answered."""
        if self.closing and self.conn_lost == 0:
            self.conn_lost += 1
            self.call_connection_lost(None)
        return 0

    cdef int on_write_error(self, int32_t res) except -1:
        exc = OSError(-res, os.strerror(-res))
        if self.empty_waiter is not None:
            self.empty_waiter.set_exception(exc)
        return self.write_failed(exc)

    cdef int maybe_pause_protocol(self) except -1:
        if self.write_buffer_size() <= self.high_water or self.protocol_paused:
            return 0
        self.protocol_paused = True
        return self.tell_protocol('pause_writing')

    cdef int maybe_resume_protocol(self) except -1:
        if self.protocol_paused and self.write_buffer_size() <= self.low_water:
            self.protocol_paused = False
            self.tell_protocol('resume_writing')
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
        if high is None:
            if low is None:
                high = 64 * 1024
            else:
                high = 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f'high ({high!r}) must be >= low ({low!r}) must be >= 0')
        self.high_water = high
        self.low_water = low
        self.maybe_pause_protocol()

    # -- closing ------------------------------------------------------------------------------

    def abort(self):
        self.close_now(None)

    cdef int close_now(self, exc) except -1:
        """asyncio's _force_close/_close: drop queued writes and lose the connection soon."""
        if self.send_op is not None and self.writing():
            self.send_staged_now()
            self.wbuf.clear()
            self.wbuf_size = 0
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


cdef inline Stream _stream(obj):
    return <Stream>obj._stream


class _TransportBase:
    """Methods shared by uringloop's stream transports (mixed into asyncio's classes)."""
    __slots__ = ()

    def __repr__(self):
        s = _stream(self)
        info = [self.__class__.__name__]
        if s.closing and s.sock is not None:
            info.append('closing')
        info.append(f'fd={s.fd}')
        if s.sock is None:
            info.append('closed')
        else:
            s.add_repr_info(info)
        return '<{}>'.format(' '.join(info))

    def is_closing(self):
        """Return True if the transport is closing or closed."""
        return _stream(self).closing

    def close(self):
        """Close the transport: buffered data is flushed, then connection_lost(None) is called;
        no more data is received."""
        _stream(self).close()

    def set_protocol(self, protocol):
        """Set a new protocol."""
        _stream(self).set_protocol(protocol)

    def get_protocol(self):
        """Return the current protocol."""
        return _stream(self).protocol

    def __del__(self, _warn=warnings.warn):
        s = getattr(self, '_stream', None)
        if s is not None and (<Stream>s).sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            (<Stream>s).sock.close()


class _ReadingMixin:
    __slots__ = ()

    def is_reading(self):
        """Return True if the transport is receiving."""
        return _stream(self).is_reading()

    def pause_reading(self):
        """Pause the receiving end: no data is passed to the protocol's data_received()
        until resume_reading() is called."""
        _stream(self).pause_reading()

    def resume_reading(self):
        """Resume the receiving end."""
        _stream(self).resume_reading()


class _WritingMixin:
    __slots__ = ()

    def write(self, data):
        """Write some data bytes to the transport; it does not block: the data is buffered
        and sent out asynchronously."""
        _stream(self).write(data)

    def writelines(self, list_of_data):
        """Write a list (or any iterable) of data bytes to the transport."""
        _stream(self).write(b''.join(list_of_data))

    def write_eof(self):
        """Close the write end after flushing buffered data."""
        _stream(self).write_eof()

    def can_write_eof(self):
        """Return True: this transport supports write_eof()."""
        return True

    def abort(self):
        """Close the transport immediately; buffered data is lost."""
        _stream(self).abort()

    def get_write_buffer_size(self):
        """Return the current size of the write buffer."""
        return _stream(self).write_buffer_size()

    def get_write_buffer_limits(self):
        """Return (low, high), the write buffer's water marks."""
        s = _stream(self)
        return (s.low_water, s.high_water)

    def set_write_buffer_limits(self, high=None, low=None):
        """Set the high- and low-water limits for write flow control."""
        _stream(self).set_write_buffer_limits(high, low)
