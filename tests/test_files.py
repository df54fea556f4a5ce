"""uringloop.open() and uringloop.files: file I/O on the ring, checked against the built-in
open() and os.* on real files (the built-in behaviour is the spec)."""

import asyncio
import errno
import io
import os
import random
import socket
import sys

import pytest

import uringloop
from uringloop import _core, files


def run(coro):
    return uringloop.run(coro)


@pytest.fixture
def small_rw():
    """Cap every READ and WRITE at 4 KiB, so that small files cross the paths that the kernel's
    own cap (MAX_RW_COUNT, about 2 GiB) takes with huge ones: a request that comes back short
    and goes on from where it stopped."""
    old = _core._set_max_rw_count(4096)
    yield
    _core._set_max_rw_count(old)


def payload(n, seed=1):
    return random.Random(seed).randbytes(n)


def assert_closed(fd):
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


# -- round trips ---------------------------------------------------------------------------


def test_binary_round_trip(tmp_path):
    path = tmp_path / 'data.bin'
    data = payload(300_000) + b'\nline two\nthree'

    async def main():
        async with uringloop.open(path, 'wb') as f:
            assert await f.write(data) == len(data)
            assert await f.tell() == len(data)
        async with uringloop.open(path, 'rb') as f:
            assert f.name == str(path) and f.mode == 'rb'
            assert await f.read() == data
            assert await f.read() == b''
            assert await f.seek(10) == 10
            assert await f.read(5) == data[10:15]
            assert await f.read(1 << 40) == data[15:]     # no terabyte buffer for the READ
            await f.seek(15)
            assert await f.tell() == 15
            assert await f.seek(-3, os.SEEK_END) == len(data) - 3
            assert await f.read() == b'ree'
            assert await f.seek(0) == 0
            lines = [line async for line in f]
        return lines

    lines = run(main())
    with open(path, 'rb') as f:
        assert lines == f.readlines()


def test_read_sizes_and_readinto(tmp_path, small_rw):
    path = tmp_path / 'data.bin'
    data = payload(1_000_003)
    path.write_bytes(data)

    async def main():
        async with uringloop.open(path, 'rb') as f:
            assert await f.read(100_000) == data[:100_000]
            buf = bytearray(50_001)
            assert await f.readinto(buf) == 50_001
            assert bytes(buf) == data[100_000:150_001]
            assert await f.read1(10) == data[150_001:150_011]
            assert await f.readline(7) == data[150_011:150_018]
            assert await f.read() == data[150_018:]
            assert await f.pread(20_000, 990_000) == data[990_000:]
            assert await f.pread(10, len(data) + 5) == b''
            buf = bytearray(10)
            assert await f.readinto(buf) == 0
        return await files.read_bytes(path)

    assert run(main()) == data


def test_write_crossing_the_transfer_cap(tmp_path, small_rw):
    path = tmp_path / 'out.bin'
    data = payload(700_001)

    async def main():
        async with uringloop.open(path, 'w+b') as f:
            assert await f.write(memoryview(data)[:300_000]) == 300_000
            assert await f.write(bytearray(data[300_000:])) == len(data) - 300_000
            assert await f.pwrite(b'XYZ', 5) == 3
            assert await f.tell() == len(data)
            await f.seek(0)
            return await f.read()

    got = run(main())
    expected = data[:5] + b'XYZ' + data[8:]
    assert got == expected
    assert path.read_bytes() == expected


