"""TLS: ssl= on create_connection / create_server / create_unix_* / connect_accepted_socket,
start_tls, handshake and shutdown timeouts, server_hostname rules. Every scenario runs on
asyncio's loop and on uringloop. The certificate is made for the test run with openssl."""

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile

import pytest

from surfaces_helpers import echo_handler, loop  # noqa: F401

pytestmark = pytest.mark.skipif(shutil.which('openssl') is None, reason='needs openssl')


@pytest.fixture(scope='module')
def certs():
    d = tempfile.mkdtemp()
    key = os.path.join(d, 'key.pem')
    cert = os.path.join(d, 'cert.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key,
                    '-out', cert, '-days', '2', '-subj', '/CN=localhost',
                    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
                   check=True, capture_output=True)
    yield cert, key
    shutil.rmtree(d)


@pytest.fixture
def server_ctx(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certs)
    return ctx


@pytest.fixture
def client_ctx(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs[0])
    return ctx


def test_streams_echo(loop, server_ctx, client_ctx):
    async def main():
        srv = await asyncio.start_server(echo_handler, '127.0.0.1', 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=client_ctx,
                                             server_hostname='localhost')
        sslobj = w.get_extra_info('ssl_object')
        assert isinstance(sslobj, ssl.SSLObject)
        assert w.get_extra_info('peercert')['subject'][0][0] == ('commonName', 'localhost')
        assert w.get_extra_info('cipher') is not None
        payload = os.urandom(1 << 20)
        w.write(payload)
        await w.drain()
        got = await r.readexactly(len(payload))
        assert got == payload
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())


def test_protocol_level(loop, server_ctx, client_ctx):
    class Client(asyncio.Protocol):
        def __init__(self):
            self.data = b''
            self.lost = loop.create_future()

        def connection_made(self, t):
            self.t = t
            t.write(b'ping')

        def data_received(self, data):
            self.data += data
            if self.data == b'ping':
                self.t.close()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t

        def data_received(self, data):
            self.t.write(data)

    async def main():
        srv = await loop.create_server(Echo, '127.0.0.1', 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        # The host name is the default server_hostname: the cert's SAN has 127.0.0.1.
        t, p = await loop.create_connection(Client, '127.0.0.1', port, ssl=client_ctx)
        assert await asyncio.wait_for(p.lost, 10) is None
        assert p.data == b'ping'
        assert isinstance(t, asyncio.Transport)
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())


def test_unix_tls(loop, server_ctx, client_ctx):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, 'sock')
            srv = await asyncio.start_unix_server(echo_handler, path, ssl=server_ctx)
            r, w = await asyncio.open_unix_connection(path, ssl=client_ctx,
                                                      server_hostname='localhost')
            w.write(b'over unix')
            assert await r.readexactly(9) == b'over unix'
            w.close()
            await w.wait_closed()
            srv.close()
            await srv.wait_closed()

    loop.run_until_complete(main())


def test_connect_accepted_socket(loop, server_ctx, client_ctx):
    async def main():
        lsock = socket.socket()
        lsock.bind(('127.0.0.1', 0))
        lsock.listen()
        lsock.setblocking(False)
        client = asyncio.ensure_future(asyncio.open_connection(
            '127.0.0.1', lsock.getsockname()[1], ssl=client_ctx,
            server_hostname='localhost'))
        conn, _ = await loop.sock_accept(lsock)
        done = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, t):
                self.t = t

            def data_received(self, data):
                self.t.write(data[::-1])

            def connection_lost(self, exc):
                done.set_result(exc)

        t, _ = await loop.connect_accepted_socket(Server, conn, ssl=server_ctx)
        r, w = await client
        w.write(b'abc')
        assert await r.readexactly(3) == b'cba'
        w.close()
        await w.wait_closed()
        await asyncio.wait_for(done, 10)
        lsock.close()

    loop.run_until_complete(main())


def test_start_tls_both_sides(loop, server_ctx, client_ctx):
    async def main():
        upgraded = loop.create_future()

        async def handler(reader, writer):
            assert await reader.readexactly(8) == b'STARTTLS'
            writer.write(b'OK')
            await writer.drain()
            if hasattr(writer, 'start_tls'):
                await writer.start_tls(server_ctx)
            else:
                transport = await loop.start_tls(writer.transport, writer.transport.get_protocol(),
                                                 server_ctx, server_side=True)
                writer._transport = transport
            data = await reader.readexactly(6)
            writer.write(data.upper())
            await writer.drain()
            upgraded.set_result(writer.get_extra_info('ssl_object') is not None)
            writer.close()

        srv = await asyncio.start_server(handler, '127.0.0.1', 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port)
        w.write(b'STARTTLS')
        assert await r.readexactly(2) == b'OK'
        if sys.version_info >= (3, 11):
            await w.start_tls(client_ctx, server_hostname='localhost')
        else:
            t = await loop.start_tls(w.transport, w.transport.get_protocol(), client_ctx,
                                     server_hostname='localhost')
            w._transport = t
        assert w.get_extra_info('ssl_object') is not None
        w.write(b'secret')
        assert await r.readexactly(6) == b'SECRET'
        assert await upgraded
        w.close()
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())


