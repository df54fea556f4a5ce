"""Cancellation storms: 100,000 tasks waiting on socket receives, sleeps and wait_for, cancelled
in seeded random waves while some of them complete. Every task ends with its own result or a
cancellation, and the loop is left idle: no operation pending, the ring at its idle size, and
still working."""
import asyncio
import random
import socket

import uringloop
from scenarios.ring import ring_settled

from reliability_helpers import echo_round_trip, fd_count, nofile_soft_limit

TASKS = 100_000
SOCKET_PAIRS = 9_000        # 18,000 receives, close to the fd hard limit of 20,000
WAVES = 5
SEED = 20261204


async def receive(loop, sock):
    return await loop.sock_recv(sock, 100)


async def wait_for_event(event, timeout):
    await asyncio.wait_for(event.wait(), timeout)
    return 'set'


def test_cancellation_storm_ends_every_task_and_leaves_the_loop_idle():
    rng = random.Random(SEED)
    with nofile_soft_limit(None) as limit:
        pairs_count = min(SOCKET_PAIRS, (limit - fd_count() - 100) // 2)
        loop = uringloop.new_event_loop()
        pairs = []
        try:
            async def main():
                await asyncio.sleep(0)
                idle = loop.ring_stats()
                peak = [0]
                loop._set_iteration_observer(
                    lambda stats: peak.__setitem__(0, max(peak[0], stats.pending)))
                for _ in range(pairs_count):
                    a, b = socket.socketpair()
                    a.setblocking(False)
                    b.setblocking(False)
                    pairs.append((a, b))
                ends = [s for pair in pairs for s in pair]
                peer = {a: b for a, b in pairs}
                peer.update({b: a for a, b in pairs})
                events = [asyncio.Event() for _ in range(100)]
                tasks = []   # (kind, argument, task)
                for sock in ends:
                    tasks.append(('recv', sock, loop.create_task(receive(loop, sock))))
                while len(tasks) < TASKS:
                    if rng.random() < 0.5:
                        delay = rng.choice([0, 0.001, 0.01, 3600])
                        tasks.append(('sleep', delay,
                                      loop.create_task(asyncio.sleep(delay, 'slept'))))
                    else:
                        timeout = rng.choice([0.001, 0.01, 3600])
                        event = rng.choice(events)
                        tasks.append(('wait_for', event,
                                      loop.create_task(wait_for_event(event, timeout))))
                await asyncio.sleep(0)
                sent = {}
                for wave in range(WAVES):
                    live = [t for t in tasks if not t[2].done()]
                    # Some receives get data, some events are set, then a random share of
                    # whatever is still waiting is cancelled, all in the same callback.
                    for kind, sock, _ in rng.sample(live, len(live) // 20):
                        if kind == 'recv' and sock not in sent:
                            sent[sock] = b'wave %d' % wave
                            peer[sock].send(sent[sock])
                    for event in rng.sample(events, 10):
                        event.set()
                    # The first wave cancels nearly all at once: with each cancellation an
                    # operation of its own, more than the kernel's 32,768 ring entries pend.
                    share = 0.97 if wave == 0 else rng.choice([0.2, 0.3, 0.5])
                    for _, _, task in rng.sample(live, int(len(live) * share)):
                        task.cancel()
                    for _ in range(rng.randint(0, 3)):
                        await asyncio.sleep(0)
                    await asyncio.sleep(rng.choice([0, 0.005]))
                for _, _, task in tasks:   # the last wave: everything still waiting
                    task.cancel()
                results = await asyncio.gather(*(t for _, _, t in tasks),
                                               return_exceptions=True)
                outcomes = {}
                for (kind, arg, _), result in zip(tasks, results):
                    if isinstance(result, asyncio.CancelledError):
                        outcome = 'cancelled'
                    elif kind == 'recv':
                        assert result == sent.get(arg), (result, sent.get(arg))
                        outcome = 'received'
                    elif kind == 'sleep':
                        assert result == 'slept', result
                        outcome = 'slept'
                    else:
                        assert result == 'set' or isinstance(result, asyncio.TimeoutError), \
                            repr(result)
                        outcome = 'set' if result == 'set' else 'timed out'
                    outcomes[kind, outcome] = outcomes.get((kind, outcome), 0) + 1
                assert all(t.done() for _, _, t in tasks)
                for a, b in pairs:
                    a.close()
                    b.close()
                # The kernel confirms cancellations and closes in completions of their own;
                # give them a bounded number of iterations to arrive.
                for _ in range(2000):
                    await asyncio.sleep(0.001)
                    if loop.ring_stats().pending <= idle.pending:
                        break
                after = await ring_settled(loop)
                assert after.pending == idle.pending, (idle, after)
                assert await echo_round_trip(loop) == b'ping'
                loop._set_iteration_observer(None)
                print('\ncancellation storm: peak pending %d, outcomes %s'
                      % (peak[0], sorted(outcomes.items())))
                return outcomes

            outcomes = loop.run_until_complete(main())
        finally:
            for a, b in pairs:
                a.close()
                b.close()
            loop.close()
    # The storm really mixed completions and cancellations of every kind.
    for kind in ('recv', 'sleep', 'wait_for'):
        assert outcomes.get((kind, 'cancelled'))
    assert outcomes.get(('recv', 'received')) and outcomes.get(('sleep', 'slept'))
