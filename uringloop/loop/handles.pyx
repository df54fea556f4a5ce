# Callback handles: what call_soon/call_later/call_at return. Small cdef classes with a
# freelist, so scheduling a callback allocates nothing on the hot path once warmed up.

cimport cython
from cpython.object cimport PyObject


cdef extern from "Python.h":
    int PyContext_Enter(object) except -1
    int PyContext_Exit(object) except -1
    object PyObject_CallNoArgs(object)
    object PyObject_CallOneArg(object, object)
    # kwargs is a C pointer: NULL means none. Passing None there crashes CPython 3.14.
    object PyObject_Call(object, object, PyObject *kwargs)
    object PyContext_CopyCurrent()


@cython.freelist(256)
cdef class Handle:
    """A callback scheduled on the loop, as asyncio.Handle."""

    def __init__(self, callback, args, loop, context=None):
        # Public constructor for code that builds handles itself; the loop uses new_handle().
        self.callback = callback
        self.args = tuple(args)
        self.loop = loop
        self.context = contextvars.copy_context() if context is None else context

    cdef int run(self) except -1:
        cdef object callback = self.callback
        cdef tuple args = <tuple>self.args
        cdef Py_ssize_t nargs = len(args)
        cdef object error = None
        PyContext_Enter(self.context)
        try:
            if nargs == 0:
                PyObject_CallNoArgs(callback)
            elif nargs == 1:
                PyObject_CallOneArg(callback, args[0])
            else:
                PyObject_Call(callback, args, NULL)
        except BaseException as exc:
            error = exc
        finally:
            PyContext_Exit(self.context)
        if error is not None:
            # Reported outside the callback's context: since 3.12 the exception handler
            # runs inside the handle's context itself, and a context cannot be entered twice.
            if isinstance(error, (SystemExit, KeyboardInterrupt)):
                raise error
            context = {
                'message': 'Exception in callback ' +
                           format_helpers._format_callback_source(callback, args),
                'exception': error,
                'handle': self,
            }
            if self.source_traceback:
                context['source_traceback'] = self.source_traceback
            self.loop.call_exception_handler(context)
        return 0

    def _run(self):
        self.run()

    def cancel(self):
        if self.is_cancelled:
            return
        self.is_cancelled = True
        if self.loop is not None and self.loop.debug_flag:
            # Keep a readable repr after the callback reference is dropped.
            self.repr_cache = repr(self)
        self.callback = None
        self.args = None

    def cancelled(self):
        return self.is_cancelled

    def get_context(self):
        return self.context

    @property
    def _callback(self):
        return self.callback

    @property
    def _args(self):
        return self.args

    @property
    def _cancelled(self):
        return self.is_cancelled

    @property
    def _source_traceback(self):
        return self.source_traceback

    @property
    def _loop(self):
        return self.loop

    @property
    def _context(self):
        return self.context

    cdef list repr_parts(self):
        info = [self.__class__.__name__]
        if self.is_cancelled:
            info.append('cancelled')
        if self.callback is not None:
            info.append(format_helpers._format_callback_source(self.callback, self.args))
        if self.source_traceback:
            frame = self.source_traceback[-1]
            info.append(f'created at {frame[0]}:{frame[1]}')
        return info

    def __repr__(self):
        if self.repr_cache is not None:
            return self.repr_cache
        return '<{}>'.format(' '.join(self.repr_parts()))


cdef class TimerHandle(Handle):
    """A callback scheduled for a time on the loop's clock, as asyncio.TimerHandle."""

    def __init__(self, when, callback, args, loop, context=None):
        Handle.__init__(self, callback, args, loop, context)
        self.when_ = when

    def when(self):
        return self.when_

    def cancel(self):
        if not self.is_cancelled and self.scheduled and self.loop is not None:
            self.loop.timers.cancelled += 1
        Handle.cancel(self)

    cdef list repr_parts(self):
        info = Handle.repr_parts(self)
        info.insert(2 if self.is_cancelled else 1, f'when={self.when_}')
        return info

    def __hash__(self):
        return hash(self.when_)

    def __lt__(self, other):
        if isinstance(other, TimerHandle):
            return self.when_ < (<TimerHandle>other).when_
        return NotImplemented

    def __le__(self, other):
        if isinstance(other, TimerHandle):
            return self.when_ < (<TimerHandle>other).when_ or self.__eq__(other)
        return NotImplemented

    def __gt__(self, other):
        if isinstance(other, TimerHandle):
            return self.when_ > (<TimerHandle>other).when_
        return NotImplemented

    def __ge__(self, other):
        if isinstance(other, TimerHandle):
            return self.when_ > (<TimerHandle>other).when_ or self.__eq__(other)
        return NotImplemented

    def __eq__(self, other):
        if isinstance(other, TimerHandle):
            o = <TimerHandle>other
            return (self.when_ == o.when_ and self.callback == o.callback and
                    self.args == o.args and self.is_cancelled == o.is_cancelled)
        return NotImplemented
