"""The C ring layer on its own: builds tests/c/ring_check.c against uringloop/ring/ring.c and runs
it. It checks both SQ layouts, including the one with the SQ index array whose rebuild after
a resize Linux 6.18 leaves to userspace (io_uring-facts.md)."""
import os
import shutil
import subprocess
import sys

import pytest

import uringloop

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope='module')
def ring_check(tmp_path_factory):
    cc = os.environ.get('CC') or shutil.which('gcc') or shutil.which('cc')
    if cc is None:
        pytest.fail('a C compiler is required to build the ring layer (and uringloop itself)')
    exe = tmp_path_factory.mktemp('ring') / 'ring_check'
    subprocess.run([cc, '-O1', '-Wall', '-Werror', '-I', os.path.join(ROOT, 'uringloop', 'ring'),
                    os.path.join(HERE, 'c', 'ring_check.c'),
                    os.path.join(ROOT, 'uringloop', 'ring', 'ring.c'), '-o', str(exe)],
                   check=True)
    return str(exe)


def test_ring_layer_resizes_keep_every_sqe_and_cqe(ring_check):
    proc = subprocess.run([ring_check], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split('\n')
    features = uringloop.kernel_features()
    if features.resize_rings:
        assert lines[:2] == ['ok no-sq-array', 'ok sq-array']
    else:
        assert all(line.startswith('skip ') for line in lines[:2]), lines
    assert lines[2:4] == ['ok regrow no-sq-array', 'ok regrow sq-array']
