"""The loop core, written once and run on asyncio's loop and on uringloop (conftest.loop)."""
import asyncio
import concurrent.futures
import contextvars
import gc
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import weakref

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import uringloop


def open_fds():
    """The fds open in this process, without the one listdir itself used."""
    fds = set()
    for name in os.listdir('/proc/self/fd'):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        fds.add(int(name))
    return fds


def test_call_soon_runs_in_fifo_order(loop):
    order = []
    for i in range(10):
        loop.call_soon(order.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == list(range(10))


def test_callbacks_scheduled_during_iteration_wait_for_the_next(loop):
    seen = []

    def first():
        seen.append('first')
        loop.call_soon(seen.append, 'third')

    loop.call_soon(first)
    loop.call_soon(seen.append, 'second')
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ['first', 'second']
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ['first', 'second', 'third']


def test_call_later_order_and_timing(loop):
    results = []
    t0 = loop.time()
    loop.call_later(0.03, results.append, 3)
    # The same deadline, given as one absolute time: FIFO. (Two call_later(0.01) calls only
    # share a deadline if the clock did not move between them.)
    loop.call_at(t0 + 0.01, results.append, 1)
    loop.call_at(t0 + 0.02, results.append, 2)
    loop.call_at(t0 + 0.01, results.append, '1b')
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert results == [1, '1b', 2, 3]
    assert loop.time() - t0 >= 0.05


def test_timer_handle_api_and_cancel(loop):
    ran = []
    h = loop.call_later(0.01, ran.append, 'x')
    assert isinstance(h.when(), float)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    loop.run_until_complete(asyncio.sleep(0.03))
    assert ran == []


def test_many_cancelled_timers_are_dropped(loop):
    handles = [loop.call_later(10 + i * 0.001, lambda: None) for i in range(1000)]
    for h in handles[:900]:
        h.cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    scheduled = getattr(loop, '_scheduled')
    assert len(scheduled) <= 600
    for h in handles[900:]:
        h.cancel()


# One step of a timer plan: schedule at a past deadline (it fires at the next iteration) or a
# far one (it stays in the heap), cancel the n-th handle scheduled so far, or run an iteration.
timer_steps = st.one_of(
    st.tuples(st.just('past'), st.integers(0, 15)),
    st.tuples(st.just('far'), st.integers(0, 15)),
    st.tuples(st.just('cancel'), st.integers(0, 10_000)),
    st.tuples(st.just('iterate'), st.just(0)),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=st.lists(st.tuples(timer_steps, st.integers(1, 40)), max_size=25))
def test_timers_fire_in_deadline_then_fifo_order(loop_factory, plan):
    """Every iteration fires the due timers, and only those not cancelled, in deadline order,
    whatever mix of scheduling, cancelling (enough to compact the heap) and iterating came
    before. uringloop (as uvloop) also keeps equal deadlines in the order they were scheduled;
    asyncio's heap does not."""
    loop = loop_factory()
    fifo = isinstance(loop, uringloop.Loop)
    try:
        base = loop.time()
        fired, handles, pending = [], [], {}

        def iterate():
            loop.stop()
            loop.run_forever()
            expected = sorted(pending, key=lambda i: (pending[i], i))
            if fifo:
                assert fired == expected
            else:
                assert sorted(fired) == sorted(expected)
                assert [pending[i] for i in fired] == [pending[i] for i in expected]
            fired.clear()
            pending.clear()

        for (kind, arg), repeat in plan:
            for _ in range(repeat):
                if kind == 'cancel' and handles:
                    index = arg % len(handles)
                    handles[index].cancel()
                    pending.pop(index, None)
                elif kind in ('past', 'far'):
                    index = len(handles)
                    when = base - 1 + arg * 1e-3 if kind == 'past' else base + 3600 + arg
                    handles.append(loop.call_at(when, fired.append, index))
                    if kind == 'past':
                        pending[index] = when
            if kind == 'iterate':
                iterate()
        iterate()
        for h in handles:
            h.cancel()
    finally:
        loop.close()


def test_changing_scheduled_from_outside_leaves_the_timers_alone():
    """loop._scheduled is asyncio's private heap; code that edits it (time-travel test
    helpers do) must not desynchronize uringloop's heap from its keys."""
    loop = uringloop.new_event_loop()
    try:
        fired = []
        base = loop.time()
        for i in range(3):
            loop.call_at(base - 1 + i * 1e-3, fired.append, i)
        scheduled = loop._scheduled
        assert len(scheduled) == 3
        scheduled.clear()
        scheduled.append(object())
        loop.stop()
        loop.run_forever()
        assert fired == [0, 1, 2]
        assert loop._scheduled == []
    finally:
        loop.close()


def test_call_later_none_delay_is_type_error(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, lambda: None)
    if sys.version_info >= (3, 11) or isinstance(loop, uringloop.Loop):
        # asyncio 3.10 accepted when=None and failed later, in the heap.
        with pytest.raises(TypeError):
            loop.call_at(None, lambda: None)


def test_time_is_monotonic_clock(loop):
    assert abs(loop.time() - time.monotonic()) < 0.5


def test_run_until_complete_and_result(loop):
    async def coro():
        await asyncio.sleep(0)
        return 42
    assert loop.run_until_complete(coro()) == 42


def test_run_until_complete_exception_propagates(loop):
    async def boom():
        raise ValueError('boom')
    with pytest.raises(ValueError, match='boom'):
        loop.run_until_complete(boom())


def test_running_loop_cannot_run_again(loop):
    async def inner():
        assert loop.is_running()
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            loop.run_until_complete(coro)
        coro.close()
        with pytest.raises(RuntimeError):
            loop.run_forever()
    loop.run_until_complete(inner())
    assert not loop.is_running()


def test_running_loop_cannot_close(loop):
    async def inner():
        with pytest.raises(RuntimeError):
            loop.close()
    loop.run_until_complete(inner())
    assert not loop.is_closed()


def test_closed_loop_refuses_work(loop_factory):
    loop = loop_factory()
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    with pytest.raises(RuntimeError, match='closed'):
        loop.call_soon(lambda: None)
    with pytest.raises(RuntimeError, match='closed'):
        loop.call_later(1, lambda: None)
    with pytest.raises(RuntimeError, match='closed'):
        loop.call_soon_threadsafe(lambda: None)
    with pytest.raises(RuntimeError, match='closed'):
        loop.run_forever()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match='closed'):
        loop.run_until_complete(coro)
    coro.close()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match='closed'):
        loop.create_task(coro)
    coro.close()


