# Layer 4, signals: add_signal_handler / remove_signal_handler.
#
# CPython runs Python-level signal handlers only in the main thread, between bytecodes, and
# can additionally write each signal's number to a "wakeup fd" from its C-level handler. The
# loop registers a no-op Python handler (so the disposition is "caught") and points the wakeup
# fd at one end of a socketpair; a READ on the other end stays in flight while any handler is
# registered. That READ completing is what wakes io_uring_enter and tells the loop which
# signals arrived; the user's callback then runs as an ordinary loop callback, never inside the
# signal handler itself. The READ counts in `pending` like every other operation.

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
        cdef NativeLoop loop = <NativeLoop>self.loop
        cdef int32_t i
        self.cancelling = False
        if res > 0:
            for i in range(res):
                if self.buf[i]:
                    loop.deliver_signal(self.buf[i])
        # A handler added while the cancel of the previous READ was in flight found the record
        # still busy: re-arm here for it, whatever ended the old READ.
        if (not loop.io.closing and not loop.io.forked and loop.signal_handlers
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
