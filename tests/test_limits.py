"""The loop at the kernel's limits and under interrupts: more operations pending than the
kernel's largest ring, a KeyboardInterrupt raised by a protocol in the middle of a batch of
completions, a single write larger than one SEND can carry. Each scenario runs on asyncio's
loop too, as the reference: whatever asyncio survives, uringloop must survive."""
import asyncio
import os
import resource
import socket
import subprocess
import sys
import textwrap

import pytest

import uringloop

from timebounds import bound
from scenarios.loops import loop, is_uring  # noqa: F401  (fixture)

from scenarios.ring import KERNEL_SQ_MAX, invariant_violations, ring_settled


def fd_budget():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard - len(os.listdir('/proc/self/fd'))


def wait_until_idle(loop):
    async def idle():
        while loop.ring_stats().pending > 1:
            await asyncio.sleep(0.001)
    loop.run_until_complete(asyncio.wait_for(idle(), 30))
    return loop.run_until_complete(ring_settled(loop))


def test_cancelling_more_receives_than_the_largest_ring(loop):
    """Two receives pending on each of thousands of socketpairs, all cancelled in one callback
    (which, on io_uring, adds a cancel request per receive), all sockets closed, then the same
    loop still echoes."""
    npairs = min(9800, (fd_budget() - 64) // 2)
    assert npairs * 4 > KERNEL_SQ_MAX, 'this machine allows too few fds for the scenario'
    entries = []
    if is_uring(loop):
        loop._set_iteration_observer(entries.append)
    pairs = [socket.socketpair() for _ in range(npairs)]
    try:
        for a, b in pairs:
            a.setblocking(False)
            b.setblocking(False)

        async def scenario():
            tasks = [loop.create_task(loop.sock_recv(s, 100)) for pair in pairs for s in pair]
            while is_uring(loop) and loop.ring_stats().pending < len(tasks):
                await asyncio.sleep(0)
            await asyncio.sleep(0.01)
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)

        loop.run_until_complete(scenario())
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    if is_uring(loop):
        peak = max(e.pending for e in entries)
        assert peak > KERNEL_SQ_MAX, peak
        assert invariant_violations(entries) == []

    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)

        async def echo():
            await loop.sock_sendall(a, b'ping')
            assert await loop.sock_recv(b, 10) == b'ping'

        loop.run_until_complete(echo())
    if is_uring(loop):
        # The kernel answers the cancellations at its own pace: the ring shrinks back to
        # its idle size (the wake-up read alone) as they come in.
        assert wait_until_idle(loop).pending == 1


CLIENT = textwrap.dedent('''
    import selectors, socket, sys
    port, n = int(sys.argv[1]), int(sys.argv[2])
    socks = []
    for i in range(n):
        s = socket.create_connection(('127.0.0.1', port), timeout=60)
        socks.append(s)
    for s in socks:
        s.sendall(b'x')
    for s in socks:
        assert s.recv(1) == b'x'
    print('ready', flush=True)
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    eofs = 0
    while eofs < n:
        events = sel.select(timeout=60)
        if not events:
            break
        for key, _ in events:
            if key.fileobj.recv(16) == b'':
                sel.unregister(key.fileobj)
                eofs += 1
    print('eofs', eofs, flush=True)
''')


def test_graceful_shutdown_of_a_server_with_more_connections_than_the_largest_ring(loop):
    """A streams server with thousands of open connections closes every one of them: each
    handler sees its EOF and each peer sees the close."""
    nconns = min(17000, fd_budget() - 64)
    assert nconns * 2 > KERNEL_SQ_MAX, 'this machine allows too few fds for the scenario'
    handlers_done = []
    writers = []

    async def handle(reader, writer):
        writers.append(writer)
        writer.write(await reader.readexactly(1))
        handlers_done.append(await reader.read())      # EOF after our own close

    async def scenario():
        server = await asyncio.start_server(handle, '127.0.0.1', 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, '-c', CLIENT, str(port), str(nconns),
            stdout=asyncio.subprocess.PIPE)
        try:
            assert await asyncio.wait_for(proc.stdout.readline(), bound(120)) == b'ready\n'
            assert len(writers) == nconns
            server.close()
            for w in writers:
                w.close()
            await asyncio.gather(*(w.wait_closed() for w in writers))
            await server.wait_closed()
            out = await asyncio.wait_for(proc.stdout.read(), bound(120))
            await proc.wait()
            return out
        except BaseException:
            # Leave no client and no connection behind for the tests that count fds next.
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            server.close()
            for w in writers:
                w.transport.abort()
            await asyncio.sleep(0)
            raise

    out = loop.run_until_complete(asyncio.wait_for(scenario(), bound(240)))
    assert out.split() == [b'eofs', str(nconns).encode()]
    assert handlers_done == [b''] * nconns
    if is_uring(loop):
        wait_until_idle(loop)


class Counting(asyncio.Protocol):
    """Keeps what it receives; raises KeyboardInterrupt once, from the data_received call
    that `raise_on` names."""

    def __init__(self, raise_on=None):
        self.chunks = []
        self.raise_on = raise_on

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.chunks.append(data)
        if self.raise_on is not None and len(self.chunks) == self.raise_on:
            self.raise_on = None
            raise KeyboardInterrupt

    def received(self):
        return b''.join(self.chunks)


