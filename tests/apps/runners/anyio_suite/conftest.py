"""A user's conftest.py: anyio's pytest plugin runs this suite's tests on uringloop (the
asyncio backend with uringloop's loop factory)."""
import pytest

import uringloop


@pytest.fixture(scope='session')
def anyio_backend():
    return 'asyncio', {'loop_factory': uringloop.new_event_loop}
