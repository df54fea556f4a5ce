#!/usr/bin/env python3
"""HTTP benchmark: a uvicorn (httptools) app and an aiohttp app served on uringloop, uvloop and
asyncio, each in its own server process pinned to one core, loaded by wrk (Debian's package)
pinned to the other. One interleaved run; the same tiny plain-text response everywhere.

Per (app, connections, loop): requests per second and p50/p99 latency (wrk, one thread, keep-
alive), and the server's CPU (user + system, from /proc) per request.

    python benchmarks/http_servers.py                 # 2 apps x 10/100 conns, 3 rounds
    python benchmarks/http_servers.py --quick
    python benchmarks/http_servers.py --apps uvicorn --conns 10 --loops uringloop,uvloop
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _common as C  # noqa: E402

APPS = ('uvicorn', 'aiohttp')
BODY = b'Hello, world!'


# -- the server process --------------------------------------------------------------------------

async def asgi_app(scope, receive, send):
    if scope['type'] != 'http':
        return
    await send({'type': 'http.response.start', 'status': 200,
                'headers': [(b'content-type', b'text/plain'),
                            (b'content-length', str(len(BODY)).encode())]})
    await send({'type': 'http.response.body', 'body': BODY})


def serve_uvicorn(loop, sock):
    import uvicorn
    config = uvicorn.Config(asgi_app, http='httptools', lifespan='off', log_level='warning',
                            access_log=False)
    server = uvicorn.Server(config)
    loop.run_until_complete(server.serve(sockets=[sock]))


def serve_aiohttp(loop, sock):
    from aiohttp import web

    async def hello(request):
        return web.Response(body=BODY, content_type='text/plain')

    async def start():
        app = web.Application()
        app.router.add_get('/', hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()

    loop.run_until_complete(start())
    loop.run_forever()


def server_main(loop_name, app, cpu):
    import asyncio
    if cpu != '-':
        os.sched_setaffinity(0, {int(cpu)})
    loop = C.new_loop(loop_name)
    asyncio.set_event_loop(loop)
    # proto=IPPROTO_TCP, as the servers' own getaddrinfo() gives it: asyncio sets TCP_NODELAY
    # only on sockets that say so, and without it Nagle meets wrk's delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(('127.0.0.1', 0))
    sock.listen(1024)
    sock.setblocking(False)
    print(sock.getsockname()[1], flush=True)
    (serve_uvicorn if app == 'uvicorn' else serve_aiohttp)(loop, sock)


# -- the parent ----------------------------------------------------------------------------------

_UNITS = {'us': 1e-6, 'ms': 1e-3, 's': 1.0, 'm': 60.0}


def parse_wrk(out):
    """Requests/s, total requests and the p50/p99 latency (seconds) from `wrk --latency`."""
    res = {}
    m = re.search(r'^\s*(\d+) requests in', out, re.M)
    res['requests'] = int(m.group(1)) if m else 0
    m = re.search(r'^Requests/sec:\s*([\d.]+)', out, re.M)
    res['rps'] = float(m.group(1)) if m else 0.0
    for pct in ('50', '99'):
        m = re.search(rf'^\s*{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\b', out, re.M)
        res[f'p{pct}_s'] = float(m.group(1)) * _UNITS[m.group(2)] if m else float('nan')
    m = re.search(r'Non-2xx or 3xx responses:\s*(\d+)', out)
    res['errors'] = int(m.group(1)) if m else 0
    m = re.search(r'Socket errors: (.*)', out)
    if m:
        res['socket_errors'] = m.group(1).strip()
    return res


def wait_ready(url, srv, timeout=60.0):
    """Wait until the server answers (its imports can take seconds on a loaded machine)."""
    import urllib.request
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read()
                return
        except OSError:
            if srv.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'the server at {url} did not answer')
            time.sleep(0.1)


def one_sample(loop_name, app, conns, warmup, window, cpus=(0, 1)):
    """One server process, a wrk warm-up, then the measured wrk run."""
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    server_cpu, load_cpu = cpus if cpus else (None, None)
    srv = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--_server', loop_name,
                            app, '-' if server_cpu is None else str(server_cpu)],
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(srv.stdout.readline())
        url = f'http://127.0.0.1:{port}/'
        wait_ready(url, srv)
        wrk = C.pinned(['wrk', '-t1', f'-c{conns}', '--latency'], load_cpu)
        if warmup > 0:
            subprocess.run(wrk + [f'-d{warmup}s', url], capture_output=True, text=True,
                           check=True, timeout=warmup + 30)
        cpu0 = C.process_cpu(srv.pid)
        t0 = time.perf_counter()
        out = subprocess.run(wrk + [f'-d{window}s', url], capture_output=True, text=True,
                             check=True, timeout=window + 30).stdout
        wall = time.perf_counter() - t0
        cpu1 = C.process_cpu(srv.pid)
        res = parse_wrk(out)
        if not res['requests']:
            raise RuntimeError('wrk made no request:\n' + out)
        res['cpu_us_per_req'] = (cpu1 - cpu0) * 1e6 / res['requests']
        res['server_cpu_share'] = (cpu1 - cpu0) / wall
        return res
    finally:
        srv.terminate()
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--loops', default=','.join(C.ALL_LOOPS))
    ap.add_argument('--apps', default=','.join(APPS))
    ap.add_argument('--conns', default='10,100')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--window', type=int, default=3)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--_server', nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._server:
        return server_main(*args._server)
    if args.quick:
        args.rounds, args.window = 1, 1
    loops = args.loops.split(',')
    configs = [(a, int(c)) for a in args.apps.split(',') for c in args.conns.split(',')]
    rows = {}
    for rnd in range(args.rounds):
        for ci, (app, conns) in enumerate(configs):
            k = (rnd + ci) % len(loops)
            for ln in loops[k:] + loops[:k]:
                r = one_sample(ln, app, conns, args.warmup, args.window)
                rows.setdefault((app, conns, ln), []).append(r)
                C.log(f'round {rnd + 1} {app} {conns} {ln}: {r}')
    header = ['app', 'conns', 'loop', 'req/s', 'p50 µs', 'p99 µs', 'server CPU µs/req']
    table = []
    for app, conns in configs:
        for ln in loops:
            rs = rows[(app, conns, ln)]
            table.append([app, conns, ln, C.fmt_rate(C.median([r['rps'] for r in rs])),
                          C.fmt_us(C.median([r['p50_s'] for r in rs])),
                          C.fmt_us(C.median([r['p99_s'] for r in rs])),
                          f"{C.median([r['cpu_us_per_req'] for r in rs]):.1f}"])
    print(C.md_table(header, table, 'lrl'))


if __name__ == '__main__':
    main()
