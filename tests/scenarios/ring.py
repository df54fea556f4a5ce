"""The ring-size invariant the tests check at iteration entries (DESIGN.md)."""
import asyncio

# The kernel's largest SQ (IORING_MAX_ENTRIES): past it the ring stops following `pending`.
KERNEL_SQ_MAX = 32768


def next_power_of_two(n):
    p = 1
    while p < n:
        p <<= 1
    return p


def ring_size_for(pending):
    """The smallest SQ a ring may have at an iteration entry with `pending` operations: the
    size a ring grows or shrinks to."""
    return min(next_power_of_two(pending + 1), KERNEL_SQ_MAX)


def ring_size_fits(capacity, pending):
    """Whether a ring of `capacity` SQ entries is in the band for `pending` operations: the
    smallest size, or the next power of two up."""
    need = ring_size_for(pending)
    return capacity in (need, min(2 * need, KERNEL_SQ_MAX))


def keeps_invariant(stats, previous=None):
    """Whether one iteration entry's ring_stats() keeps the invariant: CQ twice the SQ, the SQ
    never below the smallest size for `pending`, and in the band unless that very entry put off
    a due shrink because the resize budget was spent (its shrinks_deferred count went up since
    the `previous` entry's)."""
    if stats.cq_capacity != 2 * stats.capacity:
        return False
    if ring_size_fits(stats.capacity, stats.pending):
        return True
    deferred = previous is not None and stats.shrinks_deferred > previous.shrinks_deferred
    return deferred and stats.capacity > ring_size_for(stats.pending)


def invariant_violations(entries):
    """The entries, among consecutive iteration entries' ring_stats(), that break it."""
    return [st for prev, st in zip([None] + list(entries), entries)
            if not keeps_invariant(st, prev)]


class EntryChecker:
    """An iteration observer (loop._set_iteration_observer) that checks every entry."""

    def __init__(self):
        self.previous = None
        self.entries = 0
        self.max_capacity = 0
        self.violations = []

    def __call__(self, stats):
        self.entries += 1
        self.max_capacity = max(self.max_capacity, stats.capacity)
        if not keeps_invariant(stats, self.previous):
            self.violations.append(stats)
        self.previous = stats


async def ring_settled(loop, timeout=60):
    """Wait until the ring is back in the band for what is pending (a shrink the resize budget
    put off happens at the entry the loop wakes up for) and return its ring_stats()."""
    async def settle():
        while True:
            stats = loop.ring_stats()
            if ring_size_fits(stats.capacity, stats.pending):
                return stats
            await asyncio.sleep(0.001)
    return await asyncio.wait_for(settle(), timeout)
