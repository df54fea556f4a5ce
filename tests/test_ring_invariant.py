"""The ring sizes itself: at every iteration entry its SQ is need = min(next_power_of_two(pending
+ 1), 32768) (the kernel's largest SQ) or the next power of two up, CQ == 2 x SQ; growing goes to
need, shrinking (once need is a quarter of the ring) goes to need.

Hypothesis drives random mixes of operations that really go through the kernel (POLL_ADD on
socketpairs and eventfds, reads that time out, cancellations) and checks, at every iteration
entry, the capacity the kernel reports against the loop's pending count; that each operation's
outcome arrives exactly once; and that the ring returns to its idle size when the work ends.
"""
import asyncio
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import uringloop


from scenarios.ring import EntryChecker, invariant_violations, ring_settled, ring_size_fits


class Workload:
    """Kernel-backed operations whose outcomes are counted."""

    def __init__(self, loop):
        self.loop = loop
        self.pairs = []
        self.eventfds = []
        self.outcomes = {}          # op id -> list of outcomes (must end with exactly one)
        self.tasks = []
        self.resolutions = {}
        self.next_id = 0

    def close(self):
        for a, b in self.pairs:
            a.close()
            b.close()
        for fd in self.eventfds:
            os.close(fd)

    def record(self, op_id, outcome):
        self.outcomes.setdefault(op_id, []).append(outcome)

    def track(self, op_id, coro):
        task = self.loop.create_task(coro)
        # The task's own resolution, counted once per callback: exactly one is expected.
        task.add_done_callback(lambda t: self.resolutions.setdefault(op_id, []).append(
            'cancelled' if t.cancelled() else repr(t.exception() or t.result())))
        self.tasks.append((op_id, task))
        return task

    def new_id(self):
        self.next_id += 1
        return self.next_id

    async def socket_read(self, op_id, pair, timeout):
        a, _ = pair
        try:
            if timeout is None:
                await self.loop._wait_readable(a)
            else:
                await asyncio.wait_for(self.loop._wait_readable(a), timeout)
            data = a.recv(16)
            self.record(op_id, ('data', data))
        except asyncio.TimeoutError:
            self.record(op_id, 'timeout')
        except asyncio.CancelledError:
            self.record(op_id, 'cancelled')
            raise

    async def eventfd_read(self, op_id, fd):
        try:
            await self.loop._wait_readable(fd)
            value = int.from_bytes(os.read(fd, 8), 'little')
            self.record(op_id, ('eventfd', value))
        except asyncio.CancelledError:
            self.record(op_id, 'cancelled')
            raise


actions = st.lists(
    st.one_of(
        st.tuples(st.just('burst'), st.integers(1, 300)),
        st.tuples(st.just('read'), st.booleans()),
        st.tuples(st.just('eventfd'), st.integers(1, 40)),
        st.tuples(st.just('write'), st.integers(0, 10**6)),
        st.tuples(st.just('cancel'), st.integers(0, 10**6)),
        st.tuples(st.just('timed_read'), st.integers(0, 5)),
        st.tuples(st.just('sleep'), st.integers(0, 3)),
    ),
    min_size=1, max_size=25)


async def drive(loop, work, plan):
    pending_pairs = []              # (task, pair) for plain reads still waiting for data
    for action, arg in plan:
        if action in ('burst', 'read'):
            for _ in range(arg if action == 'burst' else 1):
                pair = socket.socketpair()
                for s in pair:
                    s.setblocking(False)
                work.pairs.append(pair)
                op_id = work.new_id()
                task = work.track(op_id, work.socket_read(op_id, pair, None))
                pending_pairs.append((task, pair))
        elif action == 'eventfd':
            for _ in range(arg):
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                work.eventfds.append(fd)
                op_id = work.new_id()
                work.track(op_id, work.eventfd_read(op_id, fd))
                loop.call_later(0.001 * (arg % 4), os.eventfd_write, fd, 1)
        elif action == 'write' and pending_pairs:
            task, pair = pending_pairs.pop(arg % len(pending_pairs))
            pair[1].send(b'x')
        elif action == 'cancel' and pending_pairs:
            task, pair = pending_pairs.pop(arg % len(pending_pairs))
            task.cancel()
        elif action == 'timed_read':
            pair = socket.socketpair()
            for s in pair:
                s.setblocking(False)
            work.pairs.append(pair)
            op_id = work.new_id()
            work.track(op_id, work.socket_read(op_id, pair, arg / 1000))
        elif action == 'sleep':
            await asyncio.sleep(arg / 1000)
    # Let every remaining plain read finish with data.
    for task, pair in pending_pairs:
        pair[1].send(b'y')
    await asyncio.gather(*(t for _, t in work.tasks), return_exceptions=True)
    # A few idle iterations so cancellations deliver their final CQEs.
    for _ in range(5):
        await asyncio.sleep(0.001)


