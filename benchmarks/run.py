#!/usr/bin/env python3
"""Every benchmark suite, uringloop vs uvloop vs asyncio, in one interleaved run.

    python benchmarks/run.py              # the full run (about 20 minutes)
    python benchmarks/run.py --quick      # a smoke run (about 3 minutes)
    python benchmarks/run.py --suites echo,churn --rounds 5 --out /tmp/results

Suites: echo (echo.py: Protocol and streams servers, 1 KiB and 64 KiB, 10 and 100
connections, a C load generator), http (http_servers.py: uvicorn + httptools and aiohttp,
loaded by wrk at 10 and 100 connections), micro (micro.py: the loop core, with Cachegrind
instruction counts), churn (churn.py: pending operations crossing a power of two).

Every round runs one sample of every (suite, configuration, loop), the loops of a
configuration back to back in an order that rotates; ratios are medians of the per-round
ratios, so a drift of the machine hits all loops alike. Servers run on CPU 0 and load
generators on CPU 1; single-process suites (micro, churn) run on CPU 0.

Writes into the results directory: results.md (the tables), results.json (every sample,
the summaries and the machine), and PNG plots. Missing tools are installed first: wrk and
valgrind with apt-get (as root), the Python packages of the project's `bench` extra with pip.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _common as C  # noqa: E402

SUITES = ('echo', 'http', 'micro', 'churn')
SERVER_CPU, LOAD_CPU = 0, 1
MICRO_BENCHES = ('call_soon_chain', 'call_soon_batch', 'timers', 'sleep0', 'future_pingpong')
ICOUNT_BENCHES = ('call_soon_chain', 'timers', 'sleep0', 'future_pingpong')
# Instruction counts: the two work sizes whose difference is divided by the extra operations,
# so interpreter start-up and the warm-up cancel out.
ICOUNT_SIZES = (2000, 12000)
ICOUNT_WARMUP = 500


class Settings:
    """How long each sample runs: the full run, or --quick."""

    def __init__(self, quick):
        self.quick = quick
        self.rounds = 1 if quick else 3
        self.echo_warmup, self.echo_window = (0.2, 0.6) if quick else (0.5, 2.0)
        self.http_warmup, self.http_window = (1, 1) if quick else (1, 3)
        self.micro_scale = 0.1 if quick else 1.0
        self.micro_reps_per_round = 1 if quick else 2
        self.churn_warmup, self.churn_window = (0.2, 0.5) if quick else (0.3, 2.0)
        self.icount_benches = ('call_soon_chain',) if quick else ICOUNT_BENCHES
        self.icount_sizes = (1000, 3000) if quick else ICOUNT_SIZES


# -- dependencies ---------------------------------------------------------------------------------

def bench_requirements():
    """The `bench` extra of pyproject.toml: what the suites import."""
    try:
        import tomllib
    except ImportError:          # Python 3.10
        return ['uvloop', 'uvicorn', 'httptools', 'aiohttp', 'matplotlib']
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        return tomllib.load(f)['project']['optional-dependencies']['bench']


def ensure_dependencies(install):
    tools = {'wrk': 'wrk', 'valgrind': 'valgrind', 'perf': 'linux-perf', 'taskset': 'util-linux'}
    missing = [pkg for tool, pkg in tools.items() if shutil.which(tool) is None]
    if missing and install:
        if os.geteuid() == 0 and shutil.which('apt-get'):
            C.log(f'installing {" ".join(missing)} with apt-get')
            env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
            subprocess.run(['apt-get', 'update', '-q'], env=env, stdout=subprocess.DEVNULL)
            subprocess.run(['apt-get', 'install', '-y', '-q', *missing], env=env,
                           stdout=subprocess.DEVNULL)
        else:
            C.warn(f'missing {" ".join(missing)}; install them (apt-get install ...)')
    modules = {'uvloop': 'uvloop', 'uvicorn': 'uvicorn', 'httptools': 'httptools',
               'aiohttp': 'aiohttp', 'matplotlib': 'matplotlib'}
    absent = [m for m in modules if not _importable(m)]
    if absent and install:
        reqs = bench_requirements()
        C.log(f'installing the bench extra with pip ({", ".join(reqs)})')
        subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', *reqs], check=False)


def _importable(module):
    return subprocess.run([sys.executable, '-c', f'import {module}'],
                          capture_output=True).returncode == 0


# -- the plan: every sample of every suite, interleaved -------------------------------------------

def configurations(suites, settings, loops):
    """(suite, config) pairs in the order a round runs them."""
    out = []
    if 'echo' in suites:
        out += [('echo', {'style': st, 'size': sz, 'conns': c})
                for st in ('protocol', 'streams') for sz in (1024, 65536) for c in (10, 100)]
    if 'http' in suites:
        out += [('http', {'app': a, 'conns': c}) for a in ('uvicorn', 'aiohttp')
                for c in (10, 100)]
    if 'micro' in suites:
        out += [('micro', {'bench': b}) for b in MICRO_BENCHES]
    if 'churn' in suites:
        out += [('churn', {'case': c}) for c in ('cross', 'steady', 'queued', 'fanout')]
    return out


def label(suite, cfg):
    if suite == 'echo':
        return f"echo {cfg['style']} {cfg['size'] // 1024}KiB {cfg['conns']}c"
    if suite == 'http':
        return f"http {cfg['app']} {cfg['conns']}c"
    return f"{suite} {cfg.get('bench') or cfg.get('case')}"


class Runner:
    """Runs one sample of a (suite, config, loop) and returns its figures."""

    def __init__(self, settings, tmp):
        self.s = settings
        self.tmp = tmp
        self._load = None
        self._idle = None

    def sample(self, suite, cfg, loop):
        return getattr(self, suite)(cfg, loop)

    def echo(self, cfg, loop):
        import echo
        if self._load is None:
            self._load = echo.build_load(self.tmp)
        r = echo.one_sample(self._load, loop, cfg['style'], cfg['size'], cfg['conns'],
                            self.s.echo_warmup, self.s.echo_window, cpus=(SERVER_CPU, LOAD_CPU))
        return {'ops_per_s': r['rtps'], 'cpu_us_per_op': r['cpu_us_per_rt'],
                'p50_us': r['p50_us'], 'p99_us': r['p99_us'], 'syscalls_per_op': r['sys_per_rt'],
                'resizes_per_s': r['resizes_per_s'], 'resize_share': r['resize_share']}

    def http(self, cfg, loop):
        import http_servers
        r = http_servers.one_sample(loop, cfg['app'], cfg['conns'], self.s.http_warmup,
                                    self.s.http_window, cpus=(SERVER_CPU, LOAD_CPU))
        return {'ops_per_s': r['rps'], 'cpu_us_per_op': r['cpu_us_per_req'],
                'p50_us': r['p50_s'] * 1e6, 'p99_us': r['p99_s'] * 1e6,
                'errors': r['errors'] + (1 if 'socket_errors' in r else 0)}

    def micro(self, cfg, loop):
        import micro
        bench = micro.BENCHMARKS[cfg['bench']]
        n = max(10, int(bench.n * self.s.micro_scale))
        rates, cpus = [], []
        for _ in range(self.s.micro_reps_per_round):
            r = C.run_child(os.path.join(HERE, 'micro.py'),
                            ['sample', loop, cfg['bench'], str(n), str(max(1, n // 10))],
                            timeout=120, cpu=SERVER_CPU)
            rates.append(r['ops'] / r['wall'])
            cpus.append(r['cpu'] * 1e6 / r['ops'])
        return {'ops_per_s': C.median(rates), 'cpu_us_per_op': C.median(cpus)}

    def churn(self, cfg, loop):
        import churn
        if self._idle is None:
            self._idle = churn.idle_for_cross()
        r = churn.sample(loop, cfg['case'], self.s.churn_warmup, self.s.churn_window,
                         self._idle, cpu=SERVER_CPU)
        d = churn.derive(r)
        d['idle_receives'] = self._idle
        return d


def icounts(loops, settings, progress):
    """Instructions per operation of the micro benchmarks under Cachegrind (not timed, so
    the machine's load does not move them)."""
    if shutil.which('valgrind') is None:
        C.warn('valgrind missing: no instruction counts')
        return {}
    out = {}
    n1, n2 = settings.icount_sizes
    for bench in settings.icount_benches:
        for loop in loops:
            counts = []
            for n in (n1, n2):
                progress(f'cachegrind {bench} {loop} N={n}')
                counts.append(cachegrind_instructions(loop, bench, n))
            if None not in counts:
                out.setdefault(bench, {})[loop] = (counts[1] - counts[0]) / (n2 - n1)
    return out


def cachegrind_instructions(loop, bench, n):
    cmd = ['valgrind', '--tool=cachegrind', '--cache-sim=no', '--cachegrind-out-file=/dev/null',
           sys.executable, os.path.join(HERE, 'micro.py'), '--_child', 'sample', loop, bench,
           str(n), str(ICOUNT_WARMUP)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        C.warn(f'cachegrind timed out on {bench} / {loop}')
        return None
    m = re.search(r'I\s+refs:\s+([\d,]+)', proc.stderr)
    if proc.returncode != 0 or not m:
        C.warn(f'cachegrind failed on {bench} / {loop}: {proc.stderr.strip()[-300:]}')
        return None
    return int(m.group(1).replace(',', ''))


# -- summaries ------------------------------------------------------------------------------------

RATIO_PAIRS = (('uringloop', 'uvloop'), ('uringloop', 'asyncio'), ('uvloop', 'asyncio'))


def summarize(samples, loops):
    """Per (suite, config): per-loop medians of every figure, and per-round paired ratios."""
    out = []
    for entry in samples:
        per_loop = {}
        for loop in loops:
            rs = [r for r in entry['samples'].get(loop, []) if r is not None]
            if not rs:
                continue
            keys = {k for r in rs for k in r if k != 'round'}
            per_loop[loop] = {k: C.median([r[k] for r in rs if r.get(k) is not None])
                              if any(r.get(k) is not None for r in rs) else None
                              for k in sorted(keys)}
        ratios = {}
        for a, b in RATIO_PAIRS:
            if a not in loops or b not in loops:
                continue
            for key in ('ops_per_s', 'cpu_us_per_op', 'p99_us'):
                ra = {r['round']: r.get(key) for r in entry['samples'].get(a, []) if r}
                rb = {r['round']: r.get(key) for r in entry['samples'].get(b, []) if r}
                paired = [ra[k] / rb[k] for k in ra.keys() & rb.keys()
                          if ra[k] is not None and rb[k]]
                if paired:
                    ratios[f'{a}/{b} {key}'] = C.median(paired)
        out.append({'suite': entry['suite'], 'config': entry['config'], 'loops': per_loop,
                    'ratios': ratios})
    return out


def find(summary, suite, **cfg):
    for s in summary:
        if s['suite'] == suite and all(s['config'].get(k) == v for k, v in cfg.items()):
            return s
    return None


def ratio(summary, suite, key, a='uringloop', b='uvloop', **cfg):
    s = find(summary, suite, **cfg)
    return s['ratios'].get(f'{a}/{b} {key}') if s else None


def value(summary, suite, loop, key, **cfg):
    s = find(summary, suite, **cfg)
    return s['loops'].get(loop, {}).get(key) if s else None


def fmt_x(v, nd=2):
    return '–' if v is None or v != v else f'{v:.{nd}f}'


def fmt_range(vals, nd=2):
    vals = [v for v in vals if v is not None and v == v]
    if not vals:
        return '–'
    lo, hi = min(vals), max(vals)
    return fmt_x(lo, nd) if abs(hi - lo) < 10 ** -nd else f'{fmt_x(lo, nd)}-{fmt_x(hi, nd)}'


def headline(summary, ic):
    """The figures issue 12 tracks: uringloop / uvloop, with the targets."""
    rows = []

    def add(figure, measured, target, ok):
        rows.append([figure, measured, target, '–' if ok is None else ('yes' if ok else 'no')])

    def le(v, t):
        return None if v is None else v <= t

    def ge(v, t):
        return None if v is None else v >= t

    for style, targets in (('protocol', (0.95, 0.90)), ('streams', (0.90, 0.80))):
        vs = [ratio(summary, 'echo', 'cpu_us_per_op', style=style, size=65536, conns=c)
              for c in (10, 100)]
        ok = None if None in vs else all(v <= t for v, t in zip(vs, targets))
        add(f'server CPU per round-trip, {style} echo 64 KiB, 10 / 100 conns',
            ' / '.join(fmt_x(v) for v in vs), f'<= {targets[0]} / <= {targets[1]}', ok)
    for conns, t in ((10, 0.80), (100, 0.70)):
        vs = [ratio(summary, 'echo', 'cpu_us_per_op', style=st, size=1024, conns=conns)
              for st in ('protocol', 'streams')]
        worst = max((v for v in vs if v is not None), default=None)
        add(f'same, every 1 KiB variant, {conns} conns (protocol, streams)',
            ' , '.join(fmt_x(v) for v in vs), f'<= {t}', le(worst, t))
    def by_cpu(app, conns):
        # Requests per CPU-second: what req/s would be if both servers had the core to
        # themselves.
        v = ratio(summary, 'http', 'cpu_us_per_op', app=app, conns=conns)
        return 1 / v if v else None

    v = ratio(summary, 'http', 'ops_per_s', app='aiohttp', conns=10)
    add('aiohttp web server, req/s, 10 conns (by CPU per request)',
        f"{fmt_x(v)} ({fmt_x(by_cpu('aiohttp', 10))})", '>= 1.4', ge(v, 1.4))
    vs = [ratio(summary, 'http', 'ops_per_s', app='uvicorn', conns=c) for c in (10, 100)]
    add('uvicorn + httptools, req/s, 10 / 100 conns (by CPU per request)',
        ' / '.join(fmt_x(v) for v in vs) + ' ('
        + ' / '.join(fmt_x(by_cpu('uvicorn', c)) for c in (10, 100)) + ')',
        '>= 1.5 / >= 1.5', None if None in vs else min(vs) >= 1.5)
    vs = [ratio(summary, 'http', 'p99_us', app=a, conns=10) for a in ('uvicorn', 'aiohttp')]
    add('p99 latency, uvicorn / aiohttp, 10 conns', ' / '.join(fmt_x(v) for v in vs), '<= 1.0',
        None if None in vs else max(vs) <= 1.0)
    sys_u = [value(summary, 'echo', 'uringloop', 'syscalls_per_op', style=st, size=sz, conns=100)
             for st in ('protocol', 'streams') for sz in (1024, 65536)]
    sys_v = [value(summary, 'echo', 'uvloop', 'syscalls_per_op', style=st, size=sz, conns=100)
             for st in ('protocol', 'streams') for sz in (1024, 65536)]
    worst = max((v for v in sys_u if v is not None), default=None)
    add('syscalls per round-trip, 100 conns, echo variants (uringloop; uvloop)',
        f'{fmt_range(sys_u)} ({fmt_range(sys_v)})', '<= 0.5', le(worst, 0.5))
    for bench, t, name in (('call_soon_chain', 2.0, 'call_soon (chain)'),
                           ('call_soon_batch', 2.0, 'call_soon (batch)'),
                           ('timers', 2.0, 'timers'), ('sleep0', 1.3, 'sleep(0)'),
                           ('future_pingpong', 1.3, 'future ping-pong')):
        v = ratio(summary, 'micro', 'ops_per_s', bench=bench)
        cpu = ratio(summary, 'micro', 'cpu_us_per_op', bench=bench)
        ir = ic.get(bench, {})
        irr = (ir['uvloop'] / ir['uringloop']) if 'uvloop' in ir and 'uringloop' in ir else None
        add(f'micro: {name}, ops/s (by CPU per op; by instructions per op)',
            f'{fmt_x(v)} ({fmt_x(1 / cpu if cpu else None)}; {fmt_x(irr)})', f'>= {t}',
            ge(v, t))
    shares, rates = [], []
    for s in summary:
        if s['suite'] in ('churn', 'echo'):
            u = s['loops'].get('uringloop', {})
            if s['suite'] == 'churn':
                rates.append((s['config']['case'], u.get('resizes_per_s')))
            shares.append(u.get('resize_share'))
    # cross keeps one more idle receive than steady; only resizes would make that difference
    # the ring's. The same quotient on a loop without a ring shows what the workload itself adds.
    crossing = []
    for loop in ('uringloop', 'uvloop'):
        cross = value(summary, 'churn', loop, 'cpu_us_per_op', case='cross')
        steady = value(summary, 'churn', loop, 'cpu_us_per_op', case='steady')
        if cross and steady:
            crossing.append(f'{loop} {cross:.1f} / {steady:.1f} µs')
    if crossing:
        add('churn: CPU per round-trip, cross / steady (not a resize measure: see the resize '
            'row below)', ', '.join(crossing), '–', None)
    measured = [v for v in shares if v is not None]
    rate_txt = ', '.join(f'{c} {v:,.0f}/s' for c, v in rates if v is not None) or '–'
    add('ring resizes, churn cases; share of loop time resizing (worst, churn and echo)',
        rate_txt + '; ' + (f'{100 * max(measured):.2f}%' if measured else
                           'share not measured (ring_stats() has no resize_time)'),
        '< 2% of loop time', (max(measured) < 0.02) if measured else None)
    return rows


# -- rendering ------------------------------------------------------------------------------------

def render(data):
    summary, loops = data['summary'], data['loops']
    m = data['machine']
    lines = ['# uringloop benchmarks', '',
             f"{m['date']} · {m['python']} · Linux {m['kernel']} · {m['cpu']} · "
             f"{m['cpus_usable']} usable CPUs  ",
             'loops: ' + ', '.join(f"{n} {data['loop_versions'].get(n, '?')}" for n in loops)
             + '  ',
             f"`{data['command']}` · {data['rounds']} interleaved rounds · "
             f"{data['elapsed_s'] / 60:.1f} min · load average before / after: "
             f"{data['load_before']} / {data['load_after']}",
             '', '## Headline: uringloop / uvloop (issue 12)', '',
             'Ratios are medians of per-round paired ratios (CPU per op and p99: lower is '
             'better; req/s and ops/s: higher is better).', '']
    lines.append(C.md_table(['figure', 'uringloop / uvloop', 'target', 'met'],
                            data['headline'], 'llll'))
    pairs = [p for p in RATIO_PAIRS if p[0] in loops and p[1] in loops]

    def suite_table(suite, title, cols, note):
        entries = [s for s in summary if s['suite'] == suite]
        if not entries:
            return
        lines.extend(['', f'## {title}', '', note, ''])
        header = ['configuration', 'loop'] + [c[0] for c in cols]
        header += [f'{a}/{b} CPU' for a, b in pairs]
        rows = []
        for s in entries:
            for i, loop in enumerate(loops):
                v = s['loops'].get(loop)
                if v is None:
                    continue
                row = [label(suite, s['config']) if i == 0 else '', loop]
                row += [fmt(v.get(key)) for _, key, fmt in cols]
                row += [fmt_x(s['ratios'].get(f'{a}/{b} cpu_us_per_op')) if loop == a else ''
                        for a, b in pairs]
                rows.append(row)
        lines.append(C.md_table(header, rows, 'll'))

    def num(nd):
        return lambda v: fmt_x(v, nd)

    def share(v):
        return '–' if v is None else f'{100 * v:.2f}%'

    suite_table('echo', 'Echo (echo.py)', [
        ('rt/s', 'ops_per_s', C.fmt_rate), ('CPU µs/rt', 'cpu_us_per_op', num(2)),
        ('p50 µs', 'p50_us', num(0)), ('p99 µs', 'p99_us', num(0)),
        ('syscalls/rt', 'syscalls_per_op', num(2)), ('resizes/s', 'resizes_per_s', num(1)),
        ('resize share', 'resize_share', share)],
        'Server on CPU 0, C load generator on CPU 1. CPU = the server\'s user + system time '
        'per round-trip; syscalls from `perf stat -e raw_syscalls:sys_enter` on the server.')
    suite_table('http', 'HTTP (http_servers.py)', [
        ('req/s', 'ops_per_s', C.fmt_rate), ('CPU µs/req', 'cpu_us_per_op', num(1)),
        ('p50 µs', 'p50_us', num(0)), ('p99 µs', 'p99_us', num(0)), ('errors', 'errors', num(0))],
        'Server on CPU 0, `wrk -t1 --latency` on CPU 1, keep-alive, a 13-byte text/plain body.')
    suite_table('micro', 'Micro (micro.py)', [
        ('ops/s', 'ops_per_s', C.fmt_rate), ('CPU µs/op', 'cpu_us_per_op', num(3))],
        'One fresh process per sample on CPU 0; see micro.py for each benchmark.')
    if data['icounts']:
        lines.extend(['', 'Instructions per operation (Cachegrind, '
                      f"N={data['icount_sizes'][1]} minus N={data['icount_sizes'][0]}):", ''])
        rows = [[b] + [f"{d[l]:,.0f}" if l in d else '–' for l in loops]
                for b, d in data['icounts'].items()]
        lines.append(C.md_table(['benchmark'] + list(loops), rows, 'l'))
    suite_table('churn', 'Churn (churn.py)', [
        ('ops/s', 'ops_per_s', C.fmt_rate), ('CPU µs/op', 'cpu_us_per_op', num(2)),
        ('resizes/s', 'resizes_per_s', num(0)), ('resizes/op', 'resizes_per_op', num(2)),
        ('enters/op', 'enters_per_op', num(2)), ('resize share', 'resize_share', share)],
        'One process on CPU 0. An op is a round-trip (cross, queued) or a round of '
        f'{64} receives (fanout). Resize share: `ring_stats().resize_time` over the window\'s '
        'wall time; "–" on uringloop means this build does not count it.')
    if data['errors']:
        lines += ['', '## Errors', ''] + [f'- {e}' for e in data['errors']]
    return '\n'.join(lines) + '\n'


def plot(data, outdir):
    """PNG plots; returns the file names written."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        C.warn('matplotlib missing: no plots')
        return []
    summary, loops = data['summary'], data['loops']
    colors = {'uringloop': 'tab:red', 'uvloop': 'tab:blue', 'asyncio': 'tab:gray'}
    written = []
    echo = [s for s in summary if s['suite'] == 'echo']
    for key, ylabel, fname in (('ops_per_s', 'round-trips / s', 'echo_throughput.png'),
                               ('cpu_us_per_op', 'server CPU µs / round-trip', 'echo_cpu.png')):
        if not echo:
            break
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        for row, style in enumerate(('protocol', 'streams')):
            # left: against connections (one line per size); right: against size.
            for loop in loops:
                for size, ls in ((1024, '-'), (65536, '--')):
                    xs = [10, 100]
                    ys = [value(summary, 'echo', loop, key, style=style, size=size, conns=c)
                          for c in xs]
                    axes[row][0].plot(xs, ys, ls, marker='o', color=colors.get(loop),
                                      label=f'{loop} {size // 1024} KiB')
                for conns, ls in ((10, '-'), (100, '--')):
                    xs = [1, 64]
                    ys = [value(summary, 'echo', loop, key, style=style, size=s * 1024,
                                conns=conns) for s in xs]
                    axes[row][1].plot(xs, ys, ls, marker='o', color=colors.get(loop),
                                      label=f'{loop} {conns} conns')
            for col, xl in ((0, 'connections'), (1, 'message size (KiB)')):
                ax = axes[row][col]
                ax.set_xscale('log')
                ax.set_title(f'{style} echo')
                ax.set_xlabel(xl)
                ax.set_ylabel(ylabel)
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, fname), dpi=90)
        plt.close(fig)
        written.append(fname)
    http = [s for s in summary if s['suite'] == 'http']
    if http:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for key, ax, ylabel in (('ops_per_s', axes[0], 'requests / s'),
                                ('cpu_us_per_op', axes[1], 'server CPU µs / request')):
            for loop in loops:
                for app, ls in (('uvicorn', '-'), ('aiohttp', '--')):
                    ys = [value(summary, 'http', loop, key, app=app, conns=c) for c in (10, 100)]
                    ax.plot([10, 100], ys, ls, marker='o', color=colors.get(loop),
                            label=f'{loop} {app}')
            ax.set_xscale('log')
            ax.set_xlabel('connections')
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, 'http.png'), dpi=90)
        plt.close(fig)
        written.append('http.png')
    lat = [s for s in summary if s['suite'] in ('http', 'echo')]
    if lat:
        fig, ax = plt.subplots(figsize=(12, 5))
        width = 0.8 / max(1, len(loops))
        for i, loop in enumerate(loops):
            xs = [j + i * width for j in range(len(lat))]
            p50 = [s['loops'].get(loop, {}).get('p50_us') or 0 for s in lat]
            p99 = [s['loops'].get(loop, {}).get('p99_us') or 0 for s in lat]
            ax.bar(xs, p99, width, color=colors.get(loop), alpha=0.35, label=f'{loop} p99')
            ax.bar(xs, p50, width, color=colors.get(loop), label=f'{loop} p50')
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(lat))])
        ax.set_xticklabels([label(s['suite'], s['config']) for s in lat], rotation=60,
                           ha='right', fontsize=7)
        ax.set_yscale('log')
        ax.set_ylabel('latency µs (p50 solid, p99 light)')
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, 'latency.png'), dpi=90)
        plt.close(fig)
        written.append('latency.png')
    return written


# -- main -----------------------------------------------------------------------------------------

def loadavg():
    try:
        with open('/proc/loadavg') as f:
            return ' '.join(f.read().split()[:3])
    except OSError:
        return '?'


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='smoke run, about 3 minutes')
    ap.add_argument('--suites', default=','.join(SUITES))
    ap.add_argument('--loops', default=','.join(C.ALL_LOOPS))
    ap.add_argument('--rounds', type=int, help='interleaved rounds (default 3, --quick 1)')
    ap.add_argument('--out', help='results directory (default benchmarks/results/<time>)')
    ap.add_argument('--no-install', action='store_true', help='do not install missing tools')
    ap.add_argument('--no-icount', action='store_true', help='skip the Cachegrind counts')
    args = ap.parse_args()
    settings = Settings(args.quick)
    if args.rounds:
        settings.rounds = args.rounds
    suites = [s for s in args.suites.split(',') if s]
    loops = [s for s in args.loops.split(',') if s]
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise SystemExit(f'unknown suites: {", ".join(sorted(unknown))}')
    ensure_dependencies(not args.no_install)
    if 'http' in suites and shutil.which('wrk') is None:
        C.warn('wrk missing: no HTTP suite')
        suites.remove('http')
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit('needs two CPUs: the servers and the load generators each take one')
    outdir = args.out or os.path.join(
        HERE, 'results', datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
    os.makedirs(outdir, exist_ok=True)

    versions = {}
    for loop in loops:
        try:
            versions[loop] = C.run_child(os.path.join(HERE, 'micro.py'), ['probe', loop],
                                         timeout=60).get('version', '?')
        except C.ChildError as exc:
            raise SystemExit(f'{loop} is not usable: {exc}')

    configs = configurations(suites, settings, loops)
    total = settings.rounds * len(configs) * len(loops)
    entries = [{'suite': s, 'config': c, 'samples': {}} for s, c in configs]
    errors = []
    t_start = time.perf_counter()
    load_before = loadavg()
    done = [0]

    def progress(msg):
        el = time.perf_counter() - t_start
        eta = el / done[0] * (total - done[0]) if done[0] else float('nan')
        C.log(f'[{done[0]}/{total} {el / 60:4.1f} min, ~{eta / 60:.1f} min left] {msg}'
              if eta == eta else f'[{done[0]}/{total}] {msg}')

    C.log(f'{len(configs)} configurations x {len(loops)} loops x {settings.rounds} rounds; '
          f'results in {outdir}')
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(settings, tmp)
        for rnd in range(settings.rounds):
            for ci, entry in enumerate(entries):
                k = (rnd + ci) % len(loops)
                for loop in loops[k:] + loops[:k]:
                    name = f"round {rnd + 1} {label(entry['suite'], entry['config'])} {loop}"
                    r = None
                    for attempt in (1, 2):   # one failed sample must not end the run
                        try:
                            r = runner.sample(entry['suite'], entry['config'], loop)
                            r['round'] = rnd
                            break
                        except Exception as exc:
                            msg = f'{name} (attempt {attempt}): {type(exc).__name__}: {exc}'
                            errors.append(msg.strip().replace('\n', ' | ')[:500])
                            C.warn(errors[-1])
                    entry['samples'].setdefault(loop, []).append(r)
                    done[0] += 1
                    if r is not None:
                        progress(f"{name}: {C.fmt_rate(r['ops_per_s'])} ops/s, "
                                 f"{r['cpu_us_per_op']:.2f} µs CPU/op")
        ic = {}
        if 'micro' in suites and not args.no_icount:
            ic = icounts(loops, settings, progress)
    elapsed = time.perf_counter() - t_start
    summary = summarize(entries, loops)
    data = {'machine': C.machine_info(), 'command': ' '.join(['benchmarks/run.py'] + sys.argv[1:]),
            'loops': loops, 'loop_versions': versions, 'rounds': settings.rounds,
            'elapsed_s': elapsed, 'load_before': load_before, 'load_after': loadavg(),
            'entries': entries, 'summary': summary, 'icounts': ic,
            'icount_sizes': list(settings.icount_sizes), 'errors': errors}
    data['headline'] = headline(summary, ic)
    report = render(data)
    data['plots'] = plot(data, outdir)
    with open(os.path.join(outdir, 'results.md'), 'w') as f:
        f.write(report)
    with open(os.path.join(outdir, 'results.json'), 'w') as f:
        json.dump(data, f, indent=1, default=str)
    sys.stdout.write(report)
    C.log(f'wrote {outdir}: results.md, results.json, ' + ', '.join(data['plots']))
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
