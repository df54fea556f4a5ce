"""Stream transports (TCP, Unix, pipes) and servers: scenarios run on asyncio and uringloop.

Each test states asyncio's behaviour and checks the loop under test shows it: the same data
arrives, the same exceptions are raised, no fd is left open (the `loop` fixture checks).
"""

import asyncio
import errno
import hashlib
import os
import pty
import resource
import socket
import struct
import tempfile

import pytest

from scenarios.loops import loop, is_uring  # noqa: F401  (fixture)
from surfaces_helpers import echo_handler

pytestmark = pytest.mark.timeout(120)


def run(loop, coro, timeout=60):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


# -- echo with checksums over many connections -------------------------------------------------

async def _echo_client(host, port, seed, rounds, size):
    reader, writer = await asyncio.open_connection(host, port)
    sent = hashlib.sha256()
    got = hashlib.sha256()
    for i in range(rounds):
        payload = hashlib.sha256(b'%d:%d' % (seed, i)).digest() * (size // 32)
        sent.update(payload)
        writer.write(payload)
        await writer.drain()
        got.update(await reader.readexactly(len(payload)))
    writer.write_eof()
    assert await reader.read() == b''
    writer.close()
    await writer.wait_closed()
    return sent.digest() == got.digest()


def test_echo_checksums_1000_connections(loop):
    async def main():
        server = await asyncio.start_server(echo_handler, '127.0.0.1', 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        sem = asyncio.Semaphore(1000)

        async def one(i):
            async with sem:
                return await _echo_client('127.0.0.1', port, i, 3, 1024)
        results = await asyncio.gather(*(one(i) for i in range(1000)))
        server.close()
        await server.wait_closed()
        return results
    results = run(loop, main(), 110)
    assert results == [True] * 1000


def test_unix_echo(loop, tmp_path):
    path = str(tmp_path / 'echo.sock')

    async def main():
        server = await asyncio.start_unix_server(echo_handler, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b'x' * 300000)
        data = await reader.readexactly(300000)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return data
    assert run(loop, main()) == b'x' * 300000


# -- flow control: 100 MB through one connection -----------------------------------------------

class Sink(asyncio.Protocol):
    def __init__(self, done):
        self.done = done
        self.hash = hashlib.sha256()
        self.n = 0

    def data_received(self, data):
        self.hash.update(data)
        self.n += len(data)

    def eof_received(self):
        self.done.set_result((self.n, self.hash.hexdigest()))


class Source(asyncio.Protocol):
    def __init__(self, total):
        self.total = total
        self.hash = hashlib.sha256()
        self.sent = 0
        self.pauses = 0
        self.max_buffer = 0
        self.paused = False

    def connection_made(self, transport):
        self.transport = transport
        self.pump()

    def pump(self):
        chunk = b''.join(struct.pack('>Q', i) for i in range(8192))   # 64 KiB
        while not self.paused and self.sent < self.total:
            self.transport.write(chunk)
            self.hash.update(chunk)
            self.sent += len(chunk)
            self.max_buffer = max(self.max_buffer, self.transport.get_write_buffer_size())
        if self.sent >= self.total and not self.paused:
            self.transport.write_eof()

    def pause_writing(self):
        self.paused = True
        self.pauses += 1

    def resume_writing(self):
        self.paused = False
        self.pump()


def test_100mb_under_flow_control(loop):
    total = 100 * 1024 * 1024

    async def main():
        done = loop.create_future()
        server = await loop.create_server(lambda: Sink(done), '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        tr, src = await loop.create_connection(lambda: Source(total), '127.0.0.1', port)
        n, digest = await done
        tr.close()
        server.close()
        await server.wait_closed()
        return n, digest, src
    n, digest, src = run(loop, main(), 100)
    assert n == total
    assert digest == src.hash.hexdigest()
    assert src.pauses > 0
    # The protocol was paused as soon as the buffer passed the high-water mark (64 KiB), so
    # the buffer never held more than that plus one write.
    assert src.max_buffer <= 64 * 1024 + 65536


def test_write_buffer_limits(loop):
    async def main():
        a, b = socket.socketpair()
        tr, pr = await loop.create_connection(asyncio.Protocol, sock=a)
        assert tr.get_write_buffer_limits() == (16384, 65536)
        tr.set_write_buffer_limits(high=1000)
        assert tr.get_write_buffer_limits() == (250, 1000)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=1, low=2)
        tr.close()
        b.close()
        await asyncio.sleep(0)
    run(loop, main())


# -- pause/resume reading loses nothing ----------------------------------------------------------

def test_pause_resume_reading_keeps_order(loop):
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        got = []
        paused_violations = []

        class P(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr

            def data_received(self, data):
                if not self.tr.is_reading():
                    paused_violations.append(data)
                got.append(data)
        tr, pr = await loop.create_connection(P, sock=a)
        expected = b''
        for i in range(50):
            block = bytes([i]) * 5000
            await loop.sock_sendall(b, block)
            expected += block
            if i % 3 == 0:
                tr.pause_reading()
                assert not tr.is_reading()
                await asyncio.sleep(0.001)
                tr.resume_reading()
            await asyncio.sleep(0)
        while sum(map(len, got)) < len(expected):
            await asyncio.sleep(0.01)
        tr.close()
        b.close()
        await asyncio.sleep(0)
        return b''.join(got) == expected, paused_violations
    ok, violations = run(loop, main())
    assert ok
    assert violations == []


# -- BufferedProtocol --------------------------------------------------------------------------

def test_buffered_protocol_small_buffer(loop):
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        received = bytearray()
        done = loop.create_future()

        class BP(asyncio.BufferedProtocol):
            def __init__(self):
                self.buf = bytearray(7)

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                received.extend(self.buf[:nbytes])

            def eof_received(self):
                done.set_result(None)
        tr, pr = await loop.create_connection(BP, sock=a)
        payload = os.urandom(100000)
        await loop.sock_sendall(b, payload)
        b.shutdown(socket.SHUT_WR)
        await done
        tr.close()
        b.close()
        await asyncio.sleep(0)
        return bytes(received) == payload
    assert run(loop, main())


# -- faults ------------------------------------------------------------------------------------

def test_connection_refused(loop):
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    run(loop, main())


def _reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    sock.close()


def test_reset_mid_read(loop):
    async def main():
        lsock = socket.create_server(('127.0.0.1', 0))
        port = lsock.getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        peer, _ = lsock.accept()
        peer.sendall(b'hello')
        assert await reader.readexactly(5) == b'hello'
        _reset(peer)
        lsock.close()
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
        writer.close()
        with pytest.raises(ConnectionResetError):
            await writer.wait_closed()
    run(loop, main())


def test_reset_mid_write(loop):
    async def main():
        lsock = socket.create_server(('127.0.0.1', 0))
        port = lsock.getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        peer, _ = lsock.accept()
        _reset(peer)
        lsock.close()
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(10000):
                writer.write(b'x' * 65536)
                await writer.drain()
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass
    run(loop, main())


def test_half_close(loop):
    """write_eof() sends FIN; the peer still answers; eof_received() returning True keeps
    the transport open for writing."""
    async def main():
        async def handler(reader, writer):
            data = await reader.read()          # until our EOF
            writer.write(data[::-1])
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        assert writer.can_write_eof()
        writer.write(b'abcdef')
        writer.write_eof()
        with pytest.raises(RuntimeError):
            writer.write(b'more')
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return answer
    assert run(loop, main()) == b'fedcba'


def test_close_with_queued_data_delivers_it(loop):
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)
        tr, _ = await loop.create_connection(P, sock=a)
        payload = os.urandom(3 * 1024 * 1024)
        tr.write(payload)
        tr.close()
        assert tr.is_closing()
        got = bytearray()
        while True:
            chunk = await loop.sock_recv(b, 1 << 20)
            if not chunk:
                break
            got += chunk
        b.close()
        return bytes(got) == payload, await lost
    ok, exc = run(loop, main())
    assert ok
    assert exc is None


def test_abort_drops_queued_data(loop):
    async def main():
        a, b = socket.socketpair()
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)
        tr, _ = await loop.create_connection(P, sock=a)
        tr.write(b'x' * (8 * 1024 * 1024))
        tr.abort()
        assert tr.is_closing()
        assert tr.get_write_buffer_size() == 0
        exc = await lost
        b.close()
        return exc
    assert run(loop, main()) is None


def test_write_after_close_is_dropped(loop):
    async def main():
        a, b = socket.socketpair()
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)
        tr, _ = await loop.create_connection(P, sock=a)
        tr.close()
        await lost
        for _ in range(3):
            tr.write(b'ignored')           # no exception, as in asyncio
        b.setblocking(False)
        try:
            data = b.recv(100)
        except BlockingIOError:
            data = None
        b.close()
        return data
    assert run(loop, main()) == b''