async def settled_and_resubmitted(loop, timeout=60):
    """ring_settled(), and past a migration's hand-over too: an operation a migration moves is
    pending but on no ring until the old ring's cancellation completes and it is resubmitted
    (a slow machine sees that window). Times out if it never is."""
    async def settle():
        while True:
            stats = await ring_settled(loop)
            if stats.submitted - stats.completed == stats.pending:
                return stats
            await asyncio.sleep(0.001)
    return await asyncio.wait_for(settle(), timeout)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=actions)
def test_capacity_tracks_pending_at_every_iteration(plan):
    loop = uringloop.new_event_loop()
    observer = EntryChecker()
    loop._set_iteration_observer(observer)
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    work = Workload(loop)
    try:
        before = loop.ring_stats()
        loop.run_until_complete(drive(loop, work, plan))
        idle = loop.run_until_complete(settled_and_resubmitted(loop))
    finally:
        loop.close()
        work.close()

    assert not errors, errors
    assert observer.entries > 0
    assert observer.violations == []
    # Every operation resolved exactly once; one that ran reported at most one outcome
    # (a task cancelled before its first step never runs its body).
    for op_id, task in work.tasks:
        assert task.done()
        assert len(work.resolutions.get(op_id, [])) == 1, (op_id, work.resolutions.get(op_id))
        assert len(work.outcomes.get(op_id, [])) <= 1, (op_id, work.outcomes.get(op_id))
        if not task.cancelled():
            assert len(work.outcomes[op_id]) == 1
    # Idle again: only the wake-up read is in flight, the ring is back to its idle size, and
    # every SQE submitted in between had its completion reaped.
    assert idle.pending == 1
    assert before.capacity == 2 and idle.capacity in (2, 4)
    assert idle.submitted - idle.completed == 1


def nonblocking_pairs(n):
    pairs = [socket.socketpair() for _ in range(n)]
    for pair in pairs:
        for s in pair:
            s.setblocking(False)
    return pairs


async def hold_then_release(loop, pairs):
    """Wait for one end of every pair to be readable, then make them all readable: the ring
    grows for the waits and shrinks back once they are done. Return the stats while they were
    pending and once the ring has settled."""
    waits = [loop._wait_readable(a) for a, _ in pairs]
    await asyncio.sleep(0.01)
    grown = loop.ring_stats()
    for _, b in pairs:
        b.send(b'z')
    await asyncio.gather(*waits)
    return grown, await ring_settled(loop)


def test_ring_grows_with_hundreds_of_pending_reads_and_shrinks_back():
    loop = uringloop.new_event_loop()
    observer = EntryChecker()
    loop._set_iteration_observer(observer)
    pairs = nonblocking_pairs(500)
    try:
        grown, after = loop.run_until_complete(hold_then_release(loop, pairs))
    finally:
        loop.close()
        for a, b in pairs:
            a.close()
            b.close()
    assert grown.pending == 501
    assert grown.capacity == 512 and grown.cq_capacity == 1024
    assert after.capacity == 2 and after.pending == 1
    assert after.resizes_up >= 1 and after.resizes_down >= 1
    assert observer.violations == []
    assert observer.max_capacity == 512


def test_a_busy_loop_after_resizes_makes_no_enter_it_does_not_need():
    """A loop with callbacks always ready and no I/O finishing skips io_uring_enter at every
    iteration (nothing to submit, nothing to collect), also after its ring was resized: the
    kernel hands resized rings over with its deferred-work flag set, and the loop clears it."""
    loop = uringloop.new_event_loop()
    pairs = nonblocking_pairs(40)

    def chain(n):
        done = loop.create_future()
        left = [n]

        def step():
            left[0] -= 1
            if left[0]:
                loop.call_soon(step)
            else:
                done.set_result(None)
        loop.call_soon(step)
        before = loop.ring_stats()
        loop.run_until_complete(done)
        after = loop.ring_stats()
        return after.iterations - before.iterations, after.enters - before.enters

    try:
        fresh = chain(2000)
        _, settled = loop.run_until_complete(hold_then_release(loop, pairs))
        resized = chain(2000)
    finally:
        loop.close()
        for a, b in pairs:
            a.close()
            b.close()
    assert settled.resizes_up >= 1 and settled.resizes_down >= 1
    for iterations, enters in (fresh, resized):
        assert iterations >= 2000
        assert enters <= 5, (iterations, enters)


