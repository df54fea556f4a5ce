# Layer 4, stream transports: TCP and Unix sockets, read pipes and write pipes, all one machine.
#
# A Stream is the state machine asyncio's selector transports keep (closing, paused, eof,
# connection lost, write buffer and its water marks) plus the two operation records that do
# the kernel's side:
#   - RecvOp: one multishot receive per connection, RECV for sockets and READ_MULTISHOT for
#     pipes and character devices, picking buffers from the loop's provided-buffer ring.
#     It stays armed across messages, so `pending` counts it once; when a CQE comes without
#     F_MORE (ENOBUFS, CQ overflow, a buffer-group move) it is re-armed if reading is wanted.
#     A BufferedProtocol on a socket gets a one-shot RECV into the buffer its get_buffer()
#     returned instead (re-armed from each CQE, so still one op per connection): the kernel
#     writes straight into the protocol's memory, which stays exported until the CQE.
#   - SendOp: at most one SEND (sockets) or WRITE (pipes) in flight; writes made meanwhile are
#     queued and leave together in the next one, so a busy connection batches its writes.
# The asyncio-facing objects (SocketTransport, ReadPipeTransport, WritePipeTransport) are
# Python classes deriving from asyncio's transport classes, because asyncio.BaseTransport has
# __slots__ and user code checks isinstance(); each holds its Stream and delegates to it.
#
# Data that the kernel delivers after pause_reading() asked the receive to stop (CQEs already
# on their way) is kept and handed to the protocol after resume_reading(): nothing is lost.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport INT64_MAX

from asyncio import (constants as _constants, protocols as _protocols, trsock as _trsock,
                     transports as _transports)

cdef extern from "sys/socket.h":
    enum:
        MSG_NOSIGNAL
        MSG_WAITALL
        MSG_DONTWAIT
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags) nogil

cdef extern from "unistd.h":
    ssize_t c_write "write"(int fd, const void *buf, size_t n) nogil

cdef extern from "errno.h":
    enum:
        EAGAIN_ "EAGAIN"
        EINTR_ "EINTR"

cdef int UL_OP_READ_MULTISHOT = 49
# The most bytes one read or write syscall (or SQE) moves: INT_MAX rounded down to a page.
cdef Py_ssize_t MAX_RW_COUNT = 0x7ffff000

cdef enum StreamKind:
    KIND_SOCKET = 0
    KIND_READ_PIPE = 1
    KIND_WRITE_PIPE = 2

# The write path, chosen by measurement (benchmarks/echo.py; numbers in benchmarks/README.md).
# A write smaller than DIRECT_WRITE_MIN is staged: its SEND is made right before the
# iteration's io_uring_enter and leaves in it, so a server answering many connections makes
# one syscall per iteration instead of one send() per write (1 KiB echo, 100 connections: 0.2
# syscalls per round-trip and 10.3 µs of server CPU, against 1.05 and 15.8 with send() first).
# From 32 KiB on, the write goes out with a direct non-blocking send() first and only what the
# socket did not take is staged: a staged write keeps its bytes alive across the enter, and
# with a hundred connections glibc's heap trimming then hands those pages back to the kernel
# and faults them in again every iteration (64 KiB echo, 100 connections: 117 against 52 µs),
# while the syscall saved is worth less and less beside the copy.
cdef Py_ssize_t DIRECT_WRITE_MIN = 32768
cdef Py_ssize_t direct_write_min = DIRECT_WRITE_MIN


def _set_write_path(path):
    """Benchmark aid: measure one write path for every size ('direct' or 'queued'), or go back
    to the size rule ('auto')."""
    global direct_write_min
    if path == 'auto':
        direct_write_min = DIRECT_WRITE_MIN
    elif path == 'direct':
        direct_write_min = 0
    elif path == 'queued':
        direct_write_min = INT64_MAX
    else:
        raise ValueError(path)


# What Stream.call_protocol returns when the protocol raised (None is a valid result).
cdef object PROTOCOL_FAILED = object()


def _call_soon_later(loop, callback, args, context):
    loop.call_soon(callback, *args, context=context)


