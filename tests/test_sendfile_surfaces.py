"""loop.sendfile and loop.sock_sendfile: native zero-copy path where the transport allows
it, asyncio's fallback rules and errors. Every scenario runs on asyncio's loop and on
uringloop."""

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

import pytest

from surfaces_helpers import is_uring, loop  # noqa: F401

DATA = os.urandom(3 * 1024 * 1024 + 123)


@pytest.fixture(scope='module')
def datafile():
    d = tempfile.mkdtemp()
    path = os.path.join(d, 'data.bin')
    with open(path, 'wb') as f:
        f.write(DATA)
    yield path
    shutil.rmtree(d)


class Sink(asyncio.Protocol):
    def __init__(self, loop):
        self.data = bytearray()
        self.lost = loop.create_future()

    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def tcp_pair(loop, family=socket.AF_INET, path=None):
    sink = Sink(loop)
    if family == socket.AF_UNIX:
        srv = await loop.create_unix_server(lambda: sink, path)
        t, p = await loop.create_unix_connection(asyncio.Protocol, path)
    else:
        srv = await loop.create_server(lambda: sink, '127.0.0.1', 0)
        t, p = await loop.create_connection(asyncio.Protocol, '127.0.0.1',
                                            srv.sockets[0].getsockname()[1])
    return srv, t, sink


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = os.sendfile

    def counting(*args):
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(os, 'sendfile', counting)
    return calls


def test_sendfile_whole_file(loop, datafile, spy):
    async def main():
        srv, t, sink = await tcp_pair(loop)
        with open(datafile, 'rb') as f:
            sent = await loop.sendfile(t, f)
            assert sent == len(DATA)
            assert f.tell() == len(DATA)
        t.write(b'tail')           # ordinary writes work again afterwards
        t.close()
        await asyncio.wait_for(sink.lost, 10)
        assert bytes(sink.data) == DATA + b'tail'
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())
    if is_uring(loop):
        assert spy, 'the native os.sendfile path was not used'


def test_sendfile_offset_count(loop, datafile):
    async def main():
        srv, t, sink = await tcp_pair(loop)
        with open(datafile, 'rb') as f:
            sent = await loop.sendfile(t, f, 1000, 50000)
            assert sent == 50000
            assert f.tell() == 51000
        t.close()
        await asyncio.wait_for(sink.lost, 10)
        assert bytes(sink.data) == DATA[1000:51000]
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())


def test_sendfile_unix(loop, datafile):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            srv, t, sink = await tcp_pair(loop, socket.AF_UNIX, os.path.join(d, 's'))
            with open(datafile, 'rb') as f:
                assert await loop.sendfile(t, f, 0, 200000) == 200000
            t.close()
            await asyncio.wait_for(sink.lost, 10)
            assert bytes(sink.data) == DATA[:200000]
            srv.close()
            await srv.wait_closed()

    loop.run_until_complete(main())


def test_sendfile_argument_errors(loop, datafile):
    async def main():
        srv, t, sink = await tcp_pair(loop)
        with open(datafile, 'rb') as f:
            with pytest.raises(ValueError):
                await loop.sendfile(t, f, -1)
            with pytest.raises(ValueError):
                await loop.sendfile(t, f, 0, 0)
            with pytest.raises(TypeError):
                await loop.sendfile(t, f, 0, '1')
            with pytest.raises(TypeError):
                await loop.sendfile(t, f, 1.5)
        with open(datafile, 'r') as ft:
            with pytest.raises(ValueError):
                await loop.sendfile(t, ft)
        t.close()
        with open(datafile, 'rb') as f:
            with pytest.raises(RuntimeError):
                await loop.sendfile(t, f)
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())


def test_sendfile_unsupported_transport(loop, datafile):
    async def main():
        t, p = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                   local_addr=('127.0.0.1', 0))
        with open(datafile, 'rb') as f:
            with pytest.raises(RuntimeError):
                await loop.sendfile(t, f)
        t.close()

    loop.run_until_complete(main())


def test_sendfile_tls_falls_back(loop, datafile, tmp_path):
    if shutil.which('openssl') is None:
        pytest.skip('needs openssl')
    key, cert = str(tmp_path / 'k.pem'), str(tmp_path / 'c.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key,
                    '-out', cert, '-days', '1', '-subj', '/CN=localhost'],
                   check=True, capture_output=True)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cert)

    async def main():
        sink = Sink(loop)
        srv = await loop.create_server(lambda: sink, '127.0.0.1', 0, ssl=sctx)
        t, _ = await loop.create_connection(asyncio.Protocol, '127.0.0.1',
                                            srv.sockets[0].getsockname()[1], ssl=cctx,
                                            server_hostname='localhost')
        with open(datafile, 'rb') as f:
            # TLS cannot use the kernel's sendfile: refused without fallback...
            with pytest.raises(RuntimeError):
                await loop.sendfile(t, f, fallback=False)
            # ...and copied through the transport with it.
            assert await loop.sendfile(t, f, 0, 300000) == 300000
        t.close()
        await asyncio.wait_for(sink.lost, 10)
        assert bytes(sink.data) == DATA[:300000]
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(main())


def test_sock_sendfile(loop, datafile):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        received = bytearray()

        async def reader():
            while len(received) < len(DATA):
                chunk = await loop.sock_recv(b, 1 << 20)
                if not chunk:
                    break
                received.extend(chunk)

        rtask = asyncio.ensure_future(reader())
        with open(datafile, 'rb') as f:
            assert await loop.sock_sendfile(a, f) == len(DATA)
        await asyncio.wait_for(rtask, 10)
        assert bytes(received) == DATA
        # Errors: a datagram socket; a blocking socket in debug mode.
        c, d = socket.socketpair()
        loop.set_debug(True)
        with open(datafile, 'rb') as f:
            with pytest.raises(ValueError):
                await loop.sock_sendfile(c, f)
        loop.set_debug(False)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setblocking(False)
        with open(datafile, 'rb') as f:
            with pytest.raises(ValueError):
                await loop.sock_sendfile(u, f)
        for s in (a, b, c, d, u):
            s.close()

    loop.run_until_complete(main())


def test_sendfile_cancelled_keeps_transport_usable(loop, datafile):
    async def main():
        # A receiver that does not read, with small socket buffers: sendfile must wait.
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lsock.bind(('127.0.0.1', 0))
        lsock.listen()
        lsock.setblocking(False)
        t, _ = await loop.create_connection(asyncio.Protocol, '127.0.0.1',
                                            lsock.getsockname()[1])
        t.get_extra_info('socket').setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn, _ = await loop.sock_accept(lsock)
        with open(datafile, 'rb') as f:
            task = asyncio.ensure_future(loop.sendfile(t, f))
            await asyncio.sleep(0.2)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        t.write(b'END')
        t.close()
        received = bytearray()
        while True:
            chunk = await loop.sock_recv(conn, 1 << 20)
            if not chunk:
                break
            received += chunk
        # Whatever prefix of the file went out, it is followed by the write, intact.
        assert received.endswith(b'END')
        assert bytes(received[:-3]) == DATA[:len(received) - 3]
        assert len(received) - 3 < len(DATA)
        conn.close()
        lsock.close()

    loop.run_until_complete(main())
