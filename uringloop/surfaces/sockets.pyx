# Layer 4, sockets: SocketOperations, the object behind the loop's sock_* calls (built on the
# runner and FdWatches), and the loop methods that make stream transports (TCP, Unix, pipes;
# transports/) and servers.
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


cdef class SocketLoop(CoreLoop):
    """CoreLoop plus fd readiness, sockets, stream transports and servers."""
    cdef FdWatches fd_watches
    cdef public object _transports   # fd_watches.transports, named as asyncio's tests expect
    cdef dict listeners              # listening fd -> AcceptOp
    cdef dict unix_server_inodes     # listening Unix socket -> inode of its path (3.13)
    cdef SocketOperations sockets

    def __cinit__(self):
        self.fd_watches = FdWatches(self)
        self._transports = self.fd_watches.transports
        self.listeners = {}
        self.sockets = SocketOperations(self, self.fd_watches)
        self.unix_server_inodes = {}

    def _buffer_ring_stats(self):
        """Testing aid: (buffers in the current group, receives armed, grows, shrinks,
        ENOBUFS seen, publishes that put given-back buffers in front)."""
        return self.io.bufpool.stats()

    def _buffer_ring_next(self):
        """Testing aid: the id of the buffer the kernel will fill next, as of the last enter
        (None before any receive has been armed)."""
        cdef BufGroup g = self.io.bufpool.current
        if g is None:
            return None
        return ul_pbuf_ring_bid_at(&g.pbr, g.head)

    # -- readiness (surfaces/readiness.pyx) ----------------------------------------------------

    def add_reader(self, fd, callback, *args):
        """Start watching fd for reading: callback(*args) runs while fd is readable."""
        self.fd_watches.set_user_watch(fd, False, True, callback, args)

    def remove_reader(self, fd):
        """Stop watching fd for reading; return whether it was watched."""
        return self.fd_watches.set_user_watch(fd, False, False, None, None)

    def add_writer(self, fd, callback, *args):
        """Start watching fd for writing: callback(*args) runs while fd is writable."""
        self.fd_watches.set_user_watch(fd, True, True, callback, args)

    def remove_writer(self, fd):
        """Stop watching fd for writing; return whether it was watched."""
        return self.fd_watches.set_user_watch(fd, True, False, None, None)

    def _ensure_fd_no_transport(self, fd):
        self.fd_watches.ensure_no_transport(fd)

    def _wait_readable(self, fd):
        return self.fd_watches.wait_fd(fileobj_to_fd(fd), POLLIN)

    def _wait_writable(self, fd):
        return self.fd_watches.wait_fd(fileobj_to_fd(fd), POLLOUT)

    # -- low-level socket API (SocketOperations) ----------------------------------------------
    # Each returns the object's coroutine: no coroutine frame of its own.

    def sock_recv(self, sock, n):
        """Receive up to n bytes from sock (non-blocking); return the data as bytes."""
        return self.sockets.recv(sock, n)

    def sock_recv_into(self, sock, buf):
        """Receive data from sock into buf; return the number of bytes written."""
        return self.sockets.recv_into(sock, buf)

    def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to bufsize from sock; return (data, address)."""
        return self.sockets.recvfrom(sock, bufsize)

    def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into buf; return (nbytes, address)."""
        return self.sockets.recvfrom_into(sock, buf, nbytes)

    def sock_sendall(self, sock, data):
        """Send all of data to sock; return None once everything was handed to the kernel.
        On error an exception is raised and there is no way to know how much was sent."""
        return self.sockets.sendall(sock, data)

    def sock_sendto(self, sock, data, address):
        """Send a datagram to address through sock; return the number of bytes sent."""
        return self.sockets.sendto(sock, data, address)

    def sock_connect(self, sock, address):
        """Connect sock to a remote address (resolved first for IP families)."""
        return self.sockets.connect(sock, address)

    def sock_accept(self, sock):
        """Accept a connection on sock; return (conn, address) with conn non-blocking."""
        return self.sockets.accept(sock)

    def _sock_sendfile_native(self, sock, file, offset, count):
        return self.sockets.sendfile(sock, file, offset, count)

    async def _sendfile_native(self, transp, file, offset, count):
        # The socket is lent to sock_sendfile() for the duration: reading is paused (what
        # arrives meanwhile is kept for the protocol), queued writes are flushed first, and
        # write() refuses new data until the file is sent.
        fd = transp._sock_fd
        self._transports.pop(fd, None)
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count,
                                            fallback=False)
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            self._transports[fd] = transp

    # -- transports ---------------------------------------------------------------------------

    # `context` (passed by asyncio from 3.15): the contextvars context the protocol's
    # callbacks run in; without it, a copy of the current one, as asyncio did before.
    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None,
                               server=None, context=None):
        return new_socket_transport(self, sock, protocol, waiter, extra, server, context)

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return new_pipe_transport(self, pipe, protocol, waiter, extra, True)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return new_pipe_transport(self, pipe, protocol, waiter, extra, False)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None,
                            server=None, ssl_handshake_timeout=None,
                            ssl_shutdown_timeout=None, call_connection_made=True,
                            context=None):
        from asyncio import sslproto
        kwargs = {'ssl_handshake_timeout': ssl_handshake_timeout}
        if sys.version_info >= (3, 11):
            kwargs['ssl_shutdown_timeout'] = ssl_shutdown_timeout
        ssl_protocol = sslproto.SSLProtocol(self, protocol, sslcontext, waiter, server_side,
                                            server_hostname,
                                            call_connection_made=call_connection_made,
                                            **kwargs)
        new_socket_transport(self, rawsock, ssl_protocol, None, extra, server, context)
        return ssl_protocol._app_transport

    async def create_unix_connection(self, protocol_factory, path=None, *, ssl=None,
                                     sock=None, server_hostname=None,
                                     ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        """Open a connection to the Unix socket at path (or use the connected sock);
        return (transport, protocol)."""
        if ssl:
            if server_hostname is None:
                raise ValueError('you have to pass server_hostname when using ssl')
        else:
            if server_hostname is not None:
                raise ValueError('server_hostname is only meaningful with ssl')
            if ssl_handshake_timeout is not None:
                raise ValueError('ssl_handshake_timeout is only meaningful with ssl')
            if ssl_shutdown_timeout is not None:
                raise ValueError('ssl_shutdown_timeout is only meaningful with ssl')
        if path is not None:
            if sock is not None:
                raise ValueError('path and sock can not be specified at the same time')
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            _check_unix_stream_socket(sock, 'no path and sock were specified')
            sock.setblocking(False)
        kwargs = {'ssl_handshake_timeout': ssl_handshake_timeout}
        if sys.version_info >= (3, 11):
            kwargs['ssl_shutdown_timeout'] = ssl_shutdown_timeout
        return await self._create_connection_transport(sock, protocol_factory, ssl,
                                                       server_hostname, **kwargs)

    async def create_unix_server(self, protocol_factory, path=None, *, sock=None,
                                 backlog=100, ssl=None, ssl_handshake_timeout=None,
                                 ssl_shutdown_timeout=None, start_serving=True,
                                 cleanup_socket=True):
        """Create a Unix socket server listening on path (or on the bound sock); return
        an asyncio Server."""
        if isinstance(ssl, bool):
            raise TypeError('ssl argument must be an SSLContext or None')
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError('ssl_handshake_timeout is only meaningful with ssl')
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError('ssl_shutdown_timeout is only meaningful with ssl')
        if path is not None:
            if sock is not None:
                raise ValueError('path and sock can not be specified at the same time')
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if path[0] not in (0, '\x00'):
                # A socket file left by an earlier server would make bind() fail. Checked
                # and removed on the ring (STATX, UNLINKAT): the loop's thread never blocks
                # on the file system.
                try:
                    if stat.S_ISSOCK((await _file_statx(self, os.fsencode(path), -1, True,
                                                        path)).st_mode):
                        await _file_unlink(self, os.fsencode(path), False, path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    logger.error('Unable to check or remove stale UNIX socket %r: %r',
                                 path, err)
                except BaseException:
                    sock.close()
                    raise
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno_module.EADDRINUSE:
                    raise OSError(errno_module.EADDRINUSE,
                                  f'Address {path!r} is already in use') from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            _check_unix_stream_socket(sock, 'path was not specified, and no sock specified')
        if cleanup_socket and sys.version_info >= (3, 13):
            path = sock.getsockname()
            if path and path[0] not in (0, '\x00'):
                try:
                    self.unix_server_inodes[sock] = (await _file_statx(
                        self, os.fsencode(path), -1, True, path)).st_ino
                except FileNotFoundError:
                    pass
                except BaseException:
                    sock.close()
                    raise
        sock.setblocking(False)
        if sys.version_info >= (3, 11):
            server = base_events.Server(self, [sock], protocol_factory, ssl, backlog,
                                        ssl_handshake_timeout, ssl_shutdown_timeout)
        else:
            server = base_events.Server(self, [sock], protocol_factory, ssl, backlog,
                                        ssl_handshake_timeout)
        if start_serving:
            server._start_serving()
            await _tasks.sleep(0)
        return server

    # -- servers ------------------------------------------------------------------------------

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None,
                       backlog=100, ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                       context=None):
        cdef AcceptOp op = <AcceptOp>attach(AcceptOp.__new__(AcceptOp), self)
        # Each accepted connection runs in a copy of this context (asyncio's Server passes
        # its own from 3.15; before, asyncio's accept handler captured the current one).
        op.context = PyContext_CopyCurrent() if context is None else context
        op.sock = sock
        op.fd = sock.fileno()
        op.protocol_factory = protocol_factory
        op.sslcontext = sslcontext
        op.server = server
        op.ssl_handshake_timeout = ssl_handshake_timeout
        op.ssl_shutdown_timeout = ssl_shutdown_timeout
        old = self.listeners.get(op.fd)
        if old is not None:
            (<AcceptOp>old).stop()
        self.listeners[op.fd] = op
        op.arm()

    def _stop_serving(self, sock):
        cdef AcceptOp op = self.listeners.pop(sock.fileno(), None)
        server = op.server if op is not None else None
        if op is not None:
            op.stop()
            # The ACCEPT holds the listening file in the kernel until its cancellation is
            # reaped, so close() alone would leave the port accepting for an iteration.
            # Shutting the listener down stops it now: connects are refused at once, as
            # they are after asyncio closes its listening socket.
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        inode = self.unix_server_inodes.pop(sock, None)
        path = sock.getsockname() if inode is not None else None
        # Closed first, as asyncio does: an interrupt during the removal's wait leaves no
        # listening socket open.
        sock.close()
        if inode is not None:
            remove_unix_socket_file(self, server, path, inode)
