#!/usr/bin/env python3
"""Run CPython's own ``test.test_asyncio`` modules against a chosen event loop.

This is a measuring tool, not a gate: it always exits 0 unless the runner
itself crashes.  See README.md next to this file for usage and baselines.

Architecture
------------
* The parent process (normal mode) runs every selected module in its own
  child process: ``sys.executable <this script> --child MODULE ...``.
* The child makes the target loop the default (policy patch), imports the
  test module, builds a flat unittest suite (for loop-targeted modules it
  swaps the module's selector-loop classes for subclasses of the per-loop
  mixins whose ``create_event_loop()`` returns the target loop) and runs it.
  Each test result is streamed to the parent as one JSON line on a private
  pipe (never stdout, which tests and their subprocesses write to).
* Per-test guard inside the child: a watchdog thread delivers SIGUSR2 to the
  main thread when a test (or a fixture between tests) exceeds
  ``--timeout-per-test``; the handler raises ``_TestTimeout`` (a
  KeyboardInterrupt subclass, so asyncio and unittest propagate it instead of
  swallowing it).  The child records the test as ``hang`` and exits with a
  "restart" code; the parent starts a fresh child that skips every test that
  already has a result.  If the interrupt cannot get through,
  ``faulthandler.dump_traceback_later(exit=True)`` kills the child a few
  seconds later (traceback lands in the child log) and the parent records the
  running test as ``hang`` and restarts likewise.  A child dying any other way
  (e.g. SIGSEGV in a C extension) is recorded as ``crash`` for the running
  test, and the module continues in a fresh child.
* Module guard in the parent: after ``--module-timeout`` seconds (summed over
  restarts) the child's process group is killed, the running test is
  recorded as ``hang`` and the tests that never ran are counted as
  ``notrun``.
"""

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest

SCRIPT = os.path.abspath(__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(SCRIPT)))

LOOPS = ('uringloop', 'uvloop', 'asyncio')

DEFAULT_MODULES = [
    'test_events', 'test_sock_lowlevel', 'test_sendfile', 'test_subprocess',
    'test_streams', 'test_server', 'test_sslproto', 'test_ssl',
    'test_runners', 'test_buffered_proto', 'test_threads', 'test_tasks',
    'test_taskgroups', 'test_timeouts', 'test_waitfor', 'test_locks',
    'test_queues', 'test_pep492', 'test_context', 'test_futures',
    'test_futures2', 'test_unix_events',
]

GROUPS = {
    'default': DEFAULT_MODULES,
    'all': DEFAULT_MODULES,
    'core': ['test_tasks', 'test_taskgroups', 'test_timeouts', 'test_waitfor',
             'test_locks', 'test_queues', 'test_futures', 'test_futures2',
             'test_runners', 'test_pep492', 'test_context', 'test_threads'],
    'sockets': ['test_sock_lowlevel', 'test_streams', 'test_server',
                'test_buffered_proto', 'test_events'],
    'rest': ['test_events', 'test_subprocess', 'test_sslproto', 'test_ssl',
             'test_sendfile', 'test_unix_events'],
}

# Child exit codes.
EXIT_DONE = 0
EXIT_RESTART = 75        # a test timed out and was recorded; start afresh
EXIT_FATAL = 76          # could not set up (import error, ...); do not retry

HARD_GRACE = 10.0        # seconds between the soft interrupt and the kill
MAX_RESTARTS = 100       # per module
ID_PREFIX = 'test.test_asyncio.'
TARGET_PREFIX = 'Target'  # class-name prefix of the per-loop mixin classes

# Statuses reported per test.
PASS, FAIL, ERROR, SKIP, XFAIL, XPASS, HANG, CRASH = (
    'pass', 'fail', 'error', 'skip', 'xfail', 'xpass', 'hang', 'crash')


# ---------------------------------------------------------------------------
# Child side
# ---------------------------------------------------------------------------

class _TestTimeout(KeyboardInterrupt):
    """Raised in the main thread of the child when a test runs too long.

    Subclassing KeyboardInterrupt matters: asyncio's Handle._run and
    Task.__step re-raise KeyboardInterrupt (other exceptions would be routed
    to the loop's exception handler and swallowed), and unittest re-raises it
    instead of recording it, so it unwinds out of the whole run.
    """


def _short_reason(exc_type, exc, limit=200):
    name = getattr(exc_type, '__name__', str(exc_type))
    text = str(exc).strip().splitlines()
    first = text[0] if text else ''
    reason = '%s: %s' % (name, first) if first else name
    if len(reason) > limit:
        reason = reason[:limit - 3] + '...'
    return reason


def _tail(text, limit=2000):
    if len(text) <= limit:
        return text
    return '...' + text[-(limit - 3):]


class _Emitter:
    def __init__(self, fd):
        self._f = os.fdopen(fd, 'w', buffering=1, encoding='utf-8',
                            errors='backslashreplace')
        self._lock = threading.Lock()

    def __call__(self, **record):
        line = json.dumps(record, sort_keys=True)
        with self._lock:
            self._f.write(line + '\n')
            self._f.flush()


