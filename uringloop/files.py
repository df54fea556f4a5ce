"""Asynchronous file I/O on the loop's io_uring: no thread pool, and no call that blocks the
loop's thread.

    async with uringloop.open('data.bin', 'rb') as f:
        data = await f.read()
    async with uringloop.open('notes.txt', 'a', encoding='utf-8') as f:
        await f.write('one more line\\n')
    st = await uringloop.files.stat('data.bin')

Every request (open, read, write, fsync, stat, close, unlink, rename, mkdir) is one io_uring
operation of the running uringloop loop. On any other loop the calls raise RuntimeError.

A file keeps its own position: sequential calls (read, readline, write, seek...) on one file
run one at a time in call order, each at the position the previous one left; pread() and
pwrite() take an explicit offset and run concurrently. Writes are not buffered: each write()
is written whole before it returns.

Cancelling a call is a request to the kernel: the call returns (raising CancelledError) only
once the kernel has finished with its memory. A cancelled read consumes nothing (the same
bytes are read next time); a cancelled write may have written a prefix of its data, and the
file position says how much; a cancelled open closes the file it may have opened.
"""

import asyncio as _asyncio
import codecs as _codecs
import errno as _errno
import io as _io
import locale as _locale
import operator as _operator
import os as _os
import stat as _stat
import sys as _sys
import warnings as _warnings

from uringloop import _core

__all__ = ('open', 'AsyncFile', 'AsyncTextFile', 'stat', 'lstat', 'exists', 'unlink', 'remove',
           'rmdir', 'rename', 'replace', 'mkdir', 'read_bytes', 'write_bytes', 'read_text',
           'write_text')

# Read-ahead for readline() and iteration, and the first chunk of a read() to EOF whose size
# the file's stat does not tell.
CHUNK = 64 * 1024

def _loop():
    loop = _asyncio.get_running_loop()
    if not _core._file_is_uringloop(loop):
        raise RuntimeError(
            f'uringloop.files needs a running uringloop event loop, not {loop!r}: run the '
            f'program with uringloop.run() or asyncio.run(..., '
            f'loop_factory=uringloop.new_event_loop)')
    return loop


async def _settled(op):
    # The caller was cancelled: wait (through further cancellations) until the kernel is done
    # with the request's memory, and return its raw result.
    fut = op.settled()
    cancelled = False
    while not fut.done():
        try:
            await _asyncio.wait((fut,))
        except _asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise _asyncio.CancelledError
    return fut.result()


async def _run(op):
    """Await a request; if the caller is cancelled, wait for its end and re-raise."""
    try:
        return await op
    except _asyncio.CancelledError:
        await _settled(op)
        raise


async def _open_fd(loop, path, flags, filename):
    op = _core._file_open(loop, path, flags, 0o666, filename)
    try:
        return await op
    except _asyncio.CancelledError:
        fd = await _settled(op)
        if op.delivered:
            # The fd was ours, but the cancellation reached us before we could take it.
            await _close_fd(loop, fd)
        raise


def _path(path):
    # The path for the kernel, and the name errors carry (os.* report the fspath() value).
    path = _os.fspath(path)
    return _os.fsencode(path), path


# -- the path API --------------------------------------------------------------------------


async def stat(path, *, follow_symlinks=True):
    """Return the os.stat_result of path, like os.stat(), through the ring (STATX)."""
    loop = _loop()
    if isinstance(path, int):
        return await _run(_core._file_statx(loop, b'', path, follow_symlinks, None))
    raw, name = _path(path)
    return await _run(_core._file_statx(loop, raw, -1, follow_symlinks, name))


async def lstat(path):
    """Like stat(), without following a final symbolic link (os.lstat())."""
    return await stat(path, follow_symlinks=False)


async def exists(path):
    """Return True if path names an existing file (following symbolic links)."""
    try:
        await stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


async def unlink(path):
    """Remove the file path, like os.unlink() (UNLINKAT)."""
    raw, name = _path(path)
    await _run(_core._file_unlink(_loop(), raw, False, name))


remove = unlink


