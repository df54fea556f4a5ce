# cython: language_level=3
# The uringloop core: one extension built from the files below, in layer order, so that calls
# between layers are C calls (uvloop's layout). DESIGN.md (repository root) describes the layers.

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

include "ring.pyx"
include "support.pyx"
include "features.pyx"
include "ops.pyx"
include "handles.pyx"
include "loop.pyx"
include "io.pyx"
include "sockets.pyx"
include "surfaces.pyx"
include "files.pyx"
