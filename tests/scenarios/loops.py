"""Loop factories the scenario tests run on: every scenario is written once and runs on
asyncio's own loop (the reference) and on uringloop. A scenario that passes on asyncio and
fails on uringloop is a bug report."""

import asyncio
import os

import pytest

import uringloop

FACTORIES = {
    'asyncio': asyncio.new_event_loop,
    'uringloop': uringloop.new_event_loop,
}


@pytest.fixture(params=sorted(FACTORIES))
def loop(request):
    """A fresh loop of each kind; checks on the way out that it leaked no fd."""
    before = set(os.listdir('/proc/self/fd'))
    lp = FACTORIES[request.param]()
    yield lp
    if not lp.is_closed():
        lp.run_until_complete(lp.shutdown_asyncgens())
        lp.close()
    leaked = set(os.listdir('/proc/self/fd')) - before
    # An fd closed in the meantime may have been reused: only count those still open.
    leaked = {fd for fd in leaked if os.path.exists(f'/proc/self/fd/{fd}')}
    assert not leaked, f'fds leaked: {[os.readlink(f"/proc/self/fd/{fd}") for fd in leaked]}'


def is_uring(loop):
    return isinstance(loop, uringloop.Loop)