class _Watchdog:
    """Interrupts the main thread when the armed deadline passes."""

    SIGNUM = signal.SIGUSR2   # not used by any test_asyncio module

    def __init__(self, seconds):
        self.seconds = seconds
        self._cond = threading.Condition()
        self._deadline = None
        self._label = None
        self.fired_label = None
        self._main_ident = threading.main_thread().ident
        signal.signal(self.SIGNUM, self._on_signal)
        # Started once and kept for the whole run, so that test.support's
        # thread-count bookkeeping sees a constant number of threads.
        t = threading.Thread(target=self._run, name='conformance-watchdog',
                             daemon=True)
        t.start()

    def arm(self, label):
        import faulthandler
        with self._cond:
            self._deadline = time.monotonic() + self.seconds
            self._label = label
            self.fired_label = None
            self._cond.notify()
        faulthandler.dump_traceback_later(self.seconds + HARD_GRACE,
                                          exit=True)

    def disarm(self):
        import faulthandler
        with self._cond:
            self._deadline = None
            self._label = None
            self._cond.notify()
        faulthandler.cancel_dump_traceback_later()

    def _run(self):
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if now < self._deadline:
                    self._cond.wait(self._deadline - now)
                    continue
                self.fired_label = self._label
                try:
                    signal.pthread_kill(self._main_ident, self.SIGNUM)
                except OSError:
                    pass
                # Keep poking (the first signal may land inside code that
                # swallows it) until disarmed or faulthandler kills us.
                self._deadline = now + 1.0

    def _on_signal(self, signum, frame):
        if self.fired_label is not None:
            raise _TestTimeout('test exceeded %ss' % self.seconds)


class _StreamingResult(unittest.TestResult):
    """A unittest result that streams one JSON record per test."""

    _ORDER = {PASS: 1, XFAIL: 1, SKIP: 2, XPASS: 3, FAIL: 4, ERROR: 5}

    def __init__(self, emit, watchdog):
        super().__init__()
        self._emit = emit
        self._watchdog = watchdog
        self._cur = None          # record of the running test
        self._cur_test = None
        self._t0 = 0.0
        self.pending_hang = None

    def startTest(self, test):
        super().startTest(test)
        self._cur_test = test
        self._cur = {'id': test.id(), 'status': None, 'reason': '',
                     'detail': '', 'part': _part_of(test.id())}
        self._t0 = time.monotonic()
        self._emit(ev='start', id=test.id())
        self._watchdog.arm(test.id())

    def _set(self, test, status, reason='', detail=''):
        if test is not self._cur_test or self._cur is None:
            # Class/module fixture errors arrive without startTest().
            self._emit(ev='result', id=test.id(), status=status,
                       reason=reason, detail=detail, seconds=0.0,
                       part=_part_of(test.id()))
            return
        cur = self._cur['status']
        if cur is None or self._ORDER[status] > self._ORDER[cur]:
            self._cur['status'] = status
            # keep the first failure's reason when an error follows it
            if cur not in (FAIL, ERROR):
                self._cur.update(reason=reason, detail=detail)

    @staticmethod
    def _err(err):
        exc_type, exc, tb = err
        detail = _tail(''.join(traceback.format_exception(exc_type, exc, tb)))
        return _short_reason(exc_type, exc), detail

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, PASS)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, FAIL, *self._err(err))

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, ERROR, *self._err(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, SKIP, str(reason)[:200])

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, XFAIL, *self._err(err))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, XPASS, 'unexpected success')

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failure = issubclass(err[0], test.failureException)
            reason, detail = self._err(err)
            self._set(test, FAIL if failure else ERROR,
                      '%s %s' % (subtest._subDescription(), reason), detail)

    def stopTest(self, test):
        super().stopTest(test)
        rec, self._cur, self._cur_test = self._cur, None, None
        if rec is None:
            return
        rec['seconds'] = round(time.monotonic() - self._t0, 3)
        if rec['status'] is None:
            if self._watchdog.fired_label == rec['id']:
                # interrupted by the watchdog: child_main() reports it
                self.pending_hang = rec
                return
            rec['status'] = ERROR
            rec['reason'] = 'no outcome recorded'
        self._emit(ev='result', **rec)
        # Guard the fixtures (tearDownClass/setUpClass/...) that run
        # between this test and the next one.
        self._watchdog.arm('<fixtures after %s>' % rec['id'])


