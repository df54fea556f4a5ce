# Layer 4, sockets: sock_* calls, stream transports (TCP, Unix, pipes) and servers.


cdef class SocketLoop(IOLoop):
    """IOLoop plus sockets, stream transports and servers."""
