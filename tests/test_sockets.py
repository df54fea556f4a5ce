"""The low-level socket API (sock_*) and the self-sizing of the ring and of the provided-buffer
ring under many pending receives. Scenarios run on asyncio and uringloop; the ring
statistics are only checked on uringloop."""

import asyncio
import os
import socket
import sys

import pytest

import uringloop
from scenarios.loops import loop, is_uring  # noqa: F401  (fixture)
from scenarios.ring import ring_settled

pytestmark = pytest.mark.timeout(120)


def run(loop, coro, timeout=60):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def test_sock_roundtrip_all_calls(loop):
    async def main():
        lsock = socket.create_server(('127.0.0.1', 0))
        lsock.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accept = loop.create_task(loop.sock_accept(lsock))
        await loop.sock_connect(client, lsock.getsockname())
        conn, addr = await accept
        assert conn.gettimeout() == 0
        assert addr == client.getsockname()
        await loop.sock_sendall(client, b'a' * 1000000)
        got = bytearray()
        buf = bytearray(70000)
        while len(got) < 1000000:
            n = await loop.sock_recv_into(conn, buf)
            got += buf[:n]
        assert got == b'a' * 1000000
        await loop.sock_sendall(conn, b'pong')
        assert await loop.sock_recv(client, 10) == b'pong'
        for s in (client, conn, lsock):
            s.close()
    run(loop, main())


def test_sock_datagram_calls(loop):
    if not hasattr(loop, 'sock_sendto'):
        pytest.skip('asyncio has sock_sendto/sock_recvfrom* since Python 3.11')

    async def main():
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b):
            s.setblocking(False)
            s.bind(('127.0.0.1', 0))
        recv = loop.create_task(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0)
        await loop.sock_sendto(a, b'one', b.getsockname())
        assert await recv == (b'one', a.getsockname())
        buf = bytearray(10)
        recv = loop.create_task(loop.sock_recvfrom_into(b, buf))
        await asyncio.sleep(0)
        await loop.sock_sendto(a, b'two', b.getsockname())
        assert await recv == (3, a.getsockname())
        assert buf[:3] == b'two'
        a.close()
        b.close()
    run(loop, main())


def test_sock_blocking_socket_is_valueerror_in_debug(loop):
    async def main():
        a, b = socket.socketpair()
        loop.set_debug(True)
        try:
            with pytest.raises(ValueError):
                await loop.sock_recv(a, 10)
            with pytest.raises(ValueError):
                await loop.sock_sendall(a, b'x')
        finally:
            loop.set_debug(False)
            a.close()
            b.close()
    run(loop, main())


