"""A user's conftest.py: every pytest-asyncio test and async fixture of this suite runs on
uringloop (pytest-asyncio >= 1.4: the pytest_asyncio_loop_factories hook)."""
import uringloop


def pytest_asyncio_loop_factories(config, item):
    return {'uringloop': uringloop.new_event_loop}
