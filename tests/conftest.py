"""Fixtures shared by the scenario tests: every scenario runs on asyncio's own loop (the
reference) and on uringloop, so a difference in behaviour shows up as a failing pair."""
import asyncio
# Imported before any test counts descriptors: where libffi uses static trampolines (3.5,
# Debian testing's), importing ctypes opens a descriptor to libffi's own file for good, which
# no_fd_leak would otherwise blame on the first test that imports it (matplotlib does).
import ctypes  # noqa: F401
import gc
import os
import time

import pytest

import uringloop

LOOP_FACTORIES = {
    'asyncio': asyncio.new_event_loop,
    'uringloop': uringloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def loop_factory(request):
    return LOOP_FACTORIES[request.param]


@pytest.fixture
def loop(loop_factory):
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        asyncio.set_event_loop(None)


def open_fds():
    """This process's open file descriptors, each with what it points at."""
    fds = {}
    for name in os.listdir('/proc/self/fd'):
        try:
            fds[int(name)] = os.readlink('/proc/self/fd/' + name)
        except OSError:
            pass  # the descriptor listdir itself used, already closed
    return fds


def leaked_fds(before):
    """The descriptors opened since `before` and still open, after collecting garbage.
    Worker threads (executors, getaddrinfo) may still be finishing their last close, so a
    leak is only reported once they have had a moment to end."""
    for attempt in range(20):
        gc.collect()
        now = open_fds()
        leaked = {fd: target for fd, target in now.items() if before.get(fd) != target}
        if not leaked:
            return leaked
        time.sleep(0.05)
    return leaked


@pytest.fixture(autouse=True)
def no_fd_leak(request):
    """Fails a test that leaves file descriptors open: every socket, pipe, ring and event fd
    a test opens, through the loop or itself, must be closed when it ends."""
    gc.collect()
    before = open_fds()
    yield
    leaked = leaked_fds(before)
    if leaked:
        pytest.fail('%s leaked %d file descriptor(s): %s' % (
            request.node.nodeid, len(leaked),
            ', '.join('%d -> %s' % item for item in sorted(leaked.items()))), pytrace=False)


def pytest_addoption(parser):
    parser.addoption('--soak', action='store_true',
                     help='also run the long soak tests (marker: soak)')


def pytest_configure(config):
    config.addinivalue_line('markers', 'soak: long-running soak test, run with --soak')


def pytest_collection_modifyitems(config, items):
    """Soak tests take minutes: they are deselected unless --soak asks for them."""
    if config.getoption('--soak'):
        return
    kept = [item for item in items if 'soak' not in item.keywords]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if 'soak' in i.keywords])
        items[:] = kept