def test_accept_survives_emfile(loop):
    """When accept() runs out of fds, asyncio reports it to the exception handler, backs off
    and keeps serving: connections made meanwhile are accepted once fds are free."""
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main():
        accepted = []

        def factory():
            p = asyncio.Protocol()
            accepted.append(p)
            return p
        server = await loop.create_server(factory, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        await asyncio.sleep(0.05)
        hogs = []
        try:
            # Use up every fd but a few; the clients need fds of their own first.
            clients = [socket.socket() for _ in range(3)]
            while True:
                try:
                    hogs.append(os.open('/dev/null', os.O_RDONLY))
                except OSError as exc:
                    assert exc.errno == errno.EMFILE
                    break
            for c in clients:
                c.setblocking(False)
                try:
                    c.connect(('127.0.0.1', port))
                except BlockingIOError:
                    pass
            for _ in range(50):
                await asyncio.sleep(0.02)
                if contexts:
                    break
        finally:
            for fd in hogs:
                os.close(fd)
        for _ in range(300):
            if len(accepted) == 3:
                break
            await asyncio.sleep(0.01)
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()
        return len(accepted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 400), hard))
    try:
        n = run(loop, main())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert n == 3
    assert any(c.get('message') == 'socket.accept() out of system resource' and
               isinstance(c.get('exception'), OSError) and
               c['exception'].errno == errno.EMFILE for c in contexts), contexts


