"""Large reads on a plain Protocol: uringloop receives them into the bytes object that
data_received() gets (a one-shot RECV per chunk) instead of copying out of a pool buffer.

Each scenario runs on asyncio's loop and on uringloop and checks what asyncio shows: every byte
once and in order, nothing while paused, nothing after close(), EOF and resets reported as
usual. On uringloop it also checks that the connection did move off the pool (it no longer
counts among the pool's armed receives) and back once its reads are small again, so the
scenarios exercise the path they are about.
"""

import asyncio
import os
import socket
import struct

import pytest

from scenarios.loops import loop, is_uring  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

BLOCK = 65536


def run(loop, coro, timeout=60):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def pool_receivers(loop):
    """Receives armed on the provided-buffer pool (None on asyncio's loop)."""
    return loop._buffer_ring_stats()[1] if is_uring(loop) else None


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


async def wait_for_bytes(pr, n):
    for _ in range(6000):
        if pr.received() >= n:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f'received {pr.received()} of {n} bytes')


async def large_reading_connection(loop):
    """A socketpair whose `a` end is a transport that has seen several whole 64 KiB reads,
    and the bytes sent so far."""
    a, b = socket.socketpair()
    b.setblocking(False)
    tr, pr = await loop.create_connection(Collect, sock=a)
    sent = b''
    for i in range(6):
        block = os.urandom(BLOCK)
        await loop.sock_sendall(b, block)
        sent += block
        await wait_for_bytes(pr, len(sent))   # one block per read
    await asyncio.sleep(0.01)
    return a, b, tr, pr, sent


def test_large_reads_arrive_whole_and_unshared(loop):
    """Every byte once and in order; each chunk handed out keeps its content afterwards (no
    memory a later receive writes is shared with a chunk already delivered); small reads bring
    the connection back to the pool."""
    async def main():
        a, b, tr, pr, sent = await large_reading_connection(loop)
        off_pool = pool_receivers(loop)
        for i in range(40):
            block = os.urandom(BLOCK // 2 + i * 997)
            await loop.sock_sendall(b, block)
            sent += block
        await wait_for_bytes(pr, len(sent))
        for i in range(20):
            block = os.urandom(100)
            await loop.sock_sendall(b, block)
            sent += block
            await wait_for_bytes(pr, len(sent))
        back_on_pool = pool_receivers(loop)
        ok = b''.join(pr.chunks) == sent
        types = {type(c) for c in pr.chunks}
        tr.close()
        b.close()
        await pr.lost_called
        return ok, types, off_pool, back_on_pool
    ok, types, off_pool, back_on_pool = run(loop, main())
    assert ok
    assert types == {bytes}
    if is_uring(loop):
        assert off_pool == 0
        assert back_on_pool == 1


def test_pause_while_armed_then_resume(loop):
    """pause_reading() while a receive into a bytes object is armed: nothing reaches the
    protocol until resume_reading(), then everything, in order."""
    async def main():
        a, b, tr, pr, sent = await large_reading_connection(loop)
        assert pool_receivers(loop) in (None, 0)
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


def test_close_while_armed_drops_later_data(loop):
    """close() while the receive is armed: connection_lost(None), no data_received() after
    close(), and the loop goes on serving other connections."""
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


def test_loop_closed_with_receive_armed(loop):
    """The loop is closed while a connection's receive into a bytes object is in the kernel:
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
    """The peer resets the TCP connection while the receive is armed: connection_lost()
    gets ConnectionResetError."""
    async def main():
        lsock = socket.create_server(('127.0.0.1', 0))
        port = lsock.getsockname()[1]
        tr, pr = await loop.create_connection(Collect, '127.0.0.1', port)
        peer, _ = lsock.accept()
        lsock.close()
        peer.setblocking(False)
        sent = b''
        for i in range(6):
            block = os.urandom(BLOCK)
            await loop.sock_sendall(peer, block)
            sent += block
            await wait_for_bytes(pr, len(sent))
        await asyncio.sleep(0.01)
        off_pool = pool_receivers(loop)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        peer.close()
        await pr.lost_called
        return b''.join(pr.chunks) == sent, pr.lost, off_pool
    ok, lost, off_pool = run(loop, main())
    assert ok
    assert isinstance(lost, ConnectionResetError)
    if is_uring(loop):
        assert off_pool == 0


def test_switch_to_buffered_protocol_while_armed(loop):
    """set_protocol() to a BufferedProtocol while a receive into a bytes object is armed:
    what that receive brings and everything after goes through get_buffer() and
    buffer_updated()."""
    async def main():
        a, b, tr, pr, sent = await large_reading_connection(loop)
        received = bytearray()

        class BP(asyncio.BufferedProtocol):
            def __init__(self):
                self.buf = bytearray(BLOCK)

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                received.extend(self.buf[:nbytes])

            def connection_lost(self, exc):
                pass
        before = len(sent)
        tr.set_protocol(BP())
        more = b''
        for i in range(8):
            block = os.urandom(BLOCK)
            await loop.sock_sendall(b, block)
            more += block
        for _ in range(6000):
            if len(received) >= len(more):
                break
            await asyncio.sleep(0.001)
        ok = bytes(received) == more and pr.received() == before
        tr.close()
        b.close()
        await asyncio.sleep(0.01)
        return ok
    assert run(loop, main())


def test_buffered_protocol_large_reads_stay_in_its_buffer(loop):
    """A BufferedProtocol with large reads keeps receiving into the buffer get_buffer()
    returns: the bytes-object receive is for plain Protocols only."""
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        received = bytearray()
        calls = []

        class BP(asyncio.BufferedProtocol):
            def __init__(self):
                self.buf = bytearray(BLOCK)

            def get_buffer(self, sizehint):
                calls.append(sizehint)
                return self.buf

            def buffer_updated(self, nbytes):
                received.extend(self.buf[:nbytes])
        tr, pr = await loop.create_connection(BP, sock=a)
        sent = b''
        for i in range(12):
            block = os.urandom(BLOCK)
            await loop.sock_sendall(b, block)
            sent += block
            for _ in range(6000):
                if len(received) >= len(sent):
                    break
                await asyncio.sleep(0.001)
        ok = bytes(received) == sent
        tr.close()
        b.close()
        await asyncio.sleep(0.01)
        return ok, len(calls)
    ok, ncalls = run(loop, main())
    assert ok
    assert ncalls >= 12


def test_many_large_reading_connections(loop):
    """More large-reading connections than a loop receives into their own bytes: all get
    every byte; the ones past that number stay on the pool's multishot receive."""
    n = 24

    async def main():
        conns = [await large_reading_connection(loop) for _ in range(n)]
        on_pool = pool_receivers(loop)
        sent = [c[4] for c in conns]
        for k in range(3):
            for i, (a, b, tr, pr, _) in enumerate(conns):
                block = os.urandom(BLOCK)
                await loop.sock_sendall(b, block)
                sent[i] += block
        for i, (a, b, tr, pr, _) in enumerate(conns):
            await wait_for_bytes(pr, len(sent[i]))
        ok = all(b''.join(c[3].chunks) == sent[i] for i, c in enumerate(conns))
        for a, b, tr, pr, _ in conns:
            tr.close()
            b.close()
            await pr.lost_called
        return ok, on_pool
    ok, on_pool = run(loop, main())
    assert ok
    if is_uring(loop):
        assert on_pool == n - 16
