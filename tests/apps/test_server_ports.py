"""The PostgreSQL and Redis servers of the application tests are told a port found free a moment
before they bind it: when another process takes it in between (seen on machines shared with
other test runs), the server starts again on another free port instead of failing the tests."""

import socket

import pytest

import child_ports
import servers


@pytest.mark.parametrize('server_class', [servers.PostgresServer, servers.RedisServer],
                         ids=['postgresql', 'redis'])
def test_a_server_whose_port_was_taken_starts_on_another(server_class, monkeypatch):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        # The first port found "free" is the one another process holds by then.
        offered = iter([taken_port])
        monkeypatch.setattr(servers, 'free_port',
                            lambda: next(offered, None) or child_ports.free_port())
        server = server_class()
        try:
            server.start()
            assert server.port != taken_port
            assert server.proc.poll() is None and server.ready()
            with open(server.log_path, errors='replace') as log:
                assert child_ports.port_taken(log.read())   # the first attempt met the taken port
        finally:
            server.stop()
