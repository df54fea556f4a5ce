"""Run an asyncio program on uringloop, unchanged:

    python -m uringloop [--stats] script.py [args...]
    python -m uringloop [--stats] -m module [args...]

The program runs as `python script.py` (or `python -m module`) would run it: as `__main__`,
with sys.argv set to the script and its arguments, and the script's directory first on
sys.path. Its asyncio.run(), asyncio.Runner() and asyncio.new_event_loop() calls get
uringloop loops; a loop factory the program passes itself is left alone. With --stats, the
ring statistics of every loop it created are printed to stderr when it ends.
"""

import asyncio
import os
import runpy
import sys

import uringloop

USAGE = """\
usage: python -m uringloop [--stats] script.py [args...]
       python -m uringloop [--stats] -m module [args...]

Runs an asyncio program with uringloop as asyncio's event loop: its asyncio.run(),
asyncio.Runner() and asyncio.new_event_loop() calls get uringloop loops.

options:
  --stats     print the ring statistics of each loop the program created, at exit
  -m module   run a library module as a script, as `python -m module`
  -h, --help  show this message and exit
  --version   print uringloop's version and exit
"""


class Invocation:
    """What the command line asks for: the program (a script path or a module name), its
    arguments, and whether to print the ring statistics."""

    def __init__(self, argv):
        self.stats = False
        self.script = self.module = None
        self.args = []
        rest = list(argv)
        while rest:
            word = rest.pop(0)
            if word == '--stats':
                self.stats = True
            elif word in ('-h', '--help'):
                print(USAGE, end='')
                raise SystemExit(0)
            elif word == '--version':
                print('uringloop', uringloop.__version__)
                raise SystemExit(0)
            elif word == '-m':
                if not rest:
                    usage_error('-m needs a module name')
                self.module = rest.pop(0)
                break
            elif word.startswith('-m') and len(word) > 2:
                self.module = word[2:]
                break
            elif word == '--':
                if not rest:
                    usage_error('no script given')
                self.script = rest.pop(0)
                break
            elif word.startswith('-'):
                usage_error(f'unknown option {word}')
            else:
                self.script = word
                break
        else:
            usage_error('no script given')
        self.args = rest


def usage_error(message):
    sys.stderr.write(USAGE + f'\npython -m uringloop: error: {message}\n')
    raise SystemExit(2)


class LoopRecord:
    """The loops the program created, kept only for --stats."""

    def __init__(self):
        self.loops = []

    def new_event_loop(self):
        loop = uringloop.new_event_loop()
        self.loops.append(loop)
        return loop

    def report(self, out):
        for number, loop in enumerate(self.loops, 1):
            stats = loop.ring_stats()
            fields = stats._asdict()
            if loop.is_closed():
                # A closed loop has no ring left: its size now says nothing.
                for name in ('capacity', 'cq_capacity', 'pending'):
                    del fields[name]
            state = 'closed' if loop.is_closed() else 'open'
            text = ' '.join(f'{name}={value}' for name, value in fields.items())
            out.write(f'uringloop: loop {number} ({state}): {text}\n')
        if not self.loops:
            out.write('uringloop: the program created no event loop\n')
        out.flush()


def make_default(loop_factory):
    """Makes loop_factory the source of asyncio's default loops: asyncio.run() and
    asyncio.Runner() without a loop_factory, asyncio.new_event_loop(), and get_event_loop()
    where it still creates one. Through the event loop policy, which is how asyncio picks
    them; from Python 3.14, where setting a policy is deprecated, through the private setter,
    so that the program sees no warning it did not cause itself."""
    if sys.version_info >= (3, 14):
        base, set_policy = (asyncio.events._BaseDefaultEventLoopPolicy,
                            asyncio.events._set_event_loop_policy)
    else:
        base, set_policy = asyncio.DefaultEventLoopPolicy, asyncio.set_event_loop_policy

    class UringloopPolicy(base):
        def _loop_factory(self):
            return loop_factory()

    set_policy(UringloopPolicy())


def run_program(invocation):
    """Runs the script or module as __main__, through runpy as Python's own command line
    does: sys.argv[0] is the script's path (or the module's file), the rest its arguments."""
    if invocation.module is not None:
        sys.argv = [invocation.module] + invocation.args
        runpy.run_module(invocation.module, run_name='__main__', alter_sys=True)
        return
    script = invocation.script
    if not os.path.exists(script):
        sys.stderr.write(f"python -m uringloop: can't open file {script!r}: "
                         f'[Errno 2] No such file or directory\n')
        raise SystemExit(2)
    sys.argv = [script] + invocation.args
    # As `python script.py`: the script's directory, not the current one, heads sys.path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name='__main__')


def main(argv=None):
    invocation = Invocation(sys.argv[1:] if argv is None else argv)
    record = LoopRecord() if invocation.stats else None
    make_default(record.new_event_loop if record else uringloop.new_event_loop)
    try:
        run_program(invocation)
    finally:
        if record is not None:
            record.report(sys.stderr)


if __name__ == '__main__':
    main()
