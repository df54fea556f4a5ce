"""Multi-core servers, end to end: `uvicorn --workers 2 --loop uringloop:new_event_loop` and
gunicorn with uvicorn's worker class set to uringloop's loop. Two worker processes share the
listening socket and both serve (their pids are counted in the answers); SIGTERM to the master
shuts down gracefully: a slow request in flight when it arrives completes. The same scenario
runs with asyncio's loop as the reference."""

import http.client
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from child_ports import port_in_output

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LOOPS = {'uringloop': 'uringloop.Loop', 'asyncio': 'asyncio.unix_events._UnixSelectorEventLoop'}


def get(port, path, timeout=10):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', path, headers={'Connection': 'close'})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


# Each master binds port 0 (the kernel picks a free port, so no other process can take it
# first) and names the port it got in its log.
LISTENING = {'uvicorn': r'Uvicorn running on http://127\.0\.0\.1:(\d+)',
             'gunicorn': r'Listening at: http://127\.0\.0\.1:(\d+)'}


def command(server, loop_name):
    if server == 'uvicorn':
        loop = 'uringloop:new_event_loop' if loop_name == 'uringloop' else 'asyncio'
        return [sys.executable, '-m', 'uvicorn', 'multicore_app:app', '--workers', '2',
                '--loop', loop, '--host', '127.0.0.1', '--port', '0', '--log-level', 'info']
    worker = 'UringloopWorker' if loop_name == 'uringloop' else 'AsyncioWorker'
    return [sys.executable, '-m', 'gunicorn', 'multicore_app:app', '--workers', '2',
            '--worker-class', f'multicore_app.{worker}', '--bind', '127.0.0.1:0',
            '--graceful-timeout', '30', '--log-level', 'info']


@pytest.mark.parametrize('loop_name', sorted(LOOPS))
@pytest.mark.parametrize('server', ['uvicorn', 'gunicorn'])
def test_two_workers_share_the_port_and_shut_down_gracefully(server, loop_name, tmp_path):
    started = tmp_path / 'started'
    started.mkdir()
    env = dict(os.environ, SLOW_STARTED_DIR=str(started), PYTHONPATH=os.pathsep.join(
        [os.path.join(HERE, 'multicore'), ROOT, os.environ.get('PYTHONPATH', '')]))
    log_path = tmp_path / 'server.log'
    with open(log_path, 'wb') as log:
        master = subprocess.Popen(command(server, loop_name), env=env, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        port = port_in_output(log_path, master, LISTENING[server])
        answers = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len({a.split()[0] for a in answers}) < 2:
            try:
                status, body = get(port, '/')
                answers.append(body)
            except OSError:
                assert master.poll() is None, log_path.read_text()
                time.sleep(0.1)
        pids = {answer.split()[0] for answer in answers}
        assert len(pids) == 2, (answers[-5:], log_path.read_text())
        assert {answer.split()[1] for answer in answers} == {LOOPS[loop_name]}

        slow = {}
        in_flight = threading.Thread(target=lambda: slow.update(answer=get(port, '/slow', 30)))
        in_flight.start()
        while not os.listdir(started):  # until the request has reached the application
            assert in_flight.is_alive(), slow
            time.sleep(0.01)
        master.send_signal(signal.SIGTERM)
        in_flight.join(30)
        status, body = slow['answer']
        assert status == 200 and body.endswith(' slow done'), body
        assert body.split()[0] in pids
        assert master.wait(30) == 0
        log = log_path.read_text()
        assert 'Traceback' not in log, log
        with pytest.raises(ConnectionRefusedError):
            get(port, '/')
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
