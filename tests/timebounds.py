"""Time bounds for tests that wait on real work: servers and child Pythons starting, thousands
of connections opening and closing. Under emulation (tests/kernels/run.sh boots other kernels
under qemu's TCG, several times slower than the host) the same work takes longer, so run.sh
sets URINGLOOP_TEST_TIME_FACTOR and these bounds grow by it; what a test asserts stays the
same. Without the variable the factor is 1."""
import os

TIME_FACTOR = float(os.environ.get('URINGLOOP_TEST_TIME_FACTOR') or 1)


def bound(seconds):
    """Return `seconds` scaled by the environment's time factor."""
    return seconds * TIME_FACTOR
