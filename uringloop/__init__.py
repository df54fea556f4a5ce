"""uringloop: an asyncio event loop for Linux whose I/O runs through io_uring.

    import uringloop
    uringloop.run(main())                                   # like asyncio.run
    asyncio.run(main(), loop_factory=uringloop.new_event_loop)   # Python 3.12+
    with asyncio.Runner(loop_factory=uringloop.new_event_loop) as runner: ...
    uringloop.install()                                     # make it asyncio's default

The ring sizes itself at every iteration to the pending operations; there is no knob.
"""

import asyncio as _asyncio
import sys as _sys

from uringloop._core import (NativeLoop as _NativeLoop, IoUringUnavailable, RingStats, Support,
                             check_support)
from uringloop._core import KernelFeatures, kernel_features
# File I/O on the ring: uringloop.open() (not in __all__, so that `import *` keeps the
# built-in open) and uringloop.files.stat(), unlink()...
from uringloop import files
from uringloop.files import open

__all__ = ('Loop', 'new_event_loop', 'EventLoopPolicy', 'install', 'run', 'check_support',
           'IoUringUnavailable', 'RingStats', 'Support', 'KernelFeatures', 'kernel_features')
__version__ = '0.1.0'


class Loop(_NativeLoop, _asyncio.BaseEventLoop):
    """The uringloop event loop: an asyncio.AbstractEventLoop driven by one io_uring.

    Raises IoUringUnavailable when this machine cannot run it (see check_support()).
    """

    def __init__(self) -> None:
        _check_gil()
        _NativeLoop.__init__(self)
        _asyncio.BaseEventLoop.__init__(self)


def _check_gil() -> None:
    # On a free-threaded CPython, importing uringloop turns the GIL back on (the extension
    # does not declare itself free-threading safe: a loop's state is shared with
    # call_soon_threadsafe() and executor threads without locks). Only a GIL forced off
    # (PYTHON_GIL=0, -X gil=0) gets here without it: refuse rather than race.
    is_gil_enabled = getattr(_sys, '_is_gil_enabled', None)
    if is_gil_enabled is not None and not is_gil_enabled():
        raise RuntimeError(
            'uringloop needs the GIL: this free-threaded Python runs with the GIL forced off '
            '(PYTHON_GIL=0 or -X gil=0). Run it without forcing the GIL off: importing '
            'uringloop then enables the GIL, and the loop works as on a default build.')


def new_event_loop() -> Loop:
    """Return a new uringloop event loop."""
    return Loop()


if _sys.version_info < (3, 14):
    class EventLoopPolicy(_asyncio.DefaultEventLoopPolicy):
        """An asyncio event loop policy whose loops are uringloop loops.

            asyncio.set_event_loop_policy(uringloop.EventLoopPolicy())
        """

        def _loop_factory(self) -> Loop:
            return new_event_loop()

    def install() -> None:
        """Make uringloop the loop that asyncio creates by default (sets the policy)."""
        _asyncio.set_event_loop_policy(EventLoopPolicy())

else:
    # asyncio's policies are deprecated from 3.14 and go in 3.16: the replacement is a loop
    # factory (uringloop.run(), asyncio.run(..., loop_factory=...), asyncio.Runner). The
    # policy class is built on first use, with asyncio's own warning, so that importing
    # uringloop warns about nothing.
    __all__ = tuple(name for name in __all__ if name != 'EventLoopPolicy')
    _policy_class = None

    def _event_loop_policy_class():
        global _policy_class
        if _policy_class is None:
            class EventLoopPolicy(_asyncio.events._BaseDefaultEventLoopPolicy):
                """An asyncio event loop policy whose loops are uringloop loops (deprecated,
                as asyncio's policies are, since Python 3.14)."""

                def _loop_factory(self) -> Loop:
                    return new_event_loop()

            EventLoopPolicy.__module__ = __name__
            _policy_class = EventLoopPolicy
        return _policy_class

    def __getattr__(name):
        if name == 'EventLoopPolicy':
            import warnings
            warnings.warn('uringloop.EventLoopPolicy is deprecated, as asyncio\'s policies are '
                          'since Python 3.14; use uringloop.run() or '
                          'asyncio.run(main, loop_factory=uringloop.new_event_loop)',
                          DeprecationWarning, stacklevel=2)
            return _event_loop_policy_class()
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

    def install() -> None:
        """Make uringloop the loop that asyncio creates by default (sets the policy).

        Deprecated since Python 3.14, with asyncio's policies: use uringloop.run(main()),
        asyncio.run(main(), loop_factory=uringloop.new_event_loop) or
        asyncio.Runner(loop_factory=uringloop.new_event_loop) instead.
        """
        import warnings
        warnings.warn('uringloop.install() is deprecated, as asyncio\'s policies are since '
                      'Python 3.14; use uringloop.run(main()) or '
                      'asyncio.run(main(), loop_factory=uringloop.new_event_loop)',
                      DeprecationWarning, stacklevel=2)
        # The private setter: the public one would warn a second time, from here.
        _asyncio.events._set_event_loop_policy(_event_loop_policy_class()())


def run(main, *, debug=None):
    """Run a coroutine on a new uringloop loop and return its result, like asyncio.run()."""
    with _asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)


if _sys.version_info < (3, 11):  # asyncio.Runner appeared in 3.11
    def run(main, *, debug=None):  # noqa: F811
        """Run a coroutine on a new uringloop loop and return its result, like asyncio.run()."""
        loop = new_event_loop()
        try:
            _asyncio.set_event_loop(loop)
            if debug is not None:
                loop.set_debug(debug)
            return loop.run_until_complete(main)
        finally:
            try:
                _cancel_all_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                _asyncio.set_event_loop(None)
                loop.close()

    def _cancel_all_tasks(loop):
        to_cancel = _asyncio.all_tasks(loop)
        if not to_cancel:
            return
        for task in to_cancel:
            task.cancel()
        loop.run_until_complete(_asyncio.gather(*to_cancel, return_exceptions=True))
        for task in to_cancel:
            if task.cancelled():
                continue
            if task.exception() is not None:
                loop.call_exception_handler({
                    'message': 'unhandled exception during uringloop.run() shutdown',
                    'exception': task.exception(),
                    'task': task,
                })
