"""A small user test suite written for pytest-asyncio, unchanged but for conftest.py."""
import asyncio
import sys

import pytest
import pytest_asyncio

import uringloop


@pytest_asyncio.fixture
async def echo_server():
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, '127.0.0.1', 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_runs_on_uringloop():
    assert isinstance(asyncio.get_running_loop(), uringloop.Loop)


async def test_streams_with_an_async_fixture(echo_server):
    assert isinstance(asyncio.get_running_loop(), uringloop.Loop)
    reader, writer = await asyncio.open_connection('127.0.0.1', echo_server)
    for word in (b'one\n', b'two\n'):
        writer.write(word)
        assert await reader.readline() == word.upper()
    writer.close()
    await writer.wait_closed()


async def test_timeouts_and_cancellation():
    assert isinstance(asyncio.get_running_loop(), uringloop.Loop)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.sleep(10), 0.01)
    task = asyncio.ensure_future(asyncio.sleep(10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_subprocess():
    assert isinstance(asyncio.get_running_loop(), uringloop.Loop)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, '-c', 'print(input()[::-1])',
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(b'gnirut\n')
    assert out == b'turing\n' and proc.returncode == 0


class TestSharedLoop:
    """Tests that share one loop for the whole class (loop_scope='class')."""
    loops = []

    @pytest.mark.asyncio(loop_scope='class')
    async def test_first(self):
        self.loops.append(asyncio.get_running_loop())
        assert isinstance(self.loops[0], uringloop.Loop)

    @pytest.mark.asyncio(loop_scope='class')
    async def test_second_sees_the_same_loop(self):
        self.loops.append(asyncio.get_running_loop())
        assert isinstance(self.loops[-1], uringloop.Loop)
        assert self.loops[0] is self.loops[-1]
