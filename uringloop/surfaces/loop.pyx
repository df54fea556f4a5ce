# Layer 4, the loop: NativeLoop, the runner (loop/core.pyx) with every surface in native code.
# It holds one object per surface (FdWatches, SocketOperations, SignalHandlers) and delegates to
# each in a line; stream transports (transports/), servers (server.pyx), UDP (udp.pyx) and
# subprocesses (process.pyx) are made here. uringloop.Loop adds asyncio.BaseEventLoop's
# generic logic.


cdef class NativeLoop(CoreLoop):
    """The runner plus every surface: fd readiness, sock_*, stream transports, servers,
    datagrams, subprocesses, signals, TLS and sendfile."""
    cdef SignalHandlers signals
    cdef FdWatches fd_watches
    cdef public object _transports   # fd_watches.transports, named as asyncio's tests expect
    cdef dict listeners              # listening fd -> AcceptOp
    cdef dict unix_server_inodes     # listening Unix socket -> inode of its path (3.13)
    cdef SocketOperations sockets

    def __cinit__(self):
        self.signals = SignalHandlers(self)
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

    @property
    def _signal_handlers(self):
        return self.signals.by_signal

    # -- datagrams ---------------------------------------------------------------------------

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return UDPTransport(self, sock, protocol, address, waiter, extra)

    # -- subprocesses -----------------------------------------------------------------------

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr,
                                         bufsize, extra=None, **kwargs):
        waiter = self.create_future()
        transp = SubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr,
                                     bufsize, waiter=waiter, extra=extra, **kwargs)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            # Connecting the pipes failed: kill the child and reap it. Waiting for _wait()
            # here would hang, since it also waits for pipes that never got connected.
            transp.close()
            await transp._wait_reaped()
            raise
        return transp

    # -- signals ------------------------------------------------------------------------------

    def add_signal_handler(self, sig, callback, *args):
        """Add a handler for a signal.  UNIX only.

        Raise ValueError if the signal number is invalid or uncatchable.
        Raise RuntimeError if there is a problem setting up the handler.
        """
        self.signals.add(sig, callback, args)

    def remove_signal_handler(self, sig):
        """Remove a handler for a signal.  UNIX only.

        Return True if a signal handler was removed, False if not.
        """
        return self.signals.remove(sig)

    def close(self):
        """Close the event loop: restore the signal dispositions it changed, cancel and reap
        every in-flight operation, release the ring. The loop must not be running."""
        if self.running_flag:
            raise RuntimeError("Cannot close a running event loop")
        was_closed = self.closed_flag
        CoreLoop.close(self)
        if not was_closed:
            self.signals.close()

