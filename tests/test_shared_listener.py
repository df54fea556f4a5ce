"""A listening socket shared by several processes, as uvicorn --workers and gunicorn share
theirs: every process that serves it gets connections. (The kernel hands a new connection to
the first exclusive waiter on the socket; a multishot ACCEPT that stayed armed would keep that
place for ever and take every connection.)"""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent('''
    import asyncio, os, socket, sys
    import uringloop

    class Reply(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(str(os.getpid()).encode())
            transport.close()

    async def main(fd):
        sock = socket.socket(fileno=fd)
        server = await asyncio.get_running_loop().create_server(Reply, sock=sock)
        print('ready', flush=True)
        await asyncio.sleep(120)  # until the test kills it

    factory = {'asyncio': asyncio.new_event_loop, 'uringloop': uringloop.new_event_loop}
    loop = factory[sys.argv[1]]()   # (not asyncio.Runner: Python 3.10 has none)
    try:
        loop.run_until_complete(main(int(sys.argv[2])))
    finally:
        loop.close()
''')


@pytest.mark.parametrize('loop_name', ['asyncio', 'uringloop'])
def test_every_process_sharing_a_listener_gets_connections(loop_name):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(('127.0.0.1', 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    workers = [subprocess.Popen([sys.executable, '-c', WORKER, loop_name, str(listener.fileno())],
                                pass_fds=[listener.fileno()], stdout=subprocess.PIPE, env=env)
               for _ in range(2)]
    try:
        for worker in workers:
            assert worker.stdout.readline() == b'ready\n'
        served_by = []
        for _ in range(60):
            with socket.create_connection(('127.0.0.1', port), timeout=10) as conn:
                served_by.append(int(conn.recv(64)))
        assert set(served_by) == {worker.pid for worker in workers}, served_by
    finally:
        listener.close()
        for worker in workers:
            worker.kill()
            worker.wait()
            worker.stdout.close()
