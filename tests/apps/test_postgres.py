"""asyncpg against a real PostgreSQL server, unchanged, on asyncio's loop and on uringloop:
queries over TCP and the unix socket, prepared statements and cursors, COPY both ways,
LISTEN/NOTIFY, pools, and cancellation and timeouts in the middle of a query."""

import asyncio
import io

import asyncpg
import pytest


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, 60))


async def connect(postgres, **kwargs):
    return await asyncpg.connect(postgres.dsn, **kwargs)


async def active_sleepers(conn):
    """How many other backends are running a pg_sleep() right now."""
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%' AND pid <> pg_backend_pid()")


def test_queries_over_tcp_and_unix_socket(loop, postgres):
    async def main():
        assert asyncio.get_running_loop() is loop
        results = []
        for host in ('127.0.0.1', postgres.socket_dir):
            conn = await asyncpg.connect(host=host, port=postgres.port, user=postgres.user,
                                         database=postgres.database)
            try:
                row = await conn.fetchrow(
                    'SELECT $1::int + 1 AS n, $2::text AS s, $3::jsonb AS j, $4::int[] AS a',
                    41, 'héllo', '{"k": [1, 2]}', [1, 2, 3])
                big = await conn.fetchval('SELECT repeat($1::text, 1000000)', 'xy')
                many = await conn.fetch('SELECT g, md5(g::text) FROM generate_series(1, 20000) g')
                results.append((row['n'], row['s'], row['j'], row['a'], len(big),
                                len(many), many[-1][0]))
            finally:
                await conn.close()
        return results

    expected = (42, 'héllo', '{"k": [1, 2]}', [1, 2, 3], 2000000, 20000, 20000)
    assert run(loop, main()) == [expected, expected]


def test_prepared_statements_cursors_and_transactions(loop, postgres):
    async def main():
        conn = await connect(postgres)
        try:
            await conn.execute('CREATE TEMP TABLE items (id int PRIMARY KEY, name text)')
            insert = await conn.prepare('INSERT INTO items VALUES ($1, $2)')
            for i in range(200):
                await insert.fetch(i, f'item-{i}')
            await conn.executemany('INSERT INTO items VALUES ($1, $2)',
                                   [(i, f'item-{i}') for i in range(200, 1000)])
            square = await conn.prepare('SELECT $1::bigint * $1::bigint')
            squares = [await square.fetchval(i) for i in range(50)]
            by_id = await conn.prepare('SELECT name FROM items WHERE id = $1')
            names = [await by_id.fetchval(i) for i in (0, 500, 999)]

            seen = []
            async with conn.transaction():
                async for record in conn.cursor('SELECT id FROM items ORDER BY id', prefetch=64):
                    seen.append(record['id'])

            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO items VALUES (1000, 'kept?')")
                    await conn.execute("INSERT INTO items VALUES (0, 'duplicate')")
            rolled_back = await conn.fetchval('SELECT count(*) FROM items WHERE id = 1000')
            return squares, names, seen, rolled_back
        finally:
            await conn.close()

    squares, names, seen, rolled_back = run(loop, main())
    assert squares == [i * i for i in range(50)]
    assert names == ['item-0', 'item-500', 'item-999']
    assert seen == list(range(1000))
    assert rolled_back == 0


def test_copy_in_and_out(loop, postgres):
    async def main():
        conn = await connect(postgres)
        try:
            await conn.execute('CREATE TEMP TABLE rows (id int, payload text)')
            records = [(i, 'p' * (i % 300)) for i in range(30000)]
            status = await conn.copy_records_to_table('rows', records=records)
            source = io.BytesIO(b''.join(b'%d\tq%d\n' % (i, i) for i in range(30000, 40000)))
            status_file = await conn.copy_to_table('rows', source=source)

            out = io.BytesIO()
            await conn.copy_from_table('rows', output=out, format='csv')

            chunks = []

            async def sink(chunk):
                chunks.append(bytes(chunk))
            await conn.copy_from_query('SELECT id FROM rows WHERE id % 1000 = 0 ORDER BY id',
                                       output=sink)
            total = await conn.fetchval('SELECT sum(length(payload)) FROM rows')
            return status, status_file, out.getvalue(), b''.join(chunks), total
        finally:
            await conn.close()

    status, status_file, csv, ids, total = run(loop, main())
    assert status == 'COPY 30000'
    assert status_file == 'COPY 10000'
    # A table's COPY comes out in its storage order, which SQL does not promise.
    rows = dict(line.split(b',') for line in csv.splitlines())
    assert len(rows) == 40000
    assert rows[b'0'] == b'""' and rows[b'299'] == b'p' * 299 and rows[b'39999'] == b'q39999'
    assert ids.split() == [b'%d' % i for i in range(0, 40000, 1000)]
    assert total == sum(i % 300 for i in range(30000)) + sum(
        len('q%d' % i) for i in range(30000, 40000))


