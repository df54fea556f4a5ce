"""Real libraries, unchanged, on uringloop: uvicorn (as `--loop uringloop:new_event_loop`),
aiohttp's server and client, websockets, and anyio. Each checks it really ran on uringloop."""
import asyncio
import os
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

import uringloop
from child_ports import port_in_output

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_uvicorn_loop_option(tmp_path):
    app = tmp_path / 'app.py'
    app.write_text(textwrap.dedent('''
        import asyncio

        async def app(scope, receive, send):
            if scope['type'] != 'http':
                return
            loop = asyncio.get_running_loop()
            body = f'{type(loop).__module__}.{type(loop).__name__}'.encode()
            await send({'type': 'http.response.start', 'status': 200,
                        'headers': [(b'content-type', b'text/plain')]})
            await send({'type': 'http.response.body', 'body': body})
    '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT,
                                                       os.environ.get('PYTHONPATH', '')]))
    log_path = tmp_path / 'uvicorn.log'
    with open(log_path, 'wb') as log:
        # Port 0: uvicorn binds a port the kernel picks, and names it in its log.
        proc = subprocess.Popen(
            [sys.executable, '-m', 'uvicorn', 'app:app', '--loop', 'uringloop:new_event_loop',
             '--host', '127.0.0.1', '--port', '0', '--log-level', 'info'],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = port_in_output(log_path, proc, r'Uvicorn running on http://127\.0\.0\.1:(\d+)')
        deadline = time.monotonic() + 30
        bodies = []
        while time.monotonic() < deadline and len(bodies) < 20:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=5) as r:
                    bodies.append(r.read().decode())
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        assert bodies == ['uringloop.Loop'] * 20, (
            log_path.read_text() if proc.poll() is not None else bodies)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM.
    text = log_path.read_text(errors='replace')
    assert proc.returncode in (0, -15), text
    assert 'Finished server process' in text and 'Traceback' not in text, text


def test_aiohttp_server_and_client():
    import aiohttp
    from aiohttp import web

    async def hello(request):
        payload = await request.read()
        return web.Response(body=payload[::-1],
                            headers={'X-Loop': type(asyncio.get_running_loop()).__name__})

    async def main():
        app = web.Application()
        app.router.add_post('/', hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, '127.0.0.1', 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                results = []
                for i in range(50):
                    data = os.urandom(1000 + i * 997)
                    async with session.post(f'http://127.0.0.1:{port}/', data=data) as resp:
                        assert resp.headers['X-Loop'] == 'Loop'
                        results.append(await resp.read() == data[::-1])
                return results
        finally:
            await runner.cleanup()

    assert uringloop.run(main()) == [True] * 50


def test_websockets_echo():
    import websockets  # noqa: F401
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        assert isinstance(asyncio.get_running_loop(), uringloop.Loop)
        async with serve(echo, '127.0.0.1', 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f'ws://127.0.0.1:{port}') as ws:
                got = []
                for size in (1, 100, 65536, 1 << 19):
                    msg = os.urandom(size)
                    await ws.send(msg)
                    got.append(await ws.recv() == msg)
                return got

    assert uringloop.run(main()) == [True] * 4


def test_anyio_on_uringloop():
    import anyio

    async def main():
        results = []

        async def worker(i):
            await anyio.sleep(0.001 * i)
            results.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(worker, i)
        listener = await anyio.create_tcp_listener(local_host='127.0.0.1')
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def serve_one(stream):
            async with stream:
                await stream.send((await stream.receive()).upper())

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve_one)
            async with await anyio.connect_tcp('127.0.0.1', port) as client:
                await client.send(b'ping')
                reply = await client.receive()
            tg.cancel_scope.cancel()
        await listener.aclose()
        return sorted(results), reply, type(asyncio.get_running_loop()).__name__

    kwargs = {'loop_factory': uringloop.new_event_loop} if sys.version_info >= (3, 12) else {}
    if kwargs:
        result = anyio.run(main, backend='asyncio', backend_options=kwargs)
    else:
        result = uringloop.run(main())
    assert result == (list(range(10)), b'PING', 'Loop')


def test_pytest_asyncio_suite_on_uringloop(tmp_path):
    """A pytest-asyncio test suite, unchanged, run with uringloop's policy."""
    import pytest_asyncio  # noqa: F401
    (tmp_path / 'conftest.py').write_text(textwrap.dedent('''
        import pytest
        import uringloop

        @pytest.fixture(scope='session')
        def event_loop_policy():
            return uringloop.EventLoopPolicy()
    '''))
    (tmp_path / 'test_suite.py').write_text(textwrap.dedent('''
        import asyncio
        import pytest
        import uringloop

        @pytest.mark.asyncio
        async def test_runs_on_uringloop():
            assert isinstance(asyncio.get_running_loop(), uringloop.Loop)

        @pytest.mark.asyncio
        async def test_streams_roundtrip():
            async def handle(reader, writer):
                writer.write(await reader.readline())
                await writer.drain()
                writer.close()
            server = await asyncio.start_server(handle, '127.0.0.1', 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection('127.0.0.1', port)
            writer.write(b'hello\\n')
            assert await reader.readline() == b'hello\\n'
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

        @pytest.mark.asyncio
        async def test_timeouts_and_cancellation():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.sleep(1), 0.01)
    '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-o', 'timeout=60',
         str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '3 passed' in proc.stdout, proc.stdout
