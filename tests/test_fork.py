"""fork(): a uringloop loop created before fork() refuses to work in the child with a clear
error (its io_uring belongs to the parent); a new loop in the child works; the parent's loop is
unaffected by anything the child does, closing included."""

import asyncio
import json
import os
import signal
import socket
import threading

import pytest

from surfaces_helpers import uringloop


def run_in_child(fn):
    """fork(); run fn() in the child and send its JSON-able result back; return it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(r)
            try:
                result = fn()
            except BaseException as exc:
                result = {'crash': repr(exc)}
            os.write(w, json.dumps(result).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(b''.join(chunks))


def fresh_loop_works():
    """Run a loop in this (child) process that sleeps, watches an fd and is woken from a
    thread; return what it saw."""
    loop = uringloop.new_event_loop()
    try:
        a, b = socket.socketpair()
        a.setblocking(False)
        got = []

        async def main():
            fut = loop.create_future()
            loop.add_reader(a, lambda: fut.done() or fut.set_result(a.recv(10)))
            threading.Timer(0.02, b.send, (b'ping',)).start()
            data = await asyncio.wait_for(fut, 5)
            loop.remove_reader(a)
            await asyncio.sleep(0.01)
            done = loop.create_future()
            threading.Thread(target=loop.call_soon_threadsafe,
                             args=(done.set_result, 'threadsafe')).start()
            got.append(data.decode())
            got.append(await asyncio.wait_for(done, 5))
            return got

        res = loop.run_until_complete(main())
        a.close()
        b.close()
        return res
    finally:
        loop.close()


def refusals(loop):
    """Try every way of using the parent's loop; return the errors, as (type, has_hint)."""
    out = {}

    async def coro():
        return 1

    attempts = {
        'run_until_complete': lambda: loop.run_until_complete(coro()),
        'run_forever': loop.run_forever,
        'call_soon': lambda: loop.call_soon(print),
        'call_later': lambda: loop.call_later(1, print),
        'call_at': lambda: loop.call_at(loop.time() + 1, print),
        'call_soon_threadsafe': lambda: loop.call_soon_threadsafe(print),
        'create_task': lambda: loop.create_task(coro()),
        'add_reader': lambda: loop.add_reader(0, print),
        'add_signal_handler': lambda: loop.add_signal_handler(signal.SIGUSR1, print),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except RuntimeError as exc:
            out[name] = ['RuntimeError', 'fork' in str(exc)]
        except BaseException as exc:
            out[name] = [type(exc).__name__, False]
        else:
            out[name] = ['no error', False]
    return out


@pytest.fixture
def used_loop():
    loop = uringloop.new_event_loop()
    a, b = socket.socketpair()
    # A loop with live operations at fork time: a reader, a timer, the wakeup read.
    loop.add_reader(a, lambda: None)
    loop.call_later(60, lambda: None)
    loop.run_until_complete(asyncio.sleep(0.01))
    yield loop, a, b
    loop.remove_reader(a)
    a.close()
    b.close()
    loop.close()


def parent_loop_still_works(loop, a, b):
    fut = loop.create_future()
    loop.remove_reader(a)
    loop.add_reader(a, lambda: fut.done() or fut.set_result(a.recv(10)))
    b.send(b'after')
    assert loop.run_until_complete(asyncio.wait_for(fut, 5)) == b'after'
    loop.call_soon_threadsafe(lambda: None)
    loop.run_until_complete(asyncio.sleep(0.01))


def test_child_refuses_parent_loop(used_loop):
    loop, a, b = used_loop

    def child():
        return refusals(loop)

    result = run_in_child(child)
    assert result == {name: ['RuntimeError', True] for name in result}, result
    parent_loop_still_works(loop, a, b)


def test_new_loop_in_child_works(used_loop):
    loop, a, b = used_loop
    result = run_in_child(fresh_loop_works)
    assert result == ['ping', 'threadsafe']
    parent_loop_still_works(loop, a, b)


def test_child_closes_parent_loop(used_loop):
    # close() in the child releases the child's copies only: the parent's ring, eventfd and
    # the fds of its reader stay usable.
    loop, a, b = used_loop

    def child():
        loop.close()
        return [loop.is_closed(), fresh_loop_works()]

    assert run_in_child(child) == [True, ['ping', 'threadsafe']]
    assert not loop.is_closed()
    parent_loop_still_works(loop, a, b)


def test_child_lets_parent_loop_be_collected(used_loop):
    loop, a, b = used_loop

    def child():
        import gc
        import warnings
        warnings.simplefilter('ignore')
        lp = uringloop.new_event_loop()
        lp.run_until_complete(asyncio.sleep(0))
        pid = os.fork()
        if pid == 0:
            # Grandchild: the second loop's refusal too, then drop it unclosed.
            ok = isinstance(refusals(lp)['call_soon'], list)
            del lp
            gc.collect()
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        lp.run_until_complete(asyncio.sleep(0.01))
        lp.close()
        return os.waitstatus_to_exitcode(status)

    assert run_in_child(child) == 0
    parent_loop_still_works(loop, a, b)


def test_fork_inside_running_loop():
    # fork() from a coroutine (what multiprocessing's fork start method does): the child is
    # not "inside" the parent's running loop and can run a loop of its own.
    loop = uringloop.new_event_loop()

    async def main():
        await asyncio.sleep(0.01)

        def child():
            return [asyncio._get_running_loop() is None, fresh_loop_works()]

        return run_in_child(child)

    try:
        assert loop.run_until_complete(main()) == [True, ['ping', 'threadsafe']]
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()


def test_signals_do_not_leak_from_child_to_parent():
    # The child inherits the wakeup fd; a signal caught in the child must not run the parent's
    # handler.
    loop = uringloop.new_event_loop()
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, 'parent')
    try:
        loop.run_until_complete(asyncio.sleep(0.01))

        def child():
            signal.signal(signal.SIGUSR1, lambda *a: None)
            os.kill(os.getpid(), signal.SIGUSR1)
            return 'ok'

        assert run_in_child(child) == 'ok'
        loop.run_until_complete(asyncio.sleep(0.1))
        assert got == []
        os.kill(os.getpid(), signal.SIGUSR1)
        loop.run_until_complete(asyncio.sleep(0.1))
        assert got == ['parent']
    finally:
        loop.close()
