"""Out of descriptors while accepting: the server reports EMFILE through the loop's exception
handler, keeps listening, and serves the waiting clients once descriptors are free again. Runs
on asyncio's loop too, the reference for what the report looks like."""
import asyncio
import errno
import os
import socket

from reliability_helpers import EchoServerProtocol, ServerStats, fd_count, nofile_soft_limit

CLIENTS = 3


def test_server_survives_emfile_and_serves_once_fds_are_free(loop):
    reports = []
    got_report = loop.create_future()

    def handler(loop, context):
        reports.append(context)
        if not got_report.done():
            got_report.set_result(None)

    loop.set_exception_handler(handler)
    fillers = []
    clients = []

    async def main():
        stats = ServerStats()
        for _ in range(CLIENTS):   # created up front: no descriptor is free later
            sock = socket.socket()
            sock.setblocking(False)
            clients.append(sock)
        # The limit is lowered before the server starts: io_uring's multishot accept reads
        # the limit when it is armed.
        with nofile_soft_limit(fd_count() + 40):
            server = await loop.create_server(lambda: EchoServerProtocol(stats),
                                              '127.0.0.1', 0)
            port = server.sockets[0].getsockname()[1]
            try:
                while True:
                    fillers.append(os.open('/dev/null', os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
            for sock in clients:
                await loop.sock_connect(sock, ('127.0.0.1', port))
            await asyncio.wait_for(got_report, 10)
            exc = reports[0].get('exception')
            assert isinstance(exc, OSError) and exc.errno == errno.EMFILE, reports[0]
            assert stats.opened == 0
            while fillers:
                os.close(fillers.pop())
            # The clients that waited in the backlog are served now.
            for i, sock in enumerate(clients):
                msg = b'after EMFILE %d' % i
                await loop.sock_sendall(sock, msg)
                data = b''
                while len(data) < len(msg):
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
                    assert chunk, 'EOF instead of the echo'
                    data += chunk
                assert data == msg
        # And a new client, with the limit restored.
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'fresh')
        assert await reader.readexactly(5) == b'fresh'
        writer.close()
        await writer.wait_closed()
        for sock in clients:
            sock.close()
        server.close()
        await server.wait_closed()
        assert stats.opened == CLIENTS + 1

    try:
        loop.run_until_complete(main())
    finally:
        for fd in fillers:
            os.close(fd)
        for sock in clients:
            sock.close()
