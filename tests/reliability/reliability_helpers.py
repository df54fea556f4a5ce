"""Measurements the reliability tests share: resident memory, open descriptors, the fd limit,
and a loopback echo server on uringloop that counts its connections."""
import asyncio
import contextlib
import os
import resource


# tests/memcheck/run.sh sets this: ASan's quarantine holds freed memory back from reuse, so
# under it RSS grows by design and says nothing about leaks.
RSS_IS_MEANINGFUL = not os.environ.get('URINGLOOP_MEMCHECK')


def rss_bytes():
    """This process's resident set size, from /proc/self/statm."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def fd_count():
    return len(os.listdir('/proc/self/fd'))


@contextlib.contextmanager
def nofile_soft_limit(soft):
    """Sets RLIMIT_NOFILE's soft limit for the block (None: raise it to the hard limit);
    yields the limit in force and restores the previous one on exit."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if soft is None else soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    try:
        yield new
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


class EchoServerProtocol(asyncio.Protocol):
    """Echoes every byte back and closes on EOF; keeps its server's connection counts."""

    def __init__(self, stats):
        self.stats = stats

    def connection_made(self, transport):
        self.transport = transport
        self.stats.opened += 1
        self.stats.current += 1
        self.stats.peak = max(self.stats.peak, self.stats.current)

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc):
        self.stats.current -= 1
        self.stats.closed += 1
        if exc is not None:
            self.stats.errors.append(exc)
        if self.stats.current == 0 and self.stats.all_closed is not None \
                and not self.stats.all_closed.done():
            self.stats.all_closed.set_result(None)


class ServerStats:
    def __init__(self):
        self.opened = self.closed = self.current = self.peak = 0
        self.errors = []
        self.all_closed = None


async def echo_round_trip(loop, payload=b'ping'):
    """One connection to a fresh echo server on `loop`: returns what came back."""
    stats = ServerStats()
    server = await loop.create_server(lambda: EchoServerProtocol(stats), '127.0.0.1', 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(payload)
        data = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        # The server's side closes once it has read our EOF: wait for it, as wait_closed()
        # does from 3.12 on, so no connection outlives the loop.
        for _ in range(1000):
            if stats.closed == stats.opened:
                break
            await asyncio.sleep(0.001)
        return data
    finally:
        server.close()
        await server.wait_closed()
