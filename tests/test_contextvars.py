"""Protocol, transport and protocol-factory callbacks run in the contextvars context that was
current at the call that created the transport, as asyncio's do: each scenario sets a
ContextVar before the creating call, changes it right after, and checks what every callback
saw. Every scenario runs on asyncio's loop (the reference) and on uringloop.

Callbacks triggered by the peer are checked (data, EOF, the peer closing); a close() made by
the test itself is not, since asyncio runs that connection_lost() in the closer's context."""

import asyncio
import contextvars
import os
import socket
import subprocess
import sys

import pytest

from surfaces_helpers import is_uring, loop  # noqa: F401
from test_tls import certs, client_ctx, server_ctx  # noqa: F401

cv = contextvars.ContextVar('cv', default='MISSING')
PY = sys.executable


class Recorder(asyncio.Protocol):
    """Records the ContextVar's value at each callback; echoes data back; closes the
    transport itself (from inside a callback) once the peer's EOF has come."""

    def __init__(self, seen, echo=False):
        self.seen = seen
        self.echo = echo
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.seen.append(('connection_made', cv.get()))

    def data_received(self, data):
        self.seen.append(('data_received', cv.get()))
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self.seen.append(('eof_received', cv.get()))
        self.transport.close()

    def connection_lost(self, exc):
        self.seen.append(('connection_lost', cv.get()))
        if not self.lost.done():
            self.lost.set_result(None)


def factory(seen, echo=False):
    def make():
        seen.append(('protocol_factory', cv.get()))
        return Recorder(seen, echo)
    return make


def assert_all(seen, value, expected):
    """Each expected callback ran, every one saw `value`."""
    names = [name for name, _ in seen]
    for name in expected:
        assert name in names, (name, seen)
    assert all(v == value for _, v in seen), seen


async def in_context(value, coro):
    """Run coro in a task whose context has cv = value: the server side of a scenario."""
    async def runner():
        cv.set(value)
        return await coro
    return await asyncio.create_task(runner())


async def echo_client(connect):
    reader, writer = await connect
    writer.write(b'ping')
    writer.write_eof()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


STREAM_CALLBACKS = ('connection_made', 'data_received', 'eof_received', 'connection_lost')
SERVER_CALLBACKS = ('protocol_factory',) + STREAM_CALLBACKS


