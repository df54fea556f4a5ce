# Layer 4, sockets: SocketOperations, the object behind the loop's sock_* calls (built on the
# runner and FdWatches). The loop (loop.pyx) holds it.
#
# The sock_recv* calls use readiness (a one-shot POLL_ADD on the ring) followed by the syscall,
# not a RECV into the caller's memory: when the awaiting task is cancelled, the poll is
# cancelled and no byte has moved, so the socket stays usable and the kernel never writes a
# buffer the caller got back. A receive tries the syscall first, as asyncio does, unless the
# last try on that socket found nothing: then the next SKIPPED_TRIES receives wait for
# readiness first, and the one after tries again. A server whose peers answer slower than it
# comes back to the socket would otherwise pay one failed recv() per message; a peer that
# keeps the socket full keeps every try.
#
# On a busy loop (the last poll brought two events or more) sock_sendall is a SEND from the
# caller's memory that leaves with the next iteration's enter instead of a send() of its own;
# the memory stays exported until the final CQE, and a cancelled call has sent what it has
# sent, as asyncio's does. On a quiet loop it tries send() first, as asyncio does: there the
# SEND's own completion would end the next enter's wait at once and cost an iteration more
# per message. The SEND is prepared at once, not staged: for a task that alternates sock_recv
# and sock_sendall it takes the place of the receive's poll in `pending`, so the count stays
# put (staged, it left every connection with nothing pending one iteration in two, and the
# ring resized all the time). Measurements: benchmarks/README.md, "`sock_*`".
#
# Transports (transports/) and servers (server.pyx) keep one multishot operation per
# connection or listener instead.

import stat
import warnings
import io as _io

from asyncio import exceptions as _exceptions, tasks as _tasks



cdef _check_sock(CoreLoop loop, sock):
    base_events._check_ssl_socket(sock)
    if loop.debug_flag and sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


cdef int SKIPPED_TRIES = 3


cdef int _check_unix_stream_socket(sock, str when_none) except -1:
    """The ValueError asyncio raises for a sock argument that is not a Unix stream socket
    (when_none: its message for no sock at all)."""
    if sock is None:
        raise ValueError(when_none)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ValueError(f'A UNIX Domain Stream Socket was expected, got {sock!r}')
    return 0


cdef class SockSend(LoopOperation):
    """The SEND of one sock_sendall: submitted again until every byte is out (after a POLLOUT
    if the kernel ever answers EAGAIN), then resolving a future with None."""
    cdef object future
    cdef int fd
    cdef Py_buffer view
    cdef bint has_view
    cdef Py_ssize_t pos
    cdef bint polling

    cdef int submit(self) except -1:
        cdef io_uring_sqe *sqe = self.prepare()
        sqe.fd = self.fd
        if self.polling:
            sqe.opcode = IORING_OP_POLL_ADD
            sqe.poll32_events = POLLOUT
            return 0
        sqe.opcode = IORING_OP_SEND
        sqe.addr = <uint64_t><size_t>(<char *>self.view.buf + self.pos)
        sqe.len = <uint32_t>min(self.view.len - self.pos, 0x7ffff000)
        sqe.msg_flags = MSG_NOSIGNAL | MSG_WAITALL
        return 0

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        fut = self.future
        if fut is None or fut.done() or res == -ECANCELED:
            self.future = None
            self.release()
            return 0
        if self.polling:
            self.polling = False
        elif res == -EAGAIN:
            self.polling = True
        elif res < 0:
            self.future = None
            self.release()
            fut.set_exception(OSError(-res, os.strerror(-res)))
            return 0
        else:
            self.pos += res
            if self.pos >= self.view.len:
                self.future = None
                self.release()
                fut.set_result(None)
                return 0
        return self.submit()

    cdef bint movable(self):
        return True

    cdef int resubmit(self) except -1:
        if self.future is None or self.future.done():
            return 0
        self.submit()
        return 1

    cdef void release(self):
        if self.has_view:
            self.has_view = False
            PyBuffer_Release(&self.view)

    def _on_future_done(self, fut):
        if fut.cancelled() and self.generation != 0:
            self.cancel()

    def __dealloc__(self):
        self.release()