def test_pending_wavering_around_a_power_of_two_resizes_nothing():
    """Fifteen operations stay pending while a sixteenth comes and goes every round-trip, so
    the pending count crosses a power of two at every other iteration entry. The ring grows
    once and then holds still: before the band it resized twice per round-trip."""
    loop = uringloop.new_event_loop()
    observer = EntryChecker()
    loop._set_iteration_observer(observer)
    blockers = [socket.socketpair() for _ in range(14)]
    a, b = socket.socketpair()
    a.setblocking(False)
    rounds = 200

    async def main():
        waits = [loop._wait_readable(x) for x, _ in blockers]
        await asyncio.sleep(0.01)
        first = loop.ring_stats()
        for _ in range(rounds):
            fut = loop._wait_readable(a)
            loop.call_soon(b.send, b'x')
            await fut
            a.recv(1)
            await asyncio.sleep(0)     # an iteration entry with only the fifteen pending
        last = loop.ring_stats()
        for _, y in blockers:
            y.send(b'z')
        await asyncio.gather(*waits)
        return first, last

    try:
        first, last = loop.run_until_complete(main())
    finally:
        loop.close()
        for pair in blockers + [(a, b)]:
            for s in pair:
                s.close()
    assert first.pending == 15 and first.capacity == 16
    assert last.iterations - first.iterations >= 2 * rounds
    assert last.capacity == 32
    assert (last.resizes_up + last.resizes_down) - (first.resizes_up + first.resizes_down) == 1
    assert observer.violations == []


def test_ring_shrinks_once_pending_is_a_quarter_of_it():
    """Shrinking waits until the smallest fitting ring is a quarter of the current one, then
    goes all the way down to it (once the resize budget allows: ring_settled waits for that)."""
    loop = uringloop.new_event_loop()
    observer = EntryChecker()
    loop._set_iteration_observer(observer)
    pairs = [socket.socketpair() for _ in range(500)]

    async def main():
        waits = [loop._wait_readable(x) for x, _ in pairs]
        await asyncio.sleep(0.01)
        seen = [loop.ring_stats()]
        # 501 pending -> 101 (need 128, a quarter of 512), then 61 (need 64: 128 still fits).
        for keep in (100, 60, 0):
            for _, y in pairs[keep:]:
                if y.fileno() >= 0:
                    y.send(b'z')
                    y.close()
            await asyncio.gather(*waits[keep:])
            seen.append(await ring_settled(loop))
        return seen

    try:
        seen = loop.run_until_complete(main())
    finally:
        loop.close()
        for pair in pairs:
            for s in pair:
                s.close()
    assert [(st.pending, st.capacity) for st in seen] == [(501, 512), (101, 128), (61, 128),
                                                         (1, 2)]
    assert observer.violations == []


def test_no_knob():
    """The ring has no size argument, environment variable or setter."""
    with pytest.raises(TypeError):
        uringloop.Loop(64)
    loop = uringloop.new_event_loop()
    try:
        stats = loop.ring_stats()
        with pytest.raises(AttributeError):
            stats.capacity = 128
        assert not [name for name in dir(loop) if 'capacity' in name or 'ring_size' in name]
    finally:
        loop.close()


def test_debug_mode_checks_invariant_against_kernel():
    """In debug mode the loop compares the kernel's ring size with the pending count at every
    iteration entry; a healthy run raises nothing."""
    loop = uringloop.new_event_loop()
    loop.set_debug(True)
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        fut = loop._wait_readable(a)
        loop.call_later(0.005, b.send, b'q')
        await fut
        return loop.ring_stats()

    try:
        stats = loop.run_until_complete(main())
    finally:
        loop.close()
        a.close()
        b.close()
    assert stats.iterations > 1


def test_echo_writes_do_not_swing_the_ring():
    """A Protocol echo answers from data_received(), inside the completion dispatch. Its SENDs
    are staged and leave in the next iteration's enter, after that iteration's ring fit, and
    are reaped before the following one: at every entry `pending` is the structural count, so
    a ring sized for the connections is not pushed across a power of two by their writes.
    14 connections make that count 30 (a receive at each end of each connection, the
    listener's accept, the wake-up read): the ring holds still for the whole echo. Had the
    SENDs been prepared when write() was called, every echo of a dispatch would count at the
    next entry."""
    loop = uringloop.new_event_loop()
    seen = []
    recording = False

    def observer(stats):
        if recording:
            seen.append(stats)
    loop._set_iteration_observer(observer)
    nconn, rounds = 14, 200

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        nonlocal recording
        server = await loop.create_server(Echo, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        pairs = await asyncio.gather(*(asyncio.open_connection('127.0.0.1', port)
                                       for _ in range(nconn)))
        await asyncio.sleep(0.05)      # every accepted connection has its receive armed

        async def ping(reader, writer):
            for i in range(rounds):
                writer.write(b'%08d' % i)
                assert await reader.readexactly(8) == b'%08d' % i

        recording = True
        await asyncio.gather(*(ping(r, w) for r, w in pairs))
        recording = False
        for _, w in pairs:
            w.close()
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert len(seen) > 50
    assert invariant_violations(seen) == []
    assert max(st.pending for st in seen) == 2 * nconn + 2
    assert len({(st.capacity, st.resizes_up, st.resizes_down) for st in seen}) == 1
