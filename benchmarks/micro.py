#!/usr/bin/env python3
"""Micro benchmarks of the event loop core: uringloop vs uvloop vs asyncio.

Usage (from the repository root)::

    .venv/bin/python benchmarks/micro.py                      # all loops, ~2-3 min (9 reps)
    .venv/bin/python benchmarks/micro.py --quick              # smoke run, seconds
    .venv/bin/python benchmarks/micro.py --loops uvloop,asyncio --bench call_soon_chain,timers
    .venv/bin/python benchmarks/micro.py --out results.md --json results.json

Method
------
* Every sample runs in a fresh child process (``--_child``) that imports the
  loop, creates one new loop, does a short warm-up pass of the same benchmark on
  it, collects garbage, then times the real pass with ``time.perf_counter`` (wall)
  and ``time.process_time`` (CPU of the whole process, all threads).
* The parent interleaves: for each repetition, for each benchmark, it runs one
  sample of every loop, rotating the loop order every repetition.  Slow drifts
  of the machine (frequency, other tenants) are therefore shared by all loops.
* Each benchmark does a fixed amount of work (same N for every loop and every
  sample; random delays come from a fixed seed), and reports operations per
  second.  The tables show the median over repetitions, the median absolute
  deviation, CPU time per operation, and paired throughput ratios: the median
  over repetitions of rate(a) / rate(b) within one repetition (> 1 means a is
  faster).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


# ==========================================================================
# Benchmarks.  Each takes (loop, n) and returns the number of operations done.
# Each runs its work with loop.run_until_complete(); the caller times it.
# ==========================================================================

def bench_call_soon_chain(loop, n: int) -> int:
    """n callbacks, each scheduling the next one with call_soon."""
    done = loop.create_future()
    call_soon = loop.call_soon
    remaining = [n]

    def cb():
        remaining[0] -= 1
        if remaining[0]:
            call_soon(cb)
        else:
            done.set_result(None)

    call_soon(cb)
    loop.run_until_complete(done)
    return n


def bench_call_soon_batch(loop, n: int, batch: int = 1000) -> int:
    """Schedule `batch` callbacks at once; when they ran, schedule the next batch."""
    rounds = max(1, n // batch)
    done = loop.create_future()
    call_soon = loop.call_soon
    count = [0]
    left = [rounds]

    def cb():
        count[0] += 1

    def driver():
        # FIFO: this runs after the `batch` callbacks scheduled just before it.
        if left[0] == 0:
            done.set_result(None)
            return
        left[0] -= 1
        for _ in range(batch):
            call_soon(cb)
        call_soon(driver)

    call_soon(driver)
    loop.run_until_complete(done)
    assert count[0] == rounds * batch, count[0]
    return rounds * batch


def bench_sleep0(loop, n: int, tasks: int = 100) -> int:
    """`tasks` tasks each doing `await asyncio.sleep(0)` n/tasks times."""
    per_task = max(1, n // tasks)
    sleep = asyncio.sleep

    async def worker():
        for _ in range(per_task):
            await sleep(0)

    async def main():
        await asyncio.gather(*[worker() for _ in range(tasks)])

    loop.run_until_complete(main())
    return per_task * tasks


def _delays(n: int, seed: int) -> List[float]:
    rng = random.Random(seed)
    return [rng.random() * 1e-3 for _ in range(n)]  # 0 .. 1 ms


def bench_timers(loop, n: int, seed: int = 12345) -> int:
    """Schedule n call_later timers with random 0..1 ms delays, wait for all."""
    delays = _delays(n, seed)
    done = loop.create_future()
    remaining = [n]

    def fire():
        remaining[0] -= 1
        if not remaining[0]:
            done.set_result(None)

    def start():
        call_later = loop.call_later
        for d in delays:
            call_later(d, fire)

    loop.call_soon(start)
    loop.run_until_complete(done)
    return n


def bench_timers_cancel(loop, n: int, seed: int = 12345, keep: float = 0.1) -> int:
    """Schedule n timers (0..1 ms), cancel 90% of them in random order, wait for the rest."""
    delays = _delays(n, seed)
    rng = random.Random(seed + 1)
    order = list(range(n))
    rng.shuffle(order)
    n_keep = max(1, int(n * keep))
    to_cancel = order[n_keep:]
    done = loop.create_future()
    remaining = [n_keep]
    fired = [0]

    def fire():
        fired[0] += 1
        remaining[0] -= 1
        if not remaining[0]:
            done.set_result(None)

    def start():
        call_later = loop.call_later
        handles = [call_later(d, fire) for d in delays]
        for i in to_cancel:
            handles[i].cancel()

    loop.call_soon(start)
    loop.run_until_complete(done)
    assert fired[0] == n_keep, (fired[0], n_keep)  # no cancelled timer ran
    return n  # timers scheduled (90% of them cancelled)


def bench_future_pingpong(loop, n: int) -> int:
    """Two tasks ping-pong through fresh futures: create_future + set_result + await."""
    # box[0]: the future pong resolves (ping waits on it)
    # box[1]: the future ping resolves (pong waits on it)
    box = [None, None]
    create_future = loop.create_future

    async def ping():
        for i in range(n):
            reply = create_future()
            box[0] = reply
            box[1].set_result(i)  # wake pong
            await reply

    async def pong():
        for _ in range(n):
            wake = create_future()
            box[1] = wake
            i = await wake
            # re-arm happens at the top of the next iteration, before we yield
            box[0].set_result(i)

    async def main():
        t_pong = asyncio.ensure_future(pong())
        await asyncio.sleep(0)  # let pong create its first future
        await ping()
        await t_pong

    loop.run_until_complete(main())
    return n


def bench_threadsafe(loop, n: int) -> int:
    """Another thread posts n callbacks with call_soon_threadsafe; wait until all ran."""
    done = loop.create_future()
    remaining = [n]

    def cb():
        remaining[0] -= 1
        if not remaining[0]:
            done.set_result(None)

    error: List[BaseException] = []

    def producer():
        cst = loop.call_soon_threadsafe
        try:
            for _ in range(n):
                cst(cb)
        except BaseException as exc:  # reported by main(); otherwise we would hang
            error.append(exc)

    async def main():
        th = threading.Thread(target=producer, daemon=True)
        th.start()
        # Not a bare `await done`: if the producer dies we must not wait forever.
        # Costs one extra timer per 0.25 s, the same for every loop.
        while not done.done():
            await asyncio.wait([done], timeout=0.25)
            if error:
                raise error[0]
        th.join()

    loop.run_until_complete(main())
    return n


class Bench(NamedTuple):
    func: Callable[[Any, int], int]
    n: int  # work per sample at --scale 1 (about 0.4-0.5 s on asyncio, EPYC 2 vCPU)
    unit: str
    what: str


BENCHMARKS: Dict[str, Bench] = {
    "call_soon_chain": Bench(bench_call_soon_chain, 100_000, "callbacks/s",
                             "call_soon chain: each callback schedules the next"),
    "call_soon_batch": Bench(bench_call_soon_batch, 400_000, "callbacks/s",
                             "call_soon batch: 1000 scheduled at once, repeated"),
    "sleep0": Bench(bench_sleep0, 160_000, "switches/s",
                    "100 tasks x `await asyncio.sleep(0)`"),
    "timers": Bench(bench_timers, 60_000, "timers/s",
                    "call_later, random 0..1 ms delays, wait for all"),
    "timers_cancel": Bench(bench_timers_cancel, 80_000, "timers/s",
                           "call_later then cancel 90% (rate = timers scheduled)"),
    "future_pingpong": Bench(bench_future_pingpong, 35_000, "round-trips/s",
                             "2 tasks, create_future + set_result + await each way"),
    "threadsafe": Bench(bench_threadsafe, 60_000, "callbacks/s",
                        "call_soon_threadsafe from another thread"),
}


# ==========================================================================
# Child side
# ==========================================================================

def child_sample(loop_name: str, bench_name: str, n: str, warmup: str) -> Dict[str, Any]:
    bench = BENCHMARKS[bench_name]
    n_i, warm_i = int(n), int(warmup)
    loop = C.new_loop(loop_name)
    asyncio.set_event_loop(loop)
    try:
        if warm_i:
            bench.func(loop, warm_i)
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        ops = bench.func(loop, n_i)
        t1 = time.perf_counter()
        c1 = time.process_time()
    finally:
        asyncio.set_event_loop(None)
        t2 = time.perf_counter()
        loop.close()
        t3 = time.perf_counter()
    # close_s is not part of the result; reported so a slow close() gets noticed.
    return {"ops": ops, "wall": t1 - t0, "cpu": c1 - c0, "close_s": t3 - t2}


def child_probe(loop_name: str) -> Dict[str, Any]:
    return C.probe_loop(loop_name)


CHILD_HANDLERS = {"sample": child_sample, "probe": child_probe}


# ==========================================================================
# Parent side
# ==========================================================================

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--loops", default=",".join(C.ALL_LOOPS),
                   help="comma-separated subset of: %(default)s")
    p.add_argument("--bench", default=",".join(BENCHMARKS),
                   help="comma-separated subset of the benchmarks (default: all); see --list")
    p.add_argument("--reps", type=int, default=None,
                   help="samples per (benchmark, loop); default 9, --quick 2")
    p.add_argument("--scale", type=float, default=None,
                   help="multiply every benchmark's work size; default 1, --quick 0.05")
    p.add_argument("--quick", action="store_true",
                   help="fast smoke run (seconds): --reps 2 --scale 0.05")
    p.add_argument("--out", metavar="FILE", help="also write the markdown report to FILE")
    p.add_argument("--json", metavar="FILE", help="write all raw samples and metadata as JSON")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds allowed per child process (default %(default)s)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.quick else 9
    if args.scale is None:
        args.scale = 0.05 if args.quick else 1.0
    if args.reps < 1 or args.scale <= 0:
        p.error("--reps must be >= 1 and --scale > 0")
    return args


def select(spec: str, known, what: str) -> List[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    # "uringloop@TREE" is uringloop built in TREE (see _common._loop_kind).
    bad = [s for s in names if s.partition("@")[0] not in known]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (known: {', '.join(known)})")
    return list(dict.fromkeys(names))


def run(args) -> Dict[str, Any]:
    script = os.path.abspath(__file__)
    loops = select(args.loops, C.ALL_LOOPS, "loop")
    benches = select(args.bench, list(BENCHMARKS), "benchmark")

    available, infos = [], {}
    for name in loops:
        try:
            infos[name] = C.run_child(script, ["probe", name], timeout=60)
            available.append(name)
        except C.ChildError as exc:
            C.warn(f"skipping {name}: not usable: {str(exc).splitlines()[-1].strip()}")
    if not available:
        raise SystemExit("no event loop available")

    sizes = {b: max(10, int(BENCHMARKS[b].n * args.scale)) for b in benches}
    warm = {b: max(1, sizes[b] // 10) for b in benches}
    samples: Dict[str, Dict[str, List[Dict[str, float]]]] = {
        b: {l: [] for l in available} for b in benches
    }
    errors: List[str] = []
    failed = set()  # (benchmark, loop) cells that failed once: skipped afterwards
    slow_close = set()
    t_start = time.perf_counter()
    C.log(f"loops: {', '.join(available)}; {len(benches)} benchmarks x {args.reps} reps, "
          f"scale {args.scale:g}", args.quiet)
    for rep in range(args.reps):
        for bi, b in enumerate(benches):
            k = (rep + bi) % len(available)
            order = available[k:] + available[:k]  # rotate: nobody is always first
            for name in order:
                if (b, name) in failed:
                    continue
                try:
                    res = C.run_child(script, ["sample", name, b, str(sizes[b]), str(warm[b])],
                                      timeout=args.timeout)
                except C.ChildError as exc:
                    msg = f"{b} on {name}, rep {rep + 1}: {exc}"
                    C.warn(msg + " -- not retried in later repetitions")
                    errors.append(msg)
                    failed.add((b, name))
                    continue
                res["rep"] = rep
                if res.get("close_s", 0) > 0.5 and name not in slow_close:
                    slow_close.add(name)
                    C.warn(f"{name}: loop.close() took {res['close_s']:.1f}s "
                           f"(in {b}; not timed, but it slows the whole run down)")
                samples[b][name].append(res)
        C.log(f"  rep {rep + 1}/{args.reps} done ({time.perf_counter() - t_start:.0f}s)",
              args.quiet)

    return {
        "machine": C.machine_info(),
        "command": " ".join([os.path.relpath(script)] + sys.argv[1:]),
        "loops": {n: infos[n] for n in available},
        "config": {"reps": args.reps, "scale": args.scale, "sizes": sizes, "warmup": warm},
        "benchmarks": {b: {"unit": BENCHMARKS[b].unit, "what": BENCHMARKS[b].what}
                       for b in benches},
        "samples": samples,
        "errors": errors,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }


def ratio_pairs(loops: List[str]):
    """(a, base) pairs for the ratio columns: everything vs uvloop, then vs asyncio."""
    return [(a, b) for b in C.BASELINES if b in loops for a in loops
            if a != b and not (a in C.BASELINES
                               and C.BASELINES.index(a) > C.BASELINES.index(b))]


def summarize(data: Dict[str, Any]) -> Dict[str, Any]:
    """Per benchmark: per-loop medians, and paired ratios between loops.

    A ratio a/base is the median over repetitions of
    throughput(a, rep) / throughput(base, rep): the two samples of one
    repetition ran back to back, so slow machine drift cancels out.
    """
    out: Dict[str, Any] = {}
    loops = list(data["loops"])
    for b, per_loop in data["samples"].items():
        out[b] = {"loops": {}, "ratios": {}}
        for name, ss in per_loop.items():
            if not ss:
                continue
            rates = [s["ops"] / s["wall"] for s in ss]
            out[b]["loops"][name] = {
                "ops_per_s": C.median(rates),
                "mad_pct": C.mad_pct(rates),
                "wall_per_op": C.median([s["wall"] / s["ops"] for s in ss]),
                "cpu_per_op": C.median([s["cpu"] / s["ops"] for s in ss]),
                "n": len(ss),
            }
        for a, base in ratio_pairs(loops):
            ra = {s["rep"]: s["ops"] / s["wall"] for s in per_loop.get(a, [])}
            rb = {s["rep"]: s["ops"] / s["wall"] for s in per_loop.get(base, [])}
            paired = [ra[r] / rb[r] for r in sorted(ra.keys() & rb.keys())]
            if paired:
                out[b]["ratios"][f"{a}/{base}"] = {
                    "median": C.median(paired),
                    "min": min(paired),
                    "max": max(paired),
                    "n": len(paired),
                }
    return out


def render(data: Dict[str, Any], summary) -> str:
    loops = list(data["loops"])
    pairs = ratio_pairs(loops)
    m = data["machine"]
    lines = [
        "## Micro benchmarks: event loop core",
        "",
        f"{m['date']} · {m['python']} · Linux {m['kernel']} · {m['cpu']} "
        f"({m['cpus_usable']} usable CPUs)  ",
        "loops: " + ", ".join(f"{n} {i.get('version', '?')}" for n, i in data["loops"].items())
        + f"  \n`{data['command']}` · {data['config']['reps']} samples per cell, "
        f"fresh process per sample, interleaved · total {data['elapsed_s']:.0f}s",
        "",
        "Throughput: median over samples (higher is better). Ratios: median over "
        "repetitions of the paired throughput ratio (the two samples of a repetition "
        "ran back to back); > 1× means the first loop is faster.",
        "",
    ]
    header = ["benchmark", "unit"] + loops + [f"{a} / {b}" for a, b in pairs]
    rows = []
    for b, summ in summary.items():
        per = summ["loops"]
        row = [b, data["benchmarks"][b]["unit"]]
        row += [C.fmt_rate(per[n]["ops_per_s"]) if n in per else "–" for n in loops]
        for a, base in pairs:
            r = summ["ratios"].get(f"{a}/{base}")
            row.append(C.fmt_ratio(r["median"] if r else None))
        rows.append(row)
    lines.append(C.md_table(header, rows, "ll"))
    lines += [
        "",
        "Per operation: median wall time and CPU time (process_time, all threads) "
        "in µs; ±MAD is the spread of the throughput samples.",
        "",
    ]
    header = ["benchmark", "loop", "wall µs/op", "CPU µs/op", "CPU/wall", "±MAD", "samples"]
    rows = []
    for b, summ in summary.items():
        per = summ["loops"]
        for n in loops:
            if n not in per:
                continue
            s = per[n]
            rows.append([b, n, C.fmt_us(s["wall_per_op"]), C.fmt_us(s["cpu_per_op"]),
                         f"{s['cpu_per_op'] / s['wall_per_op']:.2f}",
                         f"{s['mad_pct']:.1f}%" if s["mad_pct"] == s["mad_pct"] else "–",
                         str(s["n"])])
    lines.append(C.md_table(header, rows, "ll"))
    lines += ["", "Benchmarks (work per sample):", ""]
    for b, meta in data["benchmarks"].items():
        lines.append(f"- `{b}` (N={data['config']['sizes'][b]:,}): {meta['what']}")
    if data["errors"]:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in data["errors"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:
        return C.child_main(CHILD_HANDLERS, argv[1:])
    args = parse_args(argv)
    if args.list:
        for name, b in BENCHMARKS.items():
            print(f"{name:16} N={b.n:<8,} {b.unit:14} {b.what}")
        return 0
    data = run(args)
    summary = summarize(data)
    data["summary"] = summary
    report = render(data, summary)
    sys.stdout.write(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
