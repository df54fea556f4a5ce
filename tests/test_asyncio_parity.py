"""Small things a program can tell apart between loops, each checked on asyncio's loop (the
reference) and on uringloop."""
import asyncio
import socket
import sys
import weakref

import pytest

from scenarios.loops import loop, is_uring  # noqa: F401  (fixture)


def test_handles_can_be_weakly_referenced(loop):
    handle = loop.call_soon(lambda: None)
    timer = loop.call_later(10, lambda: None)
    refs = [weakref.ref(handle), weakref.ref(timer)]
    assert [r() for r in refs] == [handle, timer]
    timer.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    del handle, timer
    import gc
    gc.collect()
    assert [r() for r in refs] == [None, None]


@pytest.mark.parametrize('direction', ['reader', 'writer'])
def test_remove_watch_finds_a_socket_closed_since_it_was_added(loop, direction):
    """anyio closes a socket, then removes its reader: asyncio finds the registration by the
    object and returns True, and nothing is called back afterwards."""
    a, b = socket.socketpair()
    with b:
        a.setblocking(False)
        called = []
        add = loop.add_reader if direction == 'reader' else loop.add_writer
        remove = loop.remove_reader if direction == 'reader' else loop.remove_writer
        add(a, called.append, 'x')
        if direction == 'reader':
            loop.run_until_complete(asyncio.sleep(0.01))     # not readable: no call
        a.close()
        assert remove(a) is True
        with pytest.raises(ValueError):     # closed, and no longer registered: not found
            remove(a)
        loop.run_until_complete(asyncio.sleep(0.01))
        if direction == 'reader':
            assert called == []
        with pytest.raises(ValueError):
            remove(object())
        if is_uring(loop):
            assert loop.ring_stats().pending == 1


def test_subprocess_stdin_transport_is_a_full_transport(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, '-c', 'import sys; sys.stdin.read()', stdin=asyncio.subprocess.PIPE)
        stdin = proc._transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.Transport)
        for method in (stdin.pause_reading, stdin.resume_reading, stdin.is_reading):
            with pytest.raises(NotImplementedError):
                method()
        proc.stdin.close()
        return await proc.wait()

    assert loop.run_until_complete(main()) == 0


@pytest.mark.parametrize('via', ['protocol', 'add_reader'])
def test_io_runs_after_callbacks_queued_before_the_poll_and_before_due_timers(loop, via):
    """asyncio's iteration: the callbacks already queued, then what the poll found (here
    data_received or a reader callback), then the timers that are due."""
    order = []

    class Proto(asyncio.Protocol):
        def data_received(self, data):
            order.append('io')

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        if via == 'protocol':
            transport, _ = await loop.create_connection(Proto, sock=a)
        else:
            loop.add_reader(a, lambda: (order.append('io'), loop.remove_reader(a)))
        for _ in range(3):
            await asyncio.sleep(0)     # the transport is reading
        assert order == []

        def kick():
            b.send(b'x')
            loop.call_soon(order.append, 'soon')
            loop.call_later(0, order.append, 'timer')
        loop.call_soon(kick)
        while len(order) < 3:
            await asyncio.sleep(0)
        assert order == ['soon', 'io', 'timer']
        if via == 'protocol':
            transport.close()
        else:
            a.close()
        b.close()
        await asyncio.sleep(0)

    loop.run_until_complete(main())
