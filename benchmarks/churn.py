#!/usr/bin/env python3
"""Churn benchmark: workloads whose number of pending operations keeps moving, so a ring that
follows `pending` exactly would resize all the time. Runs on uringloop, uvloop and asyncio in
one interleaved run (the same work on each; only uringloop has a ring to resize).

Cases (each one process, one loop, everything on loopback inside that process):

  cross     `--idle` receives wait forever on idle socket pairs, chosen so that uringloop has
            15 operations pending at rest; one task ping-pongs a byte with another through
            sock_sendall / sock_recv with a peer thread (blocking socket), so each round-trip
            adds a short operation (the ping's receive) on top of the 15 and takes it away
            again: pending crosses 16 twice per round-trip.
  steady    the same ping-pong with one idle receive fewer: pending moves between 14 and
            15, inside one power of two. A ring that followed pending exactly would resize
            in 'cross' and not here; the resize band resizes in neither, so the cost of
            resizing is read from the resize share below, not from cross minus steady.
  queued    10 Protocol connection pairs echo 1 KiB messages; uringloop stages each of
            these writes as a SEND on the ring (its write path's rule for small writes).
  fanout    each round opens `--fanout` sock_recv operations at once, then a callback sends
            one byte to each; the round ends when all of them completed. Pending jumps by
            `--fanout` and falls back every round.

Per (case, loop): round-trips (or rounds) per second, CPU per round-trip, and for uringloop
the ring's resizes per second and the share of the loop's time spent resizing: the
cumulative `ring_stats().resize_time` (seconds spent resizing or migrating) over the wall
time of the window. A uringloop without that field reports the share as not measured.

    python benchmarks/churn.py                 # 3 rounds, 2 s windows
    python benchmarks/churn.py --quick
    python benchmarks/churn.py --cases cross --loops uringloop
"""

import argparse
import asyncio
import collections
import json
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common as C  # noqa: E402

CASES = ('cross', 'steady', 'queued', 'fanout')
REST_PENDING = 15          # the 'cross' case's pending operations at rest, on uringloop
QUEUED_PAIRS = 10
QUEUED_SIZE = 1024
FANOUT = 64


def ring_counters(loop):
    """(resizes, resize_time or None, enters, iterations) of a uringloop; Nones elsewhere."""
    if not hasattr(loop, 'ring_stats'):
        return None
    st = loop.ring_stats()
    return {'resizes': st.resizes_up + st.resizes_down,
            'resize_time': getattr(st, 'resize_time', None),
            'enters': st.enters, 'iterations': st.iterations, 'pending': st.pending}


class Window:
    """Counts work done between the end of the warm-up and the end of the window."""

    def __init__(self, loop, warmup, window):
        self.loop, self.warmup, self.window = loop, warmup, window
        self.done = 0
        self.measuring = False
        self.stop = False

    async def run(self):
        await asyncio.sleep(self.warmup)
        r0, c0, t0 = ring_counters(self.loop), time.process_time(), time.perf_counter()
        self.done, self.measuring = 0, True
        await asyncio.sleep(self.window)
        self.measuring = False
        t1, c1, r1 = time.perf_counter(), time.process_time(), ring_counters(self.loop)
        self.stop = True
        res = {'ops': self.done, 'wall': t1 - t0, 'cpu': c1 - c0}
        if r0 is not None:
            res['resizes'] = r1['resizes'] - r0['resizes']
            res['enters'] = r1['enters'] - r0['enters']
            res['iterations'] = r1['iterations'] - r0['iterations']
            res['resize_time'] = (r1['resize_time'] - r0['resize_time']
                                  if r1['resize_time'] is not None else None)
        return res

    def count(self, n=1):
        if self.measuring:
            self.done += n


def nonblocking_pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def idle_receivers(loop, n):
    """n receives that never complete (the peers stay silent), kept until cancelled."""
    pairs = [nonblocking_pair() for _ in range(n)]
    tasks = [asyncio.ensure_future(loop.sock_recv(a, 1)) for a, _ in pairs]
    await asyncio.sleep(0.05)   # let each give up its first try and wait on the ring
    return pairs, tasks


async def case_cross(loop, win, idle):
    pairs, idle_tasks = await idle_receivers(loop, idle)
    a, b = nonblocking_pair()
    b.setblocking(True)

    def echo():
        # The peer is a thread on a blocking socket, so the loop sees one operation come
        # and go per round-trip: the ping's receive.
        while True:
            data = b.recv(1)
            if not data:
                return
            b.sendall(data)

    peer = threading.Thread(target=echo, daemon=True)
    peer.start()

    async def ping():
        while not win.stop:
            await loop.sock_sendall(a, b'x')
            await loop.sock_recv(a, 1)
            win.count()
            # One iteration entry with the receive gone: an application's own work between
            # two requests.
            await asyncio.sleep(0)

    pinger = asyncio.ensure_future(ping())
    res = await win.run()
    await pinger
    a.close()
    await loop.run_in_executor(None, peer.join)
    for t in idle_tasks:
        t.cancel()
    await asyncio.gather(*idle_tasks, return_exceptions=True)
    for x, y in pairs + [(a, b)]:
        x.close()
        y.close()
    return res


