"""Many small request/response round-trips on a few connections: once warmed up, the process's
memory stays flat. The default run does 100,000; `pytest --soak` (the `soak` marker) runs the
full 1,000,000 and prints the RSS curve."""
import asyncio
import os

import pytest

import uringloop

from reliability_helpers import RSS_IS_MEANINGFUL, EchoServerProtocol, ServerStats, rss_bytes

CONNECTIONS = 8
CHECKPOINTS = 10            # RSS sampled after each tenth; the first tenth is the warm-up
RSS_GROWTH_LIMIT = 4 << 20  # one leaked object per round-trip would be far above this


class PingClient(asyncio.Protocol):
    """Sends a small message, waits for its echo, and repeats while the soak's budget lasts."""

    def __init__(self, soak):
        self.soak = soak
        self.pending = b''

    def connection_made(self, transport):
        self.transport = transport
        self.send()

    def send(self):
        self.expected = b'round-trip %d' % self.soak.started
        self.soak.started += 1
        self.pending = b''
        self.transport.write(self.expected)

    def data_received(self, data):
        self.pending += data
        if len(self.pending) < len(self.expected):
            return
        assert self.pending == self.expected, (self.pending, self.expected)
        self.soak.finished_one()
        if self.soak.started < self.soak.total:
            self.send()
        else:
            self.transport.close()

    def connection_lost(self, exc):
        self.soak.connection_done(exc)


class Soak:
    def __init__(self, loop, total):
        self.total = total
        self.started = self.completed = 0
        self.rss = []
        self.errors = []
        self.open = CONNECTIONS
        self.done = loop.create_future()

    def finished_one(self):
        self.completed += 1
        if self.completed % (self.total // CHECKPOINTS) == 0:
            self.rss.append(rss_bytes())

    def connection_done(self, exc):
        if exc is not None:
            self.errors.append(exc)
        self.open -= 1
        if self.open == 0:
            self.done.set_result(None)


def run_soak(total):
    loop = uringloop.new_event_loop()
    try:
        async def main():
            stats = ServerStats()
            server = await loop.create_server(lambda: EchoServerProtocol(stats),
                                              '127.0.0.1', 0)
            port = server.sockets[0].getsockname()[1]
            soak = Soak(loop, total)
            for _ in range(CONNECTIONS):
                await loop.create_connection(lambda: PingClient(soak), '127.0.0.1', port)
            await soak.done
            server.close()
            await server.wait_closed()
            return soak

        soak = loop.run_until_complete(main())
    finally:
        loop.close()
    assert soak.errors == []
    assert soak.completed == total
    warm = soak.rss[0]
    curve = ', '.join('%.1f' % (r / 2**20) for r in soak.rss)
    print('\nsoak of %d round-trips: RSS (MiB) after each tenth: %s' % (total, curve))
    if RSS_IS_MEANINGFUL:
        assert max(soak.rss) - warm < RSS_GROWTH_LIMIT, 'RSS grew after warm-up: ' + curve


def test_round_trips_keep_memory_flat():
    run_soak(int(os.environ.get('URINGLOOP_SOAK_ROUNDTRIPS', 100_000)))


@pytest.mark.soak
def test_million_round_trips_keep_memory_flat():
    run_soak(1_000_000)