def test_text_modes_match_builtin_open(tmp_path):
    text = 'héllo\nwörld\r\nmac\rend\n\nlast'
    cases = [dict(encoding='utf-8'), dict(encoding='latin-1', newline=''),
             dict(encoding='utf-8', newline='\r\n'), dict(encoding='utf-16', newline='\r'),
             dict(encoding='utf-8', newline='\n')]

    def variants(kw):
        return (kw, dict(kw, newline=None), dict(kw, newline=''), dict(kw, newline='\r'))

    async def main():
        out = []
        for i, kw in enumerate(cases):
            mine, ref = tmp_path / f'mine{i}', tmp_path / f'ref{i}'
            async with uringloop.open(mine, 'w', **kw) as f:
                assert await f.write(text) == len(text)
            with open(ref, 'w', **kw) as f:
                f.write(text)
            assert mine.read_bytes() == ref.read_bytes(), kw
            for read_kw in variants(kw):
                async with uringloop.open(ref, 'r', **read_kw) as f:
                    whole = await f.read()
                async with uringloop.open(ref, 'r', **read_kw) as f:
                    lines = [line async for line in f]
                async with uringloop.open(ref, 'r', **read_kw) as f:
                    parts = [await f.read(3), await f.readline(), await f.readline(2),
                             await f.read(4)]
                out.append((whole, lines, parts))
        return out

    results = iter(run(main()))
    for i, kw in enumerate(cases):
        ref = tmp_path / f'ref{i}'
        for read_kw in variants(kw):
            whole, lines, parts = next(results)
            with open(ref, 'r', **read_kw) as f:
                assert whole == f.read(), read_kw
            with open(ref, 'r', **read_kw) as f:
                assert lines == f.readlines(), read_kw
            with open(ref, 'r', **read_kw) as f:
                assert parts == [f.read(3), f.readline(), f.readline(2), f.read(4)], read_kw


def test_text_tell_seek_and_append(tmp_path):
    path = tmp_path / 'log.txt'

    async def main():
        async with uringloop.open(path, 'w', encoding='utf-8') as f:
            await f.write('één\n')
            pos = await f.tell()
            await f.write('twee\n')
        async with uringloop.open(path, 'a', encoding='utf-8') as f:
            assert await f.tell() == len('één\ntwee\n'.encode())
            await f.write('drie\n')
        async with uringloop.open(path, 'r', encoding='utf-8') as f:
            assert await f.seek(pos) == pos
            rest = await f.read()
            with pytest.raises(io.UnsupportedOperation):
                await f.seek(1, os.SEEK_CUR)
            await f.seek(0)
            first = await f.readline()
        return rest, first

    assert run(main()) == ('twee\ndrie\n', 'één\n')
    assert path.read_text(encoding='utf-8') == 'één\ntwee\ndrie\n'


def test_append_and_update_modes(tmp_path):
    path = tmp_path / 'a.bin'
    path.write_bytes(b'0123')

    async def main():
        async with uringloop.open(path, 'ab') as f:
            assert await f.tell() == 4
            await f.write(b'45')
            assert await f.tell() == 6
        async with uringloop.open(path, 'a+b') as f:
            await f.seek(0)
            assert await f.read(2) == b'01'
            await f.write(b'67')           # appends, wherever the position was
            assert await f.tell() == 8
        async with uringloop.open(path, 'r+b') as f:
            await f.seek(2)
            await f.write(b'ab')
            assert await f.read() == b'4567'
        with pytest.raises(FileExistsError):
            await uringloop.open(path, 'xb')
        async with uringloop.open(tmp_path / 'new', 'xb') as f:
            await f.write(b'x')

    run(main())
    assert path.read_bytes() == b'01ab4567'
    assert (tmp_path / 'new').read_bytes() == b'x'


def test_pipe_and_proc_files(tmp_path):
    # Files that are not regular: no offsets (a pipe), or a size of 0 (procfs).
    r, w = os.pipe()
    os.write(w, b'through a pipe\nsecond')
    os.close(w)

    async def main():
        async with uringloop.open(r, 'rb') as f:
            assert not f.seekable()
            first = await f.readline()
            rest = await f.read()
        async with uringloop.open('/proc/self/status', 'r') as f:
            status = await f.read()
        return first, rest, status

    first, rest, status = run(main())
    assert (first, rest) == (b'through a pipe\n', b'second')
    assert status.startswith('Name:') and 'VmRSS' in status


def test_closefd_false_keeps_the_fd(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'abc')
    fd = os.open(path, os.O_RDONLY)
    try:
        async def main():
            async with uringloop.open(fd, 'rb', closefd=False) as f:
                return await f.read()

        assert run(main()) == b'abc'
        os.fstat(fd)          # still open
    finally:
        os.close(fd)


