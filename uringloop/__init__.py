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

from uringloop._core import (SurfacesLoop as _CoreLoop, IoUringUnavailable, RingStats, Support,
                             check_support)
from uringloop._core import KernelFeatures, kernel_features

__all__ = ('Loop', 'new_event_loop', 'EventLoopPolicy', 'install', 'run', 'check_support',
           'IoUringUnavailable', 'RingStats', 'Support', 'KernelFeatures', 'kernel_features')
__version__ = '0.1.0'


class Loop(_CoreLoop, _asyncio.BaseEventLoop):
    """The uringloop event loop: an asyncio.AbstractEventLoop driven by one io_uring.

    Raises IoUringUnavailable when this machine cannot run it (see check_support()).
    """

    def __init__(self) -> None:
        _CoreLoop.__init__(self)
        _asyncio.BaseEventLoop.__init__(self)


def new_event_loop() -> Loop:
    """Return a new uringloop event loop."""
    return Loop()


class EventLoopPolicy(_asyncio.DefaultEventLoopPolicy):
    """An asyncio event loop policy whose loops are uringloop loops.

        asyncio.set_event_loop_policy(uringloop.EventLoopPolicy())
    """

    def _loop_factory(self) -> Loop:
        return new_event_loop()


def install() -> None:
    """Make uringloop the loop that asyncio creates by default (sets the policy)."""
    _asyncio.set_event_loop_policy(EventLoopPolicy())


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