cdef inline bint enter_context(context) except -1:
    """Enter a transport's contextvars context around a completion. False when it is
    already the current one (a completion reaped from inside one of its own callbacks):
    a context cannot be entered twice, and the callbacks then run in it anyway."""
    try:
        PyContext_Enter(context)
    except RuntimeError:
        return False
    return True


cdef class StreamOp(Operation):
    """An operation a Stream owns. Its completion is handled with the loop's in_completion
    flag set, so the callbacks it triggers run in the next iteration, as asyncio schedules
    them from an fd's I/O callback."""
    cdef Stream stream

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        cdef SocketLoop loop = <SocketLoop>self.loop
        # The protocol's callbacks run in the transport's context, as asyncio runs them.
        cdef object context = self.stream.context
        cdef bint entered = enter_context(context)
        loop.in_completion = True
        try:
            return self.handle(res, flags, final)
        finally:
            loop.in_completion = False
            if entered:
                PyContext_Exit(context)

    cdef int handle(self, int32_t res, uint32_t flags, bint final) except -1:
        return 0


cdef class RecvOp(StreamOp):
    """The multishot receive of one Stream."""
    cdef BufGroup group          # provided-buffer mode: the group the receive is armed on
    cdef bint rearm              # re-arm when the pending cancel lands (group move, resume)
    cdef bint into               # one-shot RECV into a BufferedProtocol's own buffer
    cdef Py_buffer view          # that buffer, exported until the CQE (`keep` holds its owner)
    cdef bint has_view
    cdef bint polling            # a POLL_ADD for readability before the next one-shot READ

    cdef int arm(self) except -1:
        cdef BufPool pool
        cdef BufGroup g
        cdef io_uring_sqe *sqe
        if self.stream.buffered and self.stream.kind == KIND_SOCKET:
            return self.arm_into()
        if self.polling:
            # A one-shot READ (kernels before 6.7) of a non-blocking pipe answers EAGAIN
            # rather than waiting: wait for readability first.
            self.prepare_poll(self.stream.fd, POLLIN)
            self.cancelling = False
            self.into = False
            return 0
        pool = (<SocketLoop>self.loop).bufpool
        g = pool.group_for_arm()
        sqe = self.prepare()
        self.cancelling = False
        self.into = False
        self.group = g
        g.users += 1
        pool.receivers.add(self)
        sqe.fd = self.stream.fd
        sqe.flags = IOSQE_BUFFER_SELECT
        sqe.buf_group = g.pbr.bgid
        if self.stream.kind == KIND_SOCKET:
            sqe.opcode = IORING_OP_RECV
            sqe.ioprio = IORING_RECV_MULTISHOT
        else:
            # Before 6.7 there is no multishot READ: one READ per buffer, re-armed from each
            # CQE by the same final-CQE path.
            sqe.opcode = UL_OP_READ_MULTISHOT if self.ring.read_multishot else IORING_OP_READ
            sqe.off = <uint64_t>-1
            g.offthread_users += 1  # a pipe or tty read may run on an io-wq worker
        return 0

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
        self.keep = buf
        self.cancelling = False
        self.into = True
        sqe.opcode = IORING_OP_RECV
        sqe.fd = s.fd
        sqe.addr = <uint64_t><size_t>self.view.buf
        sqe.len = <uint32_t>(self.view.len if self.view.len < 0x7fffffff else 0x7fffffff)
        return 0

    cdef bint movable(self):
        return True

    cdef int resubmit(self) except -1:
        # finish() re-arms on the current ring, and on the current buffer group.
        self.rearm = True
        return 0

    cdef void release_view(self):
        if self.has_view:
            self.has_view = False
            PyBuffer_Release(&self.view)
        self.keep = None

    cdef int handle(self, int32_t res, uint32_t flags, bint final) except -1:
        if self.into:
            return self.handle_into(res)
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

    cdef int handle_into(self, int32_t res) except -1:
        cdef Stream s = self.stream
        cdef bytes data
        try:
            if res > 0:
                if s.closing or s.eof_seen:
                    self.release_view()
                elif s.paused or s.held or not s.buffered:
                    # Paused meanwhile (or the protocol changed): the bytes are in the old
                    # buffer; keep a copy for whoever reads next.
                    data = PyBytes_FromStringAndSize(<char *>self.view.buf, res)
                    self.release_view()
                    if s.paused or s.held:
                        s.held.append(data)
                    else:
                        s.on_chunk(PyBytes_AS_STRING(data), res)
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

    cdef int handle_multishot(self, int32_t res, uint32_t flags, bint final) except -1:
        cdef Stream s = self.stream
        cdef BufGroup g = self.group
        cdef uint16_t bid
        cdef SocketLoop loop = <SocketLoop>self.loop
        if final:
            self.group = None
            g.users -= 1
            if self.stream.kind != KIND_SOCKET:
                g.offthread_users -= 1
            loop.bufpool.receivers.discard(self)
        try:
            if flags & IORING_CQE_F_BUFFER:
                bid = <uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT)
                g.head += 1             # the kernel consumed the buffer at its head
                try:
                    if res > 0:
                        s.on_chunk(g.buffer(bid), res)
                finally:
                    loop.bufpool.give_back(g, bid)
            if res == 0:
                if final:
                    s.on_eof()
            elif res == -ENOBUFS:
                # No data was taken: it waits in the socket for the re-armed receive.
                loop.bufpool.on_enobufs(g)
            elif res == -EAGAIN and self.stream.kind != KIND_SOCKET:
                self.polling = True     # a one-shot READ found the pipe empty
            elif res < 0 and res != -ECANCELED:
                s.on_read_error(res)
        finally:
            if final:
                self.finish(res)
        return 0

    cdef int finish(self, int32_t res) except -1:
        """The receive's final CQE has been handled: arm the next one if reading is wanted.
        After ECANCELED, re-arm only when asked to (the buffer pool moved the receive to a new
        group, or reading resumed before the pause's cancel landed): any other cancel comes
        from close() or from loop.close() draining the ring."""
        cdef SocketLoop loop = <SocketLoop>self.loop
        self.cancelling = False
        rearm = self.rearm
        self.rearm = False
        if res != 0 and (res != -ECANCELED or rearm) and self.stream.wants_read() \
                and not loop.closing_flag and self.generation == 0:
            self.arm()
        elif self.generation == 0 and not self.into:
            loop.bufpool.on_receiver_gone()
        return 0

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)


