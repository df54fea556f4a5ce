"""The ring-size invariant the tests check at iteration entries (DESIGN.md)."""

# The kernel's largest SQ (IORING_MAX_ENTRIES): past it the ring stops following `pending`.
KERNEL_SQ_MAX = 32768


def next_power_of_two(n):
    p = 1
    while p < n:
        p <<= 1
    return p


def ring_size_for(pending):
    """The SQ entries a ring must have at an iteration entry with `pending` operations."""
    return min(next_power_of_two(pending + 1), KERNEL_SQ_MAX)
