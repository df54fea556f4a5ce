# cython: language_level=3
# The uringloop core: one extension built from the files below, in layer order, so that calls
# between layers are C calls (uvloop's layout); each layer has its folder. DESIGN.md (repository
# root) describes the layers.

import asyncio
import collections
import contextvars
import errno as errno_module
import logging
import os
import socket
import sys
import threading
import time
import weakref

from asyncio import base_events, events, format_helpers, futures
from asyncio import Future

from uringloop.includes.ring cimport *

cdef extern from "errno.h":
    enum:
        ECANCELED
        ENOBUFS
        ETIME

logger = logging.getLogger('asyncio')

RingStats = collections.namedtuple(
    'RingStats',
    'capacity cq_capacity pending resizes_up resizes_down submitted completed enters iterations '
    'migrations resize_method resize_time shrinks_deferred')
Support = collections.namedtuple('Support', 'ok reason')

# Layer 1, the ring: the C ring layer's owner, the kernel's support and features, and the
# provided-buffer groups registered with the ring.
include "ring/ring.pyx"
include "ring/support.pyx"
include "ring/features.pyx"
include "ring/bufring.pyx"
# Layer 2, operations: the records of what the kernel is doing, found from each CQE, and the
# I/O manager that submits them and dispatches their completions.
include "ops/operation.pyx"
include "ops/io_manager.pyx"
# Layer 3, the loop core: handles, the ready queue, timers, the iteration, close.
include "loop/handles.pyx"
include "loop/timer_heap.pyx"
include "loop/core.pyx"
# Layer 4, I/O surfaces: fd readiness, sock_*, stream transports, servers, signals, UDP,
# subprocesses.
include "surfaces/readiness.pyx"
include "surfaces/sockets.pyx"
include "transports/write_queue.pyx"
include "transports/received_while_paused.pyx"
include "transports/stream.pyx"
include "transports/asyncio_facing.pyx"
include "transports/stream_ops.pyx"
include "transports/socket.pyx"
include "transports/pipes.pyx"
include "surfaces/server.pyx"
include "surfaces/signals.pyx"
include "surfaces/udp.pyx"
include "surfaces/process.pyx"
include "surfaces/loop.pyx"
include "surfaces/files.pyx"