cdef class SocketOperations:
    """The loop's sock_* calls: each tries the syscall and, when the socket is not ready,
    waits for readiness on the ring (FdWatches), or sends from the caller's memory with a
    SEND (SockSend)."""
    cdef CoreLoop loop
    cdef FdWatches fd_watches
    cdef dict recv_skips             # fd -> receives that skipped the try since one found nothing

    def __cinit__(self, CoreLoop loop, FdWatches fd_watches):
        self.loop = loop
        self.fd_watches = fd_watches
        self.recv_skips = {}

    # recv, recv_into, recvfrom, sendto: C calls that return when_ready's coroutine (no
    # coroutine frame of their own).

    async def when_ready(self, sock, uint32_t events, str method, *args):
        # Every sock_recv* and sock_sendto: try now (see the top of this file for when a
        # receive does not); otherwise wait for readiness on the ring (a poll, so a cancelled
        # call never loses data) and try again. The method is looked up at each try, as
        # asyncio does (its tests swap it between tries).
        cdef int fd
        cdef object skipped
        _check_sock(self.loop, sock)
        fd = sock.fileno()
        skipped = self.recv_skips.get(fd) if events == POLLIN else None
        if skipped is None or <int>skipped >= SKIPPED_TRIES:
            try:
                got = getattr(sock, method)(*args)
            except (BlockingIOError, InterruptedError):
                if events == POLLIN and fd >= 0:
                    self.recv_skips[fd] = 0
            else:
                if skipped is not None:
                    del self.recv_skips[fd]
                return got
        else:
            self.recv_skips[fd] = <int>skipped + 1
        self.fd_watches.ensure_no_transport(fd)
        while True:
            await self.fd_watches.wait_fd(fd, events)
            try:
                return getattr(sock, method)(*args)
            except (BlockingIOError, InterruptedError):
                pass

    cdef object recv(self, sock, n):
        """Receive up to n bytes from sock (non-blocking); return the data as bytes."""
        return self.when_ready(sock, POLLIN, 'recv', n)

    cdef object recv_into(self, sock, buf):
        """Receive data from sock into buf; return the number of bytes written."""
        return self.when_ready(sock, POLLIN, 'recv_into', buf)

    cdef object recvfrom(self, sock, bufsize):
        """Receive a datagram of up to bufsize from sock; return (data, address)."""
        return self.when_ready(sock, POLLIN, 'recvfrom', bufsize)

    async def recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into buf; return (nbytes, address)."""
        # A coroutine: len(buf) fails when awaited, as asyncio's does.
        return await self.when_ready(sock, POLLIN, 'recvfrom_into', buf, nbytes or len(buf))

    async def sendall(self, sock, data):
        """Send all of data to sock; return None once everything was handed to the kernel.
        On error an exception is raised and there is no way to know how much was sent."""
        cdef SockSend op
        cdef Py_ssize_t sent = 0
        _check_sock(self.loop, sock)
        fd = sock.fileno()
        if fd < 0 or not self.loop.io.batching:
            try:
                sent = sock.send(data)  # for a closed socket: the error asyncio gives
            except (BlockingIOError, InterruptedError):
                pass
        op = SockSend.__new__(SockSend)
        PyObject_GetBuffer(data, &op.view, PyBUF_SIMPLE)
        op.has_view = True
        op.pos = sent
        if op.pos >= op.view.len:
            op.release()
            return
        try:
            self.fd_watches.ensure_no_transport(fd)
        except BaseException:
            op.release()
            raise
        attach(op, self.loop)
        op.fd = fd
        op.pinned = data
        fut = self.loop.create_future()
        op.future = fut
        op.submit()
        fut.add_done_callback(op._on_future_done)
        await fut

    cdef object sendto(self, sock, data, address):
        """Send a datagram to address through sock; return the number of bytes sent."""
        return self.when_ready(sock, POLLOUT, 'sendto', data, address)

    async def connect(self, sock, address):
        """Connect sock to a remote address (resolved first for IP families)."""
        _check_sock(self.loop, sock)
        if sock.family == socket.AF_INET or (
                base_events._HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await (<object>self.loop)._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto,
                loop=self.loop)
            _, _, _, _, address = resolved[0]
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        fd = sock.fileno()
        self.fd_watches.ensure_no_transport(fd)
        await self.fd_watches.wait_fd(fd, POLLOUT)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, f'Connect call failed {address}')

    async def accept(self, sock):
        """Accept a connection on sock; return (conn, address) with conn non-blocking."""
        _check_sock(self.loop, sock)
        fd = sock.fileno()
        first = True
        while True:
            try:
                conn, address = sock.accept()
                conn.setblocking(False)
                return conn, address
            except (BlockingIOError, InterruptedError):
                pass
            if first:
                self.fd_watches.ensure_no_transport(fd)
                first = False
            await self.fd_watches.wait_fd(fd, POLLIN)

    async def sendfile(self, sock, file, offset, count):
        try:
            fileno = file.fileno()
        except (AttributeError, _io.UnsupportedOperation) as err:
            raise _exceptions.SendfileNotAvailableError("not a regular file")
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise _exceptions.SendfileNotAvailableError("not a regular file")
        blocksize = count if count else fsize
        if not blocksize:
            return 0
        fd = sock.fileno()
        total = 0
        pos = offset
        try:
            while True:
                want = min(blocksize - total, 0x7ffff000) if count else 0x7ffff000
                if count and want <= 0:
                    break
                try:
                    sent = os.sendfile(fd, fileno, pos, want)
                except (BlockingIOError, InterruptedError):
                    await self.fd_watches.wait_fd(fd, POLLOUT)
                    continue
                except OSError as exc:
                    if exc.errno == errno_module.ENOTCONN and type(exc) is not ConnectionError:
                        new_exc = ConnectionError("socket is not connected",
                                                  errno_module.ENOTCONN)
                        new_exc.__cause__ = exc
                        raise new_exc
                    if total == 0:
                        raise _exceptions.SendfileNotAvailableError(
                            "os.sendfile call failed") from exc
                    raise
                if sent == 0:
                    break
                total += sent
                pos += sent
        finally:
            if total > 0:
                os.lseek(fileno, pos, os.SEEK_SET)
        return total
