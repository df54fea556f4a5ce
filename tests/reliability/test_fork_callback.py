"""fork() from inside a running loop's callback: the child builds a new loop of its own and
does a loopback echo on it; the parent's loop carries on."""
import asyncio
import os

from reliability_helpers import echo_round_trip


def child_echo(factory):
    """In the forked child: a fresh loop, one echo; the exit status says whether it worked."""
    status = 1
    try:
        # The child inherits the thread's "running loop" from the callback it was forked in;
        # Python 3.12+ resets it at fork, earlier versions leave it to the program.
        asyncio.events._set_running_loop(None)
        loop = factory()
        try:
            if loop.run_until_complete(echo_round_trip(loop, b'from the child')) \
                    == b'from the child':
                status = 0
        finally:
            loop.close()
    finally:
        os._exit(status)


def test_fork_in_callback_child_runs_its_own_loop(loop, loop_factory):
    async def main():
        forked = loop.create_future()

        def callback():
            pid = os.fork()
            if pid == 0:
                child_echo(loop_factory)
            forked.set_result(pid)

        loop.call_soon(callback)
        pid = await forked
        _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert await echo_round_trip(loop, b'parent') == b'parent'

    loop.run_until_complete(main())