# -- servers -----------------------------------------------------------------------------------

def test_server_object(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, ['127.0.0.1', '127.0.0.2'], 0,
                                          reuse_address=True, start_serving=False)
        assert not server.is_serving()
        assert server.get_loop() is loop
        assert len(server.sockets) == 2
        await server.start_serving()
        assert server.is_serving()
        host, port = server.sockets[0].getsockname()[:2]
        r, w = await asyncio.open_connection(host, port)
        async with server:
            # Since 3.12, leaving the block waits for the server's connections too.
            w.close()
            await w.wait_closed()
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)
    run(loop, main())


def test_transport_extra_info(loop):
    async def main():
        server = await asyncio.start_server(echo_handler, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)
        assert isinstance(tr, asyncio.Transport)
        sock = tr.get_extra_info('socket')
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert tr.get_extra_info('peername') == ('127.0.0.1', port)
        assert tr.get_extra_info('sockname') == sock.getsockname()
        assert tr.get_extra_info('nope', 5) == 5
        assert tr.get_protocol() is pr
        tr.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
    run(loop, main())


# -- pipes -------------------------------------------------------------------------------------

def test_read_pipe_eof_and_write_pipe_flow_control(loop):
    async def main():
        rfd, wfd = os.pipe()
        reader = asyncio.StreamReader()
        rtr, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                              os.fdopen(rfd, 'rb', 0))
        paused = []

        class WP(asyncio.Protocol):
            def pause_writing(self):
                paused.append(True)

            def connection_lost(self, exc):
                pass
        wtr, _ = await loop.connect_write_pipe(WP, os.fdopen(wfd, 'wb', 0))
        payload = os.urandom(2 * 1024 * 1024)
        wtr.write(payload)
        assert paused                      # more than the pipe holds: buffered, paused
        wtr.close()
        data = await reader.read()
        rtr.close()
        await asyncio.sleep(0)
        return data == payload
    assert run(loop, main())


def test_write_pipe_reader_gone(loop):
    async def main():
        rfd, wfd = os.pipe()
        lost = loop.create_future()

        class WP(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)
        wtr, _ = await loop.connect_write_pipe(WP, os.fdopen(wfd, 'wb', 0))
        os.close(rfd)
        return await lost
    assert run(loop, main()) is None


def test_pty_read(loop):
    async def main():
        master, slave = pty.openpty()
        got = []
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data):
                got.append(data)

            def connection_lost(self, exc):
                lost.set_result(exc)
        tr, _ = await loop.connect_read_pipe(P, os.fdopen(master, 'rb', 0))
        os.write(slave, b'hello pty\n')
        for _ in range(100):
            if b''.join(got).endswith(b'\n'):
                break
            await asyncio.sleep(0.01)
        os.close(slave)
        exc = await lost         # EIO from the master once the slave is gone
        return b''.join(got), exc
    data, exc = run(loop, main())
    assert data.replace(b'\r', b'') == b'hello pty\n'
    assert exc is None or (isinstance(exc, OSError) and exc.errno == errno.EIO)


def test_pipe_transport_rejects_regular_file(loop, tmp_path):
    f = open(tmp_path / 'plain', 'wb')

    async def main():
        with pytest.raises(ValueError):
            await loop.connect_write_pipe(asyncio.Protocol, f)
        with pytest.raises(ValueError):
            await loop.connect_read_pipe(asyncio.Protocol, f)
    try:
        run(loop, main())
    finally:
        f.close()