def test_many_small_files_concurrently(tmp_path):
    count = 300

    async def one(i):
        p = tmp_path / f'f{i}'
        await files.write_bytes(p, payload(i * 7 + 1, seed=i))
        st = await files.stat(p)
        return st.st_size, await files.read_bytes(p)

    async def main():
        got = await asyncio.gather(*(one(i) for i in range(count)))
        stats = asyncio.get_running_loop().ring_stats()
        return got, stats

    got, stats = run(main())
    for i, (size, data) in enumerate(got):
        assert size == i * 7 + 1
        assert data == payload(i * 7 + 1, seed=i)
    assert stats.resizes_up > 0     # hundreds of requests at once: the ring grew for them


def test_concurrent_calls_on_one_file_run_in_call_order(tmp_path):
    path = tmp_path / 'f'
    chunks = [bytes([65 + i % 26]) * (1000 + i) for i in range(60)]

    async def main():
        async with uringloop.open(path, 'w+b') as f:
            await asyncio.gather(*(f.write(c) for c in chunks))
            await f.seek(0)
            reads = await asyncio.gather(*(f.read(len(c)) for c in chunks))
            # Positional calls run concurrently, each at its own offset.
            offsets = [sum(map(len, chunks[:i])) for i in range(len(chunks))]
            preads = await asyncio.gather(*(f.pread(len(c), o) for c, o in zip(chunks, offsets)))
            await asyncio.gather(*(f.pwrite(c.lower(), o) for c, o in zip(chunks, offsets)))
        return reads, preads

    reads, preads = run(main())
    assert reads == chunks and preads == chunks
    assert path.read_bytes() == b''.join(chunks).lower()


def test_stat_fsync_and_path_calls(tmp_path):
    path = tmp_path / 'f'
    link = tmp_path / 'link'
    path.write_bytes(b'hello')
    os.symlink(path, link)

    async def main():
        st = await files.stat(path)
        lst = await files.lstat(link)
        via_link = await files.stat(link)
        async with uringloop.open(path, 'r+b') as f:
            await f.write(b'J')
            await f.fsync()
            await f.fdatasync()
            fst = await f.stat()
        assert await files.exists(path) and not await files.exists(tmp_path / 'nope')
        await files.mkdir(tmp_path / 'd', 0o700)
        await files.rename(path, tmp_path / 'd' / 'g')
        assert await files.read_text(tmp_path / 'd' / 'g') == 'Jello'
        await files.write_text(tmp_path / 'd' / 't', 'x\ny')
        await files.unlink(tmp_path / 'd' / 'g')
        await files.remove(tmp_path / 'd' / 't')
        await files.rmdir(tmp_path / 'd')
        return st, lst, via_link, fst

    ref = os.stat(path)
    ref_link = os.lstat(link)
    st, lst, via_link, fst = run(main())
    for name in ('st_mode', 'st_ino', 'st_dev', 'st_nlink', 'st_uid', 'st_gid', 'st_size',
                 'st_mtime_ns', 'st_ctime_ns', 'st_blksize', 'st_blocks', 'st_rdev'):
        assert getattr(st, name) == getattr(ref, name), name
        assert getattr(lst, name) == getattr(ref_link, name), name
    assert st.st_mtime == ref.st_mtime and tuple(st) == tuple(ref)
    assert via_link.st_ino == ref.st_ino and fst.st_ino == ref.st_ino
    assert not os.path.exists(tmp_path / 'd')


# -- errors ----------------------------------------------------------------------------------


def test_errors_match_os(tmp_path):
    missing = tmp_path / 'missing'
    afile = tmp_path / 'file'
    afile.write_bytes(b'')
    adir = tmp_path / 'dir'
    adir.mkdir()

    def ref_error(fn, *args):
        try:
            fn(*args)
        except OSError as exc:
            return exc
        raise AssertionError('no error')

    async def error(coro):
        try:
            await coro
        except OSError as exc:
            return exc
        raise AssertionError('no error')

    pairs = [
        (lambda: uringloop.open(missing, 'rb'), lambda: open(missing, 'rb')),
        (lambda: uringloop.open(str(adir), 'r'), lambda: open(str(adir), 'r')),
        (lambda: uringloop.open(adir, 'wb'), lambda: open(adir, 'wb')),
        (lambda: uringloop.open(afile, 'x'), lambda: open(afile, 'x')),
        (lambda: uringloop.open(afile / 'sub', 'rb'), lambda: open(afile / 'sub', 'rb')),
        (lambda: files.stat(missing), lambda: os.stat(missing)),
        (lambda: files.unlink(missing), lambda: os.unlink(missing)),
        (lambda: files.unlink(adir), lambda: os.unlink(adir)),
        (lambda: files.rmdir(afile), lambda: os.rmdir(afile)),
        (lambda: files.mkdir(adir), lambda: os.mkdir(adir)),
        (lambda: files.rename(missing, tmp_path / 'x'), lambda: os.rename(missing, tmp_path / 'x')),
    ]

    async def main():
        return [await error(mine()) for mine, _ in pairs]

    for got, (_, theirs) in zip(run(main()), pairs):
        want = ref_error(theirs)
        assert type(got) is type(want), (got, want)
        assert (got.errno, got.filename, got.filename2) == (want.errno, want.filename,
                                                            want.filename2), (got, want)