def test_start_tls_argument_errors(loop, client_ctx):
    async def main():
        a, b = socket.socketpair()
        t, p = await loop.create_connection(asyncio.Protocol, sock=a)
        with pytest.raises(TypeError):
            await loop.start_tls(t, p, 'not a context')
        t.close()
        b.close()

    loop.run_until_complete(main())


def test_server_hostname_rules(loop, client_ctx):
    async def main():
        a, b = socket.socketpair()
        # ssl without a host name to check against.
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol, sock=a, ssl=client_ctx)
        # server_hostname, handshake/shutdown timeouts only mean something with ssl.
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol, '127.0.0.1', 1,
                                         server_hostname='localhost')
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol, '127.0.0.1', 1,
                                         ssl_handshake_timeout=1)
        if sys.version_info >= (3, 11):
            with pytest.raises(ValueError):
                await loop.create_connection(asyncio.Protocol, '127.0.0.1', 1,
                                             ssl_shutdown_timeout=1)
        with pytest.raises(ValueError):
            await loop.create_server(asyncio.Protocol, '127.0.0.1', 0,
                                     ssl_handshake_timeout=1)
        with pytest.raises(ValueError):
            await loop.create_unix_connection(asyncio.Protocol, '/nonexistent',
                                              server_hostname='x')
        a.close()
        b.close()

    loop.run_until_complete(main())


def test_certificate_rejected(loop, server_ctx):
    async def main():
        srv = await asyncio.start_server(echo_handler, '127.0.0.1', 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        strict = ssl.create_default_context()       # does not trust the test cert
        fds_before = len(os.listdir('/proc/self/fd'))
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection('127.0.0.1', port, ssl=strict,
                                          server_hostname='localhost')
        # The server's end fails its handshake only once it reads the client's close; on
        # asyncio's loop an unfinished one outlives the test, logged with its socket.
        for _ in range(500):
            if len(os.listdir('/proc/self/fd')) <= fds_before:
                break
            await asyncio.sleep(0.01)
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())


def test_handshake_timeout(loop, client_ctx):
    async def main():
        # A TCP listener that never speaks TLS.
        lsock = socket.socket()
        lsock.bind(('127.0.0.1', 0))
        lsock.listen()
        port = lsock.getsockname()[1]
        t0 = loop.time()
        with pytest.raises((ConnectionAbortedError, asyncio.TimeoutError)):
            await asyncio.open_connection('127.0.0.1', port, ssl=client_ctx,
                                          server_hostname='localhost',
                                          ssl_handshake_timeout=0.3)
        assert loop.time() - t0 < 5
        lsock.close()

    loop.run_until_complete(main())


def test_shutdown_timeout(loop, server_ctx, client_ctx):
    if sys.version_info < (3, 11):
        pytest.skip('ssl_shutdown_timeout is 3.11+')
    if sys.version_info >= (3, 12):
        pytest.skip('on 3.12+ this scenario does not end on asyncio\'s own loop either')

    async def main():
        # A TLS server that stops reading after the handshake: our close_notify is never
        # answered, so the close completes through ssl_shutdown_timeout.
        stalled = loop.create_future()

        class Stall(asyncio.Protocol):
            def connection_made(self, t):
                t.pause_reading()
                stalled.set_result(t)

        srv = await loop.create_server(Stall, '127.0.0.1', 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        lost = loop.create_future()

        class Client(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)

        t, _ = await loop.create_connection(Client, '127.0.0.1', port, ssl=client_ctx,
                                            server_hostname='localhost',
                                            ssl_shutdown_timeout=0.3)
        await stalled
        t0 = loop.time()
        t.close()
        await asyncio.wait_for(lost, 10)
        assert loop.time() - t0 < 5
        (await stalled).close()
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())


def test_many_tls_connections(loop, server_ctx, client_ctx):
    async def main():
        srv = await asyncio.start_server(echo_handler, '127.0.0.1', 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]

        async def one(i):
            r, w = await asyncio.open_connection('127.0.0.1', port, ssl=client_ctx,
                                                 server_hostname='localhost')
            msg = b'%d' % i * 1000
            w.write(msg)
            got = await r.readexactly(len(msg))
            w.close()
            await w.wait_closed()
            return got == msg

        assert all(await asyncio.gather(*(one(i) for i in range(20))))
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())
