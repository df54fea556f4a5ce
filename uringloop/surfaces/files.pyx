# Layer 4, files: file-system requests on the ring (OPENAT, READ, WRITE, FSYNC, STATX, CLOSE,
# UNLINKAT, RENAMEAT, MKDIRAT), so that reading a file never blocks the loop's thread and needs
# no thread pool. The public API is uringloop/files.py; this file holds the records.
#
# One FileOp per request. It owns every piece of memory the kernel touches (the path bytes, the
# caller's exported buffer, the bytes object a READ fills, the statx struct) until its final
# CQE, whatever happened to the future meanwhile. Cancelling the awaiting task asks the kernel
# to cancel (ASYNC_CANCEL) and nothing more: a READ or WRITE that already ran reports what it
# did through settled(), and an OPENAT that completed after its caller gave up closes the fd
# it got. These requests finish promptly, so a ring migration lets them finish where they are.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef extern from "ring.h":
    enum:
        IORING_OP_FSYNC
        IORING_OP_OPENAT
        IORING_OP_STATX
        IORING_OP_RENAMEAT
        IORING_OP_UNLINKAT
        IORING_OP_MKDIRAT
        IORING_FSYNC_DATASYNC

cdef extern from "<sys/stat.h>":
    # glibc declares struct statx (from the kernel's UAPI header) under _GNU_SOURCE.
    ctypedef struct ul_statx_ts "struct statx_timestamp":
        int64_t tv_sec
        uint32_t tv_nsec
    ctypedef struct ul_statx "struct statx":
        uint32_t stx_mask
        uint32_t stx_blksize
        uint32_t stx_nlink
        uint32_t stx_uid
        uint32_t stx_gid
        uint16_t stx_mode
        uint64_t stx_ino
        uint64_t stx_size
        uint64_t stx_blocks
        ul_statx_ts stx_atime
        ul_statx_ts stx_ctime
        ul_statx_ts stx_mtime
        uint32_t stx_rdev_major
        uint32_t stx_rdev_minor
        uint32_t stx_dev_major
        uint32_t stx_dev_minor
    enum:
        STATX_BASIC_STATS

cdef extern from "<fcntl.h>":
    enum:
        AT_FDCWD
        AT_EMPTY_PATH
        AT_SYMLINK_NOFOLLOW
        AT_REMOVEDIR

cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject **data, Py_ssize_t size) except -1


# Linux moves at most MAX_RW_COUNT (INT_MAX rounded down to a page) bytes per read or write;
# larger requests come back short and the caller goes on from where it stopped.
cdef Py_ssize_t max_rw_count = 0x7ffff000

cdef enum FileKind:
    K_OPEN
    K_STATX
    K_READ
    K_READINTO
    K_WRITE
    K_FSYNC
    K_CLOSE
    K_UNLINK
    K_RENAME
    K_MKDIR