def test_stop_before_run_forever_runs_one_iteration(loop):
    ran = []
    loop.call_soon(ran.append, 1)
    loop.stop()
    loop.run_forever()
    assert ran == [1]


def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop):
    fut = loop.create_future()

    def other_thread():
        time.sleep(0.05)
        loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

    t = threading.Thread(target=other_thread)
    t.start()
    t0 = time.monotonic()
    ident = loop.run_until_complete(fut)
    t.join()
    assert ident == t.ident
    assert time.monotonic() - t0 < 2


def test_call_soon_threadsafe_many_threads_no_callback_lost(loop):
    n_threads, per_thread = 4, 2000
    count = [0]
    done = loop.create_future()

    def cb():
        count[0] += 1
        if count[0] == n_threads * per_thread:
            done.set_result(None)

    def producer():
        for _ in range(per_thread):
            loop.call_soon_threadsafe(cb)

    threads = [threading.Thread(target=producer) for _ in range(n_threads)]
    for t in threads:
        t.start()
    loop.run_until_complete(asyncio.wait_for(done, 10))
    for t in threads:
        t.join()
    assert count[0] == n_threads * per_thread


def test_exception_in_callback_goes_to_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    assert loop.get_exception_handler() is not None

    def bad():
        raise ZeroDivisionError

    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert isinstance(contexts[0]['exception'], ZeroDivisionError)
    assert 'Exception in callback' in contexts[0]['message']
    assert contexts[0]['handle'] is not None
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_default_exception_handler_logs(loop, caplog):
    def bad():
        raise KeyError('k')
    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        loop.run_forever()
    assert any('Exception in callback' in r.getMessage() for r in caplog.records)


def test_keyboard_interrupt_in_callback_propagates_and_keeps_rest(loop):
    ran = []

    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    loop.call_soon(ran.append, 'later')
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ['later']


def test_context_propagates_to_callbacks(loop):
    var = contextvars.ContextVar('var', default='default')
    seen = []
    var.set('outer')
    loop.call_soon(lambda: seen.append(var.get()))
    ctx = contextvars.Context()
    ctx.run(var.set, 'explicit')
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_later(0, lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ['outer', 'explicit', 'explicit']


def test_context_is_isolated_between_tasks(loop):
    var = contextvars.ContextVar('var')

    async def setter(value):
        var.set(value)
        await asyncio.sleep(0)
        return var.get()

    async def main():
        return await asyncio.gather(setter(1), setter(2))

    assert loop.run_until_complete(main()) == [1, 2]


def test_task_factory(loop):
    created = []

    def factory(lp, coro, **kwargs):
        task = asyncio.Task(coro, loop=lp, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    assert loop.run_until_complete(asyncio.sleep(0, 'r')) == 'r'
    assert len(created) == 1
    with pytest.raises(TypeError):
        loop.set_task_factory(1)
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_create_future_and_task(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    task = loop.create_task(asyncio.sleep(0, 5), name='named')
    assert task.get_name() == 'named'
    assert loop.run_until_complete(task) == 5


def test_run_in_executor_default_and_custom(loop):
    assert loop.run_until_complete(loop.run_in_executor(None, sum, [1, 2, 3])) == 6
    assert loop._default_executor is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loop.set_default_executor(pool)
        tid = loop.run_until_complete(loop.run_in_executor(None, threading.get_ident))
        assert tid != threading.get_ident()
    if sys.version_info >= (3, 11):    # a deprecation warning before 3.11
        # The 'fork' context: it starts no process until work is submitted, while 3.14's
        # default (forkserver) leaves a server child behind for the rest of the session.
        import multiprocessing
        with concurrent.futures.ProcessPoolExecutor(
                mp_context=multiprocessing.get_context('fork')) as pool:
            with pytest.raises(TypeError):
                loop.set_default_executor(pool)


def test_shutdown_default_executor(loop):
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0))
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError):
        loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0))


