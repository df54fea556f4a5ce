"""add_reader / add_writer / remove_reader / remove_writer with asyncio's level-triggered
meaning. Every scenario runs on asyncio's loop and on uringloop."""

import asyncio
import os
import socket
import time

import pytest

from surfaces_helpers import is_uring, loop, pending  # noqa: F401


def run_iterations(loop, n):
    """Run exactly n loop iterations (each stop() ends one run_forever after one pass)."""
    for _ in range(n):
        loop.call_soon(loop.stop)
        loop.run_forever()


def run_until(loop, predicate, timeout=5.0):
    async def waiter():
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError('condition not reached')
            await asyncio.sleep(0.005)
    loop.run_until_complete(waiter())


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_reader_is_level_triggered(loop, pair):
    a, b = pair
    calls = []
    loop.add_reader(a, calls.append, 'r')
    run_iterations(loop, 3)
    assert calls == []            # nothing to read: never called
    b.send(b'x')
    run_until(loop, lambda: len(calls) >= 3)   # not consumed: called again and again
    assert a.recv(10) == b'x'
    run_iterations(loop, 3)       # a poll already in flight may still report once
    n = len(calls)
    run_iterations(loop, 5)
    assert len(calls) == n        # consumed: quiet
    assert loop.remove_reader(a)
    assert not loop.remove_reader(a)


def test_reader_callback_never_spurious(loop, pair):
    # The callback reads exactly what is there; a spurious call would raise BlockingIOError.
    a, b = pair
    got = []
    errors = []

    def on_readable():
        try:
            got.append(a.recv(100))
        except BlockingIOError as exc:
            errors.append(exc)

    loop.add_reader(a.fileno(), on_readable)
    for i in range(20):
        b.send(b'%d;' % i)
        run_until(loop, lambda: b''.join(got).count(b';') == i + 1)
    # remove and add back repeatedly, with the loop turning in between or not.
    for i in range(10):
        assert loop.remove_reader(a.fileno())
        if i % 2:
            run_iterations(loop, 1)
        loop.add_reader(a.fileno(), on_readable)
    run_iterations(loop, 5)
    # remove + add back in the same iteration, the earlier poll's cancel still in flight.
    for i in range(3):
        assert loop.remove_reader(a.fileno())
        loop.add_reader(a.fileno(), on_readable)
        run_iterations(loop, 3)
    b.send(b'end;')
    run_until(loop, lambda: b''.join(got).endswith(b'end;'))
    run_iterations(loop, 3)
    assert errors == []
    assert loop.remove_reader(a.fileno())


def test_writer_level_triggered_and_remove(loop, pair):
    a, b = pair
    calls = []
    loop.add_writer(a, calls.append, 'w')
    run_until(loop, lambda: len(calls) >= 3)
    assert loop.remove_writer(a)
    run_iterations(loop, 2)
    n = len(calls)
    run_iterations(loop, 5)
    assert len(calls) == n
    assert not loop.remove_writer(a)
    assert not loop.remove_reader(a)


def test_writer_waits_for_space(loop, pair):
    a, b = pair
    try:
        while True:
            a.send(b'x' * 65536)
    except BlockingIOError:
        pass
    calls = []
    loop.add_writer(a, calls.append, 1)
    run_iterations(loop, 5)
    assert calls == []            # buffer full: not writable
    while True:
        try:
            if not b.recv(1 << 20):
                break
        except BlockingIOError:
            break
    run_until(loop, lambda: calls)
    assert loop.remove_writer(a)


def test_reader_and_writer_same_fd(loop, pair):
    a, b = pair
    r, w = [], []
    loop.add_reader(a, r.append, 1)
    loop.add_writer(a, w.append, 1)
    run_until(loop, lambda: len(w) >= 2)
    assert r == []
    b.send(b'y')
    run_until(loop, lambda: r)
    assert loop.remove_writer(a)
    run_iterations(loop, 2)
    n = len(w)
    run_iterations(loop, 3)
    assert len(w) == n
    assert a.recv(1) == b'y'
    assert loop.remove_reader(a)


def test_replace_callback(loop, pair):
    a, b = pair
    first, second = [], []
    loop.add_reader(a, first.append, 1)
    loop.add_reader(a, second.append, 2)
    b.send(b'z')
    run_until(loop, lambda: second)
    assert first == []
    assert loop.remove_reader(a)


