"""Ports for the servers the tests run in a child process.

A port found free in the test and handed to the child can be taken by another process on the
machine before the child binds it. So a child that can be told port 0 binds a port the kernel
picks and names it in its output, where port_in_output() reads it; a server that cannot
(PostgreSQL, Redis) is started again on another port when it reports the port taken.
"""

import re
import socket
import time

import pytest

# bind()'s EADDRINUSE as PostgreSQL and Redis report it: the errno's text.
_PORT_TAKEN = re.compile(r'address already in use', re.IGNORECASE)
ATTEMPTS = 5


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (it may not be any more)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def port_taken(output):
    """True if a server's output says it could not bind its port: it was in use."""
    return _PORT_TAKEN.search(output) is not None


def port_in_output(log_path, proc, pattern, timeout=60.0):
    """Waits until the output that child `proc` writes to log_path matches `pattern`, whose
    first group is the port it listens on, and returns that port. Fails the test with the output
    if the child exits first or `timeout` seconds pass."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        with open(log_path, errors='replace') as log:
            output = log.read()
        match = regex.search(output)
        if match:
            return int(match.group(1))
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f'the server did not say which port it listens on (exit code '
                        f'{proc.poll()}); its output:\n{output[-3000:]}', pytrace=False)
        time.sleep(0.05)