cdef class SendOp(StreamOp):
    """The one SEND/WRITE of a Stream; `keep` pins the bytes until the final CQE. It is staged
    (see Operation.stage): the SQE is made right before the loop's next enter, so what the
    stream's writes of one iteration add meanwhile leaves in the same SEND."""
    cdef object data             # what is still to be written (None once aborted)
    cdef Py_ssize_t offset
    cdef bint polling            # waiting for POLLOUT after the kernel said EAGAIN

    cdef int start(self, bytes data, Py_ssize_t offset=0) except -1:
        """Send data[offset:] (the head already went out with a direct send())."""
        self.data = data
        self.keep = data
        self.offset = offset
        self.polling = False
        return self.stage()

    cdef int flush(self) except -1:
        if self.data is None:
            self.keep = None            # aborted before it reached the kernel
            return 0
        self.take_queued()
        return self.submit()

    cdef int take_queued(self) except -1:
        """Fold the writes queued behind a staged SEND that has not reached the kernel yet
        into its data (the old bytes are ours alone: nothing in flight points at them)."""
        cdef Stream s = self.stream
        if s.wbuf and self.offset == 0 and not self.polling and self.generation == 0:
            s.wbuf.insert(0, self.data)
            self.data = b''.join(s.wbuf)
            self.keep = self.data
            s.wbuf.clear()
            s.wbuf_size = 0
        return 0

    cdef int submit(self) except -1:
        cdef io_uring_sqe *sqe = self.prepare()
        self.cancelling = False
        sqe.fd = self.stream.fd
        if self.polling:
            sqe.opcode = IORING_OP_POLL_ADD
            sqe.poll32_events = POLLOUT
            return 0
        sqe.addr = <uint64_t><size_t>(PyBytes_AS_STRING(self.keep) + self.offset)
        # One SEND or WRITE carries at most MAX_RW_COUNT bytes (the kernel refuses a longer
        # one): a larger write leaves in several, each staged again from the last one's CQE.
        sqe.len = <uint32_t>min(PyBytes_GET_SIZE(self.keep) - self.offset, MAX_RW_COUNT)
        if self.stream.kind == KIND_SOCKET:
            sqe.opcode = IORING_OP_SEND
            # WAITALL: the kernel retries a short send itself instead of completing early.
            sqe.msg_flags = MSG_NOSIGNAL | MSG_WAITALL
        else:
            sqe.opcode = IORING_OP_WRITE
            sqe.off = <uint64_t>-1
        return 0

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
            self.keep = None
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
            self.keep = None
            return s.on_write_error(res)
        self.offset += res
        if self.offset < PyBytes_GET_SIZE(self.data):
            return self.stage()
        self.data = None
        self.keep = None
        return s.on_write_done()


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
        self.stream.on_peer_gone()
        return 0


