# Layer 4, a stream's write queue: the writes made while one is in flight, and asyncio's write
# flow control over them (pause_writing() above the high water mark, resume_writing() at or
# below the low one).

cimport cython


@cython.final
cdef class WriteQueue:
    """The writes waiting behind the one in flight, oldest first, and the protocol's write
    flow control. The bytes in flight belong to the send record: the marks compare the whole
    write buffer, which the caller counts."""
    cdef list chunks             # bytes objects not yet handed to the kernel
    cdef Py_ssize_t size         # their total length
    cdef Py_ssize_t high_water
    cdef Py_ssize_t low_water
    cdef bint protocol_paused    # pause_writing() was called and resume_writing() not yet
    cdef object drain_waiter     # the future sendfile's fallback waits on until all is sent

    def __cinit__(self):
        self.chunks = []
        self.high_water = 64 * 1024
        self.low_water = 16 * 1024

    cdef inline int push(self, bytes data) except -1:
        self.chunks.append(data)
        self.size += PyBytes_GET_SIZE(data)
        return 0

    cdef bytes take(self, bytes first=None):
        """Everything queued as one bytes object, after `first` when given; the queue is
        left empty."""
        cdef bytes data
        if first is not None:
            self.chunks.insert(0, first)
        if len(self.chunks) == 1:
            data = self.chunks[0]
        else:
            data = b''.join(self.chunks)
        self.drop()
        return data

    cdef inline int drop(self) except -1:
        self.chunks.clear()
        self.size = 0
        return 0

    cdef inline bint pause_due(self, Py_ssize_t buffered) noexcept:
        """Whether the protocol is to be told to pause writing now that `buffered` bytes wait
        (queued and in flight); it counts as paused from here."""
        if buffered <= self.high_water or self.protocol_paused:
            return False
        self.protocol_paused = True
        return True

    cdef inline bint resume_due(self, Py_ssize_t buffered) noexcept:
        """Whether the paused protocol is to be told to resume writing now that `buffered`
        bytes wait; it counts as writing again from here. (The caller checks
        `protocol_paused` first: counting what is in flight costs more.)"""
        if self.protocol_paused and buffered <= self.low_water:
            self.protocol_paused = False
            return True
        return False

    cdef int set_limits(self, high, low) except -1:
        """asyncio's set_write_buffer_limits() rules: either mark defaults from the other."""
        if high is None:
            if low is None:
                high = 64 * 1024
            else:
                high = 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f'high ({high!r}) must be >= low ({low!r}) must be >= 0')
        self.high_water = high
        self.low_water = low
        return 0