async def rmdir(path):
    """Remove the empty directory path, like os.rmdir()."""
    raw, name = _path(path)
    await _run(_core._file_unlink(_loop(), raw, True, name))


async def rename(src, dst):
    """Rename src to dst, replacing dst if it exists, like os.rename() on Linux (RENAMEAT)."""
    (src, src_name), (dst, dst_name) = _path(src), _path(dst)
    await _run(_core._file_rename(_loop(), src, dst, src_name, dst_name))


replace = rename


async def mkdir(path, mode=0o777):
    """Create the directory path, like os.mkdir() (MKDIRAT)."""
    raw, name = _path(path)
    await _run(_core._file_mkdir(_loop(), raw, mode, name))


async def read_bytes(path):
    """Return the contents of the file path as bytes."""
    async with open(path, 'rb') as f:
        return await f.read()


async def read_text(path, encoding=None, errors=None, newline=None):
    """Return the contents of the file path decoded, as open(path, 'r', ...) reads it."""
    async with open(path, 'r', encoding=encoding, errors=errors, newline=newline) as f:
        return await f.read()


async def write_bytes(path, data):
    """Write data to the file path (created or truncated); return the count of bytes."""
    async with open(path, 'wb') as f:
        return await f.write(data)


async def write_text(path, data, encoding=None, errors=None, newline=None):
    """Write the str data to the file path (created or truncated); return its length."""
    async with open(path, 'w', encoding=encoding, errors=errors, newline=newline) as f:
        return await f.write(data)


# -- open() ---------------------------------------------------------------------------------


class _Mode:
    """open()'s arguments checked as io.open() checks them, and turned into os flags."""

    def __init__(self, file, mode, buffering, encoding, errors, newline, closefd):
        if not isinstance(file, int):
            file = _os.fspath(file)
        if not isinstance(file, (str, bytes, int)):
            raise TypeError('invalid file: %r' % file)
        if not isinstance(mode, str):
            raise TypeError('invalid mode: %r' % mode)
        if not isinstance(buffering, int):
            raise TypeError('invalid buffering: %r' % buffering)
        if encoding is not None and not isinstance(encoding, str):
            raise TypeError('invalid encoding: %r' % encoding)
        if errors is not None and not isinstance(errors, str):
            raise TypeError('invalid errors: %r' % errors)
        modes = set(mode)
        if modes - set('axrwb+t') or len(mode) > len(modes):
            raise ValueError('invalid mode: %r' % mode)
        creating, reading, writing, appending = ('x' in modes, 'r' in modes, 'w' in modes,
                                                 'a' in modes)
        updating, text, binary = '+' in modes, 't' in modes, 'b' in modes
        if text and binary:
            raise ValueError("can't have text and binary mode at once")
        if creating + reading + writing + appending != 1:
            raise ValueError('must have exactly one of create/read/write/append mode')
        if binary and encoding is not None:
            raise ValueError("binary mode doesn't take an encoding argument")
        if binary and errors is not None:
            raise ValueError("binary mode doesn't take an errors argument")
        if binary and newline is not None:
            raise ValueError("binary mode doesn't take a newline argument")
        if not binary and buffering == 0:
            raise ValueError("can't have unbuffered text I/O")
        if newline is not None and not isinstance(newline, str):
            raise TypeError('illegal newline type: %r' % (type(newline),))
        if newline not in (None, '', '\n', '\r', '\r\n'):
            raise ValueError('illegal newline value: %r' % (newline,))
        if isinstance(file, int):
            if file < 0:
                raise ValueError('negative file descriptor')
        elif not closefd:
            raise ValueError('Cannot use closefd=False with file name')
        flags = _os.O_CLOEXEC
        if creating:
            flags |= _os.O_EXCL | _os.O_CREAT
        elif writing:
            flags |= _os.O_CREAT | _os.O_TRUNC
        elif appending:
            flags |= _os.O_APPEND | _os.O_CREAT
        if updating:
            flags |= _os.O_RDWR
        elif reading:
            flags |= _os.O_RDONLY
        else:
            flags |= _os.O_WRONLY
        if not binary:
            encoding = _text_encoding(encoding)
            _codecs.lookup(encoding)          # LookupError now, as io.open() raises it
        self.file = file
        self.flags = flags
        self.binary = binary
        self.readable = reading or updating
        self.writable = creating or writing or appending or updating
        self.appending = appending
        self.encoding = encoding
        self.errors = errors
        self.newline = newline
        self.closefd = closefd
        # The mode as io reports it on the file object.
        self.name = (('x' if creating else 'w' if writing else 'a' if appending else 'r')
                     + ('+' if updating else '') + ('b' if binary else ''))


