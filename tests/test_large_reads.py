"""Large reads on a stream transport: what every receive path must do with them.

Each scenario runs on asyncio's loop and on uringloop and checks what asyncio shows: every byte
once and in order, nothing while paused, nothing after close(), EOF and resets reported as
usual, and a switch to a BufferedProtocol taking over mid-stream.
"""

import asyncio
import os
import socket
import struct

import pytest

from scenarios.loops import loop  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

BLOCK = 65536


def run(loop, coro, timeout=60):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


class Collect(asyncio.Protocol):
    """Keeps every chunk data_received() got (the objects themselves) and what else it saw."""

    def __init__(self):
        self.chunks = []
        self.while_paused = []
        self.eof = False
        self.lost = None
        self.lost_called = asyncio.get_running_loop().create_future()

    def connection_made(self, tr):
        self.tr = tr

    def data_received(self, data):
        if not self.tr.is_reading():
            self.while_paused.append(data)
        self.chunks.append(data)

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.lost = exc
        self.lost_called.set_result(None)

    def received(self):
        return sum(map(len, self.chunks))


class IntoOneBuffer(asyncio.BufferedProtocol):
    """Lends the same BLOCK-sized buffer to every receive and keeps what arrives in it."""

    def __init__(self):
        self.buf = bytearray(BLOCK)
        self.received = bytearray()
        self.get_buffer_calls = 0

    def get_buffer(self, sizehint):
        self.get_buffer_calls += 1
        return self.buf

    def buffer_updated(self, nbytes):
        self.received.extend(self.buf[:nbytes])

    def connection_lost(self, exc):
        pass


async def wait_for_bytes(pr, n):
    """Until pr (a Collect or an IntoOneBuffer) has received n bytes."""
    def received():
        return len(pr.received) if isinstance(pr, IntoOneBuffer) else pr.received()
    for _ in range(6000):
        if received() >= n:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f'received {received()} of {n} bytes')


async def send_blocks(loop, sock, sizes, pr=None, before=0):
    """Random blocks of the given sizes sent on sock in turn; when pr is given, each is
    awaited there (one block per read) on top of the `before` bytes it already received.
    Returns what was sent."""
    sent = b''
    for size in sizes:
        block = os.urandom(size)
        await loop.sock_sendall(sock, block)
        sent += block
        if pr is not None:
            await wait_for_bytes(pr, before + len(sent))
    return sent


async def large_reading_connection(loop):
    """A socketpair whose `a` end is a transport that has seen several whole 64 KiB reads,
    and the bytes sent so far."""
    a, b = socket.socketpair()
    b.setblocking(False)
    tr, pr = await loop.create_connection(Collect, sock=a)
    sent = await send_blocks(loop, b, [BLOCK] * 6, pr)
    await asyncio.sleep(0.01)
    return a, b, tr, pr, sent


