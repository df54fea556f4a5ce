# Layer 4, datagrams: the transport behind create_datagram_endpoint (UDP and Unix datagram
# sockets).
#
# Receiving is readiness-based: one POLL_ADD per transport (the loop's fd watch, so it counts
# in `pending` once per transport and is re-armed while reading), then recvfrom() in the loop
# thread. A datagram is never read into memory the protocol does not see, and cancelling
# (close, abort) never strands a buffer in the kernel. Each wake-up drains a bounded batch so
# a flooded socket cannot starve the rest of the loop.
#
# Sending tries sendto() directly; only when the socket buffer is full (EAGAIN) are datagrams
# queued, with asyncio's flow control (pause_writing/resume_writing on the buffered size) and a
# writability watch that drains the queue in order.

from asyncio import constants as asyncio_constants, transports as asyncio_transports, trsock

# Datagrams read per readiness wake-up before yielding to other callbacks.
cdef int UDP_READ_BATCH = 32
# Bytes counted per queued datagram on top of its payload (asyncio counts 8 since 3.12).
cdef int UDP_HEADER_SIZE = 8 if sys.version_info >= (3, 12) else 0
cdef bint UDP_SEND_EMPTY = sys.version_info >= (3, 12)


class UDPTransport(asyncio_transports._FlowControlMixin, asyncio_transports.DatagramTransport):
    """A datagram transport over a UDP or Unix datagram socket."""

    max_size = 256 * 1024      # largest datagram recvfrom() accepts
    _sock = None

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        super().__init__(extra, loop)
        self._extra['socket'] = trsock.TransportSocket(sock)
        try:
            self._extra['sockname'] = sock.getsockname()
        except OSError:
            self._extra['sockname'] = None
        if 'peername' not in self._extra:
            try:
                self._extra['peername'] = sock.getpeername()
            except OSError:
                self._extra['peername'] = None
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._protocol = protocol
        self._protocol_connected = True
        self._address = address
        self._buffer = collections.deque()
        self._buffer_size = 0
        self._conn_lost = 0
        self._closing = False
        self._reading = False
        self._writing = False
        loop._transports[self._sock_fd] = self
        self._loop.call_soon(self._protocol.connection_made, self)
        # Reading starts only after connection_made() has run, as in asyncio.
        self._loop.call_soon(self._start_reading)
        if waiter is not None:
            self._loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append('closed')
        elif self._closing:
            info.append('closing')
        info.append(f'fd={self._sock_fd}')
        if self._sock is not None:
            info.append('read=polling' if self._reading else 'read=idle')
            state = 'polling' if self._writing else 'idle'
            info.append(f'write=<{state}, bufsize={self._buffer_size}>')
        return '<{}>'.format(' '.join(info))

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    # -- the watches ------------------------------------------------------------------------

    def _start_reading(self):
        if not (self._closing or self._loop is None or self._loop.is_closed()):
            self._set_watch(False, True)

    def _stop_reading(self):
        self._set_watch(False, False)

    def _start_writing(self):
        self._set_watch(True, True)

    def _stop_writing(self):
        self._set_watch(True, False)

    def _set_watch(self, bint for_write, bint wanted):
        """Add or remove the loop's watch on the socket for writing (or reading), unless
        _writing (or _reading) says it already is as wanted."""
        if for_write:
            if self._writing == wanted:
                return
            self._writing = wanted
        else:
            if self._reading == wanted:
                return
            self._reading = wanted
        if wanted:
            (<NativeLoop>self._loop).fd_watches.add(
                self._sock_fd, for_write, self._sendto_ready if for_write else self._read_ready,
                ())
        else:
            (<NativeLoop>self._loop).fd_watches.remove(self._sock_fd, for_write)

    # -- BaseTransport --------------------------------------------------------------------

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._protocol_connected = True

    def is_closing(self):
        return self._closing

    def close(self):
        """Close the transport: queued datagrams are still sent, then connection_lost(None)
        is called."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffer:
            self._conn_lost += 1
            self._stop_writing()
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self):
        """Close the transport at once, dropping queued datagrams."""
        self._force_close(None)

    def get_write_buffer_size(self):
        """Bytes of datagrams queued because the socket buffer was full."""
        return self._buffer_size

    # -- receiving ------------------------------------------------------------------------

    def _read_ready(self):
        cdef int n = 0
        while n < UDP_READ_BATCH:
            if self._conn_lost or self._closing:
                return
            try:
                data, addr = self._sock.recvfrom(self.max_size)
            except (BlockingIOError, InterruptedError):
                return
            except BaseException as exc:
                self._socket_failed(exc, 'Fatal read error on datagram transport')
                return
            self._protocol.datagram_received(data, addr)
            n += 1

    # -- sending ----------------------------------------------------------------------------

    def sendto(self, data, addr=None):
        """Send one datagram to addr (or to the connected peer when addr is None)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'data argument must be a bytes-like object, '
                            f'not {type(data).__name__!r}')
        if not data and not UDP_SEND_EMPTY:
            return
        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f'Invalid address: must be None or {self._address}')
            addr = self._address
        if self._conn_lost and self._address:
            if self._conn_lost >= asyncio_constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning('socket.send() raised exception.')
            self._conn_lost += 1
            return
        if not self._buffer:
            try:
                self._send_datagram(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._start_writing()
            except BaseException as exc:
                self._socket_failed(exc, 'Fatal write error on datagram transport')
                return
        # The caller may reuse its buffer: queue an immutable copy.
        self._buffer.append((bytes(data), addr))
        self._buffer_size += len(data) + UDP_HEADER_SIZE
        self._maybe_pause_protocol()

    def _send_datagram(self, data, addr):
        peername = self._extra['peername']
        # A socket connected to an unnamed Unix peer (a socketpair) has the peername '':
        # without an address its datagram goes to that peer (asyncio passes None to sendto()).
        if peername or (addr is None and peername == ''):
            self._sock.send(data)
        else:
            self._sock.sendto(data, addr)

    def _sendto_ready(self):
        while self._buffer:
            data, addr = self._buffer.popleft()
            self._buffer_size -= len(data) + UDP_HEADER_SIZE
            try:
                self._send_datagram(data, addr)
            except (BlockingIOError, InterruptedError):
                self._buffer.appendleft((data, addr))
                self._buffer_size += len(data) + UDP_HEADER_SIZE
                break
            except BaseException as exc:
                self._socket_failed(exc, 'Fatal write error on datagram transport')
                return
        self._maybe_resume_protocol()     # may queue more
        if not self._buffer:
            self._stop_writing()
            if self._closing:
                self._call_connection_lost(None)

    def _socket_failed(self, exc, message):
        """A recvfrom() or sendto() that did not go through (not for want of room): an
        OSError (ICMP errors such as ECONNREFUSED) is per-datagram news for the protocol,
        SystemExit and KeyboardInterrupt go on, anything else is fatal."""
        if isinstance(exc, OSError):
            self._protocol.error_received(exc)
        elif isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise exc
        else:
            self._fatal_error(exc, message)

    # -- ending -----------------------------------------------------------------------------

    def _fatal_error(self, exc, message='Fatal error on transport'):
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        self._force_close(exc)

    def _force_close(self, exc):
        if self._conn_lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._buffer_size = 0
        self._stop_writing()
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._stop_reading()
            self._stop_writing()
            self._sock.close()
            self._sock = None
            self._protocol = None
            self._loop = None
