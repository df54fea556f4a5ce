#!/usr/bin/env python3
"""Echo benchmark: uringloop vs uvloop vs asyncio, one interleaved run.

The server runs in its own process on the loop under test, in one of three styles:

  streams   asyncio.start_server + StreamReader/StreamWriter (read, write, drain)
  protocol  loop.create_server with a Protocol whose data_received() writes the data back
  sock      loop.sock_accept / sock_recv / sock_sendall, one task per connection

The load generator is a small C program (epoll, non-blocking sockets, compiled on first use
with the system's cc) in another process: N connections, each sends one message of the given
size, waits for the whole echo, records the round-trip time and sends the next. It costs far
less CPU per round-trip than any of the servers, so the server is what is measured.

Per (style, size, connections, loop) it reports:
  rt/s        round-trips per second seen by the load generator
  p99         99th percentile round-trip latency (µs)
  cpu/rt      server CPU time (user + system, from the server's getrusage) per round-trip (µs)
  sys/rt      server syscalls per round-trip (perf stat -e raw_syscalls:sys_enter -p PID)
  resizes/s   io_uring ring resizes per second (uringloop only)
The machine has two cores: client and server each take one, so compare cpu/rt, not rt/s.

    python benchmarks/echo.py                       # everything, 3 rounds (~6 min)
    python benchmarks/echo.py --quick               # 1 round, 1 s windows
    python benchmarks/echo.py --styles protocol --sizes 1024 --conns 100

uringloop's write path: writes under 32 KiB are staged as a SEND that leaves in the iteration's
io_uring_enter, larger ones try a direct send() first (benchmarks/README.md, "The write path,
measured").
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import pinned  # noqa: E402

LOAD_C = r'''
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* One connection: sends `size` bytes, waits for `size` bytes back, repeats. */
typedef struct { int fd; size_t sent, got; uint64_t t0; } conn_t;

static uint64_t now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

#define HIST 200000  /* 1 µs buckets up to 200 ms */
static uint64_t hist[HIST + 1];

int main(int argc, char **argv) {
    if (argc < 7) { fprintf(stderr, "usage: port conns size warmup_s window_s\n"); return 2; }
    int port = atoi(argv[1]), nconn = atoi(argv[2]);
    size_t size = (size_t)atol(argv[3]);
    double warm = atof(argv[4]), window = atof(argv[5]);
    (void)argv[6];
    char *out = malloc(size), *in = malloc(size > 65536 ? size : 65536);
    for (size_t i = 0; i < size; i++) out[i] = (char)('a' + i % 26);
    int ep = epoll_create1(0);
    conn_t *cs = calloc(nconn, sizeof(conn_t));
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET; sa.sin_port = htons(port); sa.sin_addr.s_addr = htonl(0x7f000001);
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
        int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int fl = SOCK_NONBLOCK; (void)fl;
        cs[i].fd = fd;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = &cs[i] };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        int flags = 1; ioctl(fd, 0x5421 /* FIONBIO */, &flags);
    }
    uint64_t start = now_ns(), mstart = start + (uint64_t)(warm * 1e9);
    uint64_t end = mstart + (uint64_t)(window * 1e9);
    int measuring = 0;
    uint64_t rts = 0;
    for (int i = 0; i < nconn; i++) cs[i].t0 = now_ns();
    struct epoll_event evs[256];
    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && t >= mstart) { measuring = 1; printf("START\n"); fflush(stdout); }
        if (t >= end) break;
        int n = epoll_wait(ep, evs, 256, 10);
        for (int k = 0; k < n; k++) {
            conn_t *c = evs[k].data.ptr;
            for (;;) {  /* edge-triggered: go until EAGAIN */
                int progressed = 0;
                if (c->sent < size) {
                    ssize_t w = send(c->fd, out + c->sent, size - c->sent, MSG_NOSIGNAL);
                    if (w > 0) { c->sent += w; progressed = 1; }
                    else if (w < 0 && errno != EAGAIN) { perror("send"); return 1; }
                }
                ssize_t r = recv(c->fd, in, size - c->got, 0);
                if (r > 0) {
                    c->got += r; progressed = 1;
                    if (c->got == size) {
                        uint64_t t1 = now_ns();
                        if (measuring) {
                            uint64_t us = (t1 - c->t0) / 1000;
                            hist[us < HIST ? us : HIST]++;
                            rts++;
                        }
                        c->sent = c->got = 0; c->t0 = t1;
                    }
                } else if (r == 0) { fprintf(stderr, "server closed\n"); return 1; }
                else if (errno != EAGAIN) { perror("recv"); return 1; }
                if (!progressed) break;
            }
        }
    }
    double secs = (now_ns() - mstart) / 1e9;
    uint64_t acc = 0, p50 = 0, p99 = 0;
    for (int i = 0; i <= HIST; i++) {
        acc += hist[i];
        if (!p50 && acc * 100 >= rts * 50) p50 = i;
        if (!p99 && acc * 100 >= rts * 99) { p99 = i; break; }
    }
    printf("END %llu %.6f %llu %llu\n", (unsigned long long)rts, secs,
           (unsigned long long)p50, (unsigned long long)p99);
    fflush(stdout);
    for (int i = 0; i < nconn; i++) close(cs[i].fd);
    return 0;
}
'''

LOOPS = ('uringloop', 'uvloop', 'asyncio')


def build_load(tmp):
    src = os.path.join(tmp, 'load.c')
    exe = os.path.join(tmp, 'load')
    with open(src, 'w') as f:
        f.write(LOAD_C.replace('#include <unistd.h>', '#include <unistd.h>\n#include <sys/ioctl.h>'))
    subprocess.run(['cc', '-O2', '-o', exe, src], check=True)
    return exe


# -- the server process ------------------------------------------------------------------------

def server_main(loop_name, style):
    import asyncio
    import resource
    sys.path.insert(0, HERE)
    from _common import new_loop
    loop = new_loop(loop_name)
    asyncio.set_event_loop(loop)

    async def stream_handler(reader, writer):
        try:
            while True:
                data = await reader.read(262144)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def sock_conn(sock):
        try:
            while True:
                data = await loop.sock_recv(sock, 262144)
                if not data:
                    break
                await loop.sock_sendall(sock, data)
        except ConnectionError:
            pass
        sock.close()

    async def sock_server(lsock):
        while True:
            conn, _ = await loop.sock_accept(lsock)
            conn.setsockopt(6, 1, 1)   # TCP_NODELAY, as the transports set it
            loop.create_task(sock_conn(conn))

    def stats():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        d = {'cpu': ru.ru_utime + ru.ru_stime, 'user': ru.ru_utime, 'sys': ru.ru_stime}
        if hasattr(loop, 'ring_stats'):
            st = loop.ring_stats()
            d['resizes'] = st.resizes_up + st.resizes_down
            d['enters'] = st.enters
            d['resize_time'] = getattr(st, 'resize_time', None)
        if hasattr(loop, '_buffer_ring_stats'):
            d['bufring'] = list(loop._buffer_ring_stats())
        return d

    def commands():
        for line in sys.stdin:
            if line.strip() == 'stats':
                fut = asyncio.run_coroutine_threadsafe(_stats(), loop)
                print(json.dumps(fut.result()), flush=True)
        loop.call_soon_threadsafe(loop.stop)

    async def _stats():
        return stats()

    import socket
    if style == 'streams':
        server = loop.run_until_complete(asyncio.start_server(stream_handler, '127.0.0.1', 0,
                                                              backlog=1024))
        port = server.sockets[0].getsockname()[1]
    elif style == 'protocol':
        server = loop.run_until_complete(loop.create_server(Echo, '127.0.0.1', 0, backlog=1024))
        port = server.sockets[0].getsockname()[1]
    else:
        lsock = socket.create_server(('127.0.0.1', 0), backlog=1024)
        lsock.setblocking(False)
        port = lsock.getsockname()[1]
        loop.create_task(sock_server(lsock))
    print(port, flush=True)
    threading.Thread(target=commands, daemon=True).start()
    loop.run_forever()
    os._exit(0)


# -- the parent --------------------------------------------------------------------------------

def one_sample(load_exe, loop_name, style, size, conns, warm, window, cpus=None):
    """One server process and one load generator run; cpus=(server CPU, load CPU) pins them."""
    server_cpu, load_cpu = cpus if cpus else (None, None)
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    srv = subprocess.Popen(pinned([sys.executable, os.path.abspath(__file__), '--_server',
                                   loop_name, style], server_cpu),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(srv.stdout.readline())
        cli = subprocess.Popen(pinned([load_exe, str(port), str(conns), str(size), str(warm),
                                       str(window), 'x'], load_cpu),
                               stdout=subprocess.PIPE, text=True)
        line = cli.stdout.readline()
        if line.strip() != 'START':
            raise RuntimeError(f'load generator: {line!r}')
        perf = subprocess.Popen(['perf', 'stat', '-x,', '-e', 'raw_syscalls:sys_enter', '-p',
                                 str(srv.pid)], stderr=subprocess.PIPE, text=True)
        srv.stdin.write('stats\n')
        srv.stdin.flush()
        s0 = json.loads(srv.stdout.readline())
        t0 = time.monotonic()
        end = cli.stdout.readline().split()
        srv.stdin.write('stats\n')
        srv.stdin.flush()
        s1 = json.loads(srv.stdout.readline())
        t1 = time.monotonic()
        if os.environ.get('ECHO_DEBUG'):
            print(s0, s1, file=sys.stderr)
        perf.send_signal(signal.SIGINT)
        perf_out = perf.communicate()[1]
        cli.wait()
        syscalls = None
        for ln in perf_out.splitlines():
            parts = ln.split(',')
            if len(parts) > 2 and 'raw_syscalls' in ln and parts[0].strip().isdigit():
                syscalls = int(parts[0])
        rts, secs, p50, p99 = int(end[1]), float(end[2]), int(end[3]), int(end[4])
        # The server-side window (stats to stats) is a little longer than the client's: scale
        # the client's count to it.
        wall = t1 - t0
        rts_srv = rts * wall / secs if secs > 0 else rts
        res = {
            'rtps': rts / secs,
            'p50_us': p50,
            'p99_us': p99,
            'cpu_us_per_rt': (s1['cpu'] - s0['cpu']) * 1e6 / max(rts_srv, 1),
            'user_us_per_rt': (s1['user'] - s0['user']) * 1e6 / max(rts_srv, 1),
            'sys_per_rt': (syscalls / max(rts_srv, 1)) if syscalls is not None else None,
            'resizes_per_s': ((s1['resizes'] - s0['resizes']) / wall) if 'resizes' in s1 else None,
            # Share of the server's time spent resizing its ring (uringloop builds that count it).
            'resize_share': ((s1['resize_time'] - s0['resize_time']) / wall
                             if s1.get('resize_time') is not None else None),
        }
        return res
    finally:
        try:
            srv.stdin.close()
        except OSError:
            pass
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def fmt(v, nd=1):
    if v is None:
        return '-'
    return f'{v:,.{nd}f}'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--loops', default=','.join(LOOPS))
    ap.add_argument('--styles', default='protocol,streams,sock')
    ap.add_argument('--sizes', default='1024,65536')
    ap.add_argument('--conns', default='10,100')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--window', type=float, default=2.0)
    ap.add_argument('--warmup', type=float, default=0.5)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--json')
    ap.add_argument('--_server', nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._server:
        return server_main(*args._server)
    if args.quick:
        args.rounds, args.window, args.warmup = 1, 1.0, 0.3
    loops = args.loops.split(',')
    configs = [(st, int(sz), int(c)) for st in args.styles.split(',')
               for sz in args.sizes.split(',') for c in args.conns.split(',')]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        load = build_load(tmp)
        for rnd in range(args.rounds):
            for ci, cfg in enumerate(configs):
                order = loops[(rnd + ci) % len(loops):] + loops[:(rnd + ci) % len(loops)]
                for ln in order:
                    r = one_sample(load, ln, *cfg, args.warmup, args.window)
                    results.setdefault((cfg, ln), []).append(r)
                    print(f'round {rnd + 1} {cfg} {ln}: ' + ' '.join(
                        f'{k}={fmt(v, 2)}' for k, v in r.items()), file=sys.stderr, flush=True)
    print('| style | size | conns | loop | rt/s | p99 µs | server cpu µs/rt | user µs/rt '
          '| syscalls/rt | ring resizes/s |')
    print('|---|---:|---:|---|---:|---:|---:|---:|---:|---:|')
    for cfg in configs:
        for ln in loops:
            rs = results[(cfg, ln)]
            med = {k: (statistics.median([r[k] for r in rs]) if rs[0][k] is not None else None)
                   for k in rs[0]}
            st, sz, c = cfg
            print(f'| {st} | {sz // 1024} KiB | {c} | {ln} | {fmt(med["rtps"], 0)} | '
                  f'{fmt(med["p99_us"], 0)} | {fmt(med["cpu_us_per_rt"], 2)} | '
                  f'{fmt(med["user_us_per_rt"], 2)} | {fmt(med["sys_per_rt"], 2)} | '
                  f'{fmt(med["resizes_per_s"], 1)} |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({f'{k[0]}|{k[1]}': v for k, v in results.items()}, f, indent=1)


if __name__ == '__main__':
    main()
