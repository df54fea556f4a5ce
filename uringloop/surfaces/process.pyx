# Layer 4, subprocesses: the transport behind subprocess_exec / subprocess_shell.
#
# asyncio's generic subprocess logic (BaseSubprocessTransport: pipes, exit waiters, the order of
# process_exited / pipe_connection_lost / connection_lost) is reused as is; what this file adds
# is how the exit is noticed. asyncio delegates that to a "child watcher" (a thread per child,
# or SIGCHLD + waitpid(-1)); here each child gets a pidfd (pidfd_open, Linux 5.3) and one
# POLL_ADD on it, in `pending` like any other operation. The pidfd becomes readable when the
# child exits, and the child is then reaped through Popen.poll(): Popen serialises its own
# waitpid() calls under a lock, so reaping through it cannot race with Popen reaping the same
# child from close(), send_signal() or __del__, and Popen.returncode is always the truth.
# Signals go through pidfd_send_signal while the pidfd is open, so a reused pid is never hit.

import subprocess
import signal as _signal_mod
from asyncio import base_subprocess

cdef extern from "poll.h":
    enum:
        POLLIN_ "POLLIN"


cdef class PidfdPoll(LoopOperation):
    """POLL_ADD on a child's pidfd: completes once the child has exited."""
    cdef object transport
    cdef int pidfd
    cdef object context            # the creating call's: process_exited() runs in it

    cdef int arm(self) except -1:
        self.prepare_poll(self.pidfd, POLLIN_)
        return 0

    cdef bint movable(self):
        return True

    cdef int resubmit(self) except -1:
        if self.transport is None:
            return 0
        self.arm()
        return 1

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        self.cancelling = False
        transport = self.transport
        if transport is not None:
            self.context.run(transport._pidfd_ready, res)
        return 0


def _reap_quietly(proc):
    try:
        proc.wait()
    except Exception:
        pass


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """A subprocess transport whose exit is noticed through a pidfd polled by the ring."""

    _pidfd = -1
    _exit_poll = None
    _reaped_waiters = ()

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs):
        self._reaped_waiters = []
        self._proc = subprocess.Popen(
            args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
            universal_newlines=False, bufsize=bufsize, **kwargs)
        try:
            self._pidfd = os.pidfd_open(self._proc.pid)
        except OSError:
            # Only if the child was already reaped behind Popen's back: nothing left to watch.
            self._pidfd = -1
            self._loop.call_soon(self._check_exit)
            return
        os.set_inheritable(self._pidfd, False)
        self._watch_exit()

    def _watch_exit(self):
        cdef PidfdPoll op = self._exit_poll
        if op is None:
            op = PidfdPoll.__new__(PidfdPoll)
            attach(op, <CoreLoop>self._loop)
            op.transport = self
            op.pidfd = self._pidfd
            op.context = contextvars.copy_context()
            self._exit_poll = op
        if op.generation == 0:
            op.arm()

    def _pidfd_ready(self, res):
        if res == -ECANCELED or (<CoreLoop>self._loop).io.closing:
            # The loop is closing under a running child. Nobody would reap it any more (no
            # child watcher exists), so a daemon thread waits for it: no zombie is left.
            self._close_pidfd()
            proc = self._proc
            if proc is not None and proc.returncode is None:
                threading.Thread(target=_reap_quietly, args=(proc,), daemon=True,
                                 name=f'uringloop-reap-{proc.pid}').start()
            return
        self._check_exit()

    def _check_exit(self):
        if self._returncode is not None:
            self._close_pidfd()
            return
        returncode = self._proc.poll()
        if returncode is None:
            # Another thread holds Popen's wait lock and is reaping the child right now: its
            # result lands in Popen.returncode shortly.
            self._loop.call_later(0.005, self._check_exit)
            return
        self._close_pidfd()
        self._process_exited(returncode)
        self._wake_reaped()

    def _wake_reaped(self):
        waiters = self._reaped_waiters
        self._reaped_waiters = None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    async def _wait_reaped(self):
        # Unlike _wait(), which also waits for every pipe to be connected and closed, this
        # only waits for the child itself: what a failed start needs.
        if self._returncode is not None or self._reaped_waiters is None:
            return
        fut = self._loop.create_future()
        self._reaped_waiters.append(fut)
        await fut

    def _close_pidfd(self):
        op = self._exit_poll
        if op is not None:
            (<PidfdPoll>op).transport = None
            self._exit_poll = None
        if self._pidfd >= 0:
            fd = self._pidfd
            self._pidfd = -1
            loop = <CoreLoop>self._loop
            if (op is not None and (<PidfdPoll>op).generation != 0 and not loop.closed_flag
                    and not loop.io.closing and not loop.io.forked):
                # The poll still holds the pidfd's file; closing our number is enough and
                # the cancel makes the kernel drop its reference too.
                (<PidfdPoll>op).cancel()
            os.close(fd)

    def send_signal(self, signal):
        """Send a signal to the child process."""
        self._check_proc()
        if self._pidfd >= 0 and self._returncode is None:
            try:
                _signal_mod.pidfd_send_signal(self._pidfd, signal)
            except ProcessLookupError:
                pass
        elif self._returncode is None:
            self._proc.send_signal(signal)

    def terminate(self):
        """Ask the child process to stop (SIGTERM)."""
        self.send_signal(_signal_mod.SIGTERM)

    def kill(self):
        """Kill the child process (SIGKILL)."""
        self.send_signal(_signal_mod.SIGKILL)
