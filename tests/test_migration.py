"""Ring migration, the resize of kernels before 6.13, on whatever kernel runs the tests: the loop
is told to resize by migration (a testing aid), and traffic must cross every migration whole.
(The whole suite also runs this way in CI: URINGLOOP_TEST_AS_OLDEST_KERNEL=1.)"""
import asyncio
import os
import signal
import socket
import sys

import pytest

import uringloop
from scenarios.ring import invariant_violations, ring_settled


@pytest.fixture
def mloop():
    loop = uringloop.new_event_loop()
    loop._resize_by_migration()
    yield loop
    loop.close()


def test_echo_waves_cross_migrations_without_losing_a_byte(mloop):
    """Waves of connections grow and shrink the ring (each size change a migration) while
    every connection streams data both ways; every byte arrives in order, every connection
    ends cleanly, and the ring is back at its idle size with no ring left draining."""
    entries = []
    mloop._set_iteration_observer(entries.append)

    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(port, i):
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        payload = bytes((i + k) % 256 for k in range(20000 + 137 * i))
        for k in range(0, len(payload), 3000):
            writer.write(payload[k:k + 3000])
            await asyncio.sleep(0)
        writer.write_eof()
        echoed = await reader.read()
        writer.close()
        await writer.wait_closed()
        return echoed == payload

    async def main():
        server = await asyncio.start_server(handle, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        results = []
        for wave in (20, 150, 5, 300, 40):
            results += await asyncio.gather(*(client(port, i) for i in range(wave)))
        server.close()
        await server.wait_closed()
        while mloop.ring_stats().pending > 1:
            await asyncio.sleep(0.001)
        await ring_settled(mloop)
        return results

    results = mloop.run_until_complete(asyncio.wait_for(main(), 120))
    assert all(results) and len(results) == 515
    stats = mloop.ring_stats()
    assert stats.resize_method == 'migration'
    assert stats.migrations >= 6
    assert stats.capacity in (2, 4) and stats.pending == 1
    assert invariant_violations(entries) == []


def test_signals_subprocesses_and_readers_survive_migrations(mloop):
    """Operations of every kind that wait in the kernel move to the new ring: a signal handler,
    a child's exit watch, an add_reader callback and a pending sock_recv all still fire after
    the ring has migrated up and back down."""
    got = {}
    a, b = socket.socketpair()
    r, w = socket.socketpair()
    blockers = [socket.socketpair() for _ in range(40)]
    try:
        for s in (a, b, r, w, *(x for x, _ in blockers)):
            s.setblocking(False)

        async def main():
            loop = mloop
            sig = loop.create_future()
            loop.add_signal_handler(signal.SIGUSR1, sig.set_result, 'usr1')
            readable = loop.create_future()
            loop.add_reader(r.fileno(), lambda: readable.done() or readable.set_result(r.recv(10)))
            recv = loop.create_task(loop.sock_recv(a, 10))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, '-c', 'import sys; sys.stdin.read()',
                stdin=asyncio.subprocess.PIPE)
            before = loop.ring_stats().migrations
            # Grow the ring (40 more receives pending), then let it shrink again.
            extra = [loop.create_task(loop.sock_recv(x, 10)) for x, _ in blockers]
            await asyncio.sleep(0.02)
            for t in extra:
                t.cancel()
            await asyncio.gather(*extra, return_exceptions=True)
            await asyncio.sleep(0.02)
            assert loop.ring_stats().migrations >= before + 2
            os.kill(os.getpid(), signal.SIGUSR1)
            got['signal'] = await asyncio.wait_for(sig, 10)
            w.send(b'ready')
            got['reader'] = await asyncio.wait_for(readable, 10)
            b.send(b'data')
            got['recv'] = await asyncio.wait_for(recv, 10)
            proc.stdin.close()
            got['exit'] = await asyncio.wait_for(proc.wait(), 30)
            loop.remove_reader(r.fileno())
            loop.remove_signal_handler(signal.SIGUSR1)

        mloop.run_until_complete(main())
    finally:
        for s in (a, b, r, w):
            s.close()
        for x, y in blockers:
            x.close()
            y.close()
    assert got == {'signal': 'usr1', 'reader': b'ready', 'recv': b'data', 'exit': 0}