def _setup_target_loop(loopname):
    """Make *loopname* the default loop. Returns (factory, description)."""
    import asyncio
    if loopname == 'asyncio':
        # Nothing to patch.  Mixin classes get an explicit SelectorEventLoop,
        # which is what asyncio.new_event_loop() returns on Unix anyway.
        return asyncio.SelectorEventLoop, 'asyncio %s (SelectorEventLoop)' % (
            platform.python_version())
    if loopname == 'uvloop':
        import uvloop as mod
    elif loopname == 'uringloop':
        try:
            import uringloop as mod
        except ImportError:
            if REPO_ROOT not in sys.path:
                sys.path.append(REPO_ROOT)
            import uringloop as mod
    else:
        raise ValueError('unknown loop %r' % loopname)
    policy_cls = mod.EventLoopPolicy
    # asyncio.events._init_event_loop_policy() (3.10 .. 3.13) does
    #     from . import DefaultEventLoopPolicy
    # i.e. it reads the attribute of the *asyncio package* each time the
    # policy is (re)initialised.  Test modules call
    # asyncio.set_event_loop_policy(None) in tearDownModule(), after which
    # the next get_event_loop_policy() re-reads asyncio.DefaultEventLoopPolicy,
    # so patching the package attribute keeps our loop the default for the
    # whole run.  asyncio.unix_events.DefaultEventLoopPolicy is deliberately
    # left alone (nothing in asyncio resolves the policy through it).
    asyncio.DefaultEventLoopPolicy = policy_cls
    asyncio.set_event_loop_policy(None)
    factory = getattr(mod, 'new_event_loop', None)
    if factory is None:
        factory = mod.Loop
    version = getattr(mod, '__version__', '?')
    return factory, '%s %s' % (loopname, version)


