"""Misuse gets the exception asyncio's own loop raises: each case runs on asyncio's loop and on
uringloop, and both must end the same way (the same exception type, or none)."""
import asyncio
import socket

import pytest

import uringloop


async def noop():
    pass


def outcome(fn):
    try:
        fn()
    except Exception as exc:
        return type(exc)
    return None


async def connected_transport(loop):
    """A client transport to a loopback listener, with the listener's end."""
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen()
    transport, _ = await loop.create_connection(asyncio.Protocol, *lsock.getsockname())
    peer, _ = lsock.accept()
    lsock.close()
    return transport, peer


def on_transport(action):
    def case(loop):
        async def main():
            transport, peer = await connected_transport(loop)
            try:
                return outcome(lambda: action(transport))
            finally:
                transport.close()
                await asyncio.sleep(0)
                peer.close()
        return loop.run_until_complete(main())
    return case


def write_after(*steps):
    def action(transport):
        for step in steps:
            getattr(transport, step)()
        transport.write(b'late')
    return action


def on_closed_loop(action):
    def case(loop):
        loop.close()
        return outcome(lambda: action(loop))
    return case


def create_task_closed(loop):
    coro = noop()
    try:
        loop.create_task(coro)
    finally:
        coro.close()


def inside_running(action):
    def case(loop):
        async def main():
            return outcome(lambda: action(loop))
        return loop.run_until_complete(main())
    return case


def in_debug(action):
    """asyncio checks some arguments only in debug mode."""
    def case(loop):
        loop.set_debug(True)
        return inside_running(action)(loop)
    return case


def nested_run_until_complete(loop):
    coro = noop()
    try:
        loop.run_until_complete(coro)
    finally:
        coro.close()


def run_other_loop(loop):
    other = asyncio.new_event_loop()
    coro = noop()
    try:
        other.run_until_complete(coro)
    finally:
        coro.close()
        other.close()


def foreign_future(loop):
    other = asyncio.new_event_loop()
    try:
        loop.run_until_complete(other.create_future())
    finally:
        other.close()


def server_with_host_and_sock(loop):
    sock = socket.socket()
    try:
        loop.run_until_complete(loop.create_server(asyncio.Protocol, '127.0.0.1', 0, sock=sock))
    finally:
        sock.close()


def on_socket(action):
    """action(loop, sock) returns an awaitable on one end of a non-blocking socketpair."""
    def case(loop):
        a, b = socket.socketpair()
        a.setblocking(False)

        async def main():
            try:
                await action(loop, a)
            except Exception as exc:
                return type(exc)
            return None
        try:
            return loop.run_until_complete(main())
        finally:
            a.close()
            b.close()
    return case


def recv_on_closed(loop, sock):
    sock.close()
    return loop.sock_recv(sock, 10)


def recv_blocking_in_debug(loop, sock):
    sock.setblocking(True)
    loop.set_debug(True)
    return loop.sock_recv(sock, 10)


CASES = {
    'sock_sendall str': on_socket(lambda loop, s: loop.sock_sendall(s, 'text')),
    'sock_recv_into bytes': on_socket(lambda loop, s: loop.sock_recv_into(s, b'xx')),
    'sock_recv negative size': on_socket(lambda loop, s: loop.sock_recv(s, -1)),
    'sock_recv closed socket': on_socket(recv_on_closed),
    'sock_recv blocking socket in debug': on_socket(recv_blocking_in_debug),
    'sock_accept not listening': on_socket(lambda loop, s: loop.sock_accept(s)),
    'write str': on_transport(lambda t: t.write('text')),
    'write bytearray': on_transport(lambda t: t.write(bytearray(b'ok'))),
    'write int': on_transport(lambda t: t.write(5)),
    'writelines str': on_transport(lambda t: t.writelines(['text'])),
    'write after close': on_transport(write_after('close')),
    'write after write_eof': on_transport(write_after('write_eof')),
    'write after abort': on_transport(write_after('abort')),
    'call_soon on closed loop': on_closed_loop(lambda loop: loop.call_soon(print)),
    'call_later on closed loop': on_closed_loop(lambda loop: loop.call_later(1, print)),
    'call_soon_threadsafe on closed loop': on_closed_loop(
        lambda loop: loop.call_soon_threadsafe(print)),
    'create_task on closed loop': on_closed_loop(create_task_closed),
    'run_until_complete on closed loop': on_closed_loop(nested_run_until_complete),
    'run_forever on closed loop': on_closed_loop(lambda loop: loop.run_forever()),
    'close twice': on_closed_loop(lambda loop: loop.close()),
    'run_until_complete while running': inside_running(nested_run_until_complete),
    'run_forever while running': inside_running(lambda loop: loop.run_forever()),
    'another loop while running': inside_running(run_other_loop),
    'close while running': inside_running(lambda loop: loop.close()),
    'call_soon non-callable': inside_running(lambda loop: loop.call_soon(42)),
    'debug: call_soon non-callable': in_debug(lambda loop: loop.call_soon(42)),
    'debug: call_soon coroutine function': in_debug(lambda loop: loop.call_soon(noop)),
    'debug: call_soon_threadsafe non-callable': in_debug(
        lambda loop: loop.call_soon_threadsafe(42)),
    'call_later non-number delay': inside_running(lambda loop: loop.call_later('1', print)),
    'run_until_complete non-awaitable': lambda loop: outcome(
        lambda: loop.run_until_complete(42)),
    'run_until_complete foreign future': lambda loop: outcome(lambda: foreign_future(loop)),
    'create_server host and sock': lambda loop: outcome(
        lambda: server_with_host_and_sock(loop)),
    'create_connection without address': lambda loop: outcome(
        lambda: loop.run_until_complete(loop.create_connection(asyncio.Protocol))),
    'add_signal_handler SIGKILL': lambda loop: outcome(
        lambda: loop.add_signal_handler(9, print)),
    'add_signal_handler bad number': lambda loop: outcome(
        lambda: loop.add_signal_handler(4096, print)),
    'add_signal_handler coroutine': lambda loop: outcome(
        lambda: loop.add_signal_handler(10, noop)),
}


def run_case(factory, case):
    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        return CASES[case](loop)
    finally:
        if not loop.is_closed():
            loop.close()
        asyncio.set_event_loop(None)


@pytest.mark.parametrize('case', sorted(CASES))
def test_misuse_raises_what_asyncio_raises(case):
    expected = run_case(asyncio.new_event_loop, case)
    assert run_case(uringloop.new_event_loop, case) == expected
