#!/usr/bin/env python3
"""File I/O benchmark: uringloop's file API (io_uring, no threads) against aiofiles (a thread
pool) on the same uringloop loop and on asyncio's loop, interleaved.

Configurations:
  uringloop.open on uringloop    the file requests go through the loop's ring
  aiofiles on uringloop          the same loop, files through the default executor
  aiofiles on asyncio            the usual way today

Workloads (files in a temp dir on the machine's disk, page cache warm):
  small_read    read whole N small files (open, read, close), --conc tasks at once
  small_write   write whole N small files (create/truncate, write, close), --conc at once
  large_read    read one large file sequentially in 1 MiB chunks
  large_write   write one large file sequentially in 1 MiB chunks (no fsync)

Per (workload, configuration): operations per second (files, or MiB for the large file)
and the process's CPU per operation (user + system of every thread, so the thread pool's
work counts). One fresh process per sample; the configuration order rotates per round.

    python benchmarks/files.py               # 5 rounds
    python benchmarks/files.py --quick       # 1 round, smaller sizes
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import (ChildError, child_main, fmt_rate, fmt_us, log,  # noqa: E402
                     machine_info, md_table, median, new_loop, report_failures, run_child,
                     warn)

CONFIGS = ('uringloop/uringloop', 'aiofiles/uringloop', 'aiofiles/asyncio')
WORKLOADS = ('small_read', 'small_write', 'large_read', 'large_write')
CHUNK = 1 << 20


def own_cpu():
    # getrusage counts every thread of the process (the executor's too), in microseconds.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the child: one sample ----------------------------------------------------------------------

def opener(api):
    if api == 'aiofiles':
        import aiofiles
        return aiofiles.open
    sys.path.insert(0, ROOT)
    import uringloop
    return uringloop.open


async def small_files(open_, workload, directory, count, size, conc):
    import asyncio
    names = [os.path.join(directory, f'small{i}') for i in range(count)]
    data = b's' * size
    todo = iter(names)

    async def worker():
        for name in todo:
            if workload == 'small_read':
                async with open_(name, 'rb') as f:
                    got = await f.read()
                assert len(got) == size
            else:
                async with open_(name, 'wb') as f:
                    await f.write(data)

    await asyncio.gather(*(worker() for _ in range(conc)))
    return count


async def large_file(open_, workload, directory, mib):
    path = os.path.join(directory, 'large')
    if workload == 'large_read':
        total = 0
        async with open_(path, 'rb') as f:
            while True:
                chunk = await f.read(CHUNK)
                if not chunk:
                    break
                total += len(chunk)
        assert total == mib * CHUNK
    else:
        block = b'L' * CHUNK
        async with open_(os.path.join(directory, 'large_out'), 'wb') as f:
            for _ in range(mib):
                await f.write(block)
    return mib


def sample(config, workload, directory, count, size, conc, mib):
    import asyncio
    api, loop_name = config.split('/')
    open_ = opener(api)
    loop = new_loop(loop_name)
    asyncio.set_event_loop(loop)
    try:
        if workload.startswith('small'):
            work = small_files(open_, workload, directory, int(count), int(size), int(conc))
        else:
            work = large_file(open_, workload, directory, int(mib))
        cpu0, t0 = own_cpu(), time.perf_counter()
        ops = loop.run_until_complete(work)
        elapsed, cpu = time.perf_counter() - t0, own_cpu() - cpu0
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return {'ops': ops, 'seconds': elapsed, 'cpu': cpu}


def versions():
    import aiofiles
    sys.path.insert(0, ROOT)
    import uringloop
    try:
        from importlib.metadata import version
        aiofiles_version = version('aiofiles')
    except Exception:
        aiofiles_version = getattr(aiofiles, '__version__', '?')
    return {'uringloop': uringloop.__version__, 'aiofiles': aiofiles_version,
            'python': sys.version.split()[0]}


# -- the parent: files, rounds, report ----------------------------------------------------------

def prepare(directory, count, size, mib):
    for i in range(count):
        with open(os.path.join(directory, f'small{i}'), 'wb') as f:
            f.write(b's' * size)
    with open(os.path.join(directory, 'large'), 'wb') as f:
        for _ in range(mib):
            f.write(os.urandom(CHUNK))
    for name in os.listdir(directory):       # warm the page cache
        with open(os.path.join(directory, name), 'rb') as f:
            while f.read(CHUNK):
                pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', default=','.join(CONFIGS))
    parser.add_argument('--workloads', default=','.join(WORKLOADS))
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--count', type=int, default=2000, help='small files')
    parser.add_argument('--size', type=int, default=4096, help='bytes per small file')
    parser.add_argument('--conc', type=int, default=16, help='tasks at once (small files)')
    parser.add_argument('--mib', type=int, default=128, help='MiB in the large file')
    parser.add_argument('--dir', default=None, help='where the files go (default: a temp dir)')
    parser.add_argument('--quick', action='store_true', help='1 round, smaller sizes')
    parser.add_argument('-q', action='store_true', help='no progress on stderr')
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.count, args.mib = 1, 200, 16
    configs = args.configs.split(',')
    workloads = args.workloads.split(',')
    unknown = (set(workloads) - set(WORKLOADS)) | (set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f'unknown {sorted(unknown)}; known: {WORKLOADS} and {CONFIGS}')

    script = os.path.abspath(__file__)
    directory = tempfile.mkdtemp(prefix='uringloop-files-', dir=args.dir)
    samples = {(w, c): [] for w in workloads for c in configs}
    failures = []
    try:
        prepare(directory, args.count, args.size, args.mib)
        for round_number in range(args.rounds):
            for w_index, workload in enumerate(workloads):
                shift = (round_number + w_index) % len(configs)
                for config in configs[shift:] + configs[:shift]:
                    log(f'round {round_number + 1}/{args.rounds} {workload} {config}', args.q)
                    try:
                        result = run_child(script, ['sample', config, workload, directory,
                                                    str(args.count), str(args.size),
                                                    str(args.conc), str(args.mib)],
                                           timeout=120)
                    except ChildError as exc:
                        warn(str(exc))
                        failures.append(f'{workload} {config}: {exc}')
                        continue
                    samples[workload, config].append(result)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    info = run_child(script, ['versions'], timeout=60)
    machine = machine_info()

    print(f'# Files: {", ".join(f"{k} {v}" for k, v in info.items())}\n')
    print(f'{machine["date"]}, {machine["cpu"]} ({machine["cpus"]} CPUs), Linux '
          f'{machine["kernel"]}. {args.rounds} rounds; small files: {args.count} x '
          f'{args.size} B, {args.conc} tasks; large file: {args.mib} MiB in 1 MiB '
          f'chunks; medians.\n')
    rows = []
    for workload in workloads:
        unit = 'MiB' if workload.startswith('large') else 'files'
        for config in configs:
            runs = samples[workload, config]
            if not runs:
                rows.append([workload, config, '–', '–'])
                continue
            rows.append([workload, config,
                         f"{fmt_rate(median([r['ops'] / r['seconds'] for r in runs]))} {unit}/s",
                         fmt_us(median([r['cpu'] / r['ops'] for r in runs]))
                         + f' µs/{unit[:-1] if unit == "files" else unit}'])
    print(md_table(['workload', 'API / loop', 'throughput', 'CPU per op'], rows, 'll'))
    return report_failures(failures)


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--_child':
        raise SystemExit(child_main({'sample': sample, 'versions': versions}, sys.argv[2:]))
    raise SystemExit(main())