def test_permission_error_names_the_file(tmp_path):
    # Root passes mode bits, but a sysfs attribute that has no writer refuses to be opened
    # for writing (EACCES) to anyone.
    if os.geteuid() == 0:
        path = '/sys/kernel/notes'
        mode = 'wb'
    else:
        path = tmp_path / 'private'
        path.write_bytes(b'secret')
        path.chmod(0)
        mode = 'rb'
    with pytest.raises(PermissionError) as ref:
        open(path, mode)

    async def main():
        with pytest.raises(PermissionError) as info:
            await uringloop.open(path, mode)
        return info.value

    got = run(main())
    assert (got.errno, got.filename) == (ref.value.errno, path)


def test_bad_arguments_raise_what_open_raises(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'')
    calls = [
        ((path, 'rw'), {}), ((path, 'rbt'), {}), ((path, 'z'), {}), ((path, 'rr'), {}),
        ((path, ''), {}), ((path, 'rb'), dict(encoding='utf-8')),
        ((path, 'rb'), dict(errors='strict')), ((path, 'rb'), dict(newline='')),
        ((path, 'r'), dict(buffering=0)), ((path, 'r'), dict(newline='x')),
        ((path, 'r'), dict(newline=1)), ((path, 1), {}),
        ((1.5, 'r'), {}), ((None, 'r'), {}), ((path, 'r'), dict(encoding='no-such-codec')),
        ((path, 'r'), dict(encoding=5)), ((path, 'r'), dict(buffering='1')),
        ((path, 'r'), dict(closefd=False)), ((-1, 'r'), {}),
    ]
    for args, kwargs in calls:
        try:
            open(*args, **kwargs).close()
        except Exception as exc:
            want = exc
        else:
            raise AssertionError(f'open{args} did not fail')
        with pytest.raises(type(want)) as info:
            uringloop.open(*args, **kwargs)
        assert type(info.value) is type(want)


def test_misuse_of_an_open_file(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'abc')

    async def main():
        f = await uringloop.open(path, 'rb')
        with pytest.raises(io.UnsupportedOperation):
            await f.write(b'x')
        with pytest.raises(TypeError):
            await f.read('3')
        with pytest.raises(ValueError):
            await f.seek(0, 5)
        with pytest.raises(OSError) as info:
            await f.seek(-1)
        assert info.value.errno == errno.EINVAL
        await f.close()
        await f.close()
        assert f.closed
        with pytest.raises(ValueError):
            await f.read()
        g = await uringloop.open(path, 'w')
        with pytest.raises(io.UnsupportedOperation):
            await g.read()
        with pytest.raises(TypeError):
            await g.write(b'bytes')
        await g.close()

    run(main())


def test_on_another_loop_a_clear_error(tmp_path):
    async def main():
        with pytest.raises(RuntimeError, match='uringloop event loop'):
            await uringloop.open(tmp_path / 'f', 'wb')
        with pytest.raises(RuntimeError, match='uringloop event loop'):
            await files.stat(tmp_path)

    asyncio.run(main())
    assert not (tmp_path / 'f').exists()


# -- cancellation ----------------------------------------------------------------------------


def test_cancelled_opens_leak_no_fd(tmp_path):
    # Cancelled at every point of its life, an open either never happened or closes its fd
    # (the autouse fixture fails the test on any descriptor left open).
    for i in range(20):
        (tmp_path / f'f{i}').write_bytes(b'x' * i)

    async def main():
        for spins in range(6):
            tasks = [asyncio.ensure_future(files.read_bytes(tmp_path / f'f{i}'))
                     for i in range(20)]
            for _ in range(spins):
                await asyncio.sleep(0)
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for i, res in enumerate(results):
                assert isinstance(res, asyncio.CancelledError) or res == b'x' * i
        # The loop is still fine afterwards.
        return await files.read_bytes(tmp_path / 'f3')

    assert run(main()) == b'xxx'


