#!/usr/bin/env python3
"""Run uvloop's own test suite (its asyncio-API tests) against uringloop and asyncio's loop.

uvloop's tests come in pairs: a mixin ``_TestXXX`` holds the tests, ``Test_UV_XXX`` runs them on
uvloop and ``Test_AIO_XXX`` (a ``uvloop._testbase.AIOTestCase``) on asyncio's loop, which the
test base creates in ``new_loop()``. This script downloads uvloop's sdist at run time into a
temporary directory (nothing of uvloop's is kept in this repository), collects the AIO classes
and runs them as they are (``--loop asyncio``) or with ``new_loop()`` returning a uringloop loop
(``--loop uringloop``). The AIO classes keep expecting asyncio's behaviour, so for uringloop
``is_asyncio_loop()`` answers True as well.

Every module runs in a child process that streams one JSON line per test start and result to
the parent. A test still running after ``--timeout-per-test`` seconds is killed (faulthandler
dumps its traceback into the log and exits), counted as hung, and the module resumes in a fresh
child after it. The test modules import ``uvloop`` (for ``_testbase``), psutil and pyOpenSSL,
as uvloop's own test extra does: ``pip install uvloop==0.23.0 psutil pyOpenSSL``.

    .venv/bin/python tests/conformance/run_uvloop_suite.py              # both loops
    .venv/bin/python tests/conformance/run_uvloop_suite.py --loop uringloop -v --modules test_tcp
"""
import argparse
import collections
import faulthandler
import glob
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

UVLOOP_VERSION = '0.23.0'
SCRIPT = os.path.abspath(__file__)
STATUSES = ('passed', 'failed', 'error', 'skipped', 'hung', 'crashed')


# ---------------------------------------------------------------------------------------------
# Child: runs one module's AIO tests, reporting on a private descriptor (tests write to stdout).

class StreamingResult(unittest.TestResult):
    """Reports each test's start and outcome as a JSON line, and arms the hang guard."""

    def __init__(self, out, timeout):
        super().__init__()
        self.out = out
        self.timeout = timeout
        self.failed_by_subtest = set()

    def emit(self, **record):
        self.out.write(json.dumps(record) + '\n')
        self.out.flush()

    def startTest(self, test):
        super().startTest(test)
        self.emit(event='start', test=test.id())
        faulthandler.dump_traceback_later(self.timeout, exit=True)

    def stopTest(self, test):
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)

    def done(self, test, status, reason=''):
        self.emit(event='end', test=test.id(), status=status, reason=reason[-1500:])

    def addSuccess(self, test):
        self.done(test, 'passed')

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.done(test, 'failed', self.failures[-1][1])

    def addError(self, test, err):
        super().addError(test, err)
        self.done(test, 'error', self.errors[-1][1])

    def addSubTest(self, test, subtest, err):
        # A failed subtest fails its test, which then reports neither success nor failure.
        super().addSubTest(test, subtest, err)
        if err is not None and test.id() not in self.failed_by_subtest:
            self.failed_by_subtest.add(test.id())
            self.done(test, 'failed', '%s: %s' % (subtest.id(), self._exc_info_to_string(
                err, test)))

    def addSkip(self, test, reason):
        self.done(test, 'skipped', reason)

    def addExpectedFailure(self, test, err):
        self.done(test, 'passed', 'expected failure')

    def addUnexpectedSuccess(self, test):
        self.done(test, 'failed', 'unexpected success')


def load_sdist_testbase(sdist):
    """uvloop's test modules import uvloop._testbase: use the sdist's copy of it."""
    import uvloop
    spec = importlib.util.spec_from_file_location(
        'uvloop._testbase', os.path.join(sdist, 'uvloop', '_testbase.py'))
    tb = importlib.util.module_from_spec(spec)
    sys.modules['uvloop._testbase'] = tb
    spec.loader.exec_module(tb)
    uvloop._testbase = tb
    return tb


def aio_tests(module, tb):
    loader = unittest.TestLoader()
    for name in sorted(dir(module)):
        cls = getattr(module, name)
        if isinstance(cls, type) and issubclass(cls, tb.AIOTestCase) and cls is not tb.AIOTestCase:
            for test in loader.loadTestsFromTestCase(cls):
                yield test


def child_main(args):
    out = os.fdopen(args.result_fd, 'w')
    tb = load_sdist_testbase(args.sdist)
    if args.loop == 'uringloop':
        import uringloop
        tb.AIOTestCase.new_loop = lambda self: uringloop.new_event_loop()
        tb.AIOTestCase.new_policy = lambda self: uringloop.EventLoopPolicy()
        tb.AIOTestCase.is_asyncio_loop = lambda self: True
    sys.path.insert(0, args.sdist)
    module = importlib.import_module('tests.' + args.module)
    if args.loop == 'uringloop':
        # Tests that run a program in a subprocess paste its loop expression into the source.
        for name in dir(module):
            cls = getattr(module, name)
            if getattr(cls, 'NEW_LOOP', None) == 'asyncio.new_event_loop()':
                cls.NEW_LOOP = "__import__('uringloop').new_event_loop()"
    skip = set(args.skip.split(',')) if args.skip else set()
    suite = unittest.TestSuite(t for t in aio_tests(module, tb) if t.id() not in skip)
    result = StreamingResult(out, args.timeout_per_test)
    suite.run(result)
    out.close()


