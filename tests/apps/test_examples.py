"""The programs in examples/, each run as a user would run it, briefly, on port 0 (a port the
kernel picks, which the program names in its first line): the HTTP service, the websocket chat,
the TCP proxy, the Redis job queue, and demo.py with --plot."""

import asyncio
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.request

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, 'examples')


class Example:
    """One example program running in a child process; its first line of output says it is
    ready. stop() sends SIGTERM and returns the rest of its output."""

    def __init__(self, name, *args):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH',
                                                                                '')]))
        self.proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, name), *args],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.first_line = self.proc.stdout.readline()

    def port(self, first_line):
        """The port in the program's first line, which must match the pattern `first_line`
        (with the port as its first group)."""
        match = re.fullmatch(first_line, self.first_line)
        assert match, self.first_line + (self.proc.stdout.read() if self.proc.poll() is not None else '')
        return int(match.group(1))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode, out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def fetch(url, data=None):
    with urllib.request.urlopen(url, data=data, timeout=10) as response:
        return response.status, response.read()


def test_http_service():
    with Example('http_service.py', '--port', '0') as example:
        port = example.port(r'serving on http://127\.0\.0\.1:(\d+)\n')
        base = f'http://127.0.0.1:{port}'
        created = [fetch(base + '/items', json.dumps({'name': name}).encode())
                   for name in ('apple', 'pear')]
        listed = json.loads(fetch(base + '/items')[1])
        status, body = fetch(base + '/stream?kib=1000')
        stats = json.loads(fetch(base + '/stats')[1])
        returncode, rest = example.stop()
    assert [status for status, _ in created] == [201, 201]
    assert listed == [{'id': 1, 'name': 'apple'}, {'id': 2, 'name': 'pear'}]
    assert status == 200 and body == (bytes(range(256)) * 4096)[:1000 * 1024]
    assert stats['loop'] == 'Loop' and stats['submitted'] > 0
    assert (returncode, rest) == (0, 'stopped\n')


def test_ws_chat():
    from websockets.asyncio.client import connect

    async def chat(port):
        url = f'ws://127.0.0.1:{port}'
        async with connect(url + '/alice') as alice:
            assert await alice.recv() == '* alice joined (1 here)'
            async with connect(url + '/bob') as bob:
                assert await bob.recv() == '* bob joined (2 here)'
                assert await alice.recv() == '* bob joined (2 here)'
                await alice.send('hello bob')
                heard = [await alice.recv(), await bob.recv()]
                await bob.send('hi alice')
                heard += [await alice.recv(), await bob.recv()]
            assert await alice.recv() == '* bob left'
        return heard

    with Example('ws_chat.py', '--port', '0') as example:
        port = example.port(r'chat on ws://127\.0\.0\.1:(\d+)/<your name>\n')
        heard = asyncio.run(asyncio.wait_for(chat(port), 30))
        returncode, rest = example.stop()
    assert heard == ['alice: hello bob'] * 2 + ['bob: hi alice'] * 2
    assert (returncode, rest) == (0, 'stopped\n')


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_tcp_proxy():
    with socketserver.ThreadingTCPServer(('127.0.0.1', 0), EchoHandler) as echo:
        echo.daemon_threads = True
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        target = echo.server_address[1]
        try:
            with Example('tcp_proxy.py', '--listen', '127.0.0.1:0',
                         '--target', f'127.0.0.1:{target}') as example:
                port = example.port(rf'proxying 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:{target}\n')
                payload = os.urandom(1 << 20)
                with socket.create_connection(('127.0.0.1', port), timeout=10) as conn:
                    sender = threading.Thread(target=conn.sendall, args=(payload,))
                    sender.start()
                    received = bytearray()
                    while len(received) < len(payload):
                        received += conn.recv(1 << 16)
                    sender.join()
                    conn.shutdown(socket.SHUT_WR)
                    assert conn.recv(1) == b''  # the proxy passed the end of stream on
                returncode, rest = example.stop()
        finally:
            echo.shutdown()
    assert received == payload
    assert (returncode, rest) == (0, f'stopped after 1 connections, {2 << 20} bytes\n')


def test_redis_jobs(redis_server):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, 'redis_jobs.py'),
                           '--url', redis_server.url, '--jobs', '300', '--workers', '4'],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith('300 jobs done by 4 workers'), proc.stdout
    assert lines[0].endswith('300 results collected, all correct: True'), proc.stdout
    assert lines[1].startswith('loop: Loop, '), proc.stdout


def test_demo_plot(tmp_path):
    pytest.importorskip('matplotlib', reason='--plot needs matplotlib')
    png = tmp_path / 'ring.png'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, 'demo.py'), '--plot', str(png)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith('idle loop') and 'ring SQ=' in lines[0]
    assert lines[-1].startswith('all echoes verified: True'), proc.stdout
    assert proc.stderr == f'plot written to {png}\n'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 20000