def test_connect_accepted_socket_and_local_addr(loop):
    async def main():
        lsock = socket.create_server(('127.0.0.1', 0))
        lsock.setblocking(False)
        port = lsock.getsockname()[1]
        local = socket.socket()
        local.bind(('127.0.0.1', 0))
        local_port = local.getsockname()[1]
        local.close()
        accept = loop.create_task(loop.sock_accept(lsock))
        ctr, cpr = await loop.create_connection(asyncio.Protocol, '127.0.0.1', port,
                                                local_addr=('127.0.0.1', local_port))
        assert ctr.get_extra_info('sockname') == ('127.0.0.1', local_port)
        conn, _ = await accept
        got = loop.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data):
                got.set_result(data)
        str_, spr = await loop.connect_accepted_socket(P, conn)
        ctr.write(b'over an accepted socket')
        assert await got == b'over an accepted socket'
        ctr.close()
        str_.close()
        lsock.close()
        await asyncio.sleep(0.01)
    run(loop, main())


def test_buffered_protocol_pause_resume_in_order(loop):
    """A BufferedProtocol gets every byte, in order, and no buffer_updated() while paused."""
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        received = bytearray()
        violations = []
        done = loop.create_future()

        class BP(asyncio.BufferedProtocol):
            def connection_made(self, tr):
                self.tr = tr
                self.buf = bytearray(1000)

            def get_buffer(self, sizehint):
                return memoryview(self.buf)[:333]

            def buffer_updated(self, nbytes):
                if not self.tr.is_reading():
                    violations.append(nbytes)
                received.extend(self.buf[:nbytes])
                if len(received) % 7 == 0:
                    self.tr.pause_reading()
                    loop.call_later(0.001, self.tr.resume_reading)

            def eof_received(self):
                done.set_result(None)
        tr, pr = await loop.create_connection(BP, sock=a)
        payload = os.urandom(300000)
        for i in range(0, len(payload), 10000):
            await loop.sock_sendall(b, payload[i:i + 10000])
            await asyncio.sleep(0)
        b.shutdown(socket.SHUT_WR)
        await done
        tr.close()
        b.close()
        await asyncio.sleep(0)
        return bytes(received) == payload, violations
    ok, violations = run(loop, main())
    assert ok
    assert violations == []


def test_abort_right_after_small_write_delivers_it(loop):
    # asyncio's write() hands a small write to a writable socket at once, so abort() in the
    # same callback cannot take it back: the peer gets the bytes, then EOF.
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)
        tr, _ = await loop.create_connection(P, sock=a)
        tr.write(b'first ')
        tr.write(b'second')
        tr.abort()
        assert await lost is None
        got = bytearray()
        while True:
            chunk = await loop.sock_recv(b, 100)
            if not chunk:
                break
            got += chunk
        b.close()
        return bytes(got)
    assert run(loop, main()) == b'first second'


def test_write_just_before_stop_leaves_without_another_run(loop):
    # The batch that calls stop() is the last one, but its writes must not wait for the loop
    # to run again: a peer reading with a blocking recv() gets them.
    a, b = socket.socketpair()
    b.settimeout(10)
    tr, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=a))

    def write_and_stop():
        tr.write(b'ping')
        loop.stop()
    loop.call_soon(write_and_stop)
    loop.run_forever()
    try:
        assert b.recv(100) == b'ping'
    finally:
        tr.close()
        loop.run_until_complete(asyncio.sleep(0))
        b.close()


def test_small_writes_of_one_iteration_arrive_in_order(loop):
    # Writes staged in one iteration leave together; with a large write between them (which
    # takes the direct path) the order must still be the order of the write() calls.
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        parts = [b'a' * 10, b'b' * 40000, b'c' * 7, os.urandom(100000), b'd' * 3]
        for p in parts:
            tr.write(p)
        tr.write_eof()
        got = bytearray()
        while True:
            chunk = await loop.sock_recv(b, 1 << 20)
            if not chunk:
                break
            got += chunk
        tr.close()
        b.close()
        return bytes(got) == b''.join(parts)
    assert run(loop, main())


def test_write_while_loop_not_running_leaves_at_once(loop):
    # asyncio's write() outside a running loop sends straight away: code that writes and then
    # waits for a reply with a blocking call, before running the loop again, relies on it.
    a, b = socket.socketpair()
    b.settimeout(10)
    tr, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=a))
    try:
        tr.write(b'now')
        assert b.recv(100) == b'now'
    finally:
        tr.close()
        loop.run_until_complete(asyncio.sleep(0))
        b.close()
