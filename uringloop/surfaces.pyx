# Layer 4, the rest of the loop's surfaces: UDP, subprocesses, signals, TLS, sendfile.


cdef class SurfacesLoop(SocketLoop):
    """SocketLoop plus datagrams, subprocesses, signals, TLS and sendfile."""