cdef class FileOp(LoopOperation):
    """One file-system request on the ring, awaitable; resolves to the request's result."""
    cdef object future
    cdef object settled_future     # asked for by settled(): resolved at the final CQE, always
    cdef FileKind kind
    cdef bint cancellable           # a CLOSE is not: cancelled before it ran, it would leak
    cdef bint finished
    cdef public bint delivered      # the result went to the future (the caller owns an fd)
    cdef int32_t res
    cdef object filename            # for the OSError, as the caller spelled it
    cdef object filename2
    cdef bytes path                 # read by the kernel until the final CQE
    cdef bytes path2
    cdef Py_buffer view             # READINTO / WRITE: the caller's memory
    cdef bint has_view
    cdef PyObject *data             # READ: a bytes object the kernel fills, owned here
    cdef ul_statx stx               # STATX: filled by the kernel
    cdef int fd                     # CLOSE: the fd, closed here if the ring never ran it

    def __await__(self):
        return self.future.__await__()

    def settled(self):
        """A future resolved with the request's raw result (bytes moved, fd, or -errno) once
        the kernel has finished with it, even if the request's own future was cancelled."""
        if self.settled_future is None:
            self.settled_future = self.loop.create_future()
            if self.finished:
                self.settled_future.set_result(self.res)
        return self.settled_future

    def _on_future_done(self, fut):
        if fut.cancelled() and self.generation != 0 and not self.cancelling:
            self.cancel()

    cdef int submit(self, int fd, uint64_t addr, uint32_t length, uint64_t off,
                    uint32_t flags) except -1:
        cdef io_uring_sqe *sqe = self.prepare()
        sqe.opcode = file_opcode(self.kind)
        sqe.fd = fd
        sqe.addr = addr
        sqe.len = length
        sqe.off = off
        sqe.rw_flags = flags
        if self.kind == K_FSYNC and flags:
            sqe.rw_flags = IORING_FSYNC_DATASYNC
        if self.future is not None and self.cancellable:
            self.future.add_done_callback(self._on_future_done)
        return 0

    cdef int complete(self, int32_t res, uint32_t flags, bint final) except -1:
        self.finished = True
        self.res = res
        fut = self.future
        self.future = None
        try:
            if self.kind == K_CLOSE and res == -ECANCELED:
                # Cancelled by the loop's close() before it ran: the fd must not leak.
                try:
                    os.close(self.fd)
                except OSError:
                    pass
                res = 0
            if fut is None or fut.done() or (self.loop.io.closing and self.kind == K_OPEN):
                # Nobody waits for the answer any more (or the loop is closing, and nobody
                # will): an fd opened meanwhile is ours to close.
                if self.kind == K_OPEN and res >= 0:
                    close_orphan_fd(self.loop, res)
                if fut is not None and not fut.done():
                    fut.cancel()
            elif res < 0:
                if res == -ECANCELED:
                    fut.cancel()
                else:
                    fut.set_exception(file_error(-res, self.filename, self.filename2))
            else:
                fut.set_result(self.value(res))
                self.delivered = True
        finally:
            self.release_memory()
            if self.settled_future is not None and not self.settled_future.done():
                self.settled_future.set_result(res)
        return 0

    cdef object value(self, int32_t res):
        # The request's result as its caller sees it.
        cdef object out
        if self.kind == K_OPEN or self.kind == K_READINTO or self.kind == K_WRITE:
            return res
        if self.kind == K_READ:
            _PyBytes_Resize(&self.data, res)
            out = <object>self.data
            Py_XDECREF(self.data)
            self.data = NULL
            return out
        if self.kind == K_STATX:
            return stat_result(&self.stx)
        return None

    cdef void release_memory(self):
        if self.has_view:
            self.has_view = False
            PyBuffer_Release(&self.view)
        Py_XDECREF(self.data)
        self.data = NULL
        self.path = self.path2 = None

    def __dealloc__(self):
        self.release_memory()


cdef inline uint8_t file_opcode(FileKind kind):
    if kind == K_OPEN:
        return IORING_OP_OPENAT
    if kind == K_STATX:
        return IORING_OP_STATX
    if kind == K_READ or kind == K_READINTO:
        return IORING_OP_READ
    if kind == K_WRITE:
        return IORING_OP_WRITE
    if kind == K_FSYNC:
        return IORING_OP_FSYNC
    if kind == K_CLOSE:
        return IORING_OP_CLOSE
    if kind == K_UNLINK:
        return IORING_OP_UNLINKAT
    if kind == K_RENAME:
        return IORING_OP_RENAMEAT
    return IORING_OP_MKDIRAT


cdef object file_error(int err, filename, filename2):
    # OSError picks the subclass from errno (FileNotFoundError, IsADirectoryError, ...), with
    # the file names the way os.* reports them.
    if filename is None:
        return OSError(err, os.strerror(err))
    if filename2 is None:
        return OSError(err, os.strerror(err), filename)
    return OSError(err, os.strerror(err), filename, None, filename2)