def _install_shims():
    """Harness-only adjustments; they never change what a test asserts.

    test.test_asyncio.utils.TestCase.close_loop() (3.10 .. 3.13) reads the
    private attribute ``loop._default_executor`` of asyncio.BaseEventLoop.
    A loop that is not a BaseEventLoop subclass (uvloop.Loop, possibly
    uringloop.Loop) would make the *cleanup* of every test that uses
    set_event_loop() raise AttributeError.  For such loops do the same thing
    through the public API (shutdown_default_executor() + close()).
    """
    from test.test_asyncio import utils as test_utils
    original = test_utils.TestCase.close_loop

    def close_loop(loop):
        if hasattr(loop, '_default_executor'):
            return original(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    test_utils.TestCase.close_loop = staticmethod(close_loop)


def _flatten(suite):
    out = []
    stack = [suite]
    while stack:
        item = stack.pop(0)
        if isinstance(item, unittest.TestSuite):
            stack[0:0] = list(item)
        else:
            out.append(item)
    return out


# Classes of the module that exercise asyncio's own selector/proactor loops;
# they are replaced by Target* classes built from the same mixins.
_SELECTOR_CLASSES = {'KqueueEventLoopTests', 'EPollEventLoopTests',
                     'PollEventLoopTests', 'SelectEventLoopTests',
                     'ProactorEventLoopTests'}


def _mk(name, bases, modname, attrs):
    attrs = dict(attrs)
    attrs['__module__'] = modname
    attrs['__qualname__'] = name
    return type(name, bases, attrs)


def _targets_events(mod, factory, tu):
    bases = (mod.EventLoopTestsMixin, mod.SubprocessTestsMixin, tu.TestCase)
    return [_mk(TARGET_PREFIX + 'EventLoopTests', bases, mod.__name__,
                {'create_event_loop': lambda self: factory()})]


def _targets_sock_lowlevel(mod, factory, tu):
    return [_mk(TARGET_PREFIX + 'SockTests',
                (mod.BaseSockTestsMixin, tu.TestCase), mod.__name__,
                {'create_event_loop': lambda self: factory()})]


def _targets_sendfile(mod, factory, tu):
    return [_mk(TARGET_PREFIX + 'SendfileTests',
                (mod.SendfileTestsBase, tu.TestCase), mod.__name__,
                {'create_event_loop': lambda self: factory()})]


def _targets_subprocess(mod, factory, tu):
    # Like the module's SubprocessWatcherMixin but without installing a
    # child watcher: third-party loops do their own child tracking, and
    # watchers are deprecated from 3.12 on.  For the asyncio target the
    # policy's default watcher (Threaded/Pidfd) is used implicitly.
    def setUp(self):
        super(cls, self).setUp()
        self.loop = factory()
        self.set_event_loop(self.loop)
    cls = _mk(TARGET_PREFIX + 'SubprocessTests',
              (mod.SubprocessMixin, tu.TestCase), mod.__name__,
              {'setUp': setUp})
    return [cls]


def _targets_unix_events(mod, factory, tu):
    base = mod.SelectorEventLoopUnixSocketTests

    def setUp(self):
        # Skip base.setUp (it builds an asyncio.SelectorEventLoop).
        tu.TestCase.setUp(self)
        self.loop = factory()
        self.set_event_loop(self.loop)
    attrs = {'setUp': setUp,
             # mock.patch('asyncio.unix_events.socket'): asyncio internals
             'test_create_unix_server_bind_error': None}
    return [_mk(TARGET_PREFIX + 'UnixSocketTests', (base,), mod.__name__,
                attrs)]


def _drop_subprocess(name):
    # Watcher machinery classes test asyncio's child watchers, not the loop.
    return name in _SELECTOR_CLASSES or 'Watcher' in name or name in (
        'SubprocessProactorTests',)


# module -> (predicate: drop class by name, builder of Target classes)
MODULE_PLANS = {
    'test_events': (lambda n: n in _SELECTOR_CLASSES, _targets_events),
    'test_sock_lowlevel': (lambda n: n in _SELECTOR_CLASSES,
                           _targets_sock_lowlevel),
    'test_sendfile': (lambda n: n in _SELECTOR_CLASSES, _targets_sendfile),
    'test_subprocess': (_drop_subprocess, _targets_subprocess),
    'test_unix_events': (lambda n: n not in ('TestFunctional', 'TestFork'),
                         _targets_unix_events),
}


def _build_tests(modname, mod, factory):
    from test.test_asyncio import utils as test_utils
    loader = unittest.TestLoader()
    tests = _flatten(loader.loadTestsFromModule(mod))
    plan = MODULE_PLANS.get(modname)
    if plan is not None:
        drop, build = plan
        tests = [t for t in tests if not drop(type(t).__name__)]
        for cls in build(mod, factory, test_utils):
            tests.extend(_flatten(loader.loadTestsFromTestCase(cls)))
    return tests


def child_main(args):
    import faulthandler
    emit = _Emitter(args.result_fd)
    os.set_inheritable(args.result_fd, False)
    # Make sure subprocesses spawned by tests cannot keep the pipe open.
    faulthandler.enable(all_threads=True)
    # Run with the signal dispositions of an ordinary interactive Python:
    # a runner started in the background by a non-interactive shell inherits
    # SIGINT (and SIGQUIT) as SIG_IGN, in which case Python does not install
    # default_int_handler, asyncio.Runner does not install its SIGINT
    # handler, and _thread.interrupt_main() does nothing -- test_runners'
    # interrupt tests would then hang.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in ('SIGQUIT', 'SIGHUP', 'SIGTERM', 'SIGUSR1'):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
    watchdog = _Watchdog(args.timeout_per_test)
    modname = args.child
    watchdog.arm('<setup>')
    try:
        factory, desc = _setup_target_loop(args.loop)
    except BaseException as exc:
        emit(ev='fatal', reason='cannot set up loop %r: %s' % (
            args.loop, _short_reason(type(exc), exc)),
            detail=_tail(traceback.format_exc()))
        os._exit(EXIT_FATAL)
    if args.probe:
        try:
            loop = factory()
            cls = '%s.%s' % (type(loop).__module__, type(loop).__qualname__)
            loop.close()
            import asyncio
            pol = asyncio.get_event_loop_policy()
            emit(ev='probe', loop=desc, loop_class=cls,
                 policy='%s.%s' % (type(pol).__module__,
                                   type(pol).__qualname__),
                 python=platform.python_version())
        except BaseException as exc:
            emit(ev='fatal', reason='loop %r does not work: %s' % (
                args.loop, _short_reason(type(exc), exc)),
                detail=_tail(traceback.format_exc()))
            os._exit(EXIT_FATAL)
        os._exit(EXIT_DONE)

    import importlib
    try:
        from test import support
        support.verbose = 0
        if not args.no_shims:
            _install_shims()
        # A dotted name is imported as is (handy for ad-hoc test modules).
        fullname = modname if '.' in modname else 'test.test_asyncio.' + modname
        mod = importlib.import_module(fullname)
        tests = _build_tests(modname, mod, factory)
    except BaseException as exc:
        missing = isinstance(exc, ModuleNotFoundError) and modname in str(exc)
        emit(ev='fatal', missing=missing,
             reason='cannot load %s: %s' % (modname,
                                            _short_reason(type(exc), exc)),
             detail=_tail(traceback.format_exc()))
        os._exit(EXIT_FATAL)

    skip = set()
    if args.skip_file:
        with open(args.skip_file, encoding='utf-8') as f:
            skip = set(json.load(f))
    emit(ev='plan', loop=desc, tests=[t.id() for t in tests])
    todo = [t for t in tests if t.id() not in skip]
    suite = unittest.TestSuite(todo)
    result = _StreamingResult(emit, watchdog)
    watchdog.arm('<fixtures before first test>')
    try:
        suite.run(result)
        watchdog.disarm()
    except _TestTimeout:
        label = watchdog.fired_label
        watchdog.disarm()
        rec = result.pending_hang
        if rec is None:
            rec = {'id': label or '<unknown>', 'part': 'module',
                   'seconds': args.timeout_per_test}
        rec.update(status=HANG,
                   reason='timeout: exceeded %ss (interrupted)'
                   % args.timeout_per_test,
                   detail=_tail(traceback.format_exc()))
        emit(ev='result', **rec)
        emit(ev='restart')
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_RESTART)
    except BaseException as exc:
        watchdog.disarm()
        emit(ev='fatal', reason='runner crashed: %s' % _short_reason(
            type(exc), exc), detail=_tail(traceback.format_exc()))
        os._exit(EXIT_FATAL)
    emit(ev='done')
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: do not wait for non-daemon threads or executors that a
    # misbehaving test may have left behind.
    os._exit(EXIT_DONE)


# ---------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------

def _short_id(test_id):
    return test_id[len(ID_PREFIX):] if test_id.startswith(ID_PREFIX) else test_id