async def case_queued(loop, win):
    payload = b'q' * QUEUED_SIZE

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    class Client(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.got = transport, 0
            transport.write(payload)

        def data_received(self, data):
            self.got += len(data)
            while self.got >= QUEUED_SIZE:
                self.got -= QUEUED_SIZE
                win.count()
                if not win.stop:
                    self.transport.write(payload)

    server = await loop.create_server(Echo, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    clients = [(await loop.create_connection(Client, '127.0.0.1', port))[0]
               for _ in range(QUEUED_PAIRS)]
    res = await win.run()
    for tr in clients:
        tr.close()
    server.close()
    await server.wait_closed()
    return res


async def case_fanout(loop, win, fanout):
    pairs = [nonblocking_pair() for _ in range(fanout)]

    def send_all():
        for _, b in pairs:
            b.send(b'f')

    while not win.stop:
        recvs = [asyncio.ensure_future(loop.sock_recv(a, 1)) for a, _ in pairs]
        await asyncio.sleep(0)      # every receive tries, finds nothing and waits
        loop.call_soon(send_all)
        await asyncio.gather(*recvs)
        win.count()
    for a, b in pairs:
        a.close()
        b.close()
    return None


def child_sample(loop_name, case, warmup, window, idle):
    loop_kind = loop_name.split('-')[0]
    loop = C.new_loop(loop_kind)
    asyncio.set_event_loop(loop)
    win = Window(loop, float(warmup), float(window))

    async def main():
        if case == 'cross':
            return await case_cross(loop, win, int(idle))
        if case == 'steady':
            return await case_cross(loop, win, max(0, int(idle) - 1))
        if case == 'queued':
            return await case_queued(loop, win)
        runner = asyncio.ensure_future(win.run())
        await case_fanout(loop, win, FANOUT)
        return await runner

    try:
        return loop.run_until_complete(main())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def child_rest_pending():
    """How many idle receives give uringloop REST_PENDING operations pending at rest during
    the 'cross' ping-pong: it runs once without idle receives and counts what is pending at
    each iteration entry; the lower of the two most frequent counts is the rest."""
    loop = C.new_loop('uringloop')
    asyncio.set_event_loop(loop)
    seen = collections.Counter()
    win = Window(loop, 0.1, 0.2)

    async def main():
        loop._set_iteration_observer(lambda st: seen.update([st.pending]))
        return await case_cross(loop, win, 0)

    try:
        loop.run_until_complete(main())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    base = min(n for n, _ in seen.most_common(2))
    return {'base_pending': base, 'idle': max(0, REST_PENDING - base),
            'pending_seen': dict(seen.most_common(4))}


CHILD_HANDLERS = {'sample': child_sample, 'rest': child_rest_pending}


def sample(loop_name, case, warmup, window, idle, timeout=60, cpu=None):
    """Parent side: one sample in a fresh process (on one CPU if given)."""
    return C.run_child(os.path.abspath(__file__),
                       ['sample', loop_name, case, str(warmup), str(window), str(idle)],
                       timeout=timeout, cpu=cpu)


def idle_for_cross():
    try:
        return C.run_child(os.path.abspath(__file__), ['rest'], timeout=30)['idle']
    except C.ChildError as exc:
        C.warn(f'could not count uringloop\'s pending operations at rest ({exc}); '
               f'using {REST_PENDING - 1} idle receives')
        return REST_PENDING - 1


def derive(r):
    """Per-sample figures from a child's raw counts."""
    ops = max(r['ops'], 1)
    out = {'ops_per_s': r['ops'] / r['wall'], 'cpu_us_per_op': r['cpu'] * 1e6 / ops}
    if 'resizes' in r:
        out['resizes_per_s'] = r['resizes'] / r['wall']
        out['resizes_per_op'] = r['resizes'] / ops
        out['enters_per_op'] = r['enters'] / ops
        out['resize_share'] = (r['resize_time'] / r['wall']
                               if r.get('resize_time') is not None else None)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--loops', default=','.join(C.ALL_LOOPS))
    ap.add_argument('--cases', default=','.join(CASES))
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--window', type=float, default=2.0)
    ap.add_argument('--warmup', type=float, default=0.3)
    ap.add_argument('--quick', action='store_true')
    args = ap.parse_args(sys.argv[1:])
    if args.quick:
        args.rounds, args.window = 1, 0.5
    loops, cases = args.loops.split(','), args.cases.split(',')
    idle = idle_for_cross()
    rows = {}
    for rnd in range(args.rounds):
        for ci, case in enumerate(cases):
            k = (rnd + ci) % len(loops)
            for ln in loops[k:] + loops[:k]:
                d = derive(sample(ln, case, args.warmup, args.window, idle))
                rows.setdefault((case, ln), []).append(d)
                C.log(f'round {rnd + 1} {case} {ln}: ' + json.dumps(d))
    header = ['case', 'loop', 'ops/s', 'CPU µs/op', 'resizes/s', 'resizes/op', 'resize share']
    table = []
    for case in cases:
        for ln in loops:
            ds = rows[(case, ln)]
            med = {key: C.median([d[key] for d in ds if d.get(key) is not None])
                   for key in ds[0]}
            share = med.get('resize_share')
            table.append([case, ln, C.fmt_rate(med['ops_per_s']), f"{med['cpu_us_per_op']:.2f}",
                          f"{med['resizes_per_s']:,.0f}" if 'resizes_per_s' in med else '–',
                          f"{med['resizes_per_op']:.2f}" if 'resizes_per_op' in med else '–',
                          '–' if 'resize_share' not in med else
                          'not measured' if share != share else f'{100 * share:.1f}%'])
    print(C.md_table(header, table, 'll'))


if __name__ == '__main__':
    if sys.argv[1:2] == ['--_child']:
        sys.exit(C.child_main(CHILD_HANDLERS, sys.argv[2:]))
    main()
