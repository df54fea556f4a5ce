"""close() on a loop that still has signal handlers (asyncio's Runner never removes them, so
every program that adds one closes its loop like this): the signal READ is cancelled and not
armed again. Before, each cancelled READ re-armed itself, close() cancelled it again, and so
on for its whole drain timeout: millions of SQEs, then the READ was left behind as pending."""

import asyncio
import os
import signal

import uringloop


def test_close_with_handlers_reaps_everything():
    for deliver in (False, True):
        loop = uringloop.new_event_loop()
        got = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, got.set)

        async def main():
            if deliver:
                os.kill(os.getpid(), signal.SIGUSR1)
                await got.wait()
            await asyncio.sleep(0)

        loop.run_until_complete(main())
        loop.close()
        stats = loop.ring_stats()
        assert stats.pending == 0, (deliver, stats)
        assert stats.submitted == stats.completed < 100, (deliver, stats)
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
