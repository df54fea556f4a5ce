# The loop's timers: a binary min-heap ordered by (deadline, order of scheduling), so equal
# deadlines fire in FIFO order, as on uvloop (asyncio's heap compares deadlines only).
#
# The handles live in a Python list, in heap order, which the GC sees. Their keys live beside
# it in a C array kept in the same order: a sift compares keys that sit next to each other in
# memory instead of reaching into every handle it passes, and moves pointers within the list
# without touching reference counts. Nothing outside this class may change that list, so
# `loop._scheduled` gets a copy of it.

from libc.stdlib cimport realloc, free
from cpython.ref cimport Py_INCREF, Py_DECREF

cdef extern from "Python.h":
    ctypedef struct PyListObject:
        PyObject **ob_item


cdef inline bint key_before(TimerKey *a, TimerKey *b) noexcept nogil:
    return a.when < b.when or (a.when == b.when and a.seq < b.seq)


@cython.final
cdef class TimerHeap:
    def __cinit__(self):
        self.handles = []

    def __dealloc__(self):
        free(self.keys)

    cdef int reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap = self.key_capacity * 2 if self.key_capacity else 64
        cdef TimerKey *keys
        if n <= self.key_capacity:
            return 0
        while cap < n:
            cap *= 2
        keys = <TimerKey *>realloc(self.keys, cap * sizeof(TimerKey))
        if keys == NULL:
            raise MemoryError()
        self.keys = keys
        self.key_capacity = cap
        return 0

    cdef int push(self, TimerHandle th) except -1:
        cdef Py_ssize_t pos = len(self.handles), parent
        cdef TimerKey key
        cdef TimerKey *keys
        cdef PyObject **items
        self.reserve(pos + 1)
        key.when = th.when_
        key.seq = self.next_seq
        self.next_seq += 1
        self.handles.append(th)
        th.scheduled = True
        items = (<PyListObject *>self.handles).ob_item
        keys = self.keys
        while pos > 0:
            parent = (pos - 1) >> 1
            if not key_before(&key, &keys[parent]):
                break
            keys[pos] = keys[parent]
            items[pos] = items[parent]
            pos = parent
        keys[pos] = key
        items[pos] = <PyObject *>th
        return 0

    cdef TimerHandle pop(self):
        """Remove and return the first timer; the heap must not be empty."""
        cdef TimerHandle last = <TimerHandle>self.handles.pop()
        cdef Py_ssize_t n = len(self.handles)
        cdef PyObject **items
        cdef TimerHandle top
        if n == 0:
            last.scheduled = False
            return last
        items = (<PyListObject *>self.handles).ob_item
        top = <TimerHandle>items[0]
        top.scheduled = False
        # The list's reference to `top` passes to the caller; `last` takes a slot again.
        Py_DECREF(top)
        Py_INCREF(last)
        self.sift_down(items, 0, n, self.keys[n], <PyObject *>last)
        return top

    cdef void sift_down(self, PyObject **items, Py_ssize_t pos, Py_ssize_t n, TimerKey key,
                        PyObject *handle) noexcept:
        """Fill the hole at pos with (key, handle), moving smaller children up."""
        cdef Py_ssize_t child
        cdef TimerKey *keys = self.keys
        while True:
            child = 2 * pos + 1
            if child >= n:
                break
            if child + 1 < n and key_before(&keys[child + 1], &keys[child]):
                child += 1
            if not key_before(&keys[child], &key):
                break
            keys[pos] = keys[child]
            items[pos] = items[child]
            pos = child
        keys[pos] = key
        items[pos] = handle

    cdef int drop_cancelled(self) except -1:
        """Remove the cancelled timers; the others keep their keys, so their order."""
        cdef list live = []
        cdef TimerHandle th
        cdef Py_ssize_t i = 0, n
        cdef PyObject **items
        for th in self.handles:
            if th.is_cancelled:
                th.scheduled = False
            else:
                self.keys[len(live)] = self.keys[i]
                live.append(th)
            i += 1
        self.cancelled = 0
        n = len(live)
        items = (<PyListObject *>live).ob_item
        for i in reversed(range(n // 2)):
            self.sift_down(items, i, n, self.keys[i], items[i])
        # Last: dropping the old list may free a cancelled handle whose callback's finalizer
        # schedules a timer, which must find a whole heap.
        self.handles = live
        return 0

    cdef void clear(self):
        cdef TimerHandle th
        for th in self.handles:
            th.scheduled = False
        self.handles = []
        self.cancelled = 0