def _signal_name(rc):
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return 'signal %d' % -rc


def _killpg(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _log_tail(path, start, limit=3000):
    try:
        with open(path, 'rb') as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return ''
    return _tail(data.decode('utf-8', 'replace'), limit)


class ChildRun:
    """One child process; collects the JSON events it streams."""

    def __init__(self, loop, module, args, workdir, logpath, skip_ids=None,
                 probe=False):
        self.events = queue.Queue()
        cmd = [sys.executable, SCRIPT, '--child', module, '--loop', loop,
               '--timeout-per-test', str(args.timeout_per_test)]
        if args.no_shims:
            cmd.append('--no-shims')
        if probe:
            cmd.append('--probe')
        if skip_ids:
            skip_path = os.path.join(workdir, 'skip.json')
            with open(skip_path, 'w', encoding='utf-8') as f:
                json.dump(sorted(skip_ids), f)
            cmd += ['--skip-file', skip_path]
        rfd, wfd = os.pipe()
        cmd += ['--result-fd', str(wfd)]
        self.logpath = logpath
        try:
            self.log_start = os.path.getsize(logpath)
        except OSError:
            self.log_start = 0
        env = dict(os.environ)
        env.pop('PYTHONASYNCIODEBUG', None)
        with open(logpath, 'ab') as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, pass_fds=(wfd,), cwd=workdir,
                start_new_session=True, env=env)
        os.close(wfd)
        self._reader = threading.Thread(target=self._read, args=(rfd,),
                                        daemon=True)
        self._reader.start()

    def _read(self, rfd):
        with os.fdopen(rfd, 'r', encoding='utf-8', errors='replace') as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    self.events.put({'ev': 'garbage', 'line': line[:200]})
        self.events.put(None)

    def iter_events(self, deadline):
        """Yield events until the child is gone or *deadline* passes.

        Yields ('event', ev) items, then a final ('exit', rc) or
        ('deadline', None)."""
        exited_at = None
        eof = False
        while True:
            try:
                ev = self.events.get(timeout=0.25)
            except queue.Empty:
                ev = False
            if ev is None:
                eof = True
            elif ev is not False:
                yield 'event', ev
                continue
            rc = self.proc.poll()
            if rc is not None:
                if exited_at is None:
                    exited_at = time.monotonic()
                # Grandchildren (fork tests) may hold the pipe open: do not
                # wait for EOF for long once the child itself is gone.
                if eof or time.monotonic() - exited_at > 2.0:
                    _killpg(self.proc)
                    yield 'exit', rc
                    return
            elif time.monotonic() > deadline:
                _killpg(self.proc)
                self.proc.wait()
                # drain what was already written
                while True:
                    try:
                        ev = self.events.get(timeout=0.5)
                    except queue.Empty:
                        break
                    if ev is None:
                        break
                    yield 'event', ev
                yield 'deadline', None
                return


