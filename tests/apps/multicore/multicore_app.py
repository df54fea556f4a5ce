"""The ASGI application the multi-core tests serve: each answer names the worker's pid and
its event loop; /slow takes a while, and marks its start in $SLOW_STARTED_DIR."""
import asyncio
import os

from uvicorn_worker import UvicornWorker


class UringloopWorker(UvicornWorker):
    """gunicorn's worker class for uvicorn, on uringloop's loop."""
    CONFIG_KWARGS = {'loop': 'uringloop:new_event_loop', 'http': 'auto'}


class AsyncioWorker(UvicornWorker):
    CONFIG_KWARGS = {'loop': 'asyncio', 'http': 'auto'}


async def app(scope, receive, send):
    if scope['type'] == 'lifespan':
        while True:
            message = await receive()
            if message['type'] == 'lifespan.startup':
                await send({'type': 'lifespan.startup.complete'})
            elif message['type'] == 'lifespan.shutdown':
                await send({'type': 'lifespan.shutdown.complete'})
                return
    loop = type(asyncio.get_running_loop())
    text = f'{os.getpid()} {loop.__module__}.{loop.__name__}'
    if scope['path'] == '/slow':
        marker = os.path.join(os.environ['SLOW_STARTED_DIR'], str(os.getpid()))
        open(marker, 'w').close()
        await asyncio.sleep(1.5)
        text += ' slow done'
    await send({'type': 'http.response.start', 'status': 200,
                'headers': [(b'content-type', b'text/plain')]})
    await send({'type': 'http.response.body', 'body': text.encode()})
