"""uringloop refuses to start, with a clear error, where io_uring is unavailable.

The failures are real: each case runs a child Python that installs a seccomp
filter (tests/seccomp_util.py) making one io_uring syscall fail with a chosen
errno, then imports uringloop and tries to start a loop.  The child reports
what happened as JSON; the parent checks it.

The filter is installed *before* ``import uringloop``, as in a container whose
seccomp profile blocks io_uring: importing must still work, starting a loop
must raise ``uringloop.IoUringUnavailable``.

The whole module is skipped only when seccomp itself cannot be used here.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import seccomp_util as su  # noqa: E402

CHILD_TIMEOUT = 60


# -- environment checks ------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _seccomp_probe():
    # (True, "") / (False, reason); raises if the helper itself is broken
    return su.probe_in_child()


@functools.lru_cache(maxsize=None)
def _host_io_uring():
    # io_uring_setup for real, in this (unfiltered) process
    return su.io_uring_setup_probe()


def _io_uring_disabled_sysctl() -> int:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


@pytest.fixture(autouse=True, scope="module")
def _require_seccomp():
    ok, reason = _seccomp_probe()
    if not ok:
        pytest.skip(f"seccomp unavailable, cannot inject io_uring failures: {reason}")


def _require_host_io_uring():
    ok, err = _host_io_uring()
    if not ok:
        pytest.skip(
            "io_uring does not work on this host even without an injected failure "
            f"(io_uring_setup: {errno.errorcode.get(err, err)}); this test needs it"
        )


# -- running a child -------------------------------------------------------------
CHILD_BASE = r"""
import json, os, sys
sys.path[:] = {sys_path!r}
import seccomp_util
seccomp_util.install_filter({rules!r})

def report(obj):
    sys.stdout.flush()
    print("RESULT:" + json.dumps(obj))
"""

CHILD_URINGLOOP = r"""
import uringloop

def describe(e):
    err = getattr(e, "errno", None)
    cause = getattr(e, "cause", None)
    return {
        "type": type(e).__module__ + "." + type(e).__qualname__,
        "is_unavailable": isinstance(e, uringloop.IoUringUnavailable),
        "is_runtime_error": isinstance(e, RuntimeError),
        "errno": err if isinstance(err, int) or err is None else repr(err),
        "cause": cause if isinstance(cause, str) or cause is None else repr(cause),
        "str": str(e),
    }

def try_new_loop():
    try:
        loop = uringloop.new_event_loop()
    except BaseException as e:
        return describe(e)
    loop.close()
    return None
