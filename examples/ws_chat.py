"""A websocket chat room on uringloop (the websockets library): every message a client sends
goes to everyone in the room, prefixed with the sender's name.

    python examples/ws_chat.py [--host 127.0.0.1] [--port 8765]

Join with any websocket client, e.g. `python -m websockets ws://localhost:8765/alice`: the
path names you. Ctrl-C (or SIGTERM) stops it.
"""
import argparse
import asyncio
import signal

from websockets.asyncio.server import broadcast, serve

import uringloop


class ChatRoom:
    """Who is connected, and the broadcast of each message to all of them."""

    def __init__(self):
        self.members = set()

    async def join(self, websocket):
        name = websocket.request.path.strip('/') or 'anonymous'
        self.members.add(websocket)
        broadcast(self.members, f'* {name} joined ({len(self.members)} here)')
        try:
            async for message in websocket:
                broadcast(self.members, f'{name}: {message}')
        finally:
            self.members.discard(websocket)
            broadcast(self.members, f'* {name} left')


async def main(host, port):
    room = ChatRoom()
    async with serve(room.join, host, port) as server:
        bound = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f'chat on ws://{host}:{bound}/<your name>', flush=True)
        await stop.wait()
    print('stopped', flush=True)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8765)
    args = parser.parse_args()
    uringloop.run(main(args.host, args.port))
