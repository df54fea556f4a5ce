#!/usr/bin/env python3
"""Database client benchmark: asyncpg and redis-py's asyncio client on uringloop, uvloop and
asyncio, one interleaved run against real servers (Debian's PostgreSQL and Redis, started in
temp dirs on 127.0.0.1 by tests/apps/servers.py, as the tests do).

Workloads (each with --conc concurrent tasks, for --window seconds after a warm-up):

  pg_value    asyncpg pool: SELECT $1::int (one small prepared query per op)
  pg_rows     asyncpg pool: 100 rows of (int, text) per op
  redis_set_get  one redis client (its connection pool): SET then GET of a 100-byte value
  redis_pipe  one redis client: a pipeline of 100 SETs per op

Per (workload, loop): ops/s, the client's CPU per op (user + system of the benchmark
process), and the server's CPU per op (PostgreSQL: the backends serving the pool, from
/proc; Redis: INFO cpu). The machine has two cores shared by client and server, so compare
CPU per op rather than ops/s.

    python benchmarks/db.py                  # 3 rounds, 2 s windows
    python benchmarks/db.py --quick          # 1 round, 0.5 s windows
    python benchmarks/db.py --loops uringloop,asyncio --workloads pg_value
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import (ALL_LOOPS, ChildError, child_main, fmt_rate, fmt_us, log,  # noqa: E402
                     machine_info, md_table, median, new_loop, process_cpu, report_failures,
                     run_child, warn)

WORKLOADS = ('pg_value', 'pg_rows', 'redis_set_get', 'redis_pipe')


# -- the child: one sample ----------------------------------------------------------------------

def own_cpu():
    times = os.times()
    return times.user + times.system


async def measure(run_op, conc, warmup, window, server_cpu):
    """Runs run_op() in `conc` tasks; counts the ops finished inside the window.
    server_cpu() is a coroutine function: Redis answers it over the wire."""
    import asyncio
    state = {'measuring': False, 'ops': 0, 'stop': False}

    async def worker(i):
        n = 0
        while not state['stop']:
            await run_op(i, n)
            n += 1
            if state['measuring']:
                state['ops'] += 1

    tasks = [asyncio.ensure_future(worker(i)) for i in range(conc)]
    await asyncio.sleep(warmup)
    server0 = await server_cpu()
    client0, t0 = own_cpu(), time.perf_counter()
    state['measuring'] = True
    await asyncio.sleep(window)
    state['measuring'] = False
    elapsed, client1 = time.perf_counter() - t0, own_cpu()
    server1 = await server_cpu()
    ops = state['ops']
    state['stop'] = True
    await asyncio.gather(*tasks)
    return {'ops': ops, 'seconds': elapsed, 'client_cpu': client1 - client0,
            'server_cpu': server1 - server0}


async def postgres_sample(dsn, workload, conc, warmup, window):
    import asyncpg
    async with asyncpg.create_pool(dsn, min_size=conc, max_size=conc) as pool:
        backends = []
        connections = [await pool.acquire() for _ in range(conc)]
        for conn in connections:
            backends.append(await conn.fetchval('SELECT pg_backend_pid()'))
        if workload == 'pg_value':
            async def run_op(i, n):
                await connections[i].fetchval('SELECT $1::int', n)
        else:
            async def run_op(i, n):
                rows = await connections[i].fetch(
                    'SELECT g, md5(g::text) FROM generate_series(1, 100) g')
                assert len(rows) == 100
        async def server_cpu():
            return sum(process_cpu(pid) for pid in backends)
        result = await measure(run_op, conc, warmup, window, server_cpu)
        for conn in connections:
            await pool.release(conn)
    return result


async def redis_sample(url, workload, conc, warmup, window):
    import redis.asyncio as aioredis
    value = b'v' * 100
    async with aioredis.from_url(url) as client:
        async def server_cpu():
            info = await client.info('cpu')
            return info['used_cpu_user'] + info['used_cpu_sys']

        if workload == 'redis_set_get':
            async def run_op(i, n):
                await client.set(f'bench:{i}', value)
                assert await client.get(f'bench:{i}') == value
        else:
            async def run_op(i, n):
                async with client.pipeline(transaction=False) as pipe:
                    for k in range(100):
                        pipe.set(f'bench:{i}:{k}', value)
                    await pipe.execute()
        return await measure(run_op, conc, warmup, window, server_cpu)


def sample(loop_name, workload, target, conc, warmup, window):
    import asyncio
    loop = new_loop(loop_name)
    asyncio.set_event_loop(loop)
    try:
        runner = postgres_sample if workload.startswith('pg_') else redis_sample
        result = loop.run_until_complete(
            runner(target, workload, int(conc), float(warmup), float(window)))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    result['loop_class'] = type(loop).__name__
    return result


def versions():
    import asyncpg
    import redis
    import uvloop
    sys.path.insert(0, ROOT)
    import uringloop
    return {'asyncpg': asyncpg.__version__, 'redis-py': redis.__version__,
            'uvloop': uvloop.__version__, 'uringloop': uringloop.__version__,
            'python': sys.version.split()[0]}


# -- the parent: servers, rounds, report --------------------------------------------------------

class Servers:
    """The PostgreSQL and Redis servers of the run, from the test suite's fixtures' classes."""

    def __init__(self, need_pg, need_redis):
        sys.path.insert(0, os.path.join(ROOT, 'tests', 'apps'))
        from servers import PostgresServer, RedisServer
        self.postgres = PostgresServer() if need_pg else None
        self.redis = RedisServer() if need_redis else None

    def __enter__(self):
        for server in (self.postgres, self.redis):
            if server is not None:
                server.start()
        return self

    def __exit__(self, *exc):
        for server in (self.postgres, self.redis):
            if server is not None:
                server.stop()

    def target(self, workload):
        return self.postgres.dsn if workload.startswith('pg_') else self.redis.url

    def describe(self):
        import subprocess
        out = []
        if self.postgres is not None:
            out.append(subprocess.run([self.postgres.tool('postgres'), '--version'],
                                      capture_output=True, text=True).stdout.strip())
        if self.redis is not None:
            out.append(subprocess.run([self.redis.binary, '--version'], capture_output=True,
                                      text=True).stdout.split(' sha=')[0].strip())
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--loops', default=','.join(ALL_LOOPS))
    parser.add_argument('--workloads', default=','.join(WORKLOADS))
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--window', type=float, default=2.0)
    parser.add_argument('--warmup', type=float, default=0.5)
    parser.add_argument('--conc', type=int, default=16)
    parser.add_argument('--quick', action='store_true', help='1 round, 0.5 s windows')
    parser.add_argument('-q', action='store_true', help='no progress on stderr')
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.window, args.warmup = 1, 0.5, 0.2
    loops = args.loops.split(',')
    workloads = args.workloads.split(',')
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f'unknown workloads {sorted(unknown)}; known: {", ".join(WORKLOADS)}')

    script = os.path.abspath(__file__)
    samples = {(w, lp): [] for w in workloads for lp in loops}
    failures = []
    with Servers(any(w.startswith('pg_') for w in workloads),
                 any(w.startswith('redis_') for w in workloads)) as servers:
        for round_number in range(args.rounds):
            for w_index, workload in enumerate(workloads):
                # The loop order rotates so that none always runs first or last.
                shift = (round_number + w_index) % len(loops)
                for loop_name in loops[shift:] + loops[:shift]:
                    log(f'round {round_number + 1}/{args.rounds} {workload} {loop_name}', args.q)
                    try:
                        result = run_child(script, ['sample', loop_name, workload,
                                                    servers.target(workload), str(args.conc),
                                                    str(args.warmup), str(args.window)],
                                           timeout=60 + args.window * 2)
                    except ChildError as exc:
                        warn(str(exc))
                        failures.append(f'{workload} {loop_name}: {exc}')
                        continue
                    samples[workload, loop_name].append(result)
        server_versions = servers.describe()
    info = run_child(script, ['versions'], timeout=60)
    machine = machine_info()

    print(f'# Database clients: {", ".join(f"{k} {v}" for k, v in info.items())}\n')
    print(f'{machine["date"]}, {machine["cpu"]} ({machine["cpus"]} CPUs), Linux '
          f'{machine["kernel"]}; servers: {"; ".join(server_versions)}. {args.rounds} rounds '
          f'of {args.window:g} s per (workload, loop), {args.conc} concurrent tasks; medians.\n')
    rows = []
    for workload in workloads:
        for loop_name in loops:
            runs = samples[workload, loop_name]
            if not runs:
                rows.append([workload, loop_name, '–', '–', '–'])
                continue
            rows.append([workload, loop_name,
                         fmt_rate(median([r['ops'] / r['seconds'] for r in runs])),
                         fmt_us(median([r['client_cpu'] / r['ops'] for r in runs])),
                         fmt_us(median([r['server_cpu'] / r['ops'] for r in runs]))])
    print(md_table(['workload', 'loop', 'ops/s', 'client CPU µs/op', 'server CPU µs/op'],
                   rows, 'll'))
    return report_failures(failures)


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--_child':
        raise SystemExit(child_main({'sample': sample, 'versions': versions}, sys.argv[2:]))
    raise SystemExit(main())