cdef object stat_result(ul_statx *s):
    cdef int64_t ans = s.stx_atime.tv_sec * 1000000000 + s.stx_atime.tv_nsec
    cdef int64_t mns = s.stx_mtime.tv_sec * 1000000000 + s.stx_mtime.tv_nsec
    cdef int64_t cns = s.stx_ctime.tv_sec * 1000000000 + s.stx_ctime.tv_nsec
    fields = (s.stx_mode, s.stx_ino, os.makedev(s.stx_dev_major, s.stx_dev_minor), s.stx_nlink,
              s.stx_uid, s.stx_gid, s.stx_size,
              s.stx_atime.tv_sec, s.stx_mtime.tv_sec, s.stx_ctime.tv_sec)
    # The fields beyond the tuple are passed by name, as os.stat_result's pickling does.
    # The float times are computed as os.stat computes them, to the last bit.
    extra = {'st_atime': s.stx_atime.tv_sec + s.stx_atime.tv_nsec * 1e-9,
             'st_mtime': s.stx_mtime.tv_sec + s.stx_mtime.tv_nsec * 1e-9,
             'st_ctime': s.stx_ctime.tv_sec + s.stx_ctime.tv_nsec * 1e-9,
             'st_atime_ns': ans, 'st_mtime_ns': mns, 'st_ctime_ns': cns,
             'st_blksize': s.stx_blksize, 'st_blocks': s.stx_blocks,
             'st_rdev': os.makedev(s.stx_rdev_major, s.stx_rdev_minor)}
    return os.stat_result(fields, extra)


cdef int close_orphan_fd(CoreLoop loop, int fd) except -1:
    # An OPENAT whose caller was cancelled: close what it opened, on the ring if it can still
    # take requests, else here (the loop is closing).
    cdef FileOp op
    if loop.running_flag and not loop.io.closing and not loop.closed_flag:
        op = new_file_op(loop, K_CLOSE, None, None)
        op.fd = fd
        try:
            op.submit(fd, 0, 0, 0, 0)
            return 0
        except Exception:
            pass
    try:
        os.close(fd)
    except OSError:
        pass
    return 0


cdef FileOp new_file_op(CoreLoop loop, FileKind kind, filename, filename2):
    cdef FileOp op = <FileOp>attach(FileOp.__new__(FileOp), loop)
    op.kind = kind
    op.cancellable = kind != K_CLOSE
    op.filename = filename
    op.filename2 = filename2
    return op


cdef CoreLoop file_loop(loop):
    if not isinstance(loop, CoreLoop):
        raise RuntimeError(
            f'uringloop file I/O needs a uringloop event loop, not {loop!r}: run the program '
            f'with uringloop.run() or asyncio.run(..., loop_factory=uringloop.new_event_loop)')
    return <CoreLoop>loop


cdef bytes c_path(bytes path):
    if b'\0' in path:
        raise ValueError('embedded null byte')
    return path


cdef FileOp awaited(FileOp op):
    op.future = op.loop.create_future()
    return op


def _file_open(loop, bytes path, int flags, int mode, filename, int dir_fd=AT_FDCWD):
    """OPENAT: the new fd."""
    cdef FileOp op = awaited(new_file_op(file_loop(loop), K_OPEN, filename, None))
    op.path = c_path(path)
    op.submit(dir_fd, <uint64_t><size_t>PyBytes_AS_STRING(op.path), mode, 0, flags)
    return op


def _file_statx(loop, bytes path, int fd, bint follow_symlinks, filename):
    """STATX of path (relative to fd), or of fd itself when path is empty: an os.stat_result."""
    cdef CoreLoop core = file_loop(loop)
    cdef FileOp op = awaited(new_file_op(core, K_STATX, filename, None))
    cdef uint32_t at_flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    op.path = c_path(path)
    if not path:
        at_flags |= AT_EMPTY_PATH
    elif fd < 0:
        fd = AT_FDCWD
    op.submit(fd, <uint64_t><size_t>PyBytes_AS_STRING(op.path), STATX_BASIC_STATS,
              <uint64_t><size_t>&op.stx, at_flags)
    return op


def _file_read(loop, int fd, Py_ssize_t size, long long offset):
    """One READ of at most size bytes at offset (-1: the file position): the bytes read."""
    cdef FileOp op = awaited(new_file_op(file_loop(loop), K_READ, None, None))
    size = min(max(size, 0), max_rw_count)
    buf = PyBytes_FromStringAndSize(NULL, size)
    # Owned by the record as a raw reference, so that it can be shrunk in place at the end.
    Py_INCREF(buf)
    op.data = <PyObject *>buf
    buf = None
    op.submit(fd, <uint64_t><size_t>PyBytes_AS_STRING(<object>op.data), <uint32_t>size,
              <uint64_t>offset, 0)
    return op


