# Layer 4, signals: add_signal_handler / remove_signal_handler.
#
# CPython runs Python-level signal handlers only in the main thread, between bytecodes, and
# can additionally write each signal's number to a "wakeup fd" from its C-level handler. The
# loop registers a no-op Python handler (so the disposition is "caught") and points the wakeup
# fd at one end of a socketpair; a READ on the other end stays in flight while any handler is
# registered. That READ completing is what wakes io_uring_enter and tells the loop which
# signals arrived; the user's callback then runs as an ordinary loop callback, never inside the
# signal handler itself. The READ counts in `pending` like every other operation.

import inspect
import signal as signal_module
import warnings

from libc.stdint cimport uint8_t


def _sighandler_noop(signum, frame):
    """Python-level handler that only makes the signal 'caught'; the work happens in the loop
    once the wakeup fd has delivered the signal number."""
    pass


cdef class SignalRead(LoopOperation):
    """READ of signal numbers from the wakeup socket; the kernel writes into `buf`."""
    cdef uint8_t buf[128]
    cdef int fd
    cdef SignalHandlers handlers

    cdef int arm(self) except -1:
        cdef io_uring_sqe *sqe = self.prepare()
        sqe.opcode = IORING_OP_READ
        sqe.fd = self.fd
        sqe.addr = <uint64_t><size_t>&self.buf[0]
        sqe.len = sizeof(self.buf)
        sqe.off = <uint64_t>-1
        return 0

    cdef bint movable(self):
        return True     # complete() re-arms after ECANCELED while handlers are registered

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        cdef CoreLoop loop = self.loop
        cdef int32_t i
        self.cancelling = False
        if res > 0:
            for i in range(res):
                if self.buf[i]:
                    self.handlers.deliver(self.buf[i])
        # A handler added while the cancel of the previous READ was in flight found the record
        # still busy: re-arm here for it, whatever ended the old READ.
        if (not loop.io.closing and not loop.io.forked and self.handlers.by_signal
                and (res > 0 or res == -EAGAIN or res == -EINTR or res == -ECANCELED)):
            self.arm()
        elif res < 0 and res != -ECANCELED and not loop.closed_flag:
            loop.call_exception_handler({
                'message': 'Reading the signal wakeup socket failed',
                'exception': OSError(-res, os.strerror(-res)),
            })
        return 0


cdef object check_signal(sig):
    if not isinstance(sig, int):
        raise TypeError(f'sig must be an int, not {sig!r}')
    if sig not in signal_module.valid_signals():
        raise ValueError(f'invalid signal number {sig}')


cdef object _handlers_with_signal_socket = weakref.WeakSet()   # for the fork handler below


cdef class SignalHandlers:
    """The loop's signal handlers: the callbacks by signal number, the socket pair CPython's
    C handler writes signal numbers to, and the READ in flight on it."""
    cdef CoreLoop loop
    cdef dict by_signal              # signum -> Handle
    cdef object rsock                # socketpair end the ring reads signal numbers from
    cdef object wsock                # socketpair end CPython's C handler writes them to
    cdef SignalRead read
    cdef object __weakref__

    def __cinit__(self, CoreLoop loop):
        self.loop = loop
        self.by_signal = {}

    cdef int deliver(self, int sig) except -1:
        handle = self.by_signal.get(sig)
        if handle is None:
            return 0          # removed after the signal arrived
        if (<Handle>handle).is_cancelled:
            self.remove(sig)
        else:
            self.loop.ready.append(handle)
        return 0

    cdef int ensure_socket(self) except -1:
        if self.rsock is not None:
            return 0
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        self.rsock = rsock
        self.wsock = wsock
        _handlers_with_signal_socket.add(self)
        self.read = SignalRead.__new__(SignalRead)
        attach(self.read, self.loop)
        self.read.handlers = self
        self.read.fd = rsock.fileno()
        return 0

    cdef int add(self, sig, callback, tuple args) except -1:
        cdef CoreLoop loop = self.loop
        if (asyncio.iscoroutine(callback) or inspect.iscoroutinefunction(callback)):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        check_signal(sig)
        loop._check_closed()
        loop.check_usable()
        self.ensure_socket()
        try:
            # Raises ValueError outside the main thread: a loop running in another thread
            # cannot take signals, which is asyncio's rule too.
            signal_module.set_wakeup_fd(self.wsock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))

        cdef Handle handle = loop.new_handle(callback, args, None)
        old = self.by_signal.get(sig)
        self.by_signal[sig] = handle
        try:
            signal_module.signal(sig, _sighandler_noop)
            # SA_RESTART: the loop learns of the signal through the wakeup fd, so other
            # syscalls need not be interrupted.
            signal_module.siginterrupt(sig, False)
        except OSError as exc:
            del self.by_signal[sig]
            if not self.by_signal:
                try:
                    signal_module.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info('set_wakeup_fd(-1) failed: %s', nexc)
            if exc.errno == errno_module.EINVAL:
                raise RuntimeError(f'sig {sig} cannot be caught')
            raise
        if old is not None:
            (<Handle>old).cancel()
        if self.read.generation == 0:
            self.read.arm()
        return 0

    cdef bint remove(self, sig) except -1:
        check_signal(sig)
        try:
            del self.by_signal[sig]
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
        if not self.by_signal:
            try:
                signal_module.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info('set_wakeup_fd(-1) failed: %s', exc)
            if (self.read is not None and self.read.generation != 0
                    and not self.loop.closed_flag and not self.loop.io.forked):
                self.read.cancel()
        return True

    cdef int close(self) except -1:
        """Restore every disposition changed and close the socket pair; the loop calls this
        after the runner's close."""
        if not sys.is_finalizing():
            for sig in list(self.by_signal):
                self.remove(sig)
        elif self.by_signal:
            warnings.warn(f"Closing the loop {self.loop!r} on interpreter shutdown stage, "
                          f"skipping signal handlers removal", ResourceWarning,
                          source=self.loop)
            self.by_signal.clear()
        if self.rsock is not None:
            self.rsock.close()
            self.wsock.close()
            self.rsock = self.wsock = None
        return 0


def _signals_after_fork_in_child():
    # The child inherits the parent's wakeup fd: a signal caught in the child would then be
    # written into the parent's signal socket and run the parent's handler. Detach it.
    cdef SignalHandlers handlers
    for handlers in list(_handlers_with_signal_socket):
        if handlers.wsock is not None:
            try:
                old = signal_module.set_wakeup_fd(-1)
                if old != handlers.wsock.fileno():
                    signal_module.set_wakeup_fd(old)
            except (ValueError, OSError):
                pass


os.register_at_fork(after_in_child=_signals_after_fork_in_child)
