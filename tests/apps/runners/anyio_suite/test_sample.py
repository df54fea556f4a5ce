"""A small user test suite written for anyio's pytest plugin, unchanged but for conftest.py."""
import asyncio
import sys
import threading

import anyio
import pytest

import uringloop

pytestmark = pytest.mark.anyio


@pytest.fixture
async def upper_server():
    async def serve_one(stream):
        async with stream:
            async for data in stream:
                await stream.send(data.upper())

    listener = await anyio.create_tcp_listener(local_host='127.0.0.1')
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()
    await listener.aclose()


async def test_runs_on_uringloop():
    assert isinstance(asyncio.get_running_loop(), uringloop.Loop)


async def test_task_group_and_tcp(upper_server):
    assert isinstance(asyncio.get_running_loop(), uringloop.Loop)
    results = []

    async def worker(i):
        await anyio.sleep(0.001 * i)
        results.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(worker, i)
    async with await anyio.connect_tcp('127.0.0.1', upper_server) as client:
        await client.send(b'ping')
        assert await client.receive() == b'PING'
    assert results == list(range(10))


async def test_timeouts_threads_and_processes():
    assert isinstance(asyncio.get_running_loop(), uringloop.Loop)
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.01):
            await anyio.sleep(10)
    thread_name = await anyio.to_thread.run_sync(lambda: threading.current_thread().name)
    assert thread_name != threading.current_thread().name
    result = await anyio.run_process([sys.executable, '-c', 'print(6 * 7)'])
    assert result.stdout == b'42\n'
