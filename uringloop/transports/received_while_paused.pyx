# Layer 4, what a stream received while its reading was paused.

cimport cython
from cpython.list cimport PyList_GET_SIZE


@cython.final
cdef class ReceivedWhilePaused:
    """Data the kernel delivered after pause_reading() asked the receive to stop (CQEs already
    on their way), and the peer's EOF behind it. The stream hands it to the protocol, in order,
    after resume_reading(): nothing is lost."""
    cdef list chunks             # bytes objects, oldest first
    cdef bint eof                # the peer's EOF came after them

    def __cinit__(self):
        self.chunks = []

    cdef inline bint holds_data(self) noexcept:
        return PyList_GET_SIZE(self.chunks) != 0

    cdef inline int keep(self, bytes data) except -1:
        self.chunks.append(data)
        return 0

    cdef inline int keep_in_front(self, bytes data) except -1:
        """data came from the oldest chunk, which was only partly delivered."""
        self.chunks.insert(0, data)
        return 0

    cdef inline bytes take_oldest(self):
        return self.chunks.pop(0)