def _text_encoding(encoding):
    if encoding is None:
        encoding = _io.text_encoding(None) if hasattr(_io, 'text_encoding') else 'locale'
    if encoding == 'locale':
        if hasattr(_locale, 'getencoding'):
            return _locale.getencoding()
        return _locale.getpreferredencoding(False)
    return encoding


class _OpenRequest:
    """What open() returns: await it for the file, or use it with `async with`."""

    __slots__ = ('_mode', '_file')

    def __init__(self, mode):
        self._mode = mode
        self._file = None

    def __await__(self):
        return _open(self._mode).__await__()

    async def __aenter__(self):
        self._file = await _open(self._mode)
        return self._file

    async def __aexit__(self, exc_type, exc, tb):
        await self._file.close()


def open(file, mode='r', buffering=-1, encoding=None, errors=None, newline=None, closefd=True):
    """Open file on the ring and return an awaitable, async-context-manager file object.

    The arguments mean what they mean to the built-in open(), and bad ones raise what it
    raises. Binary modes give an AsyncFile, text modes an AsyncTextFile; both read, write,
    seek and close with coroutines:

        async with uringloop.open(path, 'rb') as f:
            data = await f.read()

    Must be called with a uringloop loop running (RuntimeError otherwise). Writes are not
    buffered, so `buffering` only selects text or binary rules.
    """
    return _OpenRequest(_Mode(file, mode, buffering, encoding, errors, newline, closefd))


async def _open(mode):
    loop = _loop()
    file = mode.file
    if isinstance(file, int):
        fd = file
    else:
        fd = await _open_fd(loop, _os.fsencode(file), mode.flags, file)
    try:
        st = await _run(_core._file_statx(loop, b'', fd, True, None))
        if _stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(_errno.EISDIR, _os.strerror(_errno.EISDIR), file)
        seekable = _stat.S_ISREG(st.st_mode) or _stat.S_ISBLK(st.st_mode)
        if isinstance(file, int):
            pos = _os.lseek(fd, 0, _os.SEEK_CUR) if seekable else 0
        else:
            pos = st.st_size if mode.appending and seekable else 0
    except BaseException:
        if mode.closefd:
            await _close_fd(loop, fd)
        raise
    raw = AsyncFile(loop, fd, file, mode, st, seekable, pos)
    if mode.binary:
        return raw
    return AsyncTextFile(raw, mode.encoding, mode.errors, mode.newline, mode.name)


async def _close_fd(loop, fd):
    # The CLOSE is not cancellable: once submitted the fd gets closed whatever happens here.
    await _run(_core._file_close(loop, fd))


