"""An HTTP service with aiohttp on uringloop: a JSON API over a small in-memory store, a
streamed download, and the loop's ring statistics at /stats.

    python examples/http_service.py [--host 127.0.0.1] [--port 8080]

    curl localhost:8080/items -d '{"name": "apple"}'
    curl localhost:8080/items
    curl localhost:8080/stream?kib=1024 -o /dev/null
    curl localhost:8080/stats

Ctrl-C (or SIGTERM) stops it.
"""
import argparse
import asyncio
import signal

from aiohttp import web

import uringloop

routes = web.RouteTableDef()


@routes.get('/items')
async def list_items(request):
    return web.json_response(request.app['items'])


@routes.post('/items')
async def add_item(request):
    item = await request.json()
    if not isinstance(item, dict) or not isinstance(item.get('name'), str):
        raise web.HTTPBadRequest(text='expected {"name": "..."}')
    item = {'id': len(request.app['items']) + 1, 'name': item['name']}
    request.app['items'].append(item)
    return web.json_response(item, status=201)


@routes.get('/stream')
async def stream(request):
    """kib KiB of data, sent in 64 KiB chunks as the client takes them."""
    kib = int(request.query.get('kib', '1024'))
    response = web.StreamResponse(headers={'Content-Type': 'application/octet-stream'})
    response.content_length = kib * 1024
    await response.prepare(request)
    chunk = bytes(range(256)) * 256
    for _ in range(kib // 64):
        await response.write(chunk)
    await response.write(chunk[:kib % 64 * 1024])
    await response.write_eof()
    return response


@routes.get('/stats')
async def stats(request):
    loop = asyncio.get_running_loop()
    return web.json_response({'loop': type(loop).__name__, **loop.ring_stats()._asdict()})


async def serve(host, port):
    app = web.Application()
    app['items'] = []
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f'serving on http://{host}:{runner.addresses[0][1]}', flush=True)
    await stop.wait()
    await runner.cleanup()
    print('stopped', flush=True)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8080)
    args = parser.parse_args()
    uringloop.run(serve(args.host, args.port))
