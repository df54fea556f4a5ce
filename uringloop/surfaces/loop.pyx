# Layer 4, the rest of the loop's surfaces: UDP, subprocesses, signals, TLS, sendfile.
# Each surface lives in its own file (signals.pyx, udp.pyx, process.pyx), included before this
# one by _core.pyx so that its cdef calls stay C calls.

import inspect

cdef object _loops_with_signal_socket = weakref.WeakSet()   # for the fork handler below


cdef class NativeLoop(SocketLoop):
    """Every surface of the loop in native code: SocketLoop plus datagrams, subprocesses,
    signals, TLS and sendfile. uringloop.Loop adds asyncio.BaseEventLoop's generic logic."""
    cdef dict signal_handlers        # signum -> Handle
    cdef object signal_rsock         # socketpair end the ring reads signal numbers from
    cdef object signal_wsock         # socketpair end CPython's C handler writes them to
    cdef SignalRead signal_read

    def __cinit__(self):
        self.signal_handlers = {}

    @property
    def _signal_handlers(self):
        return self.signal_handlers

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

    cdef int deliver_signal(self, int sig) except -1:
        handle = self.signal_handlers.get(sig)
        if handle is None:
            return 0          # removed after the signal arrived
        if (<Handle>handle).is_cancelled:
            self.remove_signal_handler(sig)
        else:
            self.ready.append(handle)
        return 0

    cdef int ensure_signal_socket(self) except -1:
        if self.signal_rsock is not None:
            return 0
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        self.signal_rsock = rsock
        self.signal_wsock = wsock
        _loops_with_signal_socket.add(self)
        self.signal_read = SignalRead.__new__(SignalRead)
        attach(self.signal_read, self)
        self.signal_read.fd = rsock.fileno()
        return 0

    def add_signal_handler(self, sig, callback, *args):
        """Add a handler for a signal.  UNIX only.

        Raise ValueError if the signal number is invalid or uncatchable.
        Raise RuntimeError if there is a problem setting up the handler.
        """
        if (asyncio.iscoroutine(callback) or inspect.iscoroutinefunction(callback)):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        check_signal(sig)
        self._check_closed()
        self.check_usable()
        self.ensure_signal_socket()
        try:
            # Raises ValueError outside the main thread: a loop running in another thread
            # cannot take signals, which is asyncio's rule too.
            signal_module.set_wakeup_fd(self.signal_wsock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))

        cdef Handle handle = self.new_handle(callback, args, None)
        old = self.signal_handlers.get(sig)
        self.signal_handlers[sig] = handle
        try:
            signal_module.signal(sig, _sighandler_noop)
            # SA_RESTART: the loop learns of the signal through the wakeup fd, so other
            # syscalls need not be interrupted.
            signal_module.siginterrupt(sig, False)
        except OSError as exc:
            del self.signal_handlers[sig]
            if not self.signal_handlers:
                try:
                    signal_module.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info('set_wakeup_fd(-1) failed: %s', nexc)
            if exc.errno == errno_module.EINVAL:
                raise RuntimeError(f'sig {sig} cannot be caught')
            raise
        if old is not None:
            (<Handle>old).cancel()
        if self.signal_read.generation == 0:
            self.signal_read.arm()

    def remove_signal_handler(self, sig):
        """Remove a handler for a signal.  UNIX only.

        Return True if a signal handler was removed, False if not.
        """
        check_signal(sig)
        try:
            del self.signal_handlers[sig]
        except KeyError:
            return False
        handler = (signal_module.default_int_handler if sig == signal_module.SIGINT
                   else signal_module.SIG_DFL)
        try:
            signal_module.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno_module.EINVAL:
                raise RuntimeError(f'sig {sig} cannot be caught')
            raise
        if not self.signal_handlers:
            try:
                signal_module.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info('set_wakeup_fd(-1) failed: %s', exc)
            if (self.signal_read is not None and self.signal_read.generation != 0
                    and not self.closed_flag and not self.io.forked):
                self.signal_read.cancel()
        return True

    cdef int close_signals(self) except -1:
        if not sys.is_finalizing():
            for sig in list(self.signal_handlers):
                self.remove_signal_handler(sig)
        elif self.signal_handlers:
            warnings.warn(f"Closing the loop {self!r} on interpreter shutdown stage, "
                          f"skipping signal handlers removal", ResourceWarning, source=self)
            self.signal_handlers.clear()
        if self.signal_rsock is not None:
            self.signal_rsock.close()
            self.signal_wsock.close()
            self.signal_rsock = self.signal_wsock = None
        return 0

    def close(self):
        """Close the event loop: restore the signal dispositions it changed, cancel and reap
        every in-flight operation, release the ring. The loop must not be running."""
        if self.running_flag:
            raise RuntimeError("Cannot close a running event loop")
        was_closed = self.closed_flag
        SocketLoop.close(self)
        if not was_closed:
            self.close_signals()


def _surfaces_after_fork_in_child():
    # The child inherits the parent's wakeup fd: a signal caught in the child would then be
    # written into the parent's signal socket and run the parent's handler. Detach it.
    for loop in list(_loops_with_signal_socket):
        if (<NativeLoop>loop).signal_wsock is not None:
            try:
                old = signal_module.set_wakeup_fd(-1)
                if old != (<NativeLoop>loop).signal_wsock.fileno():
                    signal_module.set_wakeup_fd(old)
            except (ValueError, OSError):
                pass


os.register_at_fork(after_in_child=_surfaces_after_fork_in_child)