def test_shutdown_asyncgens_finalizes_generators(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def main():
        g = agen()
        await g.__anext__()
        return g

    g = loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert finalized == [True]
    del g


def test_getaddrinfo_and_getnameinfo(loop):
    infos = loop.run_until_complete(
        loop.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM))
    assert infos and infos[0][4] == ('127.0.0.1', 80)
    host, port = loop.run_until_complete(
        loop.getnameinfo(('127.0.0.1', 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))
    assert (host, port) == ('127.0.0.1', '80')
    with pytest.raises(socket.gaierror):
        loop.run_until_complete(loop.getaddrinfo('no-such-host.invalid', 80))


def test_debug_mode_and_slow_callback_warning(loop, caplog):
    assert not loop.get_debug()
    loop.set_debug(True)
    assert loop.get_debug()
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.03)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        loop.run_forever()
    assert any('took' in r.getMessage() for r in caplog.records)
    loop.set_debug(False)


def test_debug_mode_rejects_coroutine_function_and_foreign_thread(loop):
    loop.set_debug(True)

    async def coro_fn():
        pass

    with pytest.raises(TypeError):
        loop.call_soon(coro_fn)

    async def main():
        errors = []

        def other():
            try:
                loop.call_soon(lambda: None)
            except RuntimeError as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        return errors

    assert len(loop.run_until_complete(main())) == 1
    loop.set_debug(False)


def test_handle_repr_and_context(loop):
    h = loop.call_soon(print, 'x')
    assert 'print' in repr(h)
    if sys.version_info >= (3, 12):    # Handle.get_context() appeared in 3.12
        assert h.get_context() is not None
    h.cancel()
    assert 'cancelled' in repr(h)


def test_loop_is_abstract_event_loop():
    loop = uringloop.new_event_loop()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert isinstance(loop, uringloop.Loop)
    finally:
        loop.close()


def test_runner_and_run():
    async def main():
        return type(asyncio.get_running_loop()).__name__
    assert uringloop.run(main()) == 'Loop'
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uringloop.new_event_loop) as runner:
            assert runner.run(main()) == 'Loop'
    if sys.version_info >= (3, 12):
        assert asyncio.run(main(), loop_factory=uringloop.new_event_loop) == 'Loop'


def test_run_debug_flag():
    async def main():
        return asyncio.get_running_loop().get_debug()
    assert uringloop.run(main(), debug=True) is True
    assert uringloop.run(main(), debug=False) is False


@pytest.mark.skipif(sys.version_info >= (3, 14), reason='asyncio policies are deprecated')
def test_policy_and_install():
    old = asyncio.get_event_loop_policy()
    try:
        uringloop.install()
        assert isinstance(asyncio.get_event_loop_policy(), uringloop.EventLoopPolicy)
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, uringloop.Loop)
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(old)


@pytest.mark.skipif(sys.version_info < (3, 14), reason='asyncio policies deprecated in 3.14')
def test_install_deprecated_like_asyncio_policies():
    # From 3.14 install() still works for old programs but says what replaces it, and the
    # policy class is only built (with the same warning) when asked for.
    old = asyncio.events._get_event_loop_policy()
    try:
        with pytest.warns(DeprecationWarning, match='uringloop.run'):
            uringloop.install()
        policy = asyncio.events._get_event_loop_policy()
        with pytest.warns(DeprecationWarning, match='loop_factory'):
            assert isinstance(policy, uringloop.EventLoopPolicy)
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, uringloop.Loop)
        finally:
            loop.close()
    finally:
        asyncio.events._set_event_loop_policy(old)
    assert 'EventLoopPolicy' not in uringloop.__all__


def test_import_warns_about_nothing():
    # Run in a fresh interpreter: the import of uringloop and a loop's life, with every
    # DeprecationWarning an error.
    code = ('import asyncio, uringloop\n'
            'uringloop.run(asyncio.sleep(0))\n'
            'loop = uringloop.new_event_loop()\n'
            'loop.add_signal_handler(10, print)\n'
            'loop.close()\n')
    subprocess.run([sys.executable, '-W', 'error::DeprecationWarning', '-c', code],
                   check=True, timeout=60)


