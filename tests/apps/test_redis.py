"""redis-py's asyncio client against a real Redis server, unchanged, on asyncio's loop and on
uringloop: commands over TCP and the unix socket, pub/sub, pipelines, MULTI/EXEC transactions
with WATCH, blocking commands, and timeouts."""

import asyncio

import pytest
import redis.asyncio as aioredis
import redis.exceptions


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, 60))


def client(redis_server, **kwargs):
    return aioredis.Redis(host='127.0.0.1', port=redis_server.port, **kwargs)


def test_commands_over_tcp_and_unix_socket(loop, redis_server):
    async def main():
        assert asyncio.get_running_loop() is loop
        results = []
        for kwargs in (dict(host='127.0.0.1', port=redis_server.port),
                       dict(unix_socket_path=redis_server.unix_socket)):
            async with aioredis.Redis(**kwargs) as r:
                key = f'k:{len(results)}'
                await r.delete(key, key + ':big', key + ':h')
                await r.set(key, 'v', ex=60)
                big = b'x' * (4 << 20)
                await r.set(key + ':big', big)
                await r.hset(key + ':h', mapping={'a': 1, 'b': 2})
                results.append((await r.ping(), await r.get(key),
                                await r.get(key + ':big') == big,
                                await r.hgetall(key + ':h'), await r.incrby(key + ':n', 5)))
                await r.delete(key + ':n')
        return results

    expected = (True, b'v', True, {b'a': b'1', b'b': b'2'}, 5)
    assert run(loop, main()) == [expected, expected]


def test_pubsub(loop, redis_server):
    async def main():
        async with client(redis_server) as publisher, client(redis_server) as subscriber:
            pubsub = subscriber.pubsub()
            await pubsub.subscribe('news')
            await pubsub.psubscribe('sport.*')
            confirmations = [await pubsub.get_message(timeout=5) for _ in range(2)]
            counts = []
            for i in range(100):
                counts.append(await publisher.publish('news' if i % 2 else 'sport.ball',
                                                      f'm{i}'))
            got = []
            async for message in pubsub.listen():
                got.append((message['type'], message['channel'], message['data']))
                if len(got) == 100:
                    break
            await pubsub.unsubscribe('news')
            await pubsub.punsubscribe('sport.*')
            await pubsub.aclose()
            return [c['type'] for c in confirmations], counts, got

    confirmations, counts, got = run(loop, main())
    assert confirmations == ['subscribe', 'psubscribe']
    assert counts == [1] * 100
    assert got == [('message', b'news', b'm%d' % i) if i % 2 else
                   ('pmessage', b'sport.ball', b'm%d' % i) for i in range(100)]


def test_pipeline_and_transactions(loop, redis_server):
    async def main():
        async with client(redis_server) as r, client(redis_server) as other:
            await r.delete('counter', 'list', 'watched')
            async with r.pipeline(transaction=False) as pipe:
                for i in range(2000):
                    pipe.rpush('list', i)
                pipe.llen('list')
                replies = await pipe.execute()

            async with r.pipeline(transaction=True) as pipe:
                pipe.incr('counter').incr('counter').get('counter')
                multi = await pipe.execute()

            await r.set('watched', 1)
            async with r.pipeline() as pipe:
                await pipe.watch('watched')
                await other.set('watched', 2)  # someone else changes it before EXEC
                pipe.multi()
                pipe.set('watched', 3)
                with pytest.raises(redis.exceptions.WatchError):
                    await pipe.execute()
            watched = await r.get('watched')

            async def add_one(pipe):
                value = int(await pipe.get('counter'))
                pipe.multi()
                pipe.set('counter', value + 1)
            await asyncio.gather(*(r.transaction(add_one, 'counter') for _ in range(20)))
            counter = await r.get('counter')
            await r.delete('counter', 'list', 'watched')
            return replies[-1], replies[:3], multi, watched, counter

    llen, first, multi, watched, counter = run(loop, main())
    assert llen == 2000 and first == [1, 2, 3]
    assert multi == [1, 2, b'2']
    assert watched == b'2'
    assert counter == b'22'


def test_blocking_commands_and_timeouts(loop, redis_server):
    """BLPOP answered by another client; a client-side timeout (asyncio.wait_for) and a
    socket timeout each cut a blocking call short, and the client serves the next command."""
    async def main():
        async with client(redis_server) as r, client(redis_server) as pusher:
            await r.delete('queue')
            waiter = asyncio.ensure_future(r.blpop(['queue'], timeout=10))
            await asyncio.sleep(0.05)
            await pusher.rpush('queue', 'job')
            popped = await waiter

            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.blpop(['queue'], timeout=10), 0.2)
            after_wait_for = await r.ping()

            # retry=None: redis-py's default retries a timed-out command, with backoff.
            async with client(redis_server, socket_timeout=0.2, retry=None) as impatient:
                with pytest.raises(redis.exceptions.TimeoutError):
                    await impatient.blpop(['queue'], timeout=10)
                after_socket_timeout = await impatient.ping()
            server_timeout = await r.blpop(['queue'], timeout=0.1)
            return popped, after_wait_for, after_socket_timeout, server_timeout

    assert run(loop, main()) == ((b'queue', b'job'), True, True, None)


def test_connection_pool_under_load(loop, redis_server):
    async def main():
        pool = aioredis.BlockingConnectionPool(host='127.0.0.1', port=redis_server.port,
                                               max_connections=8)
        async with aioredis.Redis(connection_pool=pool) as r:
            async def work(i):
                await r.set(f'load:{i}', i)
                return int(await r.get(f'load:{i}'))
            values = await asyncio.gather(*(work(i) for i in range(500)))
            clients = await r.client_list()
            await r.delete(*(f'load:{i}' for i in range(500)))
        await pool.aclose()
        return values, len(clients)

    values, clients = run(loop, main())
    assert values == list(range(500))
    assert clients <= 8