cdef FileOp submit_on_buffer(loop, FileKind kind, int fd, buf, int buffer_flags,
                             long long offset):
    # The op holds the caller's buffer exported until its final CQE.
    cdef FileOp op = awaited(new_file_op(file_loop(loop), kind, None, None))
    PyObject_GetBuffer(buf, &op.view, buffer_flags)
    op.has_view = True
    op.submit(fd, <uint64_t><size_t>op.view.buf, <uint32_t>min(op.view.len, max_rw_count),
              <uint64_t>offset, 0)
    return op


def _file_readinto(loop, int fd, buf, long long offset):
    """One READ into the writable buffer buf at offset: the count of bytes read."""
    return submit_on_buffer(loop, K_READINTO, fd, buf, PyBUF_WRITABLE, offset)


def _file_write(loop, int fd, data, long long offset):
    """One WRITE of data (any bytes-like object) at offset: the count of bytes written."""
    return submit_on_buffer(loop, K_WRITE, fd, data, PyBUF_SIMPLE, offset)


def _file_fsync(loop, int fd, bint datasync):
    """FSYNC (fdatasync when datasync)."""
    cdef FileOp op = awaited(new_file_op(file_loop(loop), K_FSYNC, None, None))
    op.submit(fd, 0, 0, 0, datasync)
    return op


def _file_close(loop, int fd):
    """CLOSE: not cancellable, so the fd is closed even if the caller is cancelled."""
    cdef FileOp op = awaited(new_file_op(file_loop(loop), K_CLOSE, None, None))
    op.fd = fd
    if not op.loop.running_flag:
        # No iteration may ever come to submit it (a loop closed without running again):
        # close here, where no loop is kept waiting.
        op.finished = True
        try:
            os.close(fd)
        except OSError as exc:
            op.res = -exc.errno
            op.future.set_exception(exc)
        else:
            op.future.set_result(None)
        return op
    op.submit(fd, 0, 0, 0, 0)
    return op


def _file_unlink(loop, bytes path, bint rmdir, filename):
    """UNLINKAT (AT_REMOVEDIR when rmdir)."""
    cdef FileOp op = awaited(new_file_op(file_loop(loop), K_UNLINK, filename, None))
    op.path = c_path(path)
    op.submit(AT_FDCWD, <uint64_t><size_t>PyBytes_AS_STRING(op.path), 0, 0,
              AT_REMOVEDIR if rmdir else 0)
    return op


def _file_rename(loop, bytes src, bytes dst, filename, filename2):
    """RENAMEAT src to dst, replacing dst, as os.replace does."""
    cdef FileOp op = awaited(new_file_op(file_loop(loop), K_RENAME, filename, filename2))
    op.path = c_path(src)
    op.path2 = c_path(dst)
    # len carries the new directory fd, the second address the new path.
    op.submit(AT_FDCWD, <uint64_t><size_t>PyBytes_AS_STRING(op.path), <uint32_t>AT_FDCWD,
              <uint64_t><size_t>PyBytes_AS_STRING(op.path2), 0)
    return op


def _file_mkdir(loop, bytes path, int mode, filename):
    """MKDIRAT."""
    cdef FileOp op = awaited(new_file_op(file_loop(loop), K_MKDIR, filename, None))
    op.path = c_path(path)
    op.submit(AT_FDCWD, <uint64_t><size_t>PyBytes_AS_STRING(op.path), mode, 0, 0)
    return op


def _file_is_uringloop(loop):
    """Whether loop can run uringloop's file requests."""
    return isinstance(loop, CoreLoop)


def _max_rw_count():
    """The most bytes one READ or WRITE moves."""
    return max_rw_count


def _set_max_rw_count(Py_ssize_t n):
    """Testing aid: cap each READ and WRITE at n bytes (the kernel's own cap is 0x7ffff000)
    so that tests cross the short-transfer paths with small files; returns the old cap."""
    global max_rw_count
    old = max_rw_count
    max_rw_count = n
    return old


# -- a Unix server's socket file ---------------------------------------------------------------

class _SocketFileRemoval:
    """Counts among a Unix server's clients while its socket file is being removed, so that
    Server.wait_closed() returns only once the file is gone. close_clients() and
    abort_clients() find nothing to stop in it."""

    def close(self):
        pass

    def abort(self):
        pass


cdef set socket_file_removals = set()