class _Lines:
    """Line-wise reading shared by binary and text files, on top of their readline()."""

    async def readlines(self, hint=-1):
        """Read and return a list of lines (up to about hint bytes, or characters for a text
        file, if hint > 0)."""
        lines, total = [], 0
        async for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __aiter__(self):
        return self

    async def __anext__(self):
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class AsyncFile(_Lines):
    """A file opened in binary mode by uringloop.open(); its methods are coroutines, with the
    meaning of the methods of the object the built-in open() returns."""

    def __init__(self, loop, fd, name, mode, st, seekable, pos):
        self._loop = loop
        self._fd = fd
        self.name = name
        self.mode = mode.name
        self._readable = mode.readable
        self._writable = mode.writable
        self._appending = mode.appending
        self._closefd = mode.closefd
        self._seekable = seekable
        self._regular = _stat.S_ISREG(st.st_mode)
        self._size_hint = st.st_size     # for a read() to EOF in one READ
        self._pos = pos                  # the position of _rbuf[0]; None: ask the kernel
        self._rbuf = b''                 # read ahead, not yet returned
        self._lock = _asyncio.Lock()     # sequential calls run one at a time, in call order
        self._closed = False

    def __repr__(self):
        return f'<uringloop.files.AsyncFile name={self.name!r} mode={self.mode!r}>'

    # -- state ---------------------------------------------------------------------------

    @property
    def closed(self):
        return self._closed

    def fileno(self):
        return self._while_open(self._fd)

    def readable(self):
        return self._while_open(self._readable)

    def writable(self):
        return self._while_open(self._writable)

    def seekable(self):
        return self._while_open(self._seekable)

    def _check_open(self, what='I/O operation'):
        if self._closed:
            raise ValueError(f'{what} on closed file.')

    def _while_open(self, value):
        # What the io module's state queries do: answer, or raise ValueError once closed.
        self._check_open()
        return value

    def _check_readable(self):
        self._check_open('read')
        if not self._readable:
            raise _io.UnsupportedOperation('read')

    def _check_writable(self):
        self._check_open('write')
        if not self._writable:
            raise _io.UnsupportedOperation('write')

    def _position(self):
        if self._pos is None:
            # After an append the kernel moved the file's position to the end.
            self._pos = _os.lseek(self._fd, 0, _os.SEEK_CUR)
        return self._pos

    def _offset(self, ahead=0):
        return self._position() + ahead if self._seekable else -1

    # -- reading -------------------------------------------------------------------------

    async def _fill(self, size):
        # One READ behind the read-ahead; the bytes join _rbuf before anything else can
        # interrupt, so a cancelled caller loses none of them.
        offset = self._offset(len(self._rbuf))
        data = await _run(_core._file_read(self._loop, self._fd, size, offset))
        if data:
            self._rbuf = self._rbuf + data if self._rbuf else data
        return len(data)

    def _take(self, size):
        buf = self._rbuf
        if size >= len(buf):
            out, self._rbuf = buf, b''
        else:
            out, self._rbuf = buf[:size], buf[size:]
        if self._seekable:
            self._pos += len(out)
        return out

    async def read(self, size=-1):
        """Read and return up to size bytes (all of them to EOF if size is negative or None);
        fewer only at EOF."""
        self._check_readable()
        size = -1 if size is None else _operator.index(size)
        async with self._lock:
            self._check_readable()
            if size < 0:
                return await self._read_all()
            while len(self._rbuf) < size:
                if not await self._fill(self._bounded(size - len(self._rbuf))):
                    break
            return self._take(size)

    def _bounded(self, size):
        # read(n) past the end of a regular file need not allocate n bytes for the READ:
        # what the file's size leaves (plus one, to see the end), or at least CHUNK.
        if self._regular and self._pos is not None:
            left = self._size_hint - self._pos - len(self._rbuf)
            return min(size, max(left + 1, CHUNK))
        return size

    async def _read_all(self):
        expected = self._size_hint - self._offset(len(self._rbuf)) if self._regular else 0
        size = expected + 1 if expected > 0 else CHUNK
        while True:
            got = await self._fill(size)
            if got == 0 or (expected > 0 and got < min(size, _core._max_rw_count())):
                # A short read of a regular file whose size was known is its end.
                break
            size = min(size * 2, 1 << 30) if expected <= 0 else CHUNK
        return self._take(len(self._rbuf))

    async def read1(self, size=-1):
        """Read and return up to size bytes with at most one READ."""
        self._check_readable()
        size = -1 if size is None else _operator.index(size)
        async with self._lock:
            self._check_readable()
            if not self._rbuf:
                await self._fill(CHUNK if size < 0 else size)
            return self._take(len(self._rbuf) if size < 0 else size)

    async def readinto(self, b):
        """Read bytes into the writable buffer b; return how many (fewer only at EOF)."""
        self._check_readable()
        view = memoryview(b).cast('B')
        async with self._lock:
            self._check_readable()
            n = min(len(self._rbuf), len(view))
            view[:n] = self._rbuf[:n]
            got = n
            while got < len(view):
                # Nothing is consumed before the end: if cancelled, the next read reads again
                # what the kernel put in b.
                offset = self._offset(len(self._rbuf) + got - n) if self._seekable else -1
                count = await _run(_core._file_readinto(self._loop, self._fd, view[got:],
                                                        offset))
                if count == 0:
                    break
                got += count
            self._take(n)
            if self._seekable:
                self._pos += got - n
            return got

    async def readline(self, size=-1):
        """Read and return one line (ending with b'\\n'), at most size bytes; b'' at EOF."""
        self._check_readable()
        size = -1 if size is None else _operator.index(size)
        async with self._lock:
            self._check_readable()
            start = 0
            while True:
                end = self._rbuf.find(b'\n', start)
                if end >= 0:
                    end += 1
                    break
                if 0 <= size <= len(self._rbuf):
                    end = size
                    break
                start = len(self._rbuf)
                if not await self._fill(CHUNK):
                    end = len(self._rbuf)
                    break
            if 0 <= size < end:
                end = size
            return self._take(end)

    async def pread(self, size, offset):
        """Read up to size bytes at offset without using or moving the file's position; may
        run concurrently with other calls. Returns fewer bytes only at EOF."""
        self._check_readable()
        size, offset = _operator.index(size), _operator.index(offset)
        if offset < 0:
            raise ValueError('negative offset')
        chunks, got = [], 0
        while got < size:
            data = await _run(_core._file_read(self._loop, self._fd, size - got, offset + got))
            if not data:
                break
            chunks.append(data)
            got += len(data)
        return chunks[0] if len(chunks) == 1 else b''.join(chunks)

    # -- writing -------------------------------------------------------------------------

    async def write(self, b):
        """Write the bytes-like object b whole; return len(b). A cancelled write may have
        written a prefix of b: tell() then says where the file's position is."""
        self._check_writable()
        view = memoryview(b).cast('B')
        async with self._lock:
            self._check_writable()
            if self._rbuf:
                self._rbuf = b''          # the position is that of the caller, not the read-ahead
            done = 0
            while done < len(view):
                done += await self._write_at_position(view[done:])
            return len(view)

    async def _write_at_position(self, view):
        append = self._appending or not self._seekable
        op = _core._file_write(self._loop, self._fd, view, -1 if append else self._position())
        try:
            count = await op
        except _asyncio.CancelledError:
            count = await _settled(op)
            if count > 0:
                self._wrote(count, append)
            raise
        if count == 0:
            raise OSError(_errno.EIO, 'write() wrote nothing')
        self._wrote(count, append)
        return count

    def _wrote(self, count, append):
        if append:
            self._pos = None if self._seekable else 0
            return
        self._pos += count
        self._size_hint = max(self._size_hint, self._pos)

    async def writelines(self, lines):
        """Write each bytes-like object of lines, in order."""
        for line in lines:
            await self.write(line)

    async def pwrite(self, b, offset):
        """Write b whole at offset without using or moving the file's position; may run
        concurrently with other calls. Returns len(b)."""
        self._check_writable()
        offset = _operator.index(offset)
        if offset < 0:
            raise ValueError('negative offset')
        view = memoryview(b).cast('B')
        done = 0
        while done < len(view):
            count = await _run(_core._file_write(self._loop, self._fd, view[done:],
                                                 offset + done))
            if count == 0:
                raise OSError(_errno.EIO, 'write() wrote nothing')
            done += count
        self._size_hint = max(self._size_hint, offset + done)
        return done

    async def flush(self):
        """Nothing to do: writes are not buffered. Kept for the file API."""
        self._check_open()

    async def fsync(self):
        """Flush the file's data and metadata to storage (os.fsync())."""
        self._check_open()
        await _run(_core._file_fsync(self._loop, self._fd, False))

    async def fdatasync(self):
        """Flush the file's data (and the metadata needed to read it) to storage."""
        self._check_open()
        await _run(_core._file_fsync(self._loop, self._fd, True))

    # -- position --------------------------------------------------------------------------

    async def seek(self, offset, whence=_os.SEEK_SET):
        """Move the file's position as io does; return the new absolute position."""
        self._check_open()
        offset, whence = _operator.index(offset), _operator.index(whence)
        if whence not in (_os.SEEK_SET, _os.SEEK_CUR, _os.SEEK_END):
            raise ValueError(f'whence value {whence} unsupported')
        if not self._seekable:
            raise _io.UnsupportedOperation('File or stream is not seekable.')
        async with self._lock:
            self._check_open()
            if whence == _os.SEEK_SET:
                target = offset
            elif whence == _os.SEEK_CUR:
                target = self._position() + offset
            else:
                st = await _run(_core._file_statx(self._loop, b'', self._fd, True, None))
                self._size_hint = st.st_size
                target = st.st_size + offset
            if target < 0:
                raise OSError(_errno.EINVAL, _os.strerror(_errno.EINVAL))
            self._rbuf = b''
            self._pos = target
            return target

    async def tell(self):
        """Return the file's position."""
        self._check_open()
        if not self._seekable:
            raise _io.UnsupportedOperation('File or stream is not seekable.')
        return self._position()

    async def stat(self):
        """Return the file's os.stat_result (os.fstat())."""
        self._check_open()
        st = await _run(_core._file_statx(self._loop, b'', self._fd, True, None))
        if self._regular:
            self._size_hint = st.st_size
        return st

    # -- closing -------------------------------------------------------------------------

    async def close(self):
        """Close the file once the calls in progress on it are over. Closing twice is
        allowed."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            if self._closefd:
                await _close_fd(self._loop, self._fd)
            self._rbuf = b''

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        await self.close()

    def __del__(self):
        if not getattr(self, '_closed', True):
            self._closed = True
            if self._closefd:
                _warnings.warn(f'unclosed file {self!r}', ResourceWarning, source=self)
                try:
                    _os.close(self._fd)
                except OSError:
                    pass


class AsyncTextFile(_Lines):
    """A file opened in text mode by uringloop.open(): str in and out, decoded and encoded
    with `encoding`, line endings handled as `newline` says (the built-in open()'s rules).
    Its binary file is `buffer`."""

    def __init__(self, buffer, encoding, errors, newline, mode):
        self.buffer = buffer
        self.encoding = encoding
        self.errors = errors or 'strict'
        self.mode = mode[:-1] if mode.endswith('b') else mode
        self._newline = newline
        decoder = _codecs.getincrementaldecoder(encoding)(self.errors)
        if newline is None or newline == '':
            decoder = _io.IncrementalNewlineDecoder(decoder, translate=newline is None)
        self._decoder = decoder
        self._encoder = _codecs.getincrementalencoder(encoding)(self.errors)
        self._chars = ''          # decoded ahead, not yet returned
        self._eof = False

    def __repr__(self):
        return (f'<uringloop.files.AsyncTextFile name={self.name!r} mode={self.mode!r} '
                f'encoding={self.encoding!r}>')

    name = property(lambda self: self.buffer.name)
    closed = property(lambda self: self.buffer.closed)
    newlines = property(lambda self: getattr(self._decoder, 'newlines', None))

    def fileno(self):
        return self.buffer.fileno()

    def readable(self):
        return self.buffer.readable()

    def writable(self):
        return self.buffer.writable()

    def seekable(self):
        return self.buffer.seekable()

    async def _decode_more(self):
        data = await self.buffer.read1(CHUNK)
        self._eof = not data
        self._chars += self._decoder.decode(data, final=self._eof)
        return not self._eof

    async def read(self, size=-1):
        """Read and return up to size characters (all of them to EOF if size is negative)."""
        self.buffer._check_readable()
        size = -1 if size is None else _operator.index(size)
        if size < 0:
            data = await self.buffer.read()
            text = self._chars + self._decoder.decode(data, final=True)
            self._chars = ''
            self._eof = True
            return text
        while len(self._chars) < size and await self._decode_more():
            pass
        text, self._chars = self._chars[:size], self._chars[size:]
        return text

    def _line_end(self, start):
        chars = self._chars
        if self._newline is None or self._newline == '\n':
            end = chars.find('\n', start)
            return end + 1 if end >= 0 else -1
        if self._newline == '':
            # Universal newlines untranslated: '\r\n', '\r' or '\n', whichever comes first; a
            # final '\r' waits for the next character unless at EOF.
            for i in range(start, len(chars)):
                c = chars[i]
                if c == '\n':
                    return i + 1
                if c == '\r':
                    if i + 1 < len(chars):
                        return i + 2 if chars[i + 1] == '\n' else i + 1
                    if self._eof:
                        return i + 1
                    return -1
            return -1
        end = chars.find(self._newline, start)
        return end + len(self._newline) if end >= 0 else -1

    async def readline(self, size=-1):
        """Read and return one line, at most size characters; '' at EOF."""
        self.buffer._check_readable()
        size = -1 if size is None else _operator.index(size)
        start = 0
        while True:
            end = self._line_end(start)
            if end >= 0:
                break
            if 0 <= size <= len(self._chars):
                end = size
                break
            # Keep a final '\r' in the search: it may be the start of '\r\n'.
            start = max(len(self._chars) - 1, 0)
            if not await self._decode_more():
                end = self._line_end(start)
                if end < 0:
                    end = len(self._chars)
                break
        if 0 <= size < end:
            end = size
        line, self._chars = self._chars[:end], self._chars[end:]
        return line

    async def write(self, s):
        """Encode and write the str s whole; return len(s)."""
        self.buffer._check_writable()
        if not isinstance(s, str):
            raise TypeError('write() argument must be str, not %s' % type(s).__name__)
        text = s
        if self._newline is None:
            if _os.linesep != '\n':
                text = text.replace('\n', _os.linesep)
        elif self._newline in ('\r', '\r\n'):
            text = text.replace('\n', self._newline)
        if self._chars:
            # Writing after reading ahead: the write goes where the reader stopped.
            await self._rewind()
        await self.buffer.write(self._encoder.encode(text))
        return len(s)

    async def writelines(self, lines):
        """Write each str of lines, in order."""
        for line in lines:
            await self.write(line)

    async def _rewind(self):
        raise _io.UnsupportedOperation(
            "uringloop's text files cannot write after reading ahead; seek() first")

    async def tell(self):
        """Return the position as a number seek() accepts. Only where no decoded text waits
        to be read (not after a readline() that read ahead): io.UnsupportedOperation there."""
        self.buffer._check_open()
        if self._chars or self._decoder.getstate()[0]:
            raise _io.UnsupportedOperation(
                "uringloop's text files tell() only where no text is buffered ahead")
        return await self.buffer.tell()

    async def seek(self, cookie, whence=_os.SEEK_SET):
        """Move to a position tell() returned, or to the start (seek(0)) or end (seek(0, 2))."""
        self.buffer._check_open()
        cookie, whence = _operator.index(cookie), _operator.index(whence)
        if whence == _os.SEEK_CUR:
            if cookie != 0:
                raise _io.UnsupportedOperation("can't do nonzero cur-relative seeks")
            return await self.tell()
        if whence == _os.SEEK_END and cookie != 0:
            raise _io.UnsupportedOperation("can't do nonzero end-relative seeks")
        if whence == _os.SEEK_SET and cookie < 0:
            raise ValueError('negative seek position %r' % (cookie,))
        pos = await self.buffer.seek(cookie, whence)
        self._chars = ''
        self._eof = False
        self._decoder.reset()
        self._encoder.reset()
        return pos

    async def flush(self):
        """Nothing to do: writes are not buffered. Kept for the file API."""
        await self.buffer.flush()

    async def fsync(self):
        """Flush the file's data and metadata to storage (os.fsync())."""
        await self.buffer.fsync()

    async def fdatasync(self):
        """Flush the file's data to storage (os.fdatasync())."""
        await self.buffer.fdatasync()

    async def stat(self):
        """Return the file's os.stat_result."""
        return await self.buffer.stat()

    async def close(self):
        """Close the file. Closing twice is allowed."""
        await self.buffer.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        await self.close()
