"""10,000 TCP connections open at once on one uringloop server, each echoing, then all closed:
afterwards the process holds the descriptors it held before, its memory is where the first
round left it, and the ring is back at its idle size. The clients live in a child process, so
that the 20,000 descriptors both ends need are split between two processes."""
import asyncio
import subprocess
import sys
import textwrap

import uringloop
from scenarios.ring import ring_settled

from reliability_helpers import (RSS_IS_MEANINGFUL, EchoServerProtocol, ServerStats, fd_count,
                                 nofile_soft_limit, rss_bytes)

CONNECTIONS = 10_000
ROUNDS = 2                 # the first warms the allocator and the loop's slabs up
RSS_GROWTH_LIMIT = 8 << 20  # a leaked transport per connection would be well above this

CLIENT = textwrap.dedent('''
    import resource, selectors, socket, sys
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port, count = int(sys.argv[1]), int(sys.argv[2])
    socks = [socket.create_connection(('127.0.0.1', port)) for _ in range(count)]
    print('connected', flush=True)
    sys.stdin.readline()          # the server has every connection open at once
    sel = selectors.DefaultSelector()
    want = {}
    for i, s in enumerate(socks):
        msg = b'message %06d' % i
        s.sendall(msg)
        s.setblocking(False)
        want[s] = [msg, b'']
        sel.register(s, selectors.EVENT_READ)
    while want:
        for key, _ in sel.select(30):
            s = key.fileobj
            chunk = s.recv(64)
            if not chunk:
                sys.exit('EOF before the echo')
            want[s][1] += chunk
            if len(want[s][1]) >= len(want[s][0]):
                if want[s][1] != want[s][0]:
                    sys.exit('wrong echo %r' % want[s][1])
                sel.unregister(s)
                del want[s]
    print('echoed', flush=True)
    for s in socks:
        s.close()
''')


async def one_round(loop, port, stats):
    stats.all_closed = loop.create_future()
    proc = subprocess.Popen([sys.executable, '-c', CLIENT, str(port), str(CONNECTIONS)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = await loop.run_in_executor(None, proc.stdout.readline)
        assert line == 'connected\n'
        while stats.current < CONNECTIONS:   # the last accepts may still be in flight
            await asyncio.sleep(0.01)
        assert stats.current == CONNECTIONS
        peak_pending = loop.ring_stats().pending
        proc.stdin.write('go\n')
        proc.stdin.flush()
        line = await loop.run_in_executor(None, proc.stdout.readline)
        assert line == 'echoed\n'
        await asyncio.wait_for(stats.all_closed, 60)
        assert await loop.run_in_executor(None, proc.wait) == 0
        return peak_pending
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def test_ten_thousand_connections_echo_then_leave_nothing_behind():
    with nofile_soft_limit(None):
        loop = uringloop.new_event_loop()
        try:
            async def main():
                stats = ServerStats()
                fds_before = fd_count()
                server = await loop.create_server(lambda: EchoServerProtocol(stats),
                                                  '127.0.0.1', 0, backlog=4096)
                port = server.sockets[0].getsockname()[1]
                await asyncio.sleep(0)
                idle = loop.ring_stats()
                rss_after = []
                for _ in range(ROUNDS):
                    peak_pending = await one_round(loop, port, stats)
                    assert peak_pending >= CONNECTIONS  # a receive armed on each one
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    stats_now = await ring_settled(loop)
                    assert stats_now.pending == idle.pending, (idle, stats_now)
                    rss_after.append(rss_bytes())
                assert stats.peak == CONNECTIONS
                assert stats.opened == stats.closed == ROUNDS * CONNECTIONS
                assert stats.errors == []
                server.close()
                await server.wait_closed()
                assert fd_count() == fds_before
                growth = rss_after[-1] - rss_after[0]
                print('%d connections x %d rounds: peak pending %d, idle ring %s, RSS after '
                      'each round %s' % (CONNECTIONS, ROUNDS, peak_pending, idle, rss_after))
                if RSS_IS_MEANINGFUL:
                    assert growth < RSS_GROWTH_LIMIT, 'RSS grew %d bytes between rounds %s' % (
                        growth, rss_after)

            loop.run_until_complete(main())
        finally:
            loop.close()