def test_listen_notify(loop, postgres):
    async def main():
        listener = await connect(postgres)
        notifier = await connect(postgres)
        received = asyncio.Queue()
        try:
            def on_notify(connection, pid, channel, payload):
                received.put_nowait((channel, payload))
            await listener.add_listener('events', on_notify)
            await listener.add_listener('other', on_notify)
            for i in range(50):
                await notifier.execute("SELECT pg_notify('events', $1)", f'event-{i}')
            await notifier.execute("NOTIFY other, 'last'")
            got = [await received.get() for _ in range(51)]
            await listener.remove_listener('events', on_notify)
            await notifier.execute("NOTIFY events, 'unheard'")
            await notifier.execute("NOTIFY other, 'heard'")
            got.append(await received.get())
            return got
        finally:
            await listener.close()
            await notifier.close()

    got = run(loop, main())
    assert got == ([('events', f'event-{i}') for i in range(50)]
                   + [('other', 'last'), ('other', 'heard')])


def test_pool(loop, postgres):
    async def main():
        async with asyncpg.create_pool(postgres.dsn, min_size=2, max_size=4) as pool:
            async def work(i):
                async with pool.acquire() as conn:
                    pid = await conn.fetchval('SELECT pg_backend_pid()')
                    await conn.execute('SELECT pg_sleep(0.02)')
                    return pid, await conn.fetchval('SELECT $1::int * 2', i)
            results = await asyncio.gather(*(work(i) for i in range(40)))
            direct = await pool.fetchval('SELECT 7')
            return results, direct, pool.get_size()

    results, direct, size = run(loop, main())
    assert [value for _, value in results] == [i * 2 for i in range(40)]
    pids = {pid for pid, _ in results}
    assert 2 <= len(pids) <= 4
    assert direct == 7 and size <= 4


def test_cancel_mid_query(loop, postgres):
    """A task cancelled while its query runs on the server: asyncpg sends PostgreSQL a cancel
    request, the server stops the query, and the connection serves the next one."""
    async def main():
        conn = await connect(postgres)
        watcher = await connect(postgres)
        try:
            query = asyncio.ensure_future(conn.fetchval('SELECT pg_sleep(30)'))
            while await active_sleepers(watcher) == 0:
                await asyncio.sleep(0.01)
            query.cancel()
            with pytest.raises(asyncio.CancelledError):
                await query
            after = await conn.fetchval('SELECT 1 + 1')
            while await active_sleepers(watcher):
                await asyncio.sleep(0.01)
            return after
        finally:
            await conn.close()
            await watcher.close()

    assert run(loop, main()) == 2


def test_timeouts_mid_query(loop, postgres):
    """A client-side timeout (asyncpg's timeout=, asyncio.wait_for) and a server-side one
    (statement_timeout) each stop a running query; the connection stays usable."""
    async def main():
        conn = await connect(postgres)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval('SELECT pg_sleep(30)', timeout=0.2)
            first = await conn.fetchval('SELECT 1')
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(conn.fetchval('SELECT pg_sleep(30)'), 0.2)
            second = await conn.fetchval('SELECT 2')
            await conn.execute("SET statement_timeout = '200ms'")
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.fetchval('SELECT pg_sleep(30)')
            third = await conn.fetchval('SELECT 3')
            return first, second, third
        finally:
            await conn.close()

    assert run(loop, main()) == (1, 2, 3)
