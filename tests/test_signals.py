"""add_signal_handler / remove_signal_handler with asyncio's rules, and Ctrl-C under
asyncio.Runner / run_until_complete. Every scenario runs on asyncio's loop and on uringloop."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from surfaces_helpers import child_env, is_uring, loop, pending  # noqa: F401


def test_bad_arguments(loop):
    def cb():
        pass

    async def coro():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler('boom', cb)
    with pytest.raises(TypeError):
        loop.remove_signal_handler('boom')
    for bad in (signal.NSIG + 1, 0, -1):
        with pytest.raises(ValueError):
            loop.add_signal_handler(bad, cb)
        with pytest.raises(ValueError):
            loop.remove_signal_handler(bad)
    for uncatchable in (signal.SIGKILL, signal.SIGSTOP):
        with pytest.raises(RuntimeError):
            loop.add_signal_handler(uncatchable, cb)
        assert not loop.remove_signal_handler(uncatchable)
    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    c = coro()
    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, c)
    c.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_handler_runs_as_loop_callback(loop):
    seen = []

    def handler(*args):
        # A loop callback, not a signal-handler frame: the running loop is visible.
        seen.append((args, asyncio.get_running_loop() is loop))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, 'a', 2)
    try:
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGUSR1)
        loop.call_later(5, loop.stop)      # safety net
        loop.run_forever()
        assert seen == [(('a', 2), True)]
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert not loop.remove_signal_handler(signal.SIGUSR1)


def test_signal_from_other_thread_wakes_idle_loop(loop):
    # The loop sleeps with nothing scheduled; only the signal can wake it.
    got = []

    def handler():
        got.append(1)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR2, handler)
    t = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR2))
    t.start()
    try:
        guard = threading.Timer(5, loop.call_soon_threadsafe, (loop.stop,))
        guard.start()
        loop.run_forever()
        guard.cancel()
        assert got == [1]
    finally:
        t.join()
        loop.remove_signal_handler(signal.SIGUSR2)


def test_several_signals_and_replacement(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, 'first')
    loop.add_signal_handler(signal.SIGUSR1, got.append, 'usr1')   # replaces
    loop.add_signal_handler(signal.SIGALRM, got.append, 'alrm')

    async def main():
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0.05)
        signal.raise_signal(signal.SIGALRM)
        for _ in range(100):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    assert got == ['usr1', 'alrm']
    assert loop.remove_signal_handler(signal.SIGUSR1)
    assert loop.remove_signal_handler(signal.SIGALRM)


def test_sigint_restores_default_int_handler(loop):
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert loop.remove_signal_handler(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # The wakeup fd was released too.
    assert signal.set_wakeup_fd(-1) == -1


def test_closed_loop_refuses(loop):
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_not_main_thread(loop):
    errors = []

    def worker():
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_cancelled_handle_is_removed(loop):
    # asyncio removes a handler whose handle was cancelled when its signal next arrives.
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop._signal_handlers[signal.SIGUSR1].cancel()

    async def main():
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):
            if signal.SIGUSR1 not in loop._signal_handlers:
                break
            await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    assert signal.SIGUSR1 not in loop._signal_handlers
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_pending_accounting(loop):
    if not is_uring(loop):
        pytest.skip('ring accounting is uringloop-only')
    base = pending(loop)
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    assert pending(loop) == base + 1      # one READ for all signals
    loop.remove_signal_handler(signal.SIGUSR1)
    assert pending(loop) == base + 1
    loop.remove_signal_handler(signal.SIGUSR2)
    loop.run_until_complete(asyncio.sleep(0.01))   # the cancel's final CQE
    assert pending(loop) == base
    # Re-adding right after removal (the cancelled READ may still be in flight) still works.
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, 1)
    loop.remove_signal_handler(signal.SIGUSR1)
    loop.add_signal_handler(signal.SIGUSR1, got.append, 2)

    async def main():
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    assert got == [2]
    loop.remove_signal_handler(signal.SIGUSR1)


CTRL_C_SCRIPT = textwrap.dedent('''
    import asyncio, os, signal, sys, threading
    import uringloop
    factory = {'asyncio': asyncio.new_event_loop, 'uringloop': uringloop.new_event_loop}[sys.argv[1]]
    mode = sys.argv[2]
    state = []

    async def main():
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state.append('cancelled')
            raise

    try:
        if mode == 'runner':
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(main())
        else:
            loop = factory()
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()
    except KeyboardInterrupt:
        print('KeyboardInterrupt', state, flush=True)
    else:
        print('no interrupt', state, flush=True)
''')


@pytest.mark.parametrize('mode', ['runner', 'plain'])
@pytest.mark.parametrize('kind', ['asyncio', 'uringloop'])
def test_ctrl_c(kind, mode):
    if mode == 'runner' and sys.version_info < (3, 11):
        pytest.skip('asyncio.Runner is 3.11+')
    out = subprocess.run([sys.executable, '-c', CTRL_C_SCRIPT, kind, mode],
                         capture_output=True, text=True, timeout=30, env=child_env())
    if mode == 'runner':
        # The Runner cancels the main task, then raises KeyboardInterrupt.
        assert out.stdout.strip() == "KeyboardInterrupt ['cancelled']", out.stderr
    else:
        # default_int_handler raises KeyboardInterrupt out of run_until_complete.
        assert out.stdout.strip() == 'KeyboardInterrupt []', out.stderr


def test_ctrl_c_with_loop_handler_in_child():
    # A SIGINT handler installed with add_signal_handler wins over KeyboardInterrupt.
    script = textwrap.dedent('''
        import asyncio, os, signal, uringloop
        loop = uringloop.new_event_loop()
        got = []
        def on_int():
            got.append('int')
            loop.stop()
        loop.add_signal_handler(signal.SIGINT, on_int)
        loop.call_later(0.1, os.kill, os.getpid(), signal.SIGINT)
        loop.call_later(10, loop.stop)
        loop.run_forever()
        loop.close()
        print(got, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    ''')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         timeout=30, env=child_env())
    assert out.stdout.strip() == "['int'] True", out.stderr