"""


def run_child(rules, body: str, import_uringloop: bool = True) -> dict:
    """Run ``body`` in a fresh interpreter after installing ``rules``.

    The child sees the same sys.path as this process (so it imports the same
    uringloop) plus this directory (for seccomp_util) and, last, the project
    root.
    """
    sys_path = [HERE] + [p for p in sys.path if p != HERE]
    if PROJECT_ROOT not in sys_path:
        # last resort, so that an installed uringloop still wins: the in-tree
        # build when pytest was started as `pytest` rather than `python -m pytest`
        sys_path.append(PROJECT_ROOT)
    code = CHILD_BASE.format(sys_path=sys_path, rules=list(rules))
    if import_uringloop:
        code += CHILD_URINGLOOP
    code += textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT:")]
    if proc.returncode != 0 or not lines:
        pytest.fail(
            f"child process failed (rc={proc.returncode}), rules={list(rules)!r}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )
    return json.loads(lines[-1][len("RESULT:"):])


# -- the cases -------------------------------------------------------------------
def _eperm_causes():
    v = _io_uring_disabled_sysctl()
    if v == 0:
        return {"seccomp"}
    if v == 2:
        return {"disabled"}
    return {"seccomp", "disabled"}  # 1: depends on io_uring_group / CAP_SYS_ADMIN


@dataclass
class Case:
    rules: list
    errno: int
    causes: object  # set of acceptable causes, or a callable giving one
    # each entry: alternatives, at least one of which the message must contain
    # (case-insensitive)
    needles: list = field(default_factory=list)
    needs_io_uring: bool = False  # the ring must really be created first

    def expected_causes(self):
        return self.causes() if callable(self.causes) else self.causes


CASES = {
    "setup-EPERM": Case(
        rules=[(su.NR_io_uring_setup, errno.EPERM)],
        errno=errno.EPERM,
        causes=_eperm_causes,
        needles=[("seccomp",), ("io_uring_disabled",)],
    ),
    "setup-ENOSYS": Case(
        rules=[(su.NR_io_uring_setup, errno.ENOSYS)],
        errno=errno.ENOSYS,
        causes={"nosys"},
        needles=[("kernel",)],
    ),
    # What a 5.x kernel answers to SINGLE_ISSUER|DEFER_TASKRUN.
    "setup-EINVAL": Case(
        rules=[(su.NR_io_uring_setup, errno.EINVAL)],
        errno=errno.EINVAL,
        causes={"old-kernel"},
        needles=[("6.1",)],
    ),
    "setup-ENOMEM": Case(
        rules=[(su.NR_io_uring_setup, errno.ENOMEM)],
        errno=errno.ENOMEM,
        causes={"memlock"},
        needles=[("RLIMIT_MEMLOCK", "ulimit -l")],
    ),
}

# io_uring_register(fd, IORING_REGISTER_RESIZE_RINGS, ...) -> EINVAL, as on kernels before
# 6.13. The mask ignores IORING_REGISTER_USE_REGISTERED_RING so the rule holds whether or not
# the loop registers its ring fd.
NO_RESIZE = [(su.NR_io_uring_register, errno.EINVAL,
              (1, su.IORING_REGISTER_RESIZE_RINGS, 0x7FFFFFFF))]

case_ids = list(CASES)


@pytest.fixture(params=case_ids)
def case(request) -> Case:
    c = CASES[request.param]
    if c.needs_io_uring:
        _require_host_io_uring()
    return c


def assert_unavailable(info, c: Case, what: str):
    """``info`` is describe(exc) from the child; check it against the case."""
    assert info is not None, f"{what}: no exception, the loop started despite the filter"
    assert info["is_unavailable"], (
        f"{what}: raised {info['type']} ({info['str']!r}), "
        "not uringloop.IoUringUnavailable"
    )
    assert info["is_runtime_error"], f"{what}: {info['type']} is not a RuntimeError"
    assert info["errno"] == c.errno, (
        f"{what}: .errno is {info['errno']!r}, expected {c.errno} "
        f"({errno.errorcode[c.errno]})"
    )
    assert info["cause"] in c.expected_causes(), (
        f"{what}: .cause is {info['cause']!r}, expected one of {sorted(c.expected_causes())}"
    )
    msg = info["str"].lower()
    for alternatives in c.needles:
        assert any(a.lower() in msg for a in alternatives), (
            f"{what}: message does not mention {' or '.join(map(repr, alternatives))}: "
            f"{info['str']!r}"
        )


# -- the seccomp helper works (no uringloop needed) ------------------------------
HELPER_BODY = r"""
import ctypes, errno
su = seccomp_util
params = ctypes.create_string_buffer(120)
fd, err = su.raw_syscall(su.NR_io_uring_setup, 1, ctypes.addressof(params))
res = {"setup": [fd, err], "register": {}}
if fd >= 0:
    for op in (8, 33, 33 | su.IORING_REGISTER_USE_REGISTERED_RING):
        res["register"][str(op)] = su.raw_syscall(su.NR_io_uring_register, fd, op, 0, 0)
    os.close(fd)