def test_cancelled_read_consumes_nothing(tmp_path, small_rw):
    path = tmp_path / 'f'
    data = payload(200_000)
    path.write_bytes(data)

    async def main():
        async with uringloop.open(path, 'rb') as f:
            out = []
            for spins in range(8):
                task = asyncio.ensure_future(f.read(30_000))
                for _ in range(spins):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    out.append(await task)
                except asyncio.CancelledError:
                    pass
                out.append(await f.read(1000))
            out.append(await f.read())
            return b''.join(out)

    assert run(main()) == data


def test_cancelled_write_reports_through_the_position(tmp_path, small_rw):
    path = tmp_path / 'f'
    data = payload(100_000)

    async def main():
        positions = []
        async with uringloop.open(path, 'wb') as f:
            for chunks_before_cancel in (0, 1, 3, 7):
                await f.seek(0)
                task = asyncio.ensure_future(f.write(data))
                # A 4 KiB WRITE at a time: cancel once this many have gone through.
                for _ in range(10_000):
                    if await f.tell() >= chunks_before_cancel * 4096:
                        break
                    await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                pos = await f.tell()
                positions.append(pos)
                # What was written is a prefix of the data, whole WRITEs, up to the position.
                assert pos % 4096 == 0 and pos < len(data)
                assert path.read_bytes()[:pos] == data[:pos]
        return positions

    positions = run(main())
    assert positions[1:] == sorted(positions[1:]) and positions[-1] >= 7 * 4096


def test_loop_closed_with_a_close_pending_closes_the_fd(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'')
    loop = uringloop.new_event_loop()
    fd = os.open(path, os.O_RDONLY)

    def request_close_and_stop():
        # Queued on the ring while the loop runs; the loop stops before submitting it, and
        # close() must see it through.
        _core._file_close(loop, fd)
        loop.stop()

    loop.call_soon(request_close_and_stop)
    loop.run_forever()
    assert loop.ring_stats().pending == 2     # the CLOSE and the wake-up READ
    loop.close()
    assert_closed(fd)


def test_close_requested_on_a_loop_that_never_runs_again(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'')
    loop = uringloop.new_event_loop()      # never run: its ring has not been enabled
    fd = os.open(path, os.O_RDONLY)
    _core._file_close(loop, fd)
    loop.close()
    assert_closed(fd)


def test_open_request_cancelled_by_loop_close_closes_its_fd(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'')
    loop = uringloop.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    for _ in range(10):
        _core._file_open(loop, os.fsencode(path), os.O_RDONLY | os.O_CLOEXEC, 0, path)
    loop.close()     # the drain answers every OPENAT; whichever opened must be closed


# -- a Unix server's socket file ---------------------------------------------------------------


