"""Shared helpers for the uringloop benchmarks.

Nothing in here is specific to one benchmark: loop factories, the child
process protocol (one sample = one fresh process), statistics and markdown
rendering.  The benchmark scripts (``micro.py``) import it as a sibling module,
so run them as scripts (``python benchmarks/micro.py``), not with ``-m``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

ALL_LOOPS = ("uringloop", "uvloop", "asyncio")
# Loops the ratio columns are computed against, in this order.
BASELINES = ("uvloop", "asyncio")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# Loop factories (used inside the child process only)
# --------------------------------------------------------------------------

def _import_uringloop():
    """Import uringloop: the tree named by URINGLOOP_BENCH_TREE (a build to compare against,
    see `--loops uringloop@TREE`), else the installed copy, else an in-place build in the
    repo."""
    tree = os.environ.get('URINGLOOP_BENCH_TREE')
    if tree:
        # An editable install's import hook would find the installed copy first.
        sys.meta_path[:] = [f for f in sys.meta_path
                            if not type(f).__module__.startswith('__editable__')]
        sys.path.insert(0, tree)
    try:
        import uringloop
    except ImportError:
        if REPO_ROOT in sys.path:
            raise
        sys.path.insert(0, REPO_ROOT)
        import uringloop
    return uringloop


def _loop_kind(name: str) -> str:
    """The loop kind in `name`. "uringloop@TREE" names the uringloop package found in TREE
    (a build to compare against, interleaved in the same run): this process imports it from
    there."""
    kind, _, tree = name.partition("@")
    if tree:
        os.environ["URINGLOOP_BENCH_TREE"] = tree
    return kind


def new_loop(name: str):
    """Return a brand new, not yet running event loop of the given kind."""
    name = _loop_kind(name)
    if name == "asyncio":
        import asyncio

        return asyncio.new_event_loop()  # the default: selector loop on Linux
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "uringloop":
        return _import_uringloop().new_event_loop()
    raise ValueError(f"unknown loop {name!r}; known: {', '.join(ALL_LOOPS)}")


def loop_info(name: str) -> Dict[str, Any]:
    """Version / origin of a loop implementation (child side)."""
    name = _loop_kind(name)
    if name == "asyncio":
        import asyncio

        loop = asyncio.new_event_loop()
        try:
            kind = type(loop).__name__
        finally:
            loop.close()
        return {"version": platform.python_version(), "class": kind}
    mod = _import_uringloop() if name == "uringloop" else __import__(name)
    return {
        "version": getattr(mod, "__version__", "?"),
        "file": getattr(mod, "__file__", "?"),
    }


def probe_loop(name: str) -> Dict[str, Any]:
    """Child side of the availability check: the loop must run a coroutine."""
    import asyncio

    loop = new_loop(name)
    try:
        asyncio.set_event_loop(loop)

        async def _probe():
            await asyncio.sleep(0)
            fut = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(fut.set_result, 42)
            return await fut

        if loop.run_until_complete(_probe()) != 42:
            raise RuntimeError("probe coroutine returned a wrong value")
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    info = loop_info(name)
    info["class"] = info.get("class") or type(loop).__name__
    return info


# --------------------------------------------------------------------------
# Parent side: running children
# --------------------------------------------------------------------------

class ChildError(RuntimeError):
    pass


def run_child(script: str, args: Sequence[str], timeout: float,
              cpu: Optional[int] = None) -> Dict[str, Any]:
    """Run ``python script --_child args...`` (on one CPU if given) and parse the JSON on its
    last stdout line."""
    cmd = pinned([sys.executable, script, "--_child", *args], cpu)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildError(f"timed out after {timeout:.0f}s: {' '.join(args)}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ChildError(
            f"exit code {proc.returncode} for {' '.join(args)}:\n    " + "\n    ".join(tail)
        )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise ChildError(f"no output from child {' '.join(args)}")
    return json.loads(lines[-1])


def child_main(handlers: Dict[str, Callable[..., Dict[str, Any]]], argv: List[str]) -> int:
    """Dispatch ``--_child <command> args...``; prints one JSON line on stdout."""
    command, rest = argv[0], argv[1:]
    result = handlers[command](*rest)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/PID/stat."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def pinned(cmd: List[str], cpu: Optional[int]) -> List[str]:
    """cmd run on one CPU (taskset), or as it is when cpu is None."""
    return ['taskset', '-c', str(cpu)] + list(cmd) if cpu is not None else list(cmd)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Statistics and rendering
# --------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mad_pct(values: Sequence[float]) -> float:
    """Median absolute deviation, as a percentage of the median."""
    if len(values) < 2:
        return float("nan")
    m = statistics.median(values)
    if not m:
        return float("nan")
    return 100.0 * statistics.median(abs(v - m) for v in values) / m


def fmt_rate(x: float) -> str:
    if x != x:  # nan
        return "–"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{suffix}" if x / div < 100 else f"{x / div:.0f}{suffix}"
    return f"{x:.3g}"


def fmt_us(seconds: float) -> str:
    if seconds != seconds:
        return "–"
    us = seconds * 1e6
    return f"{us:.3f}" if us < 10 else f"{us:.1f}" if us < 100 else f"{us:.0f}"


def fmt_ratio(x: Optional[float]) -> str:
    if x is None or x != x:
        return "–"
    return f"{x:.2f}×"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """Render a markdown table; ``align`` is one char per column: l / r."""
    align = align.ljust(len(header), "r")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    widths = [max(w, 4) for w in widths]

    def line(cells):
        out = []
        for cell, w, a in zip(cells, widths, align):
            cell = str(cell)
            out.append(cell.rjust(w) if a == "r" else cell.ljust(w))
        return "| " + " | ".join(out) + " |"

    sep_line = "| " + " | ".join(
        ("-" * (w - 1) + ":") if a == "r" else (":" + "-" * (w - 1))
        for w, a in zip(widths, align)
    ) + " |"
    return "\n".join([line(header), sep_line, *(line(r) for r in rows)])


def report_failures(failures: Sequence[str]) -> int:
    """Print the samples that failed, if any; the exit status a benchmark's main returns."""
    if not failures:
        return 0
    print('\nFailed samples:\n' + '\n'.join(f'- {f}' for f in failures))
    return 1


def machine_info() -> Dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