def probe_loop(loop, args):
    workdir = tempfile.mkdtemp(prefix='cpy-conf-probe-')
    try:
        run = ChildRun(loop, 'probe', args, workdir,
                       os.path.join(workdir, 'log.txt'), probe=True)
        info = {'available': False, 'error': 'probe produced no answer'}
        for kind, ev in run.iter_events(time.monotonic() + 120):
            if kind != 'event':
                if kind == 'exit' and ev not in (EXIT_DONE, EXIT_FATAL):
                    info['error'] = 'probe child exited with %s: %s' % (
                        ev if ev >= 0 else _signal_name(ev),
                        _log_tail(run.logpath, 0, 500).strip())
                continue
            if ev.get('ev') == 'probe':
                info = {'available': True, 'loop': ev['loop'],
                        'loop_class': ev['loop_class'],
                        'policy': ev['policy'], 'python': ev['python']}
            elif ev.get('ev') == 'fatal':
                info = {'available': False, 'error': ev['reason']}
        return info
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_module(loop, module, args):
    """Run one module (restarting the child after hangs/crashes)."""
    t_start = time.monotonic()
    deadline = t_start + args.module_timeout
    workdir = tempfile.mkdtemp(prefix='cpy-conf-%s-%s-' % (loop, module))
    logpath = os.path.join(workdir, 'child.log')
    results = collections.OrderedDict()
    plan = None
    info = {'module': module, 'loop': loop, 'hang': False, 'restarts': 0,
            'fatal': None, 'missing': False, 'notes': []}
    fixture_hangs = collections.Counter()
    try:
        while True:
            if time.monotonic() >= deadline:
                info['hang'] = True
                info['notes'].append('module timeout before completion')
                break
            run = ChildRun(loop, module, args, workdir, logpath,
                           skip_ids=set(results))
            current = None
            current_t0 = None
            finished = False
            restart_requested = False
            outcome = None
            for kind, ev in run.iter_events(deadline):
                if kind == 'event':
                    e = ev.get('ev')
                    if e == 'plan':
                        if plan is None:
                            plan = ev['tests']
                            info['loop_desc'] = ev.get('loop')
                    elif e == 'start':
                        current, current_t0 = ev['id'], time.monotonic()
                    elif e == 'result':
                        rec = {k: ev.get(k) for k in
                               ('status', 'reason', 'detail', 'seconds',
                                'part')}
                        if not rec.get('detail'):
                            rec.pop('detail', None)
                        results[ev['id']] = rec
                        if ev['id'] == current:
                            current = None
                    elif e == 'restart':
                        restart_requested = True
                    elif e == 'done':
                        finished = True
                    elif e == 'fatal':
                        info['fatal'] = ev.get('reason')
                        info['missing'] = bool(ev.get('missing'))
                        info['fatal_detail'] = ev.get('detail')
                else:
                    outcome = (kind, ev)
            kind, rc = outcome
            if kind == 'deadline':
                info['hang'] = True
                info['notes'].append('module timeout (%ss): child killed'
                                     % args.module_timeout)
                if current is not None:
                    results[current] = {
                        'status': HANG, 'part': _part_of(current),
                        'reason': 'module timeout (%ss) while running'
                                  % args.module_timeout,
                        'seconds': round(time.monotonic() - current_t0, 3)}
                break
            if finished and rc == EXIT_DONE:
                break
            if info['fatal'] is not None:
                break
            if plan is None:
                info['fatal'] = 'child exited (%s) before loading tests: %s' % (
                    rc if rc >= 0 else _signal_name(rc),
                    _log_tail(logpath, run.log_start, 400).strip())
                break
            if not restart_requested:
                # The child died under us: faulthandler hard timeout, a
                # crash, or something calling os._exit()/sys.exit().
                log = _log_tail(logpath, run.log_start)
                label = current
                if label is None:
                    label = '<fixtures after %s>' % (
                        next(reversed(results)) if results else 'start')
                elapsed = (time.monotonic() - current_t0) if current_t0 else 0
                if rc == 1 and 'Timeout (' in log:
                    status, reason = HANG, (
                        'timeout: exceeded %ss, interrupt failed, killed '
                        'after %ss more' % (args.timeout_per_test, HARD_GRACE))
                elif rc < 0:
                    status, reason = CRASH, 'child died: %s' % _signal_name(rc)
                else:
                    status, reason = CRASH, 'child exited with code %d' % rc
                results[label] = {'status': status, 'reason': reason,
                                  'part': _part_of(label),
                                  'seconds': round(elapsed, 3),
                                  'detail': log}
            else:
                label = next(reversed(results)) if results else None
            # A hang in fixtures (setUpClass...) would repeat on every
            # restart; after the second time skip the next class entirely.
            if label and label.startswith('<fixtures'):
                fixture_hangs[label] += 1
                if fixture_hangs[label] >= 2 and plan:
                    nxt = [t for t in plan if t not in results]
                    if nxt:
                        cls = nxt[0].rsplit('.', 1)[0]
                        for t in nxt:
                            if t.rsplit('.', 1)[0] == cls:
                                results[t] = {
                                    'status': HANG, 'part': _part_of(t),
                                    'reason': 'not run: class fixture hangs',
                                    'seconds': 0.0}
            info['restarts'] += 1
            if info['restarts'] > MAX_RESTARTS:
                info['notes'].append('too many restarts; giving up')
                break
    finally:
        if args.keep_logs:
            dst = os.path.join(args.keep_logs, '%s-%s.log' % (loop, module))
            os.makedirs(args.keep_logs, exist_ok=True)
            try:
                shutil.copyfile(logpath, dst)
            except OSError:
                pass
        shutil.rmtree(workdir, ignore_errors=True)
    info['seconds'] = round(time.monotonic() - t_start, 1)
    info['plan_size'] = len(plan) if plan else 0
    # Tests without a result: either never reached (module timeout) or
    # covered by a failing class/module fixture ("setUpClass (mod.Cls)").
    fixture_scopes = set()
    for tid, rec in results.items():
        if ' (' in tid and tid.endswith(')') and rec['status'] in (
                ERROR, FAIL, SKIP):
            fixture_scopes.add(tid[tid.index(' (') + 2:-1])
    notrun = [t for t in (plan or ()) if t not in results
              and t.rsplit('.', 1)[0] not in fixture_scopes
              and t.rsplit('.', 2)[0] not in fixture_scopes]
    info['notrun'] = len(notrun)
    info['tests'] = results
    info['counts'] = _count(results.values())
    info['counts']['notrun'] = len(notrun)
    parts = {}
    for part in ('module', 'mixin'):
        recs = [r for r in results.values() if r.get('part') == part]
        if recs:
            parts[part] = _count(recs)
            parts[part]['notrun'] = sum(1 for t in notrun
                                        if _part_of(t) == part)
    info['parts'] = parts
    return info


def _part_of(test_id):
    parts = test_id.split('.')
    if len(parts) >= 2 and parts[-2].startswith(TARGET_PREFIX):
        return 'mixin'
    return 'module'