def test_create_connection(loop):
    seen = []

    async def main():
        server = await asyncio.start_server(_echo_and_close, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        cv.set('conn')
        transport, proto = await loop.create_connection(factory(seen), '127.0.0.1', port)
        cv.set('after')
        transport.write(b'ping')
        await asyncio.wait_for(proto.lost, 10)
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert_all(seen, 'conn', ('protocol_factory',) + STREAM_CALLBACKS)


async def _echo_and_close(reader, writer):
    writer.write(await reader.read(4))
    await writer.drain()
    writer.close()


def test_create_server(loop):
    seen = []

    async def main():
        cv.set('srv')
        server = await loop.create_server(factory(seen, echo=True), '127.0.0.1', 0)
        cv.set('after')
        port = server.sockets[0].getsockname()[1]
        for _ in range(2):
            assert await echo_client(asyncio.open_connection('127.0.0.1', port)) == b'ping'
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert [name for name, _ in seen].count('protocol_factory') == 2
    assert_all(seen, 'srv', SERVER_CALLBACKS)


def test_create_server_factory_context_is_per_connection(loop):
    # asyncio accepts each connection in a task of its own: what protocol_factory() sets in
    # the context is not seen by the next connection.
    seen = []

    def make():
        seen.append(cv.get())
        cv.set('changed by the factory')
        return Recorder([], echo=True)

    async def main():
        cv.set('srv')
        server = await loop.create_server(make, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(2):
            await echo_client(asyncio.open_connection('127.0.0.1', port))
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert seen == ['srv', 'srv']


def test_connect_accepted_socket(loop):
    seen = []

    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        cv.set('accepted')
        transport, proto = await loop.connect_accepted_socket(factory(seen, echo=True), a)
        cv.set('after')
        await loop.sock_sendall(b, b'ping')
        b.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(b, 100) == b'ping'
        await asyncio.wait_for(proto.lost, 10)
        b.close()

    loop.run_until_complete(main())
    assert_all(seen, 'accepted', SERVER_CALLBACKS)


def test_create_unix_connection(loop, tmp_path):
    seen = []
    path = str(tmp_path / 'sock')

    async def main():
        server = await asyncio.start_unix_server(_echo_and_close, path)
        cv.set('unix-conn')
        transport, proto = await loop.create_unix_connection(factory(seen), path)
        cv.set('after')
        transport.write(b'ping')
        await asyncio.wait_for(proto.lost, 10)
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert_all(seen, 'unix-conn', ('protocol_factory',) + STREAM_CALLBACKS)


def test_create_unix_server(loop, tmp_path):
    seen = []
    path = str(tmp_path / 'sock')

    async def main():
        cv.set('unix-srv')
        server = await loop.create_unix_server(factory(seen, echo=True), path)
        cv.set('after')
        assert await echo_client(asyncio.open_unix_connection(path)) == b'ping'
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert_all(seen, 'unix-srv', SERVER_CALLBACKS)


def test_ssl_server(loop, server_ctx, client_ctx):  # noqa: F811
    seen = []

    async def main():
        cv.set('tls-srv')
        server = await loop.create_server(factory(seen, echo=True), '127.0.0.1', 0,
                                          ssl=server_ctx)
        cv.set('after')
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port, ssl=client_ctx,
                                                       server_hostname='localhost')
        writer.write(b'ping')
        assert await reader.readexactly(4) == b'ping'
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert_all(seen, 'tls-srv', ('protocol_factory', 'connection_made', 'data_received'))


def test_create_connection_ssl_and_start_tls(loop, server_ctx, client_ctx):  # noqa: F811
    seen_tls = []
    seen_start = []

    async def main():
        server = await in_context('server', asyncio.start_server(
            _echo_and_close, '127.0.0.1', 0, ssl=server_ctx))
        port = server.sockets[0].getsockname()[1]
        # ssl= on create_connection.
        cv.set('tls-conn')
        transport, proto = await loop.create_connection(
            factory(seen_tls), '127.0.0.1', port, ssl=client_ctx, server_hostname='localhost')
        cv.set('after')
        transport.write(b'ping')
        await asyncio.wait_for(proto.lost, 10)
        # start_tls on a plain connection.
        plain = await in_context('server', loop.create_server(
            _starttls_echo(server_ctx), '127.0.0.1', 0))
        cv.set('start-tls')
        transport, proto = await loop.create_connection(
            factory(seen_start), '127.0.0.1', plain.sockets[0].getsockname()[1])
        transport.write(b'STARTTLS')
        await asyncio.sleep(0.05)
        tls = await loop.start_tls(transport, proto, client_ctx, server_hostname='localhost')
        cv.set('after')
        tls.write(b'ping')
        await asyncio.wait_for(proto.lost, 10)
        for s in (server, plain):
            s.close()
            await s.wait_closed()

    loop.run_until_complete(main())
    # (3.10's SSL protocol does not pass the peer's close_notify on as eof_received.)
    assert_all(seen_tls, 'tls-conn', ('protocol_factory', 'connection_made', 'data_received',
                                      'connection_lost'))
    assert_all(seen_start, 'start-tls', ('protocol_factory', 'connection_made',
                                         'data_received', 'connection_lost'))


def _starttls_echo(server_ctx):  # noqa: F811
    """A server that upgrades on b'STARTTLS', echoes the first TLS message and closes
    (protocol-based: StreamWriter.start_tls() is 3.11+)."""
    class Upgrading(asyncio.Protocol):
        upgrading = False
        tls = None

        def connection_made(self, transport):
            self.transport = transport
            self.early = []

        def data_received(self, data):
            if not self.upgrading and data == b'STARTTLS':
                self.upgrading = True
                asyncio.get_running_loop().create_task(self.upgrade())
            elif self.tls is None:
                self.early.append(data)   # TLS data before start_tls() has returned
            else:
                self.echo(data)

        async def upgrade(self):
            self.tls = await asyncio.get_running_loop().start_tls(
                self.transport, self, server_ctx, server_side=True)
            if self.early:
                self.echo(b''.join(self.early))

        def echo(self, data):
            self.tls.write(data)
            self.tls.close()

    return Upgrading


class ProcessRecorder(asyncio.SubprocessProtocol):
    def __init__(self, seen):
        self.seen = seen
        self.exited = asyncio.get_running_loop().create_future()
        self.stdout_lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.seen.append(('connection_made', cv.get()))

    def pipe_data_received(self, fd, data):
        self.seen.append(('pipe_data_received', cv.get()))

    def pipe_connection_lost(self, fd, exc):
        self.seen.append(('pipe_connection_lost', cv.get()))
        self.stdout_lost.set_result(None)

    def process_exited(self):
        self.seen.append(('process_exited', cv.get()))
        self.exited.set_result(None)


@pytest.mark.parametrize('kind', ['exec', 'shell'])
def test_subprocess(loop, kind):
    seen = []

    async def main():
        cv.set('proc')
        if kind == 'exec':
            transport, proto = await loop.subprocess_exec(
                lambda: ProcessRecorder(seen), PY, '-c', 'print("hello")',
                stdin=None, stdout=subprocess.PIPE, stderr=None)
        else:
            transport, proto = await loop.subprocess_shell(
                lambda: ProcessRecorder(seen), 'echo hello',
                stdin=None, stdout=subprocess.PIPE, stderr=None)
        cv.set('after')
        # Both, in whichever order they come: the exit and the end of the child's stdout.
        await asyncio.wait_for(asyncio.gather(proto.exited, proto.stdout_lost), 10)
        transport.close()

    loop.run_until_complete(main())
    expected = ['connection_made', 'pipe_data_received', 'pipe_connection_lost']
    if is_uring(loop) or sys.version_info >= (3, 12):
        # Before 3.12 asyncio's child watcher thread reports the exit from outside the
        # context; its pidfd watcher (3.12+) and uringloop's pidfd poll do not.
        expected.append('process_exited')
    else:
        seen = [item for item in seen if item[0] != 'process_exited']
    assert_all(seen, 'proc', expected)


def test_connect_read_pipe(loop):
    seen = []

    async def main():
        r, w = os.pipe()
        cv.set('read-pipe')
        transport, proto = await loop.connect_read_pipe(factory(seen), os.fdopen(r, 'rb', 0))
        cv.set('after')
        os.write(w, b'ping')
        await asyncio.sleep(0.05)
        os.close(w)
        await asyncio.wait_for(proto.lost, 10)

    loop.run_until_complete(main())
    assert_all(seen, 'read-pipe', ('protocol_factory',) + STREAM_CALLBACKS)


def test_connect_write_pipe(loop):
    seen = []

    async def main():
        r, w = os.pipe()
        cv.set('write-pipe')
        transport, proto = await loop.connect_write_pipe(factory(seen), os.fdopen(w, 'wb', 0))
        cv.set('after')
        transport.write(b'ping')
        await asyncio.sleep(0.05)
        assert os.read(r, 10) == b'ping'
        os.close(r)         # the reader goes away: the transport notices and is lost
        await asyncio.wait_for(proto.lost, 10)

    loop.run_until_complete(main())
    assert_all(seen, 'write-pipe', ('protocol_factory', 'connection_made', 'connection_lost'))


class DatagramRecorder(asyncio.DatagramProtocol):
    def __init__(self, seen):
        self.seen = seen
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.seen.append(('connection_made', cv.get()))

    def datagram_received(self, data, addr):
        self.seen.append(('datagram_received', cv.get()))
        self.transport.close()

    def connection_lost(self, exc):
        self.seen.append(('connection_lost', cv.get()))
        self.lost.set_result(None)


def test_create_datagram_endpoint(loop):
    seen = []

    async def main():
        cv.set('udp')

        def make():
            seen.append(('protocol_factory', cv.get()))
            return DatagramRecorder(seen)

        transport, proto = await loop.create_datagram_endpoint(make,
                                                               local_addr=('127.0.0.1', 0))
        cv.set('after')
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b'ping', transport.get_extra_info('sockname'))
            await asyncio.wait_for(proto.lost, 10)

    loop.run_until_complete(main())
    assert_all(seen, 'udp', ('protocol_factory', 'connection_made', 'datagram_received',
                             'connection_lost'))