# ---------------------------------------------------------------------------------------------
# Parent: downloads the sdist, runs every module in children, restarts after a hang or crash.

def fetch_sdist(workdir):
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-binary', ':all:',
                    '--no-deps', '--no-build-isolation', 'uvloop==' + UVLOOP_VERSION,
                    '-d', workdir], check=True)
    archive, = glob.glob(os.path.join(workdir, 'uvloop-*.tar.gz'))
    with tarfile.open(archive) as tar:
        tar.extractall(workdir)
    return os.path.join(workdir, 'uvloop-' + UVLOOP_VERSION)


def module_names(sdist):
    names = []
    for path in sorted(glob.glob(os.path.join(sdist, 'tests', 'test_*.py'))):
        with open(path) as f:
            if 'AIOTestCase' in f.read():
                names.append(os.path.basename(path)[:-3])
    return names


def run_module(loop, module, args, sdist, logdir):
    """Runs one module's tests to the end, across as many children as hangs and crashes need;
    returns {test id: (status, reason)}."""
    results = {}
    log_path = os.path.join(logdir, '%s-%s.log' % (loop, module))
    deadline = time.monotonic() + args.module_timeout
    while True:
        r, w = os.pipe()
        cmd = [sys.executable, SCRIPT, '--child', '--loop', loop, '--module', module,
               '--sdist', sdist, '--result-fd', str(w),
               '--timeout-per-test', str(args.timeout_per_test),
               '--skip', ','.join(results)]
        with open(log_path, 'a') as log:
            proc = subprocess.Popen(cmd, pass_fds=(w,), stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, cwd=os.path.dirname(sdist),
                                    start_new_session=True)
        os.close(w)
        running = None
        started = time.monotonic()
        with os.fdopen(r) as lines:
            for line in lines:
                record = json.loads(line)
                if record['event'] == 'start':
                    running, started = record['test'], time.monotonic()
                else:
                    results[record['test']] = (record['status'], record['reason'])
                    running = None
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, 9)
                    break
        code = proc.wait()
        if running is None:
            if code != 0 and not results:
                with open(log_path) as log:
                    results[module] = ('crashed', 'the module did not load: ' + log.read())
            return results
        hung = time.monotonic() - started >= args.timeout_per_test or time.monotonic() > deadline
        with open(log_path) as log:
            results[running] = ('hung' if hung else 'crashed',
                                'exit code %s: %s' % (code, log.read()[-3000:]))
        if time.monotonic() > deadline:
            return results


def short_reason(reason):
    lines = [line for line in reason.strip().splitlines() if line.strip()]
    raised = [line for line in lines if not line.startswith(' ') and ('Error' in line
              or 'Exception' in line or 'Interrupt' in line)]
    return (raised or lines or [''])[-1][:160]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--loop', default='asyncio,uringloop')
    parser.add_argument('--modules', default='', help='comma-separated, e.g. test_tcp')
    parser.add_argument('--timeout-per-test', type=float, default=30)
    parser.add_argument('--module-timeout', type=float, default=600)
    parser.add_argument('--json', help='write every test result to this file')
    parser.add_argument('--logs', help='keep each module\'s output in this directory')
    parser.add_argument('-v', '--verbose', action='store_true', help='list every failure')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--module', help=argparse.SUPPRESS)
    parser.add_argument('--sdist', help=argparse.SUPPRESS)
    parser.add_argument('--result-fd', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--skip', default='', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    with tempfile.TemporaryDirectory(prefix='uvloop-suite-') as workdir:
        sdist = fetch_sdist(workdir)
        modules = args.modules.split(',') if args.modules else module_names(sdist)
        logdir = args.logs or workdir
        os.makedirs(logdir, exist_ok=True)
        everything = {}
        for loop in args.loop.split(','):
            everything[loop] = {}
            for module in modules:
                results = run_module(loop, module, args, sdist, logdir)
                everything[loop].update(results)
                counts = collections.Counter(s for s, _ in results.values())
                print('%-10s %-22s %s' % (loop, module, ' '.join(
                    '%s=%d' % (s, counts[s]) for s in STATUSES if counts[s])), flush=True)
        for loop, results in everything.items():
            counts = collections.Counter(s for s, _ in results.values())
            print('\n%s: %d tests: %s' % (loop, len(results), ', '.join(
                '%d %s' % (counts[s], s) for s in STATUSES)))
            if args.verbose:
                for test, (status, reason) in sorted(results.items()):
                    if status not in ('passed', 'skipped'):
                        print('  %-7s %s: %s' % (status, test, short_reason(reason)))
        if 'asyncio' in everything and len(everything) > 1:
            for loop, results in everything.items():
                if loop == 'asyncio':
                    continue
                worse = sorted(t for t, (s, _) in results.items() if s != 'passed'
                               and everything['asyncio'].get(t, ('',))[0] == 'passed')
                print('\npassing on asyncio, not on %s: %d' % (loop, len(worse)))
                for test in worse:
                    status, reason = results[test]
                    print('  %-7s %s: %s' % (status, test, short_reason(reason)))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(everything, f, indent=1, sort_keys=True)


if __name__ == '__main__':
    sys.exit(main())
