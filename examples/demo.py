"""uringloop demo: an asyncio echo server and its clients on one uringloop loop.

Waves of concurrent connections come and go; after each step the loop's ring_stats() show the
io_uring growing with the pending operations (one multishot ACCEPT for the listener, one
multishot RECV per connection, the wake-up read) and shrinking back when they finish. Ends by
itself.
"""
import asyncio
import hashlib
import resource
import time

import uringloop


def show(label, loop):
    s = loop.ring_stats()
    print(f'{label:<38} pending={s.pending:<5} ring SQ={s.capacity:<5} CQ={s.cq_capacity:<5} '
          f'resizes up/down={s.resizes_up}/{s.resizes_down}')


async def handle(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def client(port, payload, opened, release):
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    opened.release()
    await release.wait()
    writer.write(payload)
    await writer.drain()
    echoed = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def wave(loop, port, n):
    opened = asyncio.Semaphore(0)
    release = asyncio.Event()
    payload = bytes(range(256)) * 64
    tasks = [asyncio.create_task(client(port, payload, opened, release)) for _ in range(n)]
    for _ in range(n):
        await opened.acquire()
    await asyncio.sleep(0.05)
    show(f'{n} connections open', loop)
    release.set()
    ok = await asyncio.gather(*tasks)
    await asyncio.sleep(0.05)
    show(f'{n} connections done ({sum(ok)}/{n} ok)', loop)
    return all(ok)


async def main():
    loop = asyncio.get_running_loop()
    show('idle loop', loop)
    server = await asyncio.start_server(handle, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    show('server listening', loop)
    t0 = time.perf_counter()
    results = [await wave(loop, port, n) for n in (10, 200, 1000, 50)]
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.05)
    show('server closed', loop)
    print(f'all echoes verified: {all(results)}  ({time.perf_counter() - t0:.2f}s)')
    return all(results)


if __name__ == '__main__':
    # 1000 connections need about 2000 fds in this one process (both ends live here).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    raise SystemExit(0 if uringloop.run(main()) else 1)