def test_data_after_pause_and_resume(loop):
    # Data held back while reading was paused still reaches the protocol in its context.
    seen = []

    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        cv.set('paused')
        transport, proto = await loop.connect_accepted_socket(factory(seen), a)
        transport.pause_reading()
        await loop.sock_sendall(b, b'ping')
        b.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.05)
        transport.resume_reading()
        await asyncio.wait_for(proto.lost, 10)
        b.close()

    loop.run_until_complete(main())
    assert_all(seen, 'paused', ('protocol_factory',) + STREAM_CALLBACKS)


UVICORN_SCRIPT = r"""
import asyncio, contextvars, socket, sys
import uvicorn
import uringloop

cv = contextvars.ContextVar('cv', default='MISSING')


async def app(scope, receive, send):
    if scope['type'] != 'http':
        return
    body = cv.get().encode()
    await send({'type': 'http.response.start', 'status': 200,
                'headers': [(b'content-type', b'text/plain'),
                            (b'content-length', str(len(body)).encode())]})
    await send({'type': 'http.response.body', 'body': body})


async def main(http):
    cv.set('before uvicorn')
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    config = uvicorn.Config(app, http=http, lifespan='off', log_level='warning')
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    cv.set('after')
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
    return response


factory = uringloop.new_event_loop if sys.argv[1] == 'uringloop' else asyncio.new_event_loop
loop = factory()
assert type(loop).__module__.startswith(sys.argv[1]), type(loop)
try:
    sys.stdout.buffer.write(loop.run_until_complete(main(sys.argv[2])))
finally:
    loop.close()
"""


@pytest.mark.parametrize('http', ['h11', 'httptools'])
def test_uvicorn_app_sees_context_set_before_serving(loop, http):
    """uvicorn (reset_contextvars off, its default) starts each request's ASGI task from its
    protocol's data_received(): the app sees the context the server was started in. Run in a
    child Python: uvicorn's serve() takes over the process's signal handlers meanwhile."""
    pytest.importorskip('uvicorn')
    pytest.importorskip(http)
    kind = 'uringloop' if is_uring(loop) else 'asyncio'
    result = subprocess.run([PY, '-c', UVICORN_SCRIPT, kind, http], capture_output=True,
                            timeout=60, cwd=os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))))
    response = result.stdout
    assert result.returncode == 0, result.stderr.decode(errors='replace')
    assert response.startswith(b'HTTP/1.1 200'), response
    assert response.endswith(b'\r\n\r\nbefore uvicorn'), response
