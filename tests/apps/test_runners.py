"""The test runners people use, running a small user suite on uringloop: pytest-asyncio (its
pytest_asyncio_loop_factories hook) and anyio's pytest plugin (the anyio_backend fixture with
a loop factory). Each suite (tests/apps/runners/) is copied to a temp dir and run there by a
pytest subprocess, as a user's project would be; its tests assert the loop they run on. The
same suite without its conftest.py runs on asyncio's loop and fails those assertions, which
shows the assertions can fail and that the conftest.py is what chose the loop."""

import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Each suite and its number of tests, every one of which asserts the loop is uringloop's.
SUITES = {
    'pytest_asyncio_suite': 6,
    'anyio_suite': 3,
}


def run_suite(name, tmp_path, with_conftest=True):
    suite = tmp_path / name
    shutil.copytree(os.path.join(HERE, 'runners', name), suite)
    if not with_conftest:
        (suite / 'conftest.py').unlink()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-o', 'timeout=60', '-v',
         '-W', 'error::DeprecationWarning', str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=180)
    return proc, proc.stdout + proc.stderr


def counts(output):
    """The passed and failed counts of pytest's closing line."""
    last = output.strip().splitlines()[-1]
    found = dict((word, int(n)) for n, word in re.findall(r'(\d+) (passed|failed)', last))
    return found.get('passed', 0), found.get('failed', 0)


@pytest.mark.parametrize('name', sorted(SUITES))
def test_user_suite_runs_on_uringloop(name, tmp_path):
    proc, output = run_suite(name, tmp_path)
    assert proc.returncode == 0, output
    assert counts(output) == (SUITES[name], 0), output


@pytest.mark.parametrize('name', sorted(SUITES))
def test_same_suite_without_the_configuration_fails_on_asyncio(name, tmp_path):
    proc, output = run_suite(name, tmp_path, with_conftest=False)
    assert proc.returncode == 1, output
    assert 'where False = isinstance(<_UnixSelectorEventLoop' in output, output
    assert counts(output) == (0, SUITES[name]), output