def test_keyboard_interrupt_from_a_protocol_loses_no_other_connection_data(loop):
    """24 connections receive in the same iteration; one protocol raises KeyboardInterrupt.
    It leaves run_until_complete, and when the loop runs again every other connection gets
    all of its bytes, none twice, and every connection keeps receiving."""
    nconns, rounds = 24, 8
    pairs = [socket.socketpair() for _ in range(nconns)]
    peers = [b for _, b in pairs]
    protocols = []
    try:
        async def connect():
            for i, (a, _) in enumerate(pairs):
                _, p = await loop.connect_accepted_socket(Counting, sock=a)
                protocols.append(p)
            await asyncio.sleep(0.01)

        loop.run_until_complete(connect())
        expected = [b''] * nconns
        interrupts = 0
        for r in range(rounds):
            victim = protocols[(r * 7) % nconns]
            victim.raise_on = len(victim.chunks) + 1
            for i, peer in enumerate(peers):
                payload = (b'%02d-%02d|' % (i, r)) * (150 + 37 * i)
                peer.sendall(payload)
                expected[i] += payload

            async def all_received():
                while any(p.received() != e for p, e in zip(protocols, expected)):
                    await asyncio.sleep(0.001)

            for attempt in range(3):
                try:
                    loop.run_until_complete(asyncio.wait_for(all_received(), 10))
                    break
                except KeyboardInterrupt:
                    interrupts += 1
            for p, e in zip(protocols, expected):
                assert p.received() == e
        assert interrupts == rounds
        if is_uring(loop):
            # Every connection still has exactly its one receive armed (plus the wake-up).
            assert loop.ring_stats().pending == nconns + 1
            assert loop._buffer_ring_stats()[1] == nconns
    finally:
        for p in protocols:
            p.transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        for _, b in pairs:
            b.close()


def test_a_write_larger_than_two_gibibytes_arrives_whole(loop):
    """One transport.write() of more than 2 GiB (the most one SEND can carry) arrives whole
    and in order, and the write buffer reports it until it is all out."""
    size = (2 << 30) + (1 << 20) + 3
    block = bytes(range(256)) * 4096
    data = (block * (size // len(block) + 1))[:size]
    a, b = socket.socketpair()

    class Sink(asyncio.Protocol):
        def __init__(self):
            self.n = 0
            self.mismatch = None
            self.done = loop.create_future()

        def data_received(self, chunk):
            if self.mismatch is None and chunk != data[self.n:self.n + len(chunk)]:
                self.mismatch = self.n
            self.n += len(chunk)
            if self.n >= size and not self.done.done():
                self.done.set_result(None)

        def connection_lost(self, exc):
            if not self.done.done():
                self.done.set_exception(AssertionError(f'lost after {self.n}: {exc!r}'))

    async def scenario():
        wt, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock=a)
        rt, sink = await loop.connect_accepted_socket(Sink, sock=b)
        wt.write(data)
        assert wt.get_write_buffer_size() > 0
        await asyncio.wait_for(sink.done, 120)
        assert sink.n == size and sink.mismatch is None
        while wt.get_write_buffer_size():
            await asyncio.sleep(0.01)
        wt.close()
        rt.close()
        await asyncio.sleep(0.01)

    loop.run_until_complete(scenario())


BURST_CLIENT = textwrap.dedent('''
    import socket, sys
    port, n = int(sys.argv[1]), int(sys.argv[2])
    socks = [socket.create_connection(('127.0.0.1', port), timeout=60) for _ in range(n)]
    for s in socks:
        s.sendall(b'y')
    echoed = sum(s.recv(1) == b'y' for s in socks)
    for s in socks:
        s.close()
    print(echoed, flush=True)
''')


def test_a_burst_of_connections_with_the_loop_stopped_at_every_iteration(loop):
    """Thousands of connections arrive, echo and close while the loop is stopped and run
    again at every iteration, so accept and receive completions are often left in the CQ
    across stop() and the ring shrinks past them: every connection is served, none lost."""
    nconns = min(10000, fd_budget() - 64)
    entries = []
    if is_uring(loop):
        loop._set_iteration_observer(entries.append)
    lost = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

        def connection_lost(self, exc):
            lost.append(exc)

    server = loop.run_until_complete(
        loop.create_server(Echo, '127.0.0.1', 0, backlog=4096))
    port = server.sockets[0].getsockname()[1]
    proc = subprocess.Popen([sys.executable, '-c', BURST_CLIENT, str(port), str(nconns)],
                            stdout=subprocess.PIPE)
    try:
        deadline = loop.time() + 180
        while (proc.poll() is None or len(lost) < nconns) and loop.time() < deadline:
            loop.run_until_complete(asyncio.sleep(0))
        out = proc.communicate(timeout=10)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
        loop.run_until_complete(server.wait_closed())
    assert out.split() == [str(nconns).encode()]
    assert lost == [None] * nconns
    if is_uring(loop):
        assert max(e.pending for e in entries) > nconns // 2
        assert invariant_violations(entries) == []
        wait_until_idle(loop)
