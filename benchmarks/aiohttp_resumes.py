#!/usr/bin/env python3
"""How often aiohttp's RequestHandler.start() resumes per request, per loop (wrk, keep-alive).

start() resumes once when the request's handler task ends, and once more when it then has to
wait for the next request: a request that arrives while start() waits costs one resume, a
future and a task wake-up more. The count does not move with the machine's load the way
req/s does. The aiohttp app and the process layout are those of http_servers.py.

    python benchmarks/aiohttp_resumes.py --loops uringloop,uvloop,asyncio --conns 10,100
    python benchmarks/aiohttp_resumes.py --loops uringloop,uringloop@/path/to/other/tree
"""

import argparse
import ast
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common as C  # noqa: E402
import http_servers as H  # noqa: E402


def server_main(loop_name, cpu, out_path):
    """http_servers.py's aiohttp server, counting the requests that found start() waiting.
    SIGUSR1 zeroes the counts (after the warm-up), SIGTERM writes them to out_path."""
    from aiohttp import web_protocol
    counts = {'requests': 0, 'woke_waiter': 0}
    handler = web_protocol.RequestHandler
    data_received, handle_request = handler.data_received, handler._handle_request

    def counting_data_received(self, data):
        waiting = self._waiter is not None
        queued = len(self._messages)
        data_received(self, data)
        if waiting and len(self._messages) > queued:
            counts['woke_waiter'] += 1

    async def counting_handle_request(self, *args, **kwargs):
        counts['requests'] += 1
        return await handle_request(self, *args, **kwargs)

    def dump(*_):
        with open(out_path, 'w') as f:
            f.write(repr(counts))
        os._exit(0)

    handler.data_received = counting_data_received
    handler._handle_request = counting_handle_request
    signal.signal(signal.SIGUSR1, lambda *_: counts.update(requests=0, woke_waiter=0))
    signal.signal(signal.SIGTERM, dump)
    H.server_main(loop_name, 'aiohttp', cpu)


def one_sample(loop_name, conns, window, cpus=(0, 1)):
    env = dict(os.environ, PYTHONPATH=H.ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    fd, out_path = tempfile.mkstemp(suffix='.counts')
    os.close(fd)
    srv = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--_server', loop_name,
                            str(cpus[0]), out_path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = f'http://127.0.0.1:{int(srv.stdout.readline())}/'
        H.wait_ready(url, srv)
        wrk = C.pinned(['wrk', '-t1', f'-c{conns}'], cpus[1])
        subprocess.run(wrk + ['-d1s', url], capture_output=True, check=True, timeout=60)
        srv.send_signal(signal.SIGUSR1)
        time.sleep(0.1)
        subprocess.run(wrk + [f'-d{window}s', url], capture_output=True, check=True,
                       timeout=window + 60)
        srv.terminate()
        srv.wait(10)
        with open(out_path) as f:
            counts = ast.literal_eval(f.read())
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
        os.unlink(out_path)
    if not counts['requests']:
        raise RuntimeError(f'{name}: no request was served')
    return 1 + counts['woke_waiter'] / counts['requests']


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--loops', default=','.join(C.ALL_LOOPS))
    ap.add_argument('--conns', default='10,100')
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--window', type=int, default=3)
    ap.add_argument('--_server', nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._server:
        return server_main(*args._server)
    loops = args.loops.split(',')
    conns = [int(c) for c in args.conns.split(',')]
    rows = {}
    for rnd in range(args.rounds):
        for n in conns:
            k = rnd % len(loops)
            for name in loops[k:] + loops[:k]:
                r = one_sample(name, n, args.window)
                rows.setdefault((n, name), []).append(r)
                C.log(f'round {rnd + 1} {n} conns {name}: {r:.3f} resumes per request')
    table = [[n, name, f'{C.median(rows[(n, name)]):.2f}'] for n in conns for name in loops]
    print(C.md_table(['conns', 'loop', 'start() resumes per request'], table, 'rlr'))


if __name__ == '__main__':
    main()
