"""Fixtures shared by the scenario tests: every scenario runs on asyncio's own loop (the
reference) and on uringloop, so a difference in behaviour shows up as a failing pair."""
import asyncio

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
