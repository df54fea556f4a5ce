"""subprocess_exec / subprocess_shell and asyncio.create_subprocess_*: pipes, returncode,
signals, no zombie left behind. Every scenario runs on asyncio's loop and on uringloop."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

from surfaces_helpers import is_uring, loop, pending  # noqa: F401

PY = sys.executable


def no_zombies():
    """True when this process has no child left unreaped (zombie or running)."""
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return pid == 0 and not _my_children()


def _my_children():
    me = str(os.getpid())
    kids = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            kids.append((pid, fields[0]))
    return kids


def test_exec_pipes_and_returncode(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, '-c', 'import sys; d = sys.stdin.buffer.read(); '
                      'sys.stdout.buffer.write(d.upper()); sys.stderr.write("err"); sys.exit(7)',
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await p.communicate(b'data' * 1000)
        assert (out, err, p.returncode) == (b'DATA' * 1000, b'err', 7)
        assert await p.wait() == 7

    loop.run_until_complete(main())
    assert not _my_children()


def test_shell_and_stderr_to_stdout(loop):
    async def main():
        p = await asyncio.create_subprocess_shell(
            'echo out; echo err 1>&2; exit 3', stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        out, err = await p.communicate()
        assert sorted(out.split()) == [b'err', b'out'] and err is None
        assert p.returncode == 3

    loop.run_until_complete(main())


def test_wait_without_pipes(loop):
    async def main():
        p = await asyncio.create_subprocess_exec('true')
        assert await p.wait() == 0
        p = await asyncio.create_subprocess_exec('false', stdout=subprocess.DEVNULL)
        assert await p.wait() == 1

    loop.run_until_complete(main())


@pytest.mark.parametrize('how', ['terminate', 'kill', 'send_signal'])
def test_signals_to_child(loop, how):
    async def main():
        # The child sleeps in short steps: a SIGINT that lands between its print and the start
        # of a long sleep only sets Python's flag, which nothing checks until that sleep ends.
        p = await asyncio.create_subprocess_exec(
            PY, '-c', 'import time; print("up", flush=True)\nfor _ in range(600): time.sleep(0.05)',
            stdout=subprocess.PIPE)
        assert await p.stdout.readline() == b'up\n'
        if how == 'send_signal':
            p.send_signal(signal.SIGINT)
            expected = -signal.SIGINT   # Python re-raises the signal after KeyboardInterrupt
        else:
            getattr(p, how)()
            expected = -signal.SIGTERM if how == 'terminate' else -signal.SIGKILL
        assert await asyncio.wait_for(p.wait(), 10) == expected
        # Signalling a process that has exited never reaches another process: it is a no-op
        # or, once the transport has closed too, ProcessLookupError.
        for call in (p.kill, p.terminate, lambda: p.send_signal(signal.SIGUSR1)):
            try:
                call()
            except ProcessLookupError:
                pass
        await p.stdout.read()
        await asyncio.sleep(0.05)
        with pytest.raises(ProcessLookupError):
            p.kill()

    loop.run_until_complete(main())


def test_many_concurrent(loop):
    async def one(i):
        p = await asyncio.create_subprocess_exec(
            PY, '-c', f'import sys; print({i}); sys.exit({i % 5})', stdout=subprocess.PIPE)
        out, _ = await p.communicate()
        return int(out), p.returncode

    async def main():
        return await asyncio.gather(*(one(i) for i in range(16)))

    assert loop.run_until_complete(main()) == [(i, i % 5) for i in range(16)]
    assert no_zombies()


def test_large_output_flow_control(loop):
    async def main():
        size = 8 * 1024 * 1024
        p = await asyncio.create_subprocess_exec(
            PY, '-c', f'import sys; sys.stdout.buffer.write(b"x" * {size})',
            stdout=subprocess.PIPE)
        total = 0
        while True:
            chunk = await p.stdout.read(65536)
            if not chunk:
                break
            total += len(chunk)
            if total < 1 << 20:
                await asyncio.sleep(0)      # a slow reader for a while: the pipe fills
        assert total == size
        assert await p.wait() == 0

    loop.run_until_complete(main())


def test_exit_before_pipes_read(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, '-c', 'print("bye")', stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        assert await p.wait() == 0
        assert await p.stdout.read() == b'bye\n'
        # stdin of an exited child: writing fails with a broken pipe, draining reports it.
        p.stdin.write(b'x' * 100000)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            await p.stdin.drain()

    loop.run_until_complete(main())


def test_protocol_events(loop):
    events = []

    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.done = loop.create_future()

        def connection_made(self, transport):
            events.append('made')

        def pipe_data_received(self, fd, data):
            events.append(('data', fd, data))

        def pipe_connection_lost(self, fd, exc):
            events.append(('pipe_lost', fd, exc))

        def process_exited(self):
            events.append('exited')

        def connection_lost(self, exc):
            events.append(('lost', exc))
            self.done.set_result(None)

    async def main():
        t, p = await loop.subprocess_exec(Proto, PY, '-c', 'print("hi")',
                                          stdin=None, stderr=None)
        assert isinstance(t, asyncio.SubprocessTransport)
        assert t.get_pid() > 0
        assert t.get_pipe_transport(1) is not None and t.get_pipe_transport(0) is None
        await asyncio.wait_for(p.done, 10)
        assert t.get_returncode() == 0
        t.close()

    loop.run_until_complete(main())
    assert events[0] == 'made' and events[-1] == ('lost', None)
    data = b''.join(e[2] for e in events if e[0] == 'data')
    assert data == b'hi\n' and 'exited' in events
    assert ('pipe_lost', 1, None) in events


def test_close_kills_running_child(loop):
    async def main():
        t, p = await loop.subprocess_exec(asyncio.SubprocessProtocol, 'sleep', '30',
                                          stdin=None, stdout=None, stderr=None)
        t.close()
        assert await asyncio.wait_for(t._wait(), 10) == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            t.kill()

    loop.run_until_complete(main())
    assert not _my_children()


def test_argument_errors(loop):
    async def main():
        P = asyncio.SubprocessProtocol
        with pytest.raises(ValueError):
            await loop.subprocess_exec(P, 'true', universal_newlines=True)
        with pytest.raises(ValueError):
            await loop.subprocess_exec(P, 'true', text=True)
        with pytest.raises(ValueError):
            await loop.subprocess_shell(P, ['echo', 'x'])
        with pytest.raises(ValueError):
            await loop.subprocess_shell(P, 'true', shell=False)
        with pytest.raises(ValueError):
            await loop.subprocess_exec(P, 'true', bufsize=1)
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec('/nonexistent/program')

    loop.run_until_complete(main())


def test_cancel_wait_then_wait_again(loop):
    async def main():
        p = await asyncio.create_subprocess_exec('sleep', '0.3')
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(p.wait(), 0.05)
        assert await p.wait() == 0

    loop.run_until_complete(main())


def test_loop_in_other_thread(loop):
    # No child watcher, no main-thread requirement: a loop in a worker thread runs children.
    result = []

    def worker():
        async def main():
            p = await asyncio.create_subprocess_exec(PY, '-c', 'print(42)',
                                                     stdout=subprocess.PIPE)
            out, _ = await p.communicate()
            return out, p.returncode
        result.append(loop.run_until_complete(main()))

    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    assert result == [(b'42\n', 0)]


def test_popen_reaps_first(loop):
    # Popen itself may reap the child (poll() from close(), or from user code through the
    # 'subprocess' extra): the returncode must still be right and nothing must hang.
    if not is_uring(loop):
        pytest.skip("asyncio's child watcher thread races Popen.poll() here (ECHILD -> 0)")

    async def main():
        t, _ = await loop.subprocess_exec(asyncio.SubprocessProtocol, PY, '-c',
                                          'import sys; sys.exit(5)',
                                          stdin=None, stdout=None, stderr=None)
        popen = t.get_extra_info('subprocess')
        while popen.poll() is None:
            await asyncio.sleep(0.01)
        assert popen.returncode == 5
        assert await asyncio.wait_for(t._wait(), 10) == 5
        t.close()

    loop.run_until_complete(main())


def test_no_child_watcher_needed(loop):
    if not is_uring(loop):
        pytest.skip('asyncio itself uses its child watchers')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)

        def refuse():
            raise AssertionError('a child watcher was asked for')

        orig = getattr(asyncio, 'get_child_watcher', None)
        if orig is None:
            pytest.skip('Python 3.14 removed asyncio\'s child watchers: none can be asked for')
        asyncio.get_child_watcher = refuse
        try:
            test_exec_pipes_and_returncode(loop)
        finally:
            asyncio.get_child_watcher = orig


def test_pending_accounting(loop):
    if not is_uring(loop):
        pytest.skip('ring accounting is uringloop-only')

    async def main():
        await asyncio.sleep(0)
        base = pending(loop)
        procs = [await asyncio.create_subprocess_exec('sleep', '30') for _ in range(4)]
        await asyncio.sleep(0.01)
        assert pending(loop) == base + 4         # one pidfd poll per child
        for p in procs:
            p.kill()
        assert [await p.wait() for p in procs] == [-signal.SIGKILL] * 4
        await asyncio.sleep(0.01)
        assert pending(loop) == base

    loop.run_until_complete(main())
    assert not _my_children()


def test_loop_closed_with_running_child(loop):
    if not is_uring(loop) and sys.version_info >= (3, 12):
        pytest.skip("asyncio 3.12+ leaves this child a zombie (its watcher went with the loop)")
    async def main():
        return await asyncio.create_subprocess_exec('sleep', '0.2')

    p = loop.run_until_complete(main())
    pid = p.pid
    loop.close()                 # must not hang
    # The child is still reaped once it ends, by someone other than this test.
    for _ in range(500):
        if not os.path.exists(f'/proc/{pid}'):
            break
        time.sleep(0.01)
    assert not os.path.exists(f'/proc/{pid}')
    del p


def test_pipe_connection_failure_does_not_hang(loop):
    # asyncio's own loop waits forever here (its _wait() also waits for the pipe that never
    # got connected); uringloop kills and reaps the child and raises the error.
    if not is_uring(loop):
        pytest.skip('asyncio hangs in this case')

    async def failing_connect_read_pipe(*args, **kwargs):
        raise OSError('no pipe for you')

    loop.connect_read_pipe = failing_connect_read_pipe

    async def main():
        with pytest.raises(OSError, match='no pipe for you'):
            await asyncio.wait_for(asyncio.create_subprocess_exec(
                'sleep', '30', stdout=subprocess.PIPE), 10)

    loop.run_until_complete(main())
    del loop.connect_read_pipe
    assert not _my_children()
