"""Loops come and go: 50 created, used and closed in sequence leave no descriptor behind, and
8 threads each running their own loop with traffic do not disturb each other."""
import asyncio
import threading

import uringloop

from reliability_helpers import echo_round_trip, fd_count

SEQUENTIAL_LOOPS = 50
THREADS = 8
ECHOES_PER_THREAD = 50


def test_fifty_loops_in_sequence_leave_nothing_open():
    before = fd_count()
    for i in range(SEQUENTIAL_LOOPS):
        loop = uringloop.new_event_loop()
        try:
            payload = b'loop %d' % i
            assert loop.run_until_complete(echo_round_trip(loop, payload)) == payload
        finally:
            loop.close()
        assert loop.is_closed()
        assert fd_count() == before, 'loop %d left descriptors open' % i


def test_eight_threads_each_run_a_loop_with_traffic():
    results = {}
    barrier = threading.Barrier(THREADS)

    async def traffic(index):
        barrier.wait(30)   # all loops exist and run at the same time
        echoes = await asyncio.gather(*(
            echo_round_trip(asyncio.get_running_loop(), b'thread %d echo %d' % (index, n))
            for n in range(ECHOES_PER_THREAD)))
        return echoes == [b'thread %d echo %d' % (index, n) for n in range(ECHOES_PER_THREAD)]

    def worker(index):
        try:
            results[index] = uringloop.run(traffic(index))
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert results == {i: True for i in range(THREADS)}