def test_loop_in_another_thread_than_created():
    loop = uringloop.new_event_loop()
    result = []

    def runner():
        result.append(loop.run_until_complete(asyncio.sleep(0.001, 'ok')))
        loop.close()

    t = threading.Thread(target=runner)
    t.start()
    t.join()
    assert result == ['ok']
    assert loop.is_closed()


def test_loop_bound_to_first_running_thread():
    loop = uringloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        errors = []

        def other():
            coro = asyncio.sleep(0)
            try:
                loop.run_until_complete(coro)
            except RuntimeError as exc:
                errors.append(str(exc))
            coro.close()

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors and 'thread' in errors[0]
    finally:
        loop.close()


def test_close_drains_inflight_operations_and_frees_fds():
    fds_before = open_fds()
    pairs = [socket.socketpair() for _ in range(20)]
    loop = uringloop.new_event_loop()
    waits = [loop._wait_readable(a) for a, _ in pairs]
    loop.run_until_complete(asyncio.sleep(0.01))
    assert loop.ring_stats().pending == 21
    t0 = time.monotonic()
    loop.close()
    assert time.monotonic() - t0 < 1
    for w in waits:
        assert w.cancelled() or w.done()
    for a, b in pairs:
        a.close()
        b.close()
    del loop, waits
    gc.collect()
    assert open_fds() == fds_before


def test_no_fd_or_loop_leak_over_many_loops():
    fds_before = open_fds()
    refs = []
    for _ in range(50):
        loop = uringloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        refs.append(weakref.ref(loop))
        del loop
    gc.collect()
    assert open_fds() == fds_before
    assert all(r() is None for r in refs)


def test_unclosed_loop_warns():
    loop = uringloop.new_event_loop()
    with pytest.warns(ResourceWarning):
        del loop
        gc.collect()


def test_ring_stats_record():
    loop = uringloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0.001))
        stats = loop.ring_stats()
        assert isinstance(stats, uringloop.RingStats)
        assert stats.capacity == 2 and stats.cq_capacity == 4 and stats.pending == 1
        assert stats.submitted >= 1 and stats.iterations >= 1
        assert set(stats._fields) >= {'capacity', 'pending', 'resizes_up', 'resizes_down',
                                      'submitted', 'completed'}
    finally:
        loop.close()


def test_completion_never_reaches_a_reused_fd():
    """uvloop #645: after an fd is closed and its number reused, an operation still in flight
    for the old file must complete for the old waiter only, never for the new one."""
    loop = uringloop.new_event_loop()
    try:
        async def main():
            a, b = socket.socketpair()
            a.setblocking(False)
            old_fd = a.fileno()
            old_wait = loop._wait_readable(old_fd)
            await asyncio.sleep(0.005)
            a.close()            # the in-flight poll keeps the old file alive in the kernel
            c, d = socket.socketpair()
            if c.fileno() != old_fd:
                c, d = d, c
            assert c.fileno() == old_fd
            c.setblocking(False)
            new_wait = loop._wait_readable(c)
            await asyncio.sleep(0.005)
            b.send(b'to the old file')
            await asyncio.wait_for(old_wait, 2)
            await asyncio.sleep(0.01)
            assert not new_wait.done()
            d.send(b'to the new file')
            await asyncio.wait_for(new_wait, 2)
            for s in (b, c, d):
                s.close()
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_close_with_readers_registered_on_ready_fds_is_prompt():
    """A level-triggered poll re-arms itself while its fd stays ready, also during close's
    drain: close must still cancel it and finish quickly, leaving nothing in flight."""
    loop = uringloop.new_event_loop()
    pairs = [socket.socketpair() for _ in range(10)]
    for a, b in pairs:
        b.send(b'ready')              # never read: the fd stays readable
        loop.add_reader(a, lambda: None)
        loop.add_writer(b, lambda: None)
    loop.run_until_complete(asyncio.sleep(0.01))
    t0 = time.monotonic()
    loop.close()
    assert time.monotonic() - t0 < 1
    assert loop.ring_stats().pending == 0
    for a, b in pairs:
        a.close()
        b.close()


def test_refuses_a_free_threaded_python_without_gil(monkeypatch):
    # A free-threaded CPython with the GIL forced off: the loop refuses clearly instead of
    # running its unlocked state from several threads.
    monkeypatch.setattr(sys, '_is_gil_enabled', lambda: False, raising=False)
    with pytest.raises(RuntimeError, match='needs the GIL'):
        uringloop.new_event_loop()
    monkeypatch.setattr(sys, '_is_gil_enabled', lambda: True, raising=False)
    uringloop.new_event_loop().close()