report(res)
"""


def _run_helper_child(rules):
    return run_child(rules, HELPER_BODY, import_uringloop=False)


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS, errno.ENOMEM, errno.ENOTUNIQ])
def test_helper_denies_io_uring_setup(err):
    res = _run_helper_child([(su.NR_io_uring_setup, err)])
    assert res["setup"] == [-1, err]


def test_helper_without_filter_io_uring_works():
    _require_host_io_uring()
    res = _run_helper_child([])
    fd, err = res["setup"]
    assert fd >= 0 and err == 0
    assert res["register"]["33"][1] != errno.ENOTUNIQ


def test_helper_argument_match():
    _require_host_io_uring()
    res = _run_helper_child([
        (su.NR_io_uring_register, errno.ENOTUNIQ,
         (1, su.IORING_REGISTER_RESIZE_RINGS, 0x7FFFFFFF)),
    ])
    assert res["setup"][0] >= 0, "io_uring_setup must not be touched"
    reg = res["register"]
    assert reg["33"] == [-1, errno.ENOTUNIQ]
    assert reg[str(33 | su.IORING_REGISTER_USE_REGISTERED_RING)] == [-1, errno.ENOTUNIQ]
    assert reg["8"][1] != errno.ENOTUNIQ, "other opcodes must not be denied"


def test_helper_probe_reports_prctl_failure():
    # A child that denies prctl itself, then probes from a grandchild (filters
    # are inherited): the probe must report "unavailable", not raise.
    nr_prctl = {"x86_64": 157, "aarch64": 167, "arm64": 167}.get(os.uname().machine)
    if nr_prctl is None:
        pytest.skip("prctl syscall number not known for this machine")
    ok, reason = run_child(
        [(su.NR_io_uring_setup, errno.EPERM), (nr_prctl, errno.EINVAL)],
        "report(seccomp_util.probe_in_child())",
        import_uringloop=False,
    )
    assert ok is False
    assert "PR_SET_" in reason


# -- control: without a filter the loop starts -----------------------------------
def test_control_no_filter_loop_starts():
    _require_host_io_uring()
    res = run_child([], r"""
        import asyncio
        s = uringloop.check_support()
        out = {
            "support_type": type(s).__name__,
            "ok": s.ok, "reason": s.reason, "as_tuple": list(s),
        }
        loop = uringloop.new_event_loop()
        try:
            out["ran"] = loop.run_until_complete(asyncio.sleep(0, result=42))
        finally:
            loop.close()
        report(out)
    """)
    assert res["ok"] is True, f"check_support() says unsupported: {res['reason']!r}"
    assert res["support_type"] == "Support"
    assert res["as_tuple"] == [res["ok"], res["reason"]]
    assert isinstance(res["reason"], str)
    assert res["ran"] == 42


def test_exception_class():
    res = run_child([], r"""
        E = uringloop.IoUringUnavailable
        report({"runtime": issubclass(E, RuntimeError), "name": E.__name__})
    """)
    assert res["runtime"], "IoUringUnavailable must subclass RuntimeError"


# -- a kernel that cannot resize rings: the loop runs and resizes by migration ------
def test_without_ring_resizing_the_loop_migrates():
    _require_host_io_uring()
    res = run_child(NO_RESIZE, r"""
        import asyncio, socket
        s = uringloop.check_support()

        async def main():
            loop = asyncio.get_running_loop()
            pairs = [socket.socketpair() for _ in range(40)]
            transports = []
            got = []
            for a, b in pairs:
                t, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock=a)
                transports.append(t)
                b.setblocking(False)
            await asyncio.sleep(0.01)
            grown = loop.ring_stats()
            for t in transports:
                t.write(b'x' * 1000)
            for _, b in pairs:
                got.append(len(await loop.sock_recv(b, 2000)))
            for t in transports:
                t.close()
            for _, b in pairs:
                b.close()
            while loop.ring_stats().pending > 1:
                await asyncio.sleep(0.001)
            # A shrink may wait for the resize budget; the loop wakes up for it.
            while loop.ring_stats().capacity > 4:
                await asyncio.sleep(0.001)
            return grown, loop.ring_stats(), got

        grown, idle, got = uringloop.run(main())
        report({"ok": s.ok, "reason": s.reason, "grown": grown._asdict(), "idle": idle._asdict(),
                 "got": got})
    """)
    assert res["ok"] is True and "migrat" in res["reason"], res["reason"]
    assert res["got"] == [1000] * 40
    grown, idle = res["grown"], res["idle"]
    assert grown["capacity"] in (64, 128) and grown["resize_method"] == "migration"
    assert idle["capacity"] == 2 and idle["migrations"] >= 2


# -- each injected failure -------------------------------------------------------
def test_new_event_loop_raises(case):
    info = run_child(case.rules, r"""
        report(try_new_loop())
    """)
    assert_unavailable(info, case, "new_event_loop()")


def test_check_support_reports_same_reason(case):
    res = run_child(case.rules, r"""
        def support():
            try:
                s = uringloop.check_support()
            except BaseException as e:
                return {"raised": describe(e)}
            return {"type": type(s).__name__, "ok": s.ok, "reason": s.reason,
                    "as_tuple": list(s)}
        before = support()
        exc = try_new_loop()
        after = support()
        report({"before": before, "exc": exc, "after": after})
    """)
    assert_unavailable(res["exc"], case, "new_event_loop()")
    for when in ("before", "after"):
        s = res[when]
        assert "raised" not in s, f"check_support() raised ({when} new_event_loop): {s['raised']}"
        assert s["type"] == "Support"
        assert s["ok"] is False, f"check_support() says ok ({when} new_event_loop)"
        assert s["as_tuple"] == [False, s["reason"]]
        assert s["reason"] == res["exc"]["str"], (
            f"check_support().reason ({when} new_event_loop) differs from the exception text:\n"
            f"  reason:    {s['reason']!r}\n  exception: {res['exc']['str']!r}"
        )


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_asyncio_runner_raises(case):
    res = run_child(case.rules, r"""
        import asyncio
        async def main():
            return 1
        direct = try_new_loop()
        try:
            with asyncio.Runner(loop_factory=uringloop.new_event_loop) as runner:
                runner.run(main())
            via = None
        except BaseException as e:
            via = describe(e)
        report({"direct": direct, "runner": via})
    """)
    assert_unavailable(res["runner"], case, "asyncio.Runner(loop_factory=new_event_loop)")
    assert res["runner"] == res["direct"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is new in 3.12")
def test_asyncio_run_loop_factory_raises(case):
    res = run_child(case.rules, r"""
        import asyncio
        async def main():
            return 1
        direct = try_new_loop()
        coro = main()
        try:
            asyncio.run(coro, loop_factory=uringloop.new_event_loop)
            via = None
        except BaseException as e:
            via = describe(e)
        finally:
            coro.close()
        report({"direct": direct, "via": via})
    """)
    assert_unavailable(res["via"], case, "asyncio.run(loop_factory=new_event_loop)")
    assert res["via"] == res["direct"]


def test_uringloop_run_raises(case):
    res = run_child(case.rules, r"""
        async def main():
            return 1
        direct = try_new_loop()
        coro = main()
        try:
            uringloop.run(coro)
            via = None
        except BaseException as e:
            via = describe(e)
        finally:
            coro.close()
        report({"direct": direct, "via": via})
    """)
    assert_unavailable(res["via"], case, "uringloop.run()")
    assert res["via"] == res["direct"]


FD_BODY = r"""
import gc