def _count(records):
    c = {'passed': 0, 'failed': 0, 'errors': 0, 'skipped': 0, 'hang': 0}
    for r in records:
        s = r.get('status')
        if s in (PASS, XFAIL):
            c['passed'] += 1
        elif s in (FAIL, XPASS):
            c['failed'] += 1
        elif s in (ERROR, CRASH):
            c['errors'] += 1
        elif s == SKIP:
            c['skipped'] += 1
        elif s == HANG:
            c['hang'] += 1
    return c


def _fmt_row(name, c, seconds, hang_flag, width=24):
    hang = c['hang']
    if hang:
        hang_s = 'yes(%d)' % hang
    else:
        hang_s = 'yes' if hang_flag else 'no'
    if hang_flag and hang:
        hang_s += '+mod'
    line = ('%-*s passed %4d  failed %4d  errors %4d  skipped %4d  hang %-8s'
            % (width, name, c['passed'], c['failed'], c['errors'],
               c['skipped'], hang_s))
    if seconds is not None:
        line += ' %7.1fs' % seconds
    if c.get('notrun'):
        line += '  notrun %d' % c['notrun']
    return line


def print_report(loop, loopinfo, verbose, out=sys.stdout):
    print('== loop: %s  (%s; python %s)' % (
        loop, loopinfo.get('loop', '?'), platform.python_version()), file=out)
    total = collections.Counter()
    total_secs = 0.0
    any_hang = False
    for module, info in loopinfo['modules'].items():
        if info.get('fatal') and not info['tests']:
            tag = 'n/a (not in this Python)' if info.get('missing') else (
                'ERROR: ' + info['fatal'])
            print('%-24s %s' % (module, tag), file=out)
            continue
        c = info['counts']
        print(_fmt_row(module, c, info['seconds'], info['hang']), file=out)
        if set(info['parts']) == {'module', 'mixin'} or (
                module == 'test_events' and 'mixin' in info['parts']):
            print(_fmt_row('  [per-loop mixins]', info['parts']['mixin'],
                           None, False), file=out)
        for k, v in c.items():
            total[k] += v
        total_secs += info['seconds']
        any_hang = any_hang or info['hang']
        if info.get('fatal'):
            print('    note: %s' % info['fatal'], file=out)
    print(_fmt_row('TOTAL', total, total_secs, any_hang), file=out)
    if verbose:
        for module, info in loopinfo['modules'].items():
            bad = [(tid, r) for tid, r in info['tests'].items()
                   if r['status'] in (FAIL, ERROR, XPASS, HANG, CRASH)]
            if not bad:
                continue
            print('\n-- %s: %d not passing' % (module, len(bad)), file=out)
            for tid, r in bad:
                print('  %-5s %s  -- %s' % (r['status'].upper(), _short_id(tid),
                                            (r.get('reason') or '')[:160]),
                      file=out)
            for note in info.get('notes', ()):
                print('  note: %s' % note, file=out)


def print_compare(loops, data, modules, verbose, out=sys.stdout):
    avail = [l for l in loops if data[l]['available']]
    if not avail:
        return
    colw = 24
    print('\n== side by side: passed/failed/errors/skipped/hang', file=out)
    print('%-24s' % 'module' + ''.join('%*s' % (colw, l) for l in avail),
          file=out)

    def cell(c, flag=False):
        s = '%d/%d/%d/%d/%d' % (c['passed'], c['failed'], c['errors'],
                                c['skipped'], c['hang'])
        if c.get('notrun'):
            s += ' nr%d' % c['notrun']
        if flag:
            s += '!'
        return s

    totals = {l: collections.Counter() for l in avail}
    for module in modules:
        row = '%-24s' % module
        sub = None
        for l in avail:
            info = data[l]['modules'].get(module)
            if info is None or (info.get('fatal') and not info['tests']):
                row += '%*s' % (colw, 'n/a')
                continue
            row += '%*s' % (colw, cell(info['counts'], info['hang']))
            totals[l].update(info['counts'])
            if 'mixin' in info['parts'] and 'module' in info['parts']:
                sub = sub or {}
                sub[l] = info['parts']['mixin']
        print(row, file=out)
        if sub:
            print('%-24s' % '  [per-loop mixins]' + ''.join(
                '%*s' % (colw, cell(sub[l]) if l in sub else '') for l in avail),
                file=out)
    print('%-24s' % 'TOTAL' + ''.join('%*s' % (colw, cell(totals[l]))
                                      for l in avail), file=out)
    if verbose:
        print('\n-- tests whose status differs between loops', file=out)
        for module in modules:
            ids = []
            seen = set()
            for l in avail:
                info = data[l]['modules'].get(module) or {'tests': {}}
                for tid in info['tests']:
                    if tid not in seen:
                        seen.add(tid)
                        ids.append(tid)
            for tid in ids:
                sts = []
                for l in avail:
                    info = data[l]['modules'].get(module) or {'tests': {}}
                    r = info['tests'].get(tid)
                    sts.append(r['status'] if r else '-')
                norm = {('pass' if s in (PASS, XFAIL) else s) for s in sts}
                if len(norm) > 1:
                    print('  %s  %s' % ('  '.join('%s=%s' % (l, s) for l, s in
                                                  zip(avail, sts)),
                                        _short_id(tid)), file=out)