def test_sock_closed_socket_is_oserror(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        a.close()
        b.close()
        with pytest.raises(OSError):
            await loop.sock_recv(a, 10)
        with pytest.raises(OSError):
            await loop.sock_sendall(a, b'x')
    run(loop, main())


def test_sock_recv_cancel_keeps_socket_usable(loop):
    """Cancelling a pending sock_recv loses no byte: the next call gets the data."""
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        for _ in range(20):
            t = loop.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        buf = bytearray(100)
        t = loop.create_task(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0)
        t.cancel()
        await asyncio.sleep(0)
        await loop.sock_sendall(b, b'data')
        assert await loop.sock_recv(a, 100) == b'data'
        assert bytes(buf) == bytes(100)         # the cancelled call never wrote into it
        a.close()
        b.close()
    run(loop, main())


def test_sock_sendall_beyond_the_socket_buffer(loop):
    """20 MB through sock_sendall while the peer reads slowly: what the socket does not take
    at once is sent by the ring as room appears, whole and in order."""
    data = os.urandom(20 * 1024 * 1024)

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        got = bytearray()

        async def reader():
            while len(got) < len(data):
                chunk = await loop.sock_recv(b, 65536)
                if not chunk:
                    break
                got.extend(chunk)
                if len(got) < 2 * 1024 * 1024:
                    await asyncio.sleep(0.001)
        r = loop.create_task(reader())
        await loop.sock_sendall(a, memoryview(data))
        await r
        a.close()
        b.close()
        return bytes(got)
    assert run(loop, main()) == data


def test_sock_sendall_cancelled_midway_sends_a_prefix(loop):
    """Cancelling a sock_sendall the peer is not reading: CancelledError, the socket stays
    usable, and the peer sees a prefix of the data followed by what is sent next."""
    data = os.urandom(32 * 1024 * 1024)

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        t = loop.create_task(loop.sock_sendall(a, data))
        await asyncio.sleep(0.05)
        assert not t.done()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.sleep(0.01)
        tail = b'--tail--'
        got = bytearray()
        send = loop.create_task(loop.sock_sendall(a, tail))
        while not got.endswith(tail):
            got.extend(await loop.sock_recv(b, 1 << 20))
        await send
        a.close()
        b.close()
        return bytes(got), tail
    got, tail = run(loop, main())
    sent = len(got) - len(tail)
    assert 0 < sent < len(data)
    assert got[:sent] == data[:sent]


def test_sock_sendall_peer_gone_midway_is_oserror(loop):
    """The peer closes while a sock_sendall waits for room: the call raises the OSError that
    send() gives (BrokenPipeError or ConnectionResetError), not a hang."""
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        t = loop.create_task(loop.sock_sendall(a, b'x' * (32 * 1024 * 1024)))
        await asyncio.sleep(0.05)
        assert not t.done()
        b.close()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            await asyncio.wait_for(t, 10)
        a.close()
    run(loop, main())


def test_sock_recv_after_empty_and_full_sockets(loop):
    """Receives alternate between a socket that is empty when asked (the peer answers later)
    and one that already holds data: every byte arrives, in order, for recv and recv_into."""
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        expected = bytearray()
        got = bytearray()
        buf = bytearray(5)
        for i in range(40):
            msg = b'%05d' % i
            expected += msg
            if i % 10 < 5:
                loop.call_later(0.002, b.send, msg)      # not there yet when asked
            else:
                b.send(msg)                               # already there
            if i % 2:
                got += await loop.sock_recv(a, 5)
            else:
                n = await loop.sock_recv_into(a, buf)
                got += buf[:n]
        a.close()
        b.close()
        return bytes(expected), bytes(got)
    expected, got = run(loop, main())
    assert got == expected


def test_sock_connect_refused(loop):
    async def main():
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        addr = s.getsockname()
        s.close()
        c = socket.socket()
        c.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(c, addr)
        c.close()
    run(loop, main())


def test_sock_sendfile(loop, tmp_path):
    data = os.urandom(500000)
    path = tmp_path / 'f'
    path.write_bytes(data)

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with open(path, 'rb') as f:
            send = loop.create_task(loop.sock_sendfile(a, f, 1000, 300000))
            got = bytearray()
            while len(got) < 300000:
                got += await loop.sock_recv(b, 65536)
            assert await send == 300000
            assert f.tell() == 301000
        a.close()
        b.close()
        return bytes(got)
    assert run(loop, main()) == data[1000:301000]


# -- the ring and the buffer ring follow the number of pending receives ------------------------

def test_ring_grows_with_pending_receives_and_shrinks_back(loop):
    n = 300

    async def main():
        pairs = [socket.socketpair() for _ in range(n)]
        for a, b in pairs:
            a.setblocking(False)
            b.setblocking(False)
        before = loop.ring_stats() if is_uring(loop) else None
        tasks = [loop.create_task(loop.sock_recv(a, 100)) for a, b in pairs]
        await asyncio.sleep(0.01)
        peak = loop.ring_stats() if is_uring(loop) else None
        for i, (a, b) in enumerate(pairs):
            b.send(b'%d' % i)
        results = await asyncio.gather(*tasks)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        after = await ring_settled(loop) if is_uring(loop) else None
        for a, b in pairs:
            a.close()
            b.close()
        return results, before, peak, after
    results, before, peak, after = run(loop, main())
    assert results == [b'%d' % i for i in range(n)]
    if is_uring(loop):
        assert peak.pending >= n
        assert peak.capacity >= 512              # next power of two above n + 1
        assert after.pending < 8
        assert after.capacity <= 8
        assert after.resizes_down > before.resizes_down


def test_buffer_ring_follows_live_connections(loop):
    """Hundreds of transports with a multishot receive each: the provided-buffer ring grows to
    hold one buffer per receive, every byte arrives, and it shrinks when they go."""
    n = 400

    async def main():
        got = {}

        class P(asyncio.Protocol):
            def __init__(self, i):
                self.i = i

            def data_received(self, data):
                got[self.i] = got.get(self.i, b'') + data
        pairs = [socket.socketpair() for _ in range(n)]
        transports = []
        for i, (a, b) in enumerate(pairs):
            tr, _ = await loop.create_connection(lambda i=i: P(i), sock=a)
            transports.append(tr)
        await asyncio.sleep(0.01)
        peak = loop._buffer_ring_stats() if is_uring(loop) else None
        ring_peak = loop.ring_stats() if is_uring(loop) else None
        # Everyone sends at once: more completions in one batch than buffers to spare.
        for i, (a, b) in enumerate(pairs):
            b.send(b'%d;' % i * 1000)
        for _ in range(500):
            if all(len(got.get(i, b'')) == len(b'%d;' % i * 1000) for i in range(n)):
                break
            await asyncio.sleep(0.01)
        for tr in transports:
            tr.close()
        for a, b in pairs:
            b.close()
        # The 400 receives end by cancellation, whose completions the kernel delivers over
        # several iterations: wait for them (bounded) rather than for a fixed time.
        for _ in range(500):
            await asyncio.sleep(0.01)
            if not is_uring(loop) or loop._buffer_ring_stats()[1] == 0:
                break
        if is_uring(loop):
            # The shrink may wait for the resize budget: wait for it, bounded.
            await ring_settled(loop)
        await asyncio.sleep(0.05)
        after = loop._buffer_ring_stats() if is_uring(loop) else None
        ring_after = loop.ring_stats() if is_uring(loop) else None
        ok = all(got.get(i) == b'%d;' % i * 1000 for i in range(n))
        return ok, peak, after, ring_peak, ring_after
    ok, peak, after, ring_peak, ring_after = run(loop, main())
    assert ok
    if is_uring(loop):
        nbufs, armed, grows, shrinks, enobufs, _ = peak
        assert armed == n
        assert nbufs >= n
        assert ring_peak.pending >= n
        nbufs2, armed2, grows2, shrinks2, _, _ = after
        assert armed2 == 0
        assert nbufs2 < nbufs
        if ring_after.resize_method == 'in-place':
            assert shrinks2 > shrinks
        else:
            # The ring's migrations took the buffer groups with them.
            assert ring_after.migrations > ring_peak.migrations
        assert ring_after.pending < 8


def test_given_back_buffer_is_filled_next():
    """Buffers go back to the front of the provided-buffer ring, so a connection exchanging one
    message at a time keeps reusing one (cache-hot) buffer instead of cycling through all of
    them. In debug mode each such reorder also checks the head count against the kernel's.
    (uringloop only: asyncio has no provided-buffer ring.)"""
    loop = uringloop.new_event_loop()
    loop.set_debug(True)

    async def main():
        a, b = socket.socketpair()
        got = []
        done = asyncio.Queue()

        class P(asyncio.Protocol):
            def data_received(self, data):
                got.append(data)
                done.put_nowait(None)

        tr, _ = await loop.create_connection(P, sock=a)
        b.setblocking(False)
        picks = []
        for i in range(20):
            await loop.sock_sendall(b, b'%d' % i * 1000)
            await done.get()
            await asyncio.sleep(0)          # one enter: the buffer given back is offered again
            picks.append(loop._buffer_ring_next())
        tr.close()
        b.close()
        return got, picks

    try:
        got, picks = run(loop, main())
        fronts = loop._buffer_ring_stats()[5]
    finally:
        loop.close()
    assert b''.join(got) == b''.join(b'%d' % i * 1000 for i in range(20))
    assert len(set(picks)) == 1, picks
    assert fronts > 0


def test_buffer_head_count_matches_kernel_while_groups_move(loop):
    """Hundreds of connections echo 64 KiB messages while connections come and go, so the
    buffer ring is replaced (grown and shrunk) under traffic and old groups still get buffers
    back. Debug mode checks the counted head against the kernel's before every reorder (an
    AssertionError would end the run); every byte must arrive intact."""
    loop.set_debug(True)
    waves, per_wave, rounds, size = 3, 100, 3, 65536

    async def echo_pair(i):
        a, b = socket.socketpair()
        sent = bytearray()
        got = bytearray()
        done = loop.create_future()

        class Echo(asyncio.Protocol):
            def connection_made(self, t):
                self.t = t

            def data_received(self, data):
                self.t.write(data)

        class Client(asyncio.Protocol):
            def data_received(self, data):
                got.extend(data)
                if len(got) == len(sent) and not done.done():
                    done.set_result(None)

        ts, _ = await loop.create_connection(Echo, sock=a)
        tc, _ = await loop.create_connection(Client, sock=b)
        for r in range(rounds):
            msg = os.urandom(16) * (size // 16)
            sent.extend(msg)
            done = loop.create_future()
            tc.write(msg)
            await done
        tc.close()
        ts.close()
        return got == sent

    async def main():
        results = []
        for w in range(waves):
            results += await asyncio.gather(
                *(echo_pair(w * per_wave + i) for i in range(per_wave * (w + 1))))
            await asyncio.sleep(0.01)
        return results

    results = run(loop, main(), timeout=100)
    assert all(results)
    if is_uring(loop):
        nbufs, armed, grows, shrinks, enobufs, fronts = loop._buffer_ring_stats()
        assert grows > 0 and fronts > 0


def test_buffer_order_with_pipe_reads_on_the_same_ring(loop):
    """Child processes' stdout (pipe reads, which keep the buffer ring in plain order while
    armed) and socket echoes share the provided buffers. Debug mode checks the head count
    against the kernel's whenever the ring goes back to hottest-first; every byte of both
    arrives intact."""
    loop.set_debug(True)
    script = 'import sys\nfor i in range(3000): sys.stdout.write("%05d" % i * 20 + "\\n")\n'
    expected = b''.join(b'%05d' % i * 20 + b'\n' for i in range(3000))

    async def child():
        p = await asyncio.create_subprocess_exec(
            sys.executable, '-c', script, stdout=asyncio.subprocess.PIPE)
        out, _ = await p.communicate()
        return out == expected

    async def echo_pair(rounds):
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        ok = True
        for i in range(rounds):
            msg = os.urandom(8192)
            wa.write(msg)
            wb.write(await rb.readexactly(len(msg)))
            ok = ok and await ra.readexactly(len(msg)) == msg
            await asyncio.sleep(0)
        for w in (wa, wb):
            w.close()
            await w.wait_closed()
        return ok

    async def main():
        first = await asyncio.gather(*[child() for _ in range(3)],
                                     *[echo_pair(60) for _ in range(20)])
        # The pipes are gone: the ring is back to hottest-first for the sockets.
        second = await asyncio.gather(*[echo_pair(20) for _ in range(20)])
        return first + second

    assert all(run(loop, main(), timeout=100))
    if is_uring(loop):
        assert loop._buffer_ring_stats()[5] > 0
