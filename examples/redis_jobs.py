"""A job queue on Redis with redis-py's asyncio client, on uringloop: a producer pushes jobs
through a pipeline, workers take them with BLPOP and publish each result on a channel, and a
subscriber collects the results.

    python examples/redis_jobs.py [--url redis://localhost:6379/0] [--jobs 1000] [--workers 8]

Needs a Redis server (Debian: apt-get install redis-server). Prints what it did and exits.
"""
import argparse
import asyncio
import json
import time

import redis.asyncio as aioredis

import uringloop

QUEUE = 'uringloop-example:jobs'
RESULTS = 'uringloop-example:results'


async def produce(client, jobs):
    async with client.pipeline(transaction=False) as pipe:
        for n in range(jobs):
            pipe.rpush(QUEUE, json.dumps({'n': n}))
        await pipe.execute()


async def work(client, name):
    """Squares numbers until the queue stays empty for a second."""
    done = 0
    while job := await client.blpop([QUEUE], timeout=1):
        n = json.loads(job[1])['n']
        await client.publish(RESULTS, json.dumps({'n': n, 'square': n * n, 'by': name}))
        done += 1
    return done


async def collect(pubsub, jobs, subscribed):
    await pubsub.subscribe(RESULTS)
    await pubsub.get_message(timeout=5)  # the subscription's confirmation
    subscribed.set()
    results = {}
    while len(results) < jobs:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        if message is None:
            break
        result = json.loads(message['data'])
        results[result['n']] = result['square']
    return results


async def main(url, jobs, workers):
    async with aioredis.from_url(url) as client, aioredis.from_url(url) as listener:
        await client.delete(QUEUE)
        started = time.perf_counter()
        pubsub = listener.pubsub()
        subscribed = asyncio.Event()
        collector = asyncio.create_task(collect(pubsub, jobs, subscribed))
        await subscribed.wait()
        await produce(client, jobs)
        counts = await asyncio.gather(*(work(client, f'worker-{i}') for i in range(workers)))
        results = await collector
        await pubsub.aclose()
        elapsed = time.perf_counter() - started
    correct = results == {n: n * n for n in range(jobs)}
    print(f'{sum(counts)} jobs done by {workers} workers (busiest {max(counts)}), '
          f'{len(results)} results collected, all correct: {correct}')
    print(f'loop: {type(asyncio.get_running_loop()).__name__}, {elapsed:.2f}s '
          f'(including the workers\' final 1 s wait for more jobs)')
    return correct


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--url', default='redis://localhost:6379/0')
    parser.add_argument('--jobs', type=int, default=1000)
    parser.add_argument('--workers', type=int, default=8)
    args = parser.parse_args()
    raise SystemExit(0 if uringloop.run(main(args.url, args.jobs, args.workers)) else 1)
