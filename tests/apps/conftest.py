"""Fixtures of the application tests: one real PostgreSQL and one real Redis server for the
whole session (started on first use), and `loop` (from tests/conftest.py), which runs every
test on asyncio's own loop and on uringloop."""

import pytest

# tests/apps/runners/ holds user suites that test_runners.py runs in a pytest of their own.
collect_ignore = ['runners']

from servers import PostgresServer, RedisServer


@pytest.fixture(scope='session')
def postgres():
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='session')
def redis_server():
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