def refuse_blocking_fs_calls(monkeypatch):
    """A blocking-call detector, as test suites use: any os.stat / os.unlink from here on
    fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError('blocking file-system call on the loop thread')
    for name in ('stat', 'lstat', 'unlink', 'remove'):
        monkeypatch.setattr(os, name, refuse)


def test_unix_server_uses_the_ring_for_its_socket_file(tmp_path, monkeypatch):
    path = str(tmp_path / 'server.sock')
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)          # a socket file left behind by an earlier server
    stale.close()

    async def main():
        loop = asyncio.get_running_loop()
        with monkeypatch.context() as m:
            refuse_blocking_fs_calls(m)
            server = await loop.create_unix_server(asyncio.Protocol, path)
            reader, writer = await asyncio.open_unix_connection(path)
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
        return os.path.exists(path)

    still_there = run(main())
    # Python 3.13 removes the socket file when the server closes; before, it stays.
    assert still_there == (sys.version_info < (3, 13))


@pytest.mark.skipif(sys.version_info < (3, 13), reason='the socket file cleanup is 3.13+')
def test_unix_server_cleanup_semantics(tmp_path, monkeypatch):
    async def main():
        loop = asyncio.get_running_loop()
        results = []
        with monkeypatch.context() as m:
            refuse_blocking_fs_calls(m)
            # (os.access: os.path.exists() would call the refused os.stat.)
            # Removed once closed: wait_closed() returns after the file is gone.
            a = await loop.create_unix_server(asyncio.Protocol, str(tmp_path / 'a'))
            a.close()
            await a.wait_closed()
            results.append(('a', os.access(tmp_path / 'a', os.F_OK)))
            # Replaced by another file meanwhile: not the server's to remove.
            b = await loop.create_unix_server(asyncio.Protocol, str(tmp_path / 'b'))
            m.undo()
            os.unlink(tmp_path / 'b')
            (tmp_path / 'b').write_bytes(b'not a socket')
            refuse_blocking_fs_calls(m)
            b.close()
            await b.wait_closed()
            results.append(('b', os.access(tmp_path / 'b', os.F_OK)))
            # cleanup_socket=False leaves it.
            c = await loop.create_unix_server(asyncio.Protocol, str(tmp_path / 'c'),
                                              cleanup_socket=False)
            c.close()
            await c.wait_closed()
            results.append(('c', os.access(tmp_path / 'c', os.F_OK)))
        return results

    assert run(main()) == [('a', False), ('b', True), ('c', True)]


@pytest.mark.skipif(sys.version_info < (3, 13), reason='the socket file cleanup is 3.13+')
def test_unix_server_closed_outside_the_loop_removes_its_file_at_once(tmp_path):
    loop = uringloop.new_event_loop()
    try:
        path = str(tmp_path / 's')
        server = loop.run_until_complete(loop.create_unix_server(asyncio.Protocol, path))
        server.close()          # the loop is not running: removed right here
        assert not os.path.exists(path)
        loop.run_until_complete(server.wait_closed())
    finally:
        loop.close()


@pytest.mark.skipif(sys.version_info < (3, 13), reason='the socket file cleanup is 3.13+')
def test_unix_server_file_is_gone_when_close_returns(tmp_path, monkeypatch):
    # asyncio removes the file inside Server.close(); uringloop waits there for the ring's
    # STATX and UNLINKAT instead of calling os.stat / os.unlink.
    path = str(tmp_path / 's')

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(asyncio.Protocol, path)
        with monkeypatch.context() as m:
            refuse_blocking_fs_calls(m)
            server.close()
            gone = not os.access(path, os.F_OK)
        await server.wait_closed()
        # The loop goes on as usual: the requests' completions were dispatched once.
        await asyncio.sleep(0)
        return gone

    assert run(main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason='the socket file cleanup is 3.13+')
def test_unix_server_close_submits_nothing_else_early(tmp_path):
    # A reader callback that closes a Unix server before reading: the poll re-armed when it
    # fired must go to the kernel only after the callback has read, or it reports the data
    # already read and the callback runs again for nothing.
    path = str(tmp_path / 's')

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(asyncio.Protocol, path)
        a, b = socket.socketpair()
        a.setblocking(False)
        calls = []
        done = loop.create_future()

        def on_readable():
            if server.is_serving():
                server.close()
            try:
                calls.append(a.recv(100))
            except BlockingIOError:
                calls.append(None)
            if not done.done():
                loop.call_later(0.05, done.set_result, None)

        loop.add_reader(a, on_readable)
        b.send(b'x')
        await done
        loop.remove_reader(a)
        a.close()
        b.close()
        await server.wait_closed()
        return calls, os.access(path, os.F_OK)

    assert run(main()) == ([b'x'], False)


@pytest.mark.skipif(sys.version_info < (3, 13), reason='the socket file cleanup is 3.13+')
def test_unix_server_slow_removal_is_finished_by_wait_closed(tmp_path, monkeypatch):
    # Past its bound, close() leaves the rest of the removal to a task wait_closed() awaits.
    path = str(tmp_path / 's')
    old = _core._set_socket_file_wait(0)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(asyncio.Protocol, path)
        with monkeypatch.context() as m:
            refuse_blocking_fs_calls(m)
            server.close()
            await server.wait_closed()
        return os.access(path, os.F_OK)

    try:
        assert run(main()) is False
    finally:
        _core._set_socket_file_wait(old)
