"""Shared by the surfaces tests: each scenario runs on asyncio's loop and on uringloop, so a
scenario that passes on asyncio and fails on uringloop is a uringloop bug by construction."""

import asyncio
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(HERE)
if PROJECT_ROOT not in sys.path:
    sys.path.insert(0, PROJECT_ROOT)

import uringloop  # noqa: E402

FACTORIES = {
    'asyncio': asyncio.new_event_loop,
    'uringloop': uringloop.new_event_loop,
}


@pytest.fixture(params=sorted(FACTORIES))
def loop(request):
    """A fresh loop of each kind, closed afterwards."""
    lp = FACTORIES[request.param]()
    lp.kind = request.param if not isinstance(lp, uringloop.Loop) else 'uringloop'
    try:
        yield lp
    finally:
        if not lp.is_closed():
            lp.close()
        asyncio.set_event_loop(None)


def is_uring(lp):
    return isinstance(lp, uringloop.Loop)


def pending(lp):
    return lp.ring_stats().pending


def child_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = PROJECT_ROOT + os.pathsep + env.get('PYTHONPATH', '')
    return env


async def echo_handler(reader, writer):
    """A streams server handler that sends back what it reads until EOF, honouring drain()."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