# How long Server.close() waits for each of the kernel's answers before leaving the rest of
# the removal to wait_closed(): a file system that stalls must not hang the loop's thread.
cdef long long SOCKET_FILE_WAIT_NS = 5 * 1000 * 1000 * 1000

cdef object NOT_IN_TIME = object()


def _set_socket_file_wait(long long ns):
    """Testing aid: how long Server.close() waits for each answer (0: leave the removal to
    wait_closed() unless the kernel answers at once); returns the old bound."""
    global SOCKET_FILE_WAIT_NS
    old = SOCKET_FILE_WAIT_NS
    SOCKET_FILE_WAIT_NS = ns
    return old


cdef object file_request_now(CoreLoop loop, FileKind kind, bytes raw, filename):
    """STATX (following symlinks) or UNLINKAT of raw on the ring, answered before this
    returns (Ring.await_last): the os.stat_result or None, an OSError raised as os.* raises
    it, or NOT_IN_TIME. The request has no future: the normal dispatch ends it later."""
    cdef FileOp op = new_file_op(loop, kind, filename, None)
    cdef int32_t res = 0
    op.path = c_path(raw)
    if kind == K_STATX:
        op.submit(AT_FDCWD, <uint64_t><size_t>PyBytes_AS_STRING(op.path), STATX_BASIC_STATS,
                  <uint64_t><size_t>&op.stx, 0)
    else:
        op.submit(AT_FDCWD, <uint64_t><size_t>PyBytes_AS_STRING(op.path), 0, 0, 0)
    if not loop.io.ring.await_last(op.user_data(), &res, SOCKET_FILE_WAIT_NS):
        return NOT_IN_TIME
    if res < 0:
        raise file_error(-res, filename, None)
    # The kernel filled stx before posting the CQE; complete() has not run yet.
    return stat_result(&op.stx) if kind == K_STATX else None


cdef int remove_unix_socket_file(CoreLoop loop, server, path, inode) except -1:
    """Remove a closed Unix server's socket file if it is still the one the server bound
    (Python 3.13's cleanup) before Server.close() returns, as asyncio does. While the loop
    runs, the STATX and UNLINKAT go through the ring and are awaited right here, so the
    loop's thread makes no blocking file-system call."""
    cdef bytes raw = os.fsencode(path)
    if loop.running_flag and not loop.io.closing and not loop.closed_flag:
        try:
            st = file_request_now(loop, K_STATX, raw, path)
            if st is not NOT_IN_TIME:
                if st.st_ino != inode:
                    return 0
                if file_request_now(loop, K_UNLINK, raw, path) is not NOT_IN_TIME:
                    return 0
            # The kernel is slow to answer: wait_closed() waits for the rest.
            remove_unix_socket_file_later(loop, server, path, inode)
            return 0
        except FileNotFoundError:
            return 0
        except OSError as err:
            if err.filename is not None:
                logger.error('Unable to clean up listening UNIX socket %r: %r', path, err)
                return 0
            # The ring refused the request (no file-system answer): as when the loop is
            # not running.
        except RuntimeError:
            pass        # the ring is unusable (lost in a failed resize): same
    # No iteration to run the requests: nothing waits on this thread either.
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error('Unable to clean up listening UNIX socket %r: %r', path, err)
    return 0


cdef int remove_unix_socket_file_later(CoreLoop loop, server, path, inode) except -1:
    token = _SocketFileRemoval()
    # Server.close() has already dropped its sockets, so Server._attach() would refuse: the
    # token joins the clients directly (3.13's Server keeps them in `_clients`).
    clients = getattr(server, '_clients', None)
    if clients is not None:
        clients.add(token)
    else:
        server = None
    task = loop.create_task(_remove_socket_file(loop, server, token, path, inode))
    socket_file_removals.add(task)
    task.add_done_callback(socket_file_removals.discard)
    return 0


async def _remove_socket_file(loop, server, token, path, inode):
    cdef bytes raw = os.fsencode(path)
    try:
        if (await _file_statx(loop, raw, -1, True, path)).st_ino == inode:
            await _file_unlink(loop, raw, False, path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error('Unable to clean up listening UNIX socket %r: %r', path, err)
    finally:
        if server is not None:
            server._detach(token)      # wakes wait_closed() if the token was the last