def test_large_reads_arrive_whole_and_unshared(loop):
    """Every byte once and in order, through large reads of varied sizes and then small ones;
    each chunk handed out keeps its content afterwards (no memory a later receive writes is
    shared with a chunk already delivered)."""
    async def main():
        a, b, tr, pr, sent = await large_reading_connection(loop)
        sent += await send_blocks(loop, b, [BLOCK // 2 + i * 997 for i in range(40)])
        await wait_for_bytes(pr, len(sent))
        sent += await send_blocks(loop, b, [100] * 20, pr, before=len(sent))
        ok = b''.join(pr.chunks) == sent
        types = {type(c) for c in pr.chunks}
        tr.close()
        b.close()
        await pr.lost_called
        return ok, types
    ok, types = run(loop, main())
    assert ok
    assert types == {bytes}


def test_pause_while_reading_large_then_resume(loop):
    """pause_reading() between large reads (the receive armed in the kernel): nothing reaches
    the protocol until resume_reading(), then everything, in order."""
    async def main():
        a, b, tr, pr, sent = await large_reading_connection(loop)
        for i in range(10):
            tr.pause_reading()
            n = len(pr.chunks)
            block = os.urandom(BLOCK)
            await loop.sock_sendall(b, block)
            sent += block
            await asyncio.sleep(0.005)
            during = len(pr.chunks) - n
            tr.resume_reading()
            assert during == 0
            await wait_for_bytes(pr, len(sent))
        ok = b''.join(pr.chunks) == sent
        tr.close()
        b.close()
        await pr.lost_called
        return ok, pr.while_paused
    ok, while_paused = run(loop, main())
    assert ok
    assert while_paused == []


def test_close_while_reading_large_drops_later_data(loop):
    """close() between large reads (the receive armed in the kernel): connection_lost(None),
    no data_received() after close(), and the loop goes on serving other connections."""
    async def main():
        a, b, tr, pr, sent = await large_reading_connection(loop)
        tr.close()
        n = len(pr.chunks)
        try:
            b.send(os.urandom(BLOCK))
        except OSError:
            pass                       # the transport may have closed its end already
        await pr.lost_called
        await asyncio.sleep(0.01)
        after_close = len(pr.chunks) - n
        b.close()
        # The loop still works: another large-reading connection gets its data.
        a2, b2, tr2, pr2, sent2 = await large_reading_connection(loop)
        ok2 = b''.join(pr2.chunks) == sent2
        tr2.close()
        b2.close()
        await pr2.lost_called
        return pr.lost, after_close, ok2
    lost, after_close, ok2 = run(loop, main())
    assert lost is None
    assert after_close == 0
    assert ok2


def test_loop_closed_while_reading_large(loop):
    """The loop is closed while a large-reading connection's receive is in the kernel:
    close() completes, and no fd is left (the fixture checks)."""
    async def main():
        a, b, tr, pr, sent = await large_reading_connection(loop)
        return a, b, tr, pr
    a, b, tr, pr = run(loop, main())
    tr.close()
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    b.close()
    assert pr.lost is None


def test_eof_after_large_reads(loop):
    """The peer's EOF after large reads: every byte, then eof_received(), then
    connection_lost(None)."""
    async def main():
        a, b, tr, pr, sent = await large_reading_connection(loop)
        block = os.urandom(3 * BLOCK + 5)
        await loop.sock_sendall(b, block)
        sent += block
        b.shutdown(socket.SHUT_WR)
        await pr.lost_called
        b.close()
        return b''.join(pr.chunks) == sent, pr.eof, pr.lost
    ok, eof, lost = run(loop, main())
    assert ok
    assert eof
    assert lost is None


def test_peer_reset_after_large_reads(loop):
    """The peer resets the TCP connection after large reads, with the receive armed:
    connection_lost() gets ConnectionResetError."""
    async def main():
        lsock = socket.create_server(('127.0.0.1', 0))
        port = lsock.getsockname()[1]
        tr, pr = await loop.create_connection(Collect, '127.0.0.1', port)
        peer, _ = lsock.accept()
        lsock.close()
        peer.setblocking(False)
        sent = await send_blocks(loop, peer, [BLOCK] * 6, pr)
        await asyncio.sleep(0.01)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        peer.close()
        await pr.lost_called
        return b''.join(pr.chunks) == sent, pr.lost
    ok, lost = run(loop, main())
    assert ok
    assert isinstance(lost, ConnectionResetError)


def test_switch_to_buffered_protocol_mid_stream(loop):
    """set_protocol() to a BufferedProtocol between large reads (the receive armed in the
    kernel): what that receive brings and everything after goes through get_buffer() and
    buffer_updated()."""
    async def main():
        a, b, tr, pr, sent = await large_reading_connection(loop)
        into = IntoOneBuffer()
        before = len(sent)
        tr.set_protocol(into)
        more = await send_blocks(loop, b, [BLOCK] * 8)
        await wait_for_bytes(into, len(more))
        ok = bytes(into.received) == more and pr.received() == before
        tr.close()
        b.close()
        await asyncio.sleep(0.01)
        return ok
    assert run(loop, main())


def test_buffered_protocol_large_reads_intact(loop):
    """A BufferedProtocol with large reads gets every byte, in order, through the buffers
    get_buffer() returns (at least one get_buffer() per buffer-sized block)."""
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        tr, pr = await loop.create_connection(IntoOneBuffer, sock=a)
        sent = await send_blocks(loop, b, [BLOCK] * 12, pr)
        ok = bytes(pr.received) == sent
        tr.close()
        b.close()
        await asyncio.sleep(0.01)
        return ok, pr.get_buffer_calls
    ok, ncalls = run(loop, main())
    assert ok
    assert ncalls >= 12