def test_callback_removes_itself(loop, pair):
    a, b = pair
    calls = []

    def once():
        calls.append(1)
        loop.remove_reader(a)

    loop.add_reader(a, once)
    b.send(b'q')
    run_until(loop, lambda: calls)
    run_iterations(loop, 5)
    assert calls == [1]


def test_callback_args_and_exception(loop, pair):
    a, b = pair
    seen = []
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def boom(x, y):
        seen.append((x, y))
        a.recv(10)
        raise ZeroDivisionError

    loop.add_reader(a, boom, 1, y := 'two')
    b.send(b'e')
    run_until(loop, lambda: errors)
    assert seen[0] == (1, y)
    assert isinstance(errors[0]['exception'], ZeroDivisionError)
    loop.remove_reader(a)


def test_fd_reuse_after_remove(loop):
    # remove_reader, close, a new socket gets the same fd number, add_reader: the new socket is
    # watched, the old one is not, and the callback is never called spuriously.
    a, b = socket.socketpair()
    a.setblocking(False)
    calls = []
    loop.add_reader(a.fileno(), calls.append, 'old')
    assert loop.remove_reader(a.fileno())
    fd = a.fileno()
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        c.setblocking(False)
        if c.fileno() != fd:
            c2 = c
            c = socket.socket(fileno=os.dup2(c2.fileno(), fd) and fd) if False else c2
        got = []

        def on_readable():
            got.append(c.recv(10))

        loop.add_reader(c.fileno(), on_readable)
        run_iterations(loop, 5)
        assert got == []
        d.send(b'new')
        run_until(loop, lambda: got)
        assert got == [b'new'] and calls == []
        assert loop.remove_reader(c.fileno())
    finally:
        c.close()
        d.close()


def test_peer_sees_eof_after_remove_and_close(loop):
    # After remove_reader + close the socket is really closed (no poll keeps it open).
    a, b = socket.socketpair()
    a.setblocking(False)
    loop.add_reader(a, lambda: None)
    loop.remove_reader(a)
    a.close()
    run_iterations(loop, 2)
    b.settimeout(5)
    assert b.recv(10) == b''
    b.close()


def test_invalid_fd(loop):
    with pytest.raises(ValueError):
        loop.add_reader(-1, lambda: None)
    with pytest.raises(ValueError):
        loop.add_writer(object(), lambda: None)
    with pytest.raises(ValueError):
        loop.remove_reader('x')


def test_closed_loop(loop, pair):
    a, b = pair
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_reader(a, lambda: None)
    with pytest.raises(RuntimeError):
        loop.add_writer(a, lambda: None)
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_close_with_readers_registered(loop, pair):
    a, b = pair
    loop.add_reader(a, lambda: None)
    loop.add_writer(b, lambda: None)
    b.send(b'r')
    run_iterations(loop, 2)
    t0 = time.monotonic()
    loop.close()                  # must not hang nor leak
    assert time.monotonic() - t0 < 2.0
    assert loop.remove_reader(a) is False


def test_pending_accounting(loop, pair):
    if not is_uring(loop):
        pytest.skip('ring accounting is uringloop-only')
    a, b = pair
    run_iterations(loop, 1)
    base = pending(loop)
    loop.add_reader(a, lambda: None)
    assert pending(loop) == base + 1
    loop.add_writer(a, lambda: None)
    assert pending(loop) == base + 2
    loop.add_reader(b, lambda: None)
    assert pending(loop) == base + 3
    run_iterations(loop, 3)
    # The writer fires every iteration and is re-armed: still one poll for it.
    assert pending(loop) == base + 3
    loop.remove_writer(a)
    loop.remove_reader(a)
    loop.remove_reader(b)
    run_iterations(loop, 3)
    assert pending(loop) == base
    stats = loop.ring_stats()
    assert stats.capacity >= stats.pending + 1


def test_many_fds(loop):
    socks = [socket.socketpair() for _ in range(50)]
    hits = set()
    try:
        for i, (a, b) in enumerate(socks):
            a.setblocking(False)
            loop.add_reader(a, lambda i=i, a=a: (hits.add(i), a.recv(10)))
        for i, (a, b) in enumerate(socks):
            if i % 3 == 0:
                b.send(b'1')
        run_until(loop, lambda: len(hits) == len(range(0, 50, 3)))
        assert hits == set(range(0, 50, 3))
        for a, b in socks:
            assert loop.remove_reader(a)
        if is_uring(loop):
            run_iterations(loop, 3)
            assert pending(loop) <= 2
    finally:
        for a, b in socks:
            a.close()
            b.close()
