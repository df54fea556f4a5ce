"""uringloop demo: an asyncio echo server and its clients on one uringloop loop.

Waves of concurrent connections come and go; after each step the loop's ring_stats() show the
io_uring growing with the pending operations (one multishot ACCEPT for the listener, one
multishot RECV per connection, the wake-up read) and shrinking back when they finish. Ends by
itself.

    python examples/demo.py [--plot ring.png]

--plot also draws the ring's size and the pending operations at every loop iteration, over
time, into a PNG (needs matplotlib).
"""
import argparse
import asyncio
import hashlib
import resource
import sys
import time

import uringloop


class RingTimeline:
    """The ring's capacity and pending count at every iteration entry (the moment the ring
    is sized), and the demo's labelled moments, for --plot."""

    def __init__(self):
        self.start = time.perf_counter()
        self.times, self.capacity, self.pending = [], [], []
        self.marks = []

    def observe(self, stats):
        self.times.append(time.perf_counter() - self.start)
        self.capacity.append(stats.capacity)
        self.pending.append(stats.pending)

    def mark(self, label):
        self.marks.append((time.perf_counter() - self.start, label))

    def grouped_marks(self):
        """The marks, those too close to tell apart on the plot joined into one label."""
        close = (self.times[-1] if self.times else 1) / 80
        groups = []
        for when, label in self.marks:
            if groups and when - groups[-1][0] < close:
                groups[-1][1].append(label)
            else:
                groups.append((when, [label]))
        return [(when, ', '.join(labels)) for when, labels in groups]

    def plot(self, path):
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(11, 5.5), dpi=120)
        ax.step(self.times, self.capacity, where='post', color='tab:blue', linewidth=2,
                label='ring size (SQ entries)')
        ax.step(self.times, self.pending, where='post', color='tab:orange', linewidth=1,
                label='pending operations')
        ax.set_yscale('log', base=2)
        ax.set_ylim(1, max(self.capacity + self.pending) * 2.5)
        ax.set_xlabel('seconds')
        ax.set_ylabel('entries / operations (log scale)')
        ax.set_title('uringloop: the io_uring follows pending operations '
                     'at every loop iteration')
        top = ax.get_ylim()[1]
        for when, label in self.grouped_marks():
            ax.axvline(when, color='grey', linewidth=0.5, linestyle=':')
            ax.text(when, top / 1.15, label, rotation=90, fontsize=7, va='top', ha='right',
                    color='dimgrey')
        ax.legend(loc='lower center')
        ax.grid(True, which='major', axis='y', alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


timeline = None


def show(label, loop):
    if timeline is not None:
        timeline.mark(label)
    s = loop.ring_stats()
    print(f'{label:<38} pending={s.pending:<5} ring SQ={s.capacity:<5} CQ={s.cq_capacity:<5} '
          f'resizes up/down={s.resizes_up}/{s.resizes_down}')


async def handle(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def client(port, payload, opened, release):
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    opened.release()
    await release.wait()
    writer.write(payload)
    await writer.drain()
    echoed = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def wave(loop, port, n):
    opened = asyncio.Semaphore(0)
    release = asyncio.Event()
    payload = bytes(range(256)) * 64
    tasks = [asyncio.create_task(client(port, payload, opened, release)) for _ in range(n)]
    for _ in range(n):
        await opened.acquire()
    await asyncio.sleep(0.05)
    show(f'{n} connections open', loop)
    release.set()
    ok = await asyncio.gather(*tasks)
    await asyncio.sleep(0.05)
    show(f'{n} connections done ({sum(ok)}/{n} ok)', loop)
    return all(ok)


async def main():
    loop = asyncio.get_running_loop()
    if timeline is not None:
        loop._set_iteration_observer(timeline.observe)
    show('idle loop', loop)
    server = await asyncio.start_server(handle, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    show('server listening', loop)
    t0 = time.perf_counter()
    results = [await wave(loop, port, n) for n in (10, 200, 1000, 50)]
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.05)
    show('server closed', loop)
    print(f'all echoes verified: {all(results)}  ({time.perf_counter() - t0:.2f}s)')
    return all(results)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--plot', metavar='FILE.png',
                        help='also draw the ring size and pending operations over time')
    args = parser.parse_args()
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error('--plot needs matplotlib: pip install matplotlib')
        timeline = RingTimeline()
    # 1000 connections need about 2000 fds in this one process (both ends live here).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    ok = uringloop.run(main())
    if timeline is not None:
        timeline.plot(args.plot)
        print(f'plot written to {args.plot}', file=sys.stderr)
    raise SystemExit(0 if ok else 1)