def fds():
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[name] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass  # the listdir fd itself, already closed
    return out

def uring_maps():
    with open("/proc/self/maps") as f:
        return [l.strip() for l in f if "io_uring" in l]

before, maps_before = fds(), uring_maps()
errors = []
for _ in range(5):
    errors.append(try_new_loop())
after, maps_after = fds(), uring_maps()
gc.collect()
after_gc = fds()
for _ in range(5):
    uringloop.check_support()
after_support = fds()
report({
    "errors": errors,
    "before": before, "after": after, "after_gc": after_gc,
    "after_support": after_support,
    "maps_before": maps_before, "maps_after": maps_after,
})
"""


def _fd_diff(before, after):
    return {k: v for k, v in after.items() if before.get(k) != v}


def test_no_fd_leak(case):
    res = run_child(case.rules, FD_BODY)
    for i, info in enumerate(res["errors"]):
        assert_unavailable(info, case, f"new_event_loop() call #{i + 1}")
    leaked = _fd_diff(res["before"], res["after"])
    still = _fd_diff(res["before"], res["after_gc"])
    assert not leaked, (
        f"fds left open after 5 failed new_event_loop() calls: {leaked}"
        + (" (gc.collect() closes them: only a reference cycle keeps them)" if not still
           else " (still open after gc.collect())")
    )
    leaked_support = _fd_diff(res["after_gc"], res["after_support"])
    assert not leaked_support, f"fds left open by 5 check_support() calls: {leaked_support}"


def test_no_ring_mapping_leak(case):
    res = run_child(case.rules, FD_BODY)
    assert res["maps_after"] == res["maps_before"], (
        "io_uring ring memory still mapped after the failed new_event_loop() calls:\n"
        + "\n".join(res["maps_after"])
    )
