# Layer 4, the rest of the loop's surfaces: UDP, subprocesses, signals, TLS, sendfile.
# Each surface lives in its own file (signals.pyx, udp.pyx, process.pyx), included before this
# one by _core.pyx so that its cdef calls stay C calls.


cdef class NativeLoop(SocketLoop):
    """Every surface of the loop in native code: SocketLoop plus datagrams, subprocesses,
    signals, TLS and sendfile. uringloop.Loop adds asyncio.BaseEventLoop's generic logic."""
    cdef SignalHandlers signals

    def __cinit__(self):
        self.signals = SignalHandlers(self)

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
        SocketLoop.close(self)
        if not was_closed:
            self.signals.close()

