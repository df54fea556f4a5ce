# Layer 4, servers: one multishot ACCEPT per listening socket, so a listener counts once in
# `pending` however many connections arrive. asyncio.base_events.Server is reused as it is:
# it calls loop._start_serving() per socket and loop._stop_serving() on close, and the
# transports attach to and detach from it as asyncio's do.
#
# When accepting fails for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) the pending
# connection stays in the kernel's backlog; like asyncio, the server reports it, stops
# accepting for ACCEPT_RETRY_DELAY seconds and then re-arms, so it keeps serving once file
# descriptors are free again.
#
# A listening socket shared by several processes (uvicorn --workers, gunicorn) queues their
# ACCEPTs on its wait queue, and the kernel hands each new connection to the first exclusive
# waiter: a multishot ACCEPT never leaves that queue, so the process that armed first would
# get every connection. After each batch of connections the ACCEPT is therefore cancelled
# and armed again, which puts it at the back of the queue behind the other processes'.

cdef extern from "sys/socket.h":
    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC

cdef extern from "errno.h":
    enum:
        EMFILE
        ENFILE

        EBADF

        ENOTSOCK


cdef class AcceptOp(LoopOperation):
    cdef object sock
    cdef int fd
    cdef object protocol_factory
    cdef object sslcontext
    cdef object server
    cdef object ssl_handshake_timeout
    cdef object ssl_shutdown_timeout
    cdef bint stopped
    cdef bint backing_off          # re-arm from a timer, not from the final CQE
    cdef bint rotating             # our cancel, to re-arm behind other processes' ACCEPTs
    cdef object retry_handle
    cdef object context            # contextvars context each connection's is copied from

    cdef int arm(self) except -1:
        cdef io_uring_sqe *sqe = self.prepare()
        self.cancelling = False
        self.rotating = False
        sqe.opcode = IORING_OP_ACCEPT
        sqe.fd = self.fd
        sqe.ioprio = IORING_ACCEPT_MULTISHOT
        sqe.accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC
        return 0

    cdef bint movable(self):
        return True

    cdef int resubmit(self) except -1:
        if self.stopped or self.backing_off:
            return 0
        self.arm()
        return 1

    cdef int stop(self) except -1:
        self.stopped = True
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        if self.generation != 0:
            self.cancel()
        return 0

    def _retry(self):
        self.retry_handle = None
        self.backing_off = False
        if not self.stopped and self.generation == 0 and \
                not (<NativeLoop>self.loop).io.closing:
            self.arm()

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        cdef NativeLoop loop = <NativeLoop>self.loop
        try:
            if res >= 0:
                if self.stopped or loop.closed_flag:
                    os.close(res)
                else:
                    self.accepted(res)
                    if not final and not self.cancelling:
                        self.rotating = True
                        self.cancel()
            elif res == -ECANCELED or self.stopped:
                pass
            elif res == -EMFILE or res == -ENFILE or res == -ENOBUFS or res == -ENOMEM:
                exc = OSError(-res, os.strerror(-res))
                loop.call_exception_handler({
                    'message': 'socket.accept() out of system resource',
                    'exception': exc,
                    'socket': _trsock.TransportSocket(self.sock),
                })
                self.backing_off = True
                if not final:
                    self.cancel()
            elif res == -EBADF or res == -EINVAL or res == -ENOTSOCK:
                # The listening socket is gone or no longer listening: nothing left to accept.
                self.stopped = True
            # Other errors (ECONNABORTED, EPERM from a firewall, EPROTO...) concern one
            # connection only: asyncio ignores them and keeps accepting.
        finally:
            # Also when the protocol factory raised SystemExit or KeyboardInterrupt: the
            # server keeps accepting once the loop runs again. A cancel that is not our own
            # back-off came from loop.close() (or stop()): done.
            if final and not self.stopped and not loop.io.closing and \
                    (res != -ECANCELED or self.backing_off or self.rotating):
                if self.backing_off:
                    if self.retry_handle is None:
                        self.retry_handle = loop.call_later(_constants.ACCEPT_RETRY_DELAY,
                                                            self._retry)
                else:
                    self.arm()
        return 0

    cdef int accepted(self, int fd) except -1:
        # Each connection gets a copy of the server's context, as asyncio accepts each one in
        # a task of its own: protocol_factory() and the protocol's callbacks run in it.
        cdef object context = self.context.copy()
        PyContext_Enter(context)
        try:
            return self.accepted_in(fd, context)
        finally:
            PyContext_Exit(context)

    cdef int accepted_in(self, int fd, context) except -1:
        cdef NativeLoop loop = <NativeLoop>self.loop
        listener = self.sock
        try:
            conn = socket.socket(listener.family, listener.type, listener.proto, fileno=fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            peer = conn.getpeername()
        except OSError:
            peer = None
        extra = {'peername': peer}
        if self.sslcontext is not None:
            loop.create_task(_accept_tls(loop, self, conn, extra, context))
            return 0
        try:
            protocol = self.protocol_factory()
            new_socket_transport(loop, conn, protocol, None, extra, self.server, context)
        except (SystemExit, KeyboardInterrupt):
            conn.close()
            raise
        except BaseException as exc:
            conn.close()
            loop.call_exception_handler({
                'message': 'Error on transport creation for incoming connection',
                'exception': exc,
            })
        return 0


async def _accept_tls(NativeLoop loop, AcceptOp op, conn, extra, context):
    protocol = None
    transport = None
    try:
        protocol = op.protocol_factory()
        waiter = loop.create_future()
        transport = loop._make_ssl_transport(
            conn, protocol, op.sslcontext, waiter=waiter, server_side=True, extra=extra,
            server=op.server, ssl_handshake_timeout=op.ssl_handshake_timeout,
            ssl_shutdown_timeout=op.ssl_shutdown_timeout, context=context)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        if transport is None:
            conn.close()
        if loop.debug_flag:
            context = {
                'message': 'Error on transport creation for incoming connection',
                'exception': exc,
            }
            if protocol is not None:
                context['protocol'] = protocol
            if transport is not None:
                context['transport'] = transport
            loop.call_exception_handler(context)
