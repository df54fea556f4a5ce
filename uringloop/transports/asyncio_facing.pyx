# Layer 4, what the asyncio-facing stream transports share. SocketTransport, ReadPipeTransport
# and WritePipeTransport are Python classes deriving from asyncio's transport classes (its
# BaseTransport has __slots__, and user code checks isinstance()); each holds its Stream in
# `_stream` and these methods delegate to it.

import warnings

cdef inline Stream _stream(obj):
    return <Stream>obj._stream


class _TransportBase:
    """Methods shared by uringloop's stream transports (mixed into asyncio's classes)."""
    __slots__ = ()

    def __repr__(self):
        s = _stream(self)
        info = [self.__class__.__name__]
        if s.closing and s.sock is not None:
            info.append('closing')
        info.append(f'fd={s.fd}')
        if s.sock is None:
            info.append('closed')
        else:
            s.add_repr_info(info)
        return '<{}>'.format(' '.join(info))

    def is_closing(self):
        """Return True if the transport is closing or closed."""
        return _stream(self).closing

    def close(self):
        """Close the transport: buffered data is flushed, then connection_lost(None) is called;
        no more data is received."""
        _stream(self).close()

    def set_protocol(self, protocol):
        """Set a new protocol."""
        _stream(self).set_protocol(protocol)

    def get_protocol(self):
        """Return the current protocol."""
        return _stream(self).protocol

    def __del__(self, _warn=warnings.warn):
        s = getattr(self, '_stream', None)
        if s is not None and (<Stream>s).sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            (<Stream>s).sock.close()


class _ReadingMixin:
    __slots__ = ()

    def is_reading(self):
        """Return True if the transport is receiving."""
        return _stream(self).is_reading()

    def pause_reading(self):
        """Pause the receiving end: no data is passed to the protocol's data_received()
        until resume_reading() is called."""
        _stream(self).pause_reading()

    def resume_reading(self):
        """Resume the receiving end."""
        _stream(self).resume_reading()


class _WritingMixin:
    __slots__ = ()

    def write(self, data):
        """Write some data bytes to the transport; it does not block: the data is buffered
        and sent out asynchronously."""
        _stream(self).write(data)

    def writelines(self, list_of_data):
        """Write a list (or any iterable) of data bytes to the transport."""
        _stream(self).write(b''.join(list_of_data))

    def write_eof(self):
        """Close the write end after flushing buffered data."""
        _stream(self).write_eof()

    def can_write_eof(self):
        """Return True: this transport supports write_eof()."""
        return True

    def abort(self):
        """Close the transport immediately; buffered data is lost."""
        _stream(self).abort()

    def get_write_buffer_size(self):
        """Return the current size of the write buffer."""
        return _stream(self).write_buffer_size()

    def get_write_buffer_limits(self):
        """Return (low, high), the write buffer's water marks."""
        queue = _stream(self).write_queue
        return (queue.low_water, queue.high_water)

    def set_write_buffer_limits(self, high=None, low=None):
        """Set the high- and low-water limits for write flow control."""
        _stream(self).set_write_buffer_limits(high, low)
