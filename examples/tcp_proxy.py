"""A TCP proxy on uringloop: every connection to --listen is forwarded to --target, both
directions at once, with back-pressure (each side reads only as fast as the other side takes).

    python examples/tcp_proxy.py --target example.org:80 [--listen 127.0.0.1:8888]

Ctrl-C (or SIGTERM) stops it; it prints how many connections and bytes it carried.
"""
import argparse
import asyncio
import signal

import uringloop


class Proxy:
    """Accepts connections and pipes each to a new connection to the target."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.connections = 0
        self.bytes = 0

    async def pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                self.bytes += len(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except ConnectionError:
            writer.close()

    async def handle(self, client_reader, client_writer):
        self.connections += 1
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(self.pipe(client_reader, target_writer),
                                 self.pipe(target_reader, client_writer))
        finally:
            for writer in (client_writer, target_writer):
                writer.close()


def host_port(text):
    host, _, port = text.rpartition(':')
    return host or '127.0.0.1', int(port)


async def main(listen, target):
    proxy = Proxy(*target)
    server = await asyncio.start_server(proxy.handle, *listen)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f'proxying {listen[0]}:{port} -> {target[0]}:{target[1]}', flush=True)
    async with server:
        await stop.wait()
    print(f'stopped after {proxy.connections} connections, {proxy.bytes} bytes', flush=True)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--listen', type=host_port, default=('127.0.0.1', 8888),
                        metavar='HOST:PORT')
    parser.add_argument('--target', type=host_port, required=True, metavar='HOST:PORT')
    args = parser.parse_args()
    uringloop.run(main(args.listen, args.target))