cdef class Stream:
    cdef SocketLoop loop
    cdef object transport          # the asyncio-facing object (strong until connection lost)
    cdef object protocol
    cdef object sock               # socket.socket or the pipe's file object
    cdef int fd
    cdef StreamKind kind
    cdef bint buffered
    cdef bint closing
    cdef bint eof_requested        # write_eof() called
    cdef bint eof_seen             # the peer's EOF arrived: no more reads
    cdef bint paused
    cdef bint protocol_paused
    cdef bint protocol_connected
    cdef int conn_lost
    cdef RecvOp recv_op
    cdef SendOp send_op
    cdef PeerWatch peer_watch
    cdef list held                 # data received while paused, in order
    cdef bint held_eof
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
        self.held = []
        self.fd = -1
        self.high_water = 64 * 1024
        self.low_water = 16 * 1024

    cdef int init(self, SocketLoop loop, transport, sock, int fd, StreamKind kind,
                  protocol, server, context) except -1:
        self.loop = loop
        self.context = PyContext_CopyCurrent() if context is None else context
        self.transport = transport
        self.sock = sock
        self.fd = fd
        self.kind = kind
        self.server = server
        self.set_protocol(protocol)
        if kind != KIND_WRITE_PIPE:
            self.recv_op = RecvOp.__new__(RecvOp)
            self.recv_op.loop = loop
            self.recv_op.stream = self
        if kind != KIND_READ_PIPE:
            self.send_op = SendOp.__new__(SendOp)
            self.send_op.loop = loop
            self.send_op.stream = self
        return 0

    cdef soon(self, callback, tuple args):
        """call_soon() with asyncio's timing: when the call comes from a completion (where
        asyncio would be running the fd's I/O callback), the callback runs in the next
        iteration, not in the one that is handling the completion."""
        if self.loop.in_completion:
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
        return (self.kind != KIND_WRITE_PIPE and not self.closing and not self.paused
                and not self.eof_seen and self.conn_lost == 0)

    def start_reading(self):
        if not self.wants_read() or self.loop.closing_flag:
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
        if self.closing or self.eof_seen:
            return 0                 # asyncio stops reading at close(): late bytes are dropped
        if self.paused or self.held:
            self.held.append(PyBytes_FromStringAndSize(p, n))
            return 0
        if self.buffered:
            return self.feed_buffered(p, n)
        self.call_protocol('data_received', (PyBytes_FromStringAndSize(p, n),))
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
                    # In front: when this chunk came from `held`, newer chunks wait there.
                    self.held.insert(0, PyBytes_FromStringAndSize(p, n))
                return 0
        return 0

    def deliver_held(self):
        """Hand over what arrived while reading was paused (after resume_reading())."""
        cdef bytes data
        while self.held and not self.paused and not self.closing:
            data = self.held.pop(0)
            if self.buffered:
                self.feed_buffered(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            elif self.call_protocol('data_received', (data,)) is PROTOCOL_FAILED:
                return
        if not self.held and self.held_eof and not self.paused and not self.closing:
            self.held_eof = False
            self.on_eof()

    cdef int on_eof(self) except -1:
        if self.closing or self.conn_lost:
            return 0
        if self.paused or self.held:
            self.held_eof = True
            self.eof_seen = True
            return 0
        self.eof_seen = True
        if self.loop.debug_flag:
            logger.debug("%r received EOF", self.transport)
        if self.kind == KIND_READ_PIPE:
            self.closing = True
            self.soon(self.protocol.eof_received, ())
            self.soon(self.call_connection_lost, (None,))
            return 0
        keep_open = self.call_protocol('eof_received', ())
        if keep_open is PROTOCOL_FAILED:
            return 0
        if not keep_open:
            self.close()
        return 0

    cdef int on_read_error(self, int32_t res) except -1:
        # OSError(errno, text) is already the subclass Python raises (ConnectionResetError...).
        exc = OSError(-res, os.strerror(-res))
        if self.kind == KIND_SOCKET:
            self.fatal_error(exc, 'Fatal read error on socket transport')
        else:
            self.fatal_error(exc, 'Fatal read error on pipe transport')
        return 0

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
        if self.held or self.held_eof:
            self.loop.call_soon(self.deliver_held, context=self.context)
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
        if self.kind == KIND_SOCKET:
            if self.eof_requested:
                raise RuntimeError('Cannot call write() after write_eof()')
            if self.empty_waiter is not None:
                raise RuntimeError('unable to write; sendfile is in progress')
        if type(data) is bytes:
            b = <bytes>data
        else:
            b = bytes(data)
        n = PyBytes_GET_SIZE(b)
        if n == 0:
            return
        if self.conn_lost or (self.kind == KIND_WRITE_PIPE and self.closing):
            if self.conn_lost >= _constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                if self.kind == KIND_SOCKET:
                    logger.warning('socket.send() raised exception.')
                else:
                    logger.warning('pipe closed by peer or os.write(pipe, data) raised '
                                   'exception.')
            self.conn_lost += 1
            return
        if self.writing():
            self.wbuf.append(b)
            self.wbuf_size += n
        else:
            # Pipes write directly first, as asyncio does: code that writes to a pipe and
            # then reads its other end with a blocking os.read() relies on it. So does a
            # socket written to while the loop is not running: no enter is coming to carry it.
            if n >= direct_write_min or self.kind != KIND_SOCKET or not self.loop.running_flag:
                if self.kind == KIND_SOCKET:
                    sent = c_send(self.fd, PyBytes_AS_STRING(b), n, MSG_NOSIGNAL | MSG_DONTWAIT)
                else:
                    sent = c_write(self.fd, PyBytes_AS_STRING(b), n)
                if sent < 0:
                    if errno != EAGAIN_ and errno != EINTR_:
                        err = errno
                        if self.kind != KIND_SOCKET:
                            self.conn_lost += 1
                        self.fatal_error(OSError(err, os.strerror(err)),
                                         'Fatal write error on socket transport'
                                         if self.kind == KIND_SOCKET else
                                         'Fatal write error on pipe transport')
                        return
                    sent = 0
                if sent == n:
                    return
            self.send_op.start(b, sent)
        self.maybe_pause_protocol()

    def writelines(self, list_of_data):
        self.write(b''.join(list_of_data))

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
        if self.closing:
            if self.conn_lost == 0:
                self.conn_lost += 1
                self.call_connection_lost(None)
        elif self.eof_requested:
            self.shutdown_write()
        return 0

    cdef shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    cdef int on_write_error(self, int32_t res) except -1:
        exc = OSError(-res, os.strerror(-res))
        if self.empty_waiter is not None:
            self.empty_waiter.set_exception(exc)
        if self.kind != KIND_SOCKET:
            self.conn_lost += 1
        if self.kind == KIND_SOCKET:
            self.fatal_error(exc, 'Fatal write error on socket transport')
        else:
            self.fatal_error(exc, 'Fatal write error on pipe transport')
        return 0

    cdef int on_peer_gone(self) except -1:
        if self.loop.debug_flag:
            logger.info("%r was closed by peer", self.transport)
        if self.writing():
            self.close_now(BrokenPipeError())
        else:
            self.close_now(None)
        return 0

    def write_eof(self):
        if self.kind == KIND_WRITE_PIPE:
            if self.closing:
                return
            self.closing = True
            if not self.writing():
                self.soon(self.call_connection_lost, (None,))
            return
        if self.closing or self.eof_requested:
            return
        self.eof_requested = True
        if not self.writing():
            self.shutdown_write()

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

    def close(self):
        if self.kind == KIND_WRITE_PIPE:
            if self.sock is not None and not self.closing:
                self.write_eof()
            return
        if self.closing:
            return
        self.closing = True
        self.stop_reading()
        if self.kind == KIND_READ_PIPE:
            self.soon(self.call_connection_lost, (None,))
            return
        if not self.writing():
            self.conn_lost += 1
            self.soon(self.call_connection_lost, (None,))

    def abort(self):
        self.close_now(None)

    cdef int close_now(self, exc) except -1:
        """asyncio's _force_close/_close: drop queued writes and lose the connection soon."""
        if self.conn_lost and self.kind == KIND_SOCKET:
            return 0
        if self.send_op is not None and self.writing():
            self.send_staged_now()
            self.wbuf.clear()
            self.wbuf_size = 0
            self.send_op.data = None          # `keep` still pins the bytes for the kernel
            if self.send_op.generation != 0:
                self.send_op.cancel()
        self.closing = True
        self.stop_reading()
        if self.peer_watch is not None and self.peer_watch.generation != 0:
            self.peer_watch.cancel()
        self.conn_lost += 1
        self.soon(self.call_connection_lost, (exc,))
        return 0

    cdef int send_staged_now(self) except -1:
        """A staged write that never reached the kernel is one asyncio's write() would already
        have handed to the socket: abort() must not take it back. Give it to the socket now,
        without blocking, before the rest is dropped."""
        cdef SendOp op = self.send_op
        if not op.staged or op.offset != 0 or op.polling or op.data is None \
                or self.kind != KIND_SOCKET or self.sock is None:
            return 0
        op.take_queued()
        c_send(self.fd, PyBytes_AS_STRING(op.data), PyBytes_GET_SIZE(op.data),
               MSG_NOSIGNAL | MSG_DONTWAIT)        # best effort, as asyncio's write() was
        return 0

    cdef int fatal_error(self, exc, message) except -1:
        if isinstance(exc, OSError) and (self.kind == KIND_SOCKET or
                                         exc.errno == errno_module.EIO or
                                         self.kind == KIND_WRITE_PIPE):
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
            if self.peer_watch is not None and self.peer_watch.generation != 0:
                self.peer_watch.cancel()
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
        elif s.kind == KIND_SOCKET:
            info.append('read=paused' if s.paused else 'read=polling')
            info.append(f'write=<bufsize={s.write_buffer_size()}>')
        else:
            info.append('open')
            if s.kind == KIND_WRITE_PIPE:
                info.append(f'bufsize={s.write_buffer_size()}')
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


cdef object new_socket_transport(SocketLoop loop, sock, protocol, waiter, extra, server,
                                 context=None):
    cdef Stream s = Stream.__new__(Stream)
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
    s.init(loop, transport, sock, fd, KIND_SOCKET, protocol, server, context)
    loop._transports[fd] = transport
    if server is not None:
        _server_attach(server, transport)
    loop.call_soon(protocol.connection_made, transport, context=s.context)
    loop.call_soon(s.start_reading, context=s.context)
    if waiter is not None:
        loop.call_soon(futures._set_result_unless_cancelled, waiter, None, context=s.context)
    return transport


cdef object new_pipe_transport(SocketLoop loop, pipe, protocol, waiter, extra, bint reading):
    cdef Stream s = Stream.__new__(Stream)
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
    transport._stream = s
    os.set_blocking(fd, False)
    s.init(loop, transport, pipe, fd, KIND_READ_PIPE if reading else KIND_WRITE_PIPE,
           protocol, None, None)
    loop._transports[fd] = transport
    loop.call_soon(protocol.connection_made, transport, context=s.context)
    if reading:
        loop.call_soon(s.start_reading, context=s.context)
    elif is_socket or is_fifo:
        s.peer_watch = PeerWatch.__new__(PeerWatch)
        s.peer_watch.loop = loop
        s.peer_watch.stream = s
        loop.call_soon(_arm_peer_watch, s, context=s.context)
    if waiter is not None:
        loop.call_soon(futures._set_result_unless_cancelled, waiter, None, context=s.context)
    return transport


def _arm_peer_watch(Stream s):
    if s.sock is not None and not s.closing and s.peer_watch.generation == 0:
        s.peer_watch.arm()
