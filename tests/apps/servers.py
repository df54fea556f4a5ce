"""Real PostgreSQL and Redis servers for the application tests, each started in a temp dir on
loopback and a unix socket, and stopped at the end. Debian's packages provide them
(`apt-get install postgresql redis-server`, which .ci/run does); when they are missing the tests
fail and say so rather than skip."""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from child_ports import ATTEMPTS, free_port, port_taken

INSTALL_HINT = ('install it with `apt-get install postgresql redis-server` (Debian/Ubuntu); '
                '.ci/run does this')


def wait_until(ready, proc, what, log_path, log_from=0, timeout=30.0):
    """Polls ready() until it is true, and returns True; returns False if the server exits
    saying (in its log past offset log_from) that its port was taken; fails with the server's
    log if it exits otherwise or never becomes ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ready():
            return True
        time.sleep(0.05)
    with open(log_path, errors='replace') as log:
        log.seek(log_from)
        output = log.read()
    if proc.poll() is not None and port_taken(output):
        return False
    pytest.fail(f'{what} did not start (exit code {proc.poll()}); its log:\n{output[-3000:]}',
                pytrace=False)


def start_on_free_port(server, what, launch):
    """Starts `server` with launch(port), which returns its process, on a free port and waits
    until server.ready(). PostgreSQL and Redis cannot be told port 0, so the port is found
    free here and bound there: if another process takes it in between, the server exits
    saying so and starts again on another free port."""
    for _ in range(ATTEMPTS):
        server.port = free_port()
        log_from = os.path.getsize(server.log_path) if os.path.exists(server.log_path) else 0
        server.proc = launch(server.port)
        if wait_until(server.ready, server.proc, what, server.log_path, log_from):
            return
    pytest.fail(f'{what} did not start: {ATTEMPTS} free ports in a row were taken before it '
                f'bound them', pytrace=False)


def stop(proc, sig):
    """Asks a server to shut down with `sig`, and kills it if it has not within 20 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PostgresServer:
    """A throwaway PostgreSQL cluster: initdb in a temp dir, then `postgres` in the foreground
    listening on 127.0.0.1 and on a unix socket in that dir, trust authentication, user
    `postgres`, no durability (the data is thrown away). PostgreSQL refuses to run as root, so
    as root it runs as `nobody`."""

    user = 'postgres'
    database = 'postgres'

    def __init__(self):
        self.bindir = self.find_bindir()
        self.dir = tempfile.mkdtemp(prefix='uringloop-pg-')
        self.socket_dir = self.dir
        self.port = None
        self.log_path = os.path.join(self.dir, 'server.log')
        self.proc = None
        self.run_as = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam('nobody')
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            self.run_as = dict(user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])

    @staticmethod
    def find_bindir():
        found = sorted(glob.glob('/usr/lib/postgresql/*/bin/postgres'),
                       key=lambda path: int(path.split('/')[4]))
        if not found:
            pytest.fail('PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/'
                        'postgres): ' + INSTALL_HINT, pytrace=False)
        return os.path.dirname(found[-1])

    @property
    def dsn(self):
        return f'postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}'

    def tool(self, name):
        return os.path.join(self.bindir, name)

    def start(self):
        data = os.path.join(self.dir, 'data')
        with open(self.log_path, 'ab') as log:
            subprocess.run([self.tool('initdb'), '-D', data, '-U', self.user, '-A', 'trust',
                            '-E', 'UTF8', '--no-sync', '--locale=C'],
                           stdout=log, stderr=subprocess.STDOUT, check=True, cwd=self.dir,
                           timeout=120, **self.run_as)
            start_on_free_port(self, 'PostgreSQL', lambda port: subprocess.Popen(
                [self.tool('postgres'), '-D', data, '-p', str(port),
                 '-c', 'listen_addresses=127.0.0.1', '-c', f'unix_socket_directories={self.dir}',
                 '-c', 'fsync=off', '-c', 'synchronous_commit=off',
                 '-c', 'full_page_writes=off', '-c', 'max_connections=60'],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, **self.run_as))

    def ready(self):
        return subprocess.run([self.tool('pg_isready'), '-q', '-h', self.dir, '-p',
                               str(self.port), '-U', self.user], timeout=10).returncode == 0

    def stop(self):
        if self.proc is not None:
            stop(self.proc, signal.SIGINT)  # SIGINT is PostgreSQL's "fast" shutdown
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """A throwaway Redis server on 127.0.0.1 and a unix socket in a temp dir, no persistence."""

    def __init__(self):
        self.binary = shutil.which('redis-server') or (
            '/usr/bin/redis-server' if os.path.exists('/usr/bin/redis-server') else None)
        if self.binary is None:
            pytest.fail('redis-server not found: ' + INSTALL_HINT, pytrace=False)
        self.dir = tempfile.mkdtemp(prefix='uringloop-redis-')
        self.port = None
        self.unix_socket = os.path.join(self.dir, 'redis.sock')
        self.log_path = os.path.join(self.dir, 'server.log')
        self.proc = None

    @property
    def url(self):
        return f'redis://127.0.0.1:{self.port}/0'

    def start(self):
        with open(self.log_path, 'ab') as log:
            start_on_free_port(self, 'Redis', lambda port: subprocess.Popen(
                [self.binary, '--port', str(port), '--bind', '127.0.0.1',
                 '--unixsocket', self.unix_socket, '--dir', self.dir, '--save', '',
                 '--appendonly', 'no', '--daemonize', 'no', '--logfile', ''],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir))

    def ready(self):
        try:
            with socket.create_connection(('127.0.0.1', self.port), timeout=2) as s:
                s.sendall(b'PING\r\n')
                return s.recv(64).startswith(b'+PONG')
        except OSError:
            return False

    def stop(self):
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)
