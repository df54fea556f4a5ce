"""Failures inside the loop's own machinery end in a defined state with a clear error: a cancel
request that cannot be made, a resized ring that cannot be mapped again. And a BufferedProtocol
on a read pipe that pauses in the middle of a chunk gets every byte in order."""
import asyncio
import os
import socket

import pytest

import uringloop
from scenarios.ring import ring_settled
from uringloop import _core


@pytest.fixture
def uloop():
    loop = uringloop.new_event_loop()
    yield loop
    if not loop.is_closed():
        loop.close()


def test_a_cancel_that_could_not_be_requested_is_requested_again(uloop):
    """The cancel request of a receive fails to get an SQE: the error is reported, and the
    receive is not left marked as cancelling forever: close() asks again and reaps it."""
    errors = []
    uloop.set_exception_handler(lambda lp, ctx: errors.append(ctx.get('exception')))
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)

        async def scenario():
            task = uloop.create_task(uloop.sock_recv(a, 10))
            while uloop.ring_stats().pending < 2:
                await asyncio.sleep(0)
            await asyncio.sleep(0)      # an iteration entry has fitted the ring to it
            uloop._fail_next_sqes(1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)

        uloop.run_until_complete(scenario())
        assert [type(e) for e in errors] == [OSError]
        assert uloop.ring_stats().pending == 2        # the poll is still in the kernel
        uloop.close()
        # close() cancelled it and reaped its final completion: nothing was orphaned.
        assert uloop.ring_stats().pending == 0


def loop_fds():
    """The io_uring and eventfd descriptors this process holds."""
    found = []
    for fd in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink(f'/proc/self/fd/{fd}')
        except OSError:
            continue
        if 'io_uring' in target or 'eventfd' in target:
            found.append(target)
    return found


def test_a_resized_ring_that_cannot_be_mapped_leaves_a_loop_that_says_so(uloop):
    """The kernel resized the ring but mapping it again failed: every later use of the loop
    raises a clear RuntimeError (no crash), and close() still releases everything."""
    if uloop.ring_stats().resize_method != 'in-place':
        pytest.skip('this run resizes by migration (URINGLOOP_TEST_AS_OLDEST_KERNEL)')
    assert len(loop_fds()) == 2
    pairs = [socket.socketpair() for _ in range(8)]
    try:
        for a, _ in pairs:
            a.setblocking(False)

        async def grow():
            tasks = [uloop.create_task(uloop.sock_recv(a, 10)) for a, _ in pairs]
            await asyncio.sleep(0.01)
            return tasks

        _core._fail_next_ring_maps(1)
        with pytest.raises(RuntimeError, match='lost its io_uring'):
            uloop.run_until_complete(grow())
        never_run = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match='lost its io_uring'):
            uloop.run_until_complete(never_run)
        never_run.close()      # as with a closed loop, the coroutine was never started
        with pytest.raises(RuntimeError, match='lost its io_uring'):
            uloop.run_forever()
        assert uloop.ring_stats().capacity == 0
        uloop.close()
        assert uloop.is_closed()
    finally:
        _core._fail_next_ring_maps(0)
        for a, b in pairs:
            a.close()
            b.close()
    assert loop_fds() == []


def test_a_migration_that_cannot_make_its_new_ring_keeps_the_old_one(uloop):
    """Where the ring is resized by migration and the new ring cannot be made (here: its
    mapping fails), the failure is reported and the loop goes on with the ring it has, then
    fits the ring at a later iteration entry."""
    uloop._resize_by_migration()
    errors = []
    uloop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    pairs = [socket.socketpair() for _ in range(8)]
    try:
        for a, b in pairs:
            a.setblocking(False)
            b.setblocking(False)

        async def scenario():
            _core._fail_next_ring_maps(1)
            tasks = [uloop.create_task(uloop.sock_recv(a, 10)) for a, _ in pairs]
            await asyncio.sleep(0.01)
            for _, b in pairs:
                b.send(b'hello')
            results = await asyncio.gather(*tasks)
            await ring_settled(uloop)
            return results

        assert uloop.run_until_complete(scenario()) == [b'hello'] * 8
        assert len(errors) == 1 and 'keeps its ring' in errors[0]['message']
        stats = uloop.ring_stats()
        assert stats.migrations >= 1 and stats.resize_method == 'migration'
        assert stats.capacity in (2, 4) and stats.pending == 1
    finally:
        _core._fail_next_ring_maps(0)
        for a, b in pairs:
            a.close()
            b.close()


class SmallBuffers(asyncio.BufferedProtocol):
    """Takes 7 bytes at a time and pauses reading after each, resuming in the next
    iteration: what arrives meanwhile is held by the transport and must come in order."""

    def __init__(self, loop, total):
        self.loop = loop
        self.total = total
        self.buf = bytearray(7)
        self.got = bytearray()
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.got += self.buf[:nbytes]
        if len(self.got) >= self.total and not self.done.done():
            self.done.set_result(None)
            return
        self.transport.pause_reading()
        self.loop.call_soon(self.transport.resume_reading)

    def eof_received(self):
        pass

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


def test_buffered_protocol_on_a_read_pipe_gets_held_data_in_order(uloop):
    data = bytes(i % 251 for i in range(20000))
    rfd, wfd = os.pipe()
    rpipe = os.fdopen(rfd, 'rb', buffering=0)

    async def scenario():
        transport, proto = await uloop.connect_read_pipe(
            lambda: SmallBuffers(uloop, len(data)), rpipe)
        # Written in pieces while the protocol keeps pausing, so chunks pile up in the paused-read store.
        for i in range(0, len(data), 1000):
            os.write(wfd, data[i:i + 1000])
            await asyncio.sleep(0)
        os.close(wfd)
        await asyncio.wait_for(proto.done, 30)
        transport.close()
        await asyncio.sleep(0)
        return bytes(proto.got)

    assert uloop.run_until_complete(scenario()) == data
