"""Fixtures of the application tests: a real PostgreSQL and a real Redis server for each test
module that uses them (module-scoped, so that no server outlives its tests: other tests check
that the pytest process has no child processes left), and `loop` (from tests/conftest.py),
which runs every test on asyncio's own loop and on uringloop."""

import pytest

from servers import PostgresServer, RedisServer

# tests/apps/runners/ holds user suites that test_runners.py runs in a pytest of their own.
collect_ignore = ['runners']


@pytest.fixture(scope='module')
def postgres():
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='module')
def redis_server():
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