def resolve_modules(spec):
    if not spec:
        return list(DEFAULT_MODULES)
    out = []
    for item in spec.split(','):
        item = item.strip()
        if not item:
            continue
        names = GROUPS.get(item)
        if names is None:
            names = [item if item.startswith('test_') or '.' in item
                     else 'test_' + item]
        for n in names:
            if n not in out:
                out.append(n)
    return out


def parent_main(args):
    loops = [l.strip() for l in args.loop.split(',') if l.strip()]
    for l in loops:
        if l not in LOOPS:
            print('unknown loop %r (choose from %s)' % (l, ', '.join(LOOPS)),
                  file=sys.stderr)
            return 2
    compare = args.compare or len(loops) > 1
    modules = resolve_modules(args.modules)
    data = {}
    started = datetime.datetime.now().astimezone()
    for l in loops:
        info = probe_loop(l, args)
        data[l] = dict(info, modules=collections.OrderedDict())
        if info['available']:
            print('loop %s: %s, loop class %s, policy %s' % (
                l, info['loop'], info['loop_class'], info['policy']),
                file=sys.stderr)
        else:
            print('loop %s UNAVAILABLE on python %s: %s' % (
                l, platform.python_version(), info['error']), file=sys.stderr)

    jobs = [(l, m) for l in loops if data[l]['available'] for m in modules]
    results = {}
    n = len(jobs)
    done = [0]
    lock = threading.Lock()

    def work(job):
        l, m = job
        info = run_module(l, m, args)
        with lock:
            done[0] += 1
            c = info['counts']
            status = ('n/a' if info.get('missing') else
                      'ERROR' if info.get('fatal') and not info['tests'] else
                      '%d/%d/%d/%d/%d' % (c['passed'], c['failed'],
                                          c['errors'], c['skipped'],
                                          c['hang']))
            print('[%d/%d] %-9s %-20s %s  %.1fs%s' % (
                done[0], n, l, m, status, info['seconds'],
                '  (restarts %d)' % info['restarts'] if info['restarts']
                else ''), file=sys.stderr, flush=True)
        return info

    with concurrent.futures.ThreadPoolExecutor(max(1, min(args.jobs, 2))) as ex:
        futs = {ex.submit(work, j): j for j in jobs}
        for fut in concurrent.futures.as_completed(futs):
            results[futs[fut]] = fut.result()
    for l, m in jobs:
        data[l]['modules'][m] = results[(l, m)]

    print('', file=sys.stderr)
    for l in loops:
        if not data[l]['available']:
            print('== loop: %s  UNAVAILABLE: %s\n' % (l, data[l]['error']))
            continue
        print_report(l, data[l], args.verbose)
        print()
    if compare:
        print_compare(loops, data, modules, args.verbose)

    if args.json:
        doc = {
            'meta': {
                'date': started.isoformat(timespec='seconds'),
                'python': platform.python_version(),
                'executable': sys.executable,
                'platform': platform.platform(),
                'argv': sys.argv,
                'timeout_per_test': args.timeout_per_test,
                'module_timeout': args.module_timeout,
                'modules': modules,
                'shims': not args.no_shims,
            },
            'loops': data,
        }
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(doc, f, indent=1, sort_keys=False)
        print('wrote %s' % args.json, file=sys.stderr)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Run CPython's test.test_asyncio modules against an "
                    "event loop (uringloop, uvloop or asyncio).")
    p.add_argument('--loop', default='uringloop',
                   help='loop to test, or a comma list to compare '
                        '(uringloop,uvloop,asyncio)')
    p.add_argument('--modules', default='',
                   help='comma list of modules and/or groups (%s); default: '
                        'the %d default modules' % (
                            ', '.join(sorted(GROUPS)), len(DEFAULT_MODULES)))
    p.add_argument('--timeout-per-test', type=float, default=30.0,
                   help='seconds before a single test counts as hung')
    p.add_argument('--module-timeout', type=float, default=900.0,
                   help='seconds for a whole module (incl. restarts)')
    p.add_argument('--jobs', '-j', type=int, default=1,
                   help='modules run in parallel (max 2)')
    p.add_argument('--json', help='write full per-test results here')
    p.add_argument('--compare', action='store_true',
                   help='print a side-by-side table (implied by a comma '
                        'list in --loop)')
    p.add_argument('--keep-logs', metavar='DIR',
                   help='copy each child\'s stdout/stderr log into DIR')
    p.add_argument('--no-shims', action='store_true',
                   help='do not patch test_utils.TestCase.close_loop for '
                        'loops without a _default_executor attribute')
    p.add_argument('-v', '--verbose', action='store_true',
                   help='list non-passing tests with a one-line reason')
    # hidden child-mode options
    p.add_argument('--child', help=argparse.SUPPRESS)
    p.add_argument('--probe', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--result-fd', type=int, help=argparse.SUPPRESS)
    p.add_argument('--skip-file', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args)   # never returns
        return 0
    try:
        return parent_main(args)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
