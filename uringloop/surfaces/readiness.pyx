# Layer 4, readiness: add_reader/add_writer with asyncio's level-triggered meaning, and the
# "wait until this fd is readable/writable" future that sock_* calls, pipes and subprocesses
# build on. Each armed poll is a one-shot POLL_ADD, so it counts in `pending` like any other
# operation and is re-armed while its callback stays registered.


cdef extern from "poll.h":
    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP
        POLLPRI

READABLE = POLLIN
WRITABLE = POLLOUT


cdef int fileobj_to_fd(fileobj) except -1:
    cdef int fd
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


cdef class WatchPoll(LoopOperation):
    """The POLL_ADD behind one direction of an FdWatch."""
    cdef FdWatch watch
    cdef bint for_write

    cdef int arm(self) except -1:
        self.prepare_poll(self.watch.fd, POLLOUT if self.for_write else (POLLIN | POLLPRI))
        return 0

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        self.cancelling = False
        self.watch.fired(self, res)
        return 0

    cdef bint movable(self):
        return True     # fired() re-arms after ECANCELED while a callback is registered


cdef class FdWatch:
    """The reader and writer callbacks registered for one fd."""
    cdef FdWatches owner
    cdef CoreLoop loop
    cdef int fd
    cdef object fileobj            # as registered: found again by identity once it is closed
    cdef Handle reader
    cdef Handle writer
    cdef WatchPoll read_poll
    cdef WatchPoll write_poll

    def __cinit__(self, FdWatches owner, int fd):
        self.owner = owner
        self.loop = owner.loop
        self.fd = fd
        self.read_poll = WatchPoll.__new__(WatchPoll)
        attach(self.read_poll, self.loop)
        self.read_poll.watch = self
        self.write_poll = WatchPoll.__new__(WatchPoll)
        attach(self.write_poll, self.loop)
        self.write_poll.watch = self
        self.write_poll.for_write = True

    cdef int fired(self, WatchPoll poll, int32_t res) except -1:
        cdef Handle h = self.writer if poll.for_write else self.reader
        if h is None or h.is_cancelled:
            self.owner.forget(self)
            return 0
        if res == -ECANCELED:
            # Cancelled by remove_*() followed by a new add_*() while the cancel was on its
            # way, or by close(): only the former still wants the fd watched.
            if not self.loop.io.closing:
                poll.arm()
            return 0
        if self.loop.io.closing:
            return 0
        if res < 0:
            # The fd went bad under us (closed without remove_reader): like a selector, report
            # it ready once so the callback sees the error from its own syscall, then stop.
            self.loop.run_handle(h)
            return 0
        # The callback runs here, in the batch's I/O phase as in asyncio, and before the poll
        # is armed again: level-triggered, it fires again next iteration if still ready.
        try:
            self.loop.run_handle(h)
        finally:
            if (h is (self.writer if poll.for_write else self.reader) and
                    poll.generation == 0 and not self.loop.io.closing):
                poll.arm()
        return 0

    cdef bint idle(self):
        return (self.reader is None and self.writer is None and
                self.read_poll.generation == 0 and self.write_poll.generation == 0)


cdef class WaitPoll(LoopOperation):
    """A one-shot POLL_ADD that resolves a future with the ready events."""
    cdef object future
    cdef int fd
    cdef uint32_t events

    cdef bint movable(self):
        return True

    cdef int resubmit(self) except -1:
        if self.future is None or self.future.done():
            return 0
        self.prepare_poll(self.fd, self.events)
        return 1

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        fut = self.future
        self.future = None
        if fut is None or fut.done():
            return 0
        if res == -ECANCELED:
            fut.cancel()
        elif res < 0:
            fut.set_exception(OSError(-res, os.strerror(-res)))
        else:
            fut.set_result(res)
        return 0

    def _on_future_done(self, fut):
        if fut.cancelled() and self.generation != 0:
            self.cancel()


cdef class FdWatches:
    """The fds watched for the loop: add_reader/add_writer's callbacks, the transports that
    own fds (which add_reader refuses), and the one-shot waits sock_* calls build on."""
    cdef CoreLoop loop
    cdef dict by_fd                  # fd -> FdWatch
    cdef object transports           # fd -> transport (weak values), for fd-reuse checks

    def __cinit__(self, CoreLoop loop):
        self.loop = loop
        self.by_fd = {}
        self.transports = weakref.WeakValueDictionary()

    cdef FdWatch watch_for(self, int fd):
        cdef FdWatch w = self.by_fd.get(fd)
        if w is None:
            w = FdWatch(self, fd)
            self.by_fd[fd] = w
        return w

    cdef void forget(self, FdWatch w):
        if w.idle() and self.by_fd.get(w.fd) is w:
            del self.by_fd[w.fd]

    cdef FdWatch find(self, fileobj):
        """The watch registered for fileobj: by its fd, or, once the object is closed (its
        fileno() is -1), by the object itself, as asyncio's selector finds its key."""
        cdef FdWatch w
        try:
            return self.by_fd.get(fileobj_to_fd(fileobj))
        except ValueError:
            for w in self.by_fd.values():
                # Registered still, as a selector key lives while it has a callback.
                if w.fileobj is fileobj and (w.reader is not None or w.writer is not None):
                    return w
            raise

    cdef int ensure_no_transport(self, fd) except -1:
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        transport = self.transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(
                f'File descriptor {fd!r} is used by transport {transport!r}')
        return 0

    cdef int add(self, fd, bint for_write, callback, tuple args) except -1:
        cdef CoreLoop loop = self.loop
        loop.check_usable()
        cdef int fileno = fileobj_to_fd(fd)
        if loop.debug_flag:
            loop._check_callback(callback, 'add_writer' if for_write else 'add_reader')
        cdef FdWatch w = self.watch_for(fileno)
        cdef Handle h = loop.new_handle(callback, args, None)
        w.fileobj = fd
        cdef WatchPoll poll
        if for_write:
            if w.writer is not None:
                w.writer.cancel()
            w.writer = h
            poll = w.write_poll
        else:
            if w.reader is not None:
                w.reader.cancel()
            w.reader = h
            poll = w.read_poll
        if poll.generation == 0:
            poll.arm()
        return 0

    cdef bint remove(self, fd, bint for_write) except -1:
        if self.loop.closed_flag:
            return False
        cdef FdWatch w = self.find(fd)
        if w is None:
            return False
        cdef Handle h = w.writer if for_write else w.reader
        cdef WatchPoll poll = w.write_poll if for_write else w.read_poll
        if for_write:
            w.writer = None
        else:
            w.reader = None
        if poll.generation != 0:
            poll.cancel()
        self.forget(w)
        if h is None:
            return False
        h.cancel()
        return True

    cdef bint set_user_watch(self, fd, bint for_write, bint add, callback,
                             tuple args) except -1:
        """add_reader/add_writer and remove_reader/remove_writer: as in asyncio, an fd a
        transport owns is refused."""
        self.ensure_no_transport(fd)
        if not add:
            return self.remove(fd, for_write)
        self.add(fd, for_write, callback, args)
        return True

    cdef object wait_fd(self, int fd, uint32_t events):
        """A future resolved with the poll events once fd is ready for `events`; cancelling
        the future cancels the poll (and the record lives on until its final CQE)."""
        cdef WaitPoll op = <WaitPoll>attach(WaitPoll.__new__(WaitPoll), self.loop)
        fut = self.loop.create_future()
        op.future = fut
        op.fd = fd
        op.events = events
        op.prepare_poll(fd, events)
        fut.add_done_callback(op._on_future_done)
        return fut
