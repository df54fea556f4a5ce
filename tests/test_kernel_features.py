"""uringloop.kernel_features() reports what the running kernel's io_uring offers.

Two kinds of evidence: the running kernel's version (a mainline feature present since version X
is present on every kernel >= X), and kernels made to refuse one call with a seccomp filter in
a child process (tests/seccomp_util.py), where the probe must follow the kernel's answer.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import uringloop

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import seccomp_util as su  # noqa: E402

# The mainline release that brought each feature.
FIRST_RELEASE = {
    "ext_arg": (5, 11),
    "nodrop": (5, 5),
    "pbuf_ring": (5, 19),
    "accept_multishot": (5, 19),
    "single_issuer": (6, 0),
    "recv_multishot": (6, 0),
    "defer_taskrun": (6, 1),
    "no_sqarray": (6, 6),
    "read_multishot": (6, 7),
    "pbuf_status": (6, 8),
    "min_timeout": (6, 12),
    "resize_rings": (6, 13),
}
REGISTER_PBUF_RING = 22
REGISTER_PBUF_STATUS = 26
REGISTER_RESIZE_RINGS = 33


def running_release():
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return int(match.group(1)), int(match.group(2))


@pytest.fixture(scope="module")
def features():
    found = uringloop.kernel_features()
    if not found.available:
        pytest.skip("io_uring is unavailable here: %s" % found.error)
    return found


def test_reports_the_running_kernel(features):
    assert features.release == os.uname().release
    assert {"READ", "RECV", "SEND", "POLL_ADD", "ACCEPT", "ASYNC_CANCEL"} <= features.opcodes


def test_every_feature_of_an_older_release_is_present(features):
    release = running_release()
    missing = [name for name, first in FIRST_RELEASE.items()
               if release >= first and not getattr(features, name)]
    assert missing == [], "kernel %s lacks %s" % (features.release, missing)


def test_flags_agree_with_each_other(features):
    assert features.read_multishot == ("READ_MULTISHOT" in features.opcodes)
    if features.defer_taskrun:
        assert features.single_issuer
    if features.recv_multishot or features.pbuf_status:
        assert features.pbuf_ring


def test_answer_is_computed_once(features):
    assert uringloop.kernel_features() is features


def features_in_child(rules):
    """kernel_features() in a child whose seccomp filter applies `rules`."""
    code = textwrap.dedent("""
        import json, sys
        sys.path[:] = %r
        import seccomp_util
        seccomp_util.install_filter(%r)
        import uringloop
        print(json.dumps(uringloop.kernel_features()._asdict(), default=sorted))
    """) % ([HERE] + sys.path, rules)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def seccomp(features):
    ok, reason = su.probe_in_child()
    if not ok:
        pytest.skip("seccomp unavailable, cannot make the kernel refuse a call: %s" % reason)


def test_a_refused_resize_is_reported_missing(features, seccomp):
    if not features.resize_rings:
        pytest.skip("this kernel cannot resize rings anyway")
    child = features_in_child([(su.NR_io_uring_register, errno.EINVAL, (1, REGISTER_RESIZE_RINGS))])
    assert child["resize_rings"] is False
    assert child["defer_taskrun"] is True and child["recv_multishot"] is True


def test_refused_buffer_rings_take_their_users_with_them(features, seccomp):
    if not features.pbuf_ring:
        pytest.skip("this kernel has no provided-buffer rings anyway")
    child = features_in_child([(su.NR_io_uring_register, errno.EINVAL, (1, REGISTER_PBUF_RING))])
    assert child["pbuf_ring"] is False
    assert child["pbuf_status"] is False and child["recv_multishot"] is False
    assert child["resize_rings"] == features.resize_rings


def test_refused_buffer_status_alone(features, seccomp):
    if not features.pbuf_status:
        pytest.skip("this kernel has no IORING_REGISTER_PBUF_STATUS anyway")
    child = features_in_child(
        [(su.NR_io_uring_register, errno.EINVAL, (1, REGISTER_PBUF_STATUS))])
    assert child["pbuf_status"] is False
    assert child["pbuf_ring"] is True and child["recv_multishot"] is True


def test_no_io_uring_at_all(features, seccomp):
    child = features_in_child([(su.NR_io_uring_setup, errno.EPERM)])
    assert child["available"] is False
    assert "seccomp" in child["error"]
    flags = [name for name in FIRST_RELEASE if child[name]]
    assert flags == []


def test_a_kernel_with_everything_is_not_refused(features):
    from uringloop._core import missing_kernel_features, unsupported_kernel_error
    if running_release() >= (6, 1):
        assert missing_kernel_features(features) == []
        assert unsupported_kernel_error(features) is None


def test_a_kernel_5_15_is_refused_by_name():
    from uringloop._core import unsupported_kernel_error
    # What 5.15 reports (Ubuntu 22.04's kernel): the features of 6.0 and 6.1 are absent.
    features = uringloop.KernelFeatures(
        release="5.15.0-91-generic", available=True, error=None, setup_errno=0,
        setup_features=0x1fff, opcodes=frozenset({"READ", "RECV", "ACCEPT"}),
        single_issuer=False, defer_taskrun=False, no_sqarray=False, ext_arg=True, nodrop=True,
        min_timeout=False, pbuf_ring=False, pbuf_status=False, recv_multishot=False,
        accept_multishot=False, read_multishot=False, resize_rings=False)
    error = unsupported_kernel_error(features)
    assert isinstance(error, uringloop.IoUringUnavailable)
    assert error.cause == "old-kernel"
    message = str(error)
    assert "5.15.0-91-generic" in message and "Linux 6.1 or newer" in message
    for name in ("single_issuer", "defer_taskrun", "recv_multishot", "pbuf_ring",
                 "accept_multishot"):
        assert name in message
    assert "ext_arg" not in message


def test_no_io_uring_is_refused_with_the_cause(features, seccomp):
    code = textwrap.dedent("""
        import json, sys, errno
        sys.path[:] = %r
        import seccomp_util
        seccomp_util.install_filter([(seccomp_util.NR_io_uring_setup, errno.EPERM)])
        from uringloop._core import unsupported_kernel_error
        error = unsupported_kernel_error()
        print(json.dumps([error.cause, error.errno]))
    """) % ([HERE] + sys.path,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["seccomp", errno.EPERM]
