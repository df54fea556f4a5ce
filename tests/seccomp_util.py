"""Make chosen system calls fail, in the current process, with a seccomp-BPF filter.

Test helper, standard library only (ctypes).  A seccomp filter can never be
removed, so :func:`install_filter` is meant to be called in a throwaway child
process (``subprocess.run([sys.executable, "-c", ...])``), never in the pytest
process itself.

A filter is a list of rules.  Each rule names a syscall number and the errno
the call should fail with, optionally only when some of its arguments match::

    install_filter([
        (NR_io_uring_setup, errno.EPERM),                      # always fail
        (NR_io_uring_register, errno.EINVAL, (1, 33)),         # only if arg1 == 33
        (NR_io_uring_register, errno.EINVAL, (1, 33, 0x7fffffff)),  # (arg1 & mask) == 33
    ])
    deny_syscall(NR_io_uring_setup, errno.ENOSYS)              # one rule, installed now
    deny_syscall(NR_io_uring_register, errno.EINVAL, arg1=33)

Every other syscall is allowed.  A matching call is not executed at all: the
kernel returns ``-errno`` straight away (``SECCOMP_RET_ERRNO``).

The filter applies to the calling thread and to the threads and processes it
creates afterwards; install it before starting any thread.  Calls made with a
foreign syscall ABI (say i386 ``int 0x80`` from an x86_64 process) are allowed
untouched: this is a fault injector, not a sandbox.

Run ``python tests/seccomp_util.py`` for a self-test (it spawns children).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import json
import os
import platform
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

__all__ = [
    "ArgMatch",
    "Rule",
    "SeccompUnavailable",
    "UnsupportedArchitecture",
    "NR_io_uring_setup",
    "NR_io_uring_enter",
    "NR_io_uring_register",
    "IORING_REGISTER_RESIZE_RINGS",
    "IORING_REGISTER_USE_REGISTERED_RING",
    "build_program",
    "install_filter",
    "deny_syscall",
    "raw_syscall",
    "io_uring_setup_probe",
    "probe_in_child",
]

# -- syscall numbers -----------------------------------------------------------
# io_uring came after the per-architecture tables were unified (kernel 5.1), so
# these numbers are the same on every architecture listed in _ARCHES (alpha, the
# one exception, is not supported here).
NR_io_uring_setup = 425
NR_io_uring_enter = 426
NR_io_uring_register = 427

# io_uring_register(2) opcodes used by the tests.
IORING_REGISTER_RESIZE_RINGS = 33
IORING_REGISTER_USE_REGISTERED_RING = 1 << 31  # flag OR-ed into the opcode

# -- kernel constants ----------------------------------------------------------
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_DATA = 0x0000FFFF
MAX_ERRNO = 4095
BPF_MAXINSNS = 4096

# classic BPF opcodes (linux/bpf_common.h)
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W = 0x00
BPF_ABS = 0x20
BPF_AND = 0x50
BPF_JEQ = 0x10
BPF_K = 0x00

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARGS = 16

# AUDIT_ARCH_* = ELF machine | __AUDIT_ARCH_64BIT (0x80000000) | __AUDIT_ARCH_LE (0x40000000)
# keyed by (uname machine, pointer size of this Python)
_ARCHES = {
    ("x86_64", 8): 0xC000003E,   # AUDIT_ARCH_X86_64
    ("aarch64", 8): 0xC00000B7,  # AUDIT_ARCH_AARCH64
    ("arm64", 8): 0xC00000B7,
    ("riscv64", 8): 0xC00000F3,  # AUDIT_ARCH_RISCV64
    ("ppc64le", 8): 0xC0000015,  # AUDIT_ARCH_PPC64LE
    ("s390x", 8): 0x80000016,    # AUDIT_ARCH_S390X (big endian)
}


class UnsupportedArchitecture(RuntimeError):
    """This helper does not know the seccomp audit arch of this machine."""


class SeccompUnavailable(OSError):
    """prctl() refused to turn on the filter: seccomp cannot be used here.

    ``.step`` is ``"PR_SET_NO_NEW_PRIVS"`` or ``"PR_SET_SECCOMP"``.
    """

    def __init__(self, err: int, step: str):
        super().__init__(err, f"prctl({step}) failed: {os.strerror(err)}")
        self.step = step


def audit_arch() -> int:
    """The AUDIT_ARCH_* value the kernel reports for this process's syscalls."""
    key = (platform.machine(), struct.calcsize("P"))
    try:
        return _ARCHES[key]
    except KeyError:
        raise UnsupportedArchitecture(
            f"no seccomp audit arch known for machine={key[0]!r} "
            f"with {key[1] * 8}-bit pointers"
        ) from None


# -- rules ---------------------------------------------------------------------
@dataclass(frozen=True)
class ArgMatch:
    """Matches when ``(args[index] & mask) == value``.

    The default mask covers the low 32 bits only, which is what the kernel
    looks at for ``int``/``unsigned int`` parameters (the upper half of the
    register is not guaranteed to be clean).  A value wider than 32 bits
    switches the default to all 64 bits.
    """

    index: int
    value: int
    mask: Union[int, None] = None

    def __post_init__(self):
        if not 0 <= self.index <= 5:
            raise ValueError(f"syscall argument index must be 0..5, got {self.index}")
        if self.mask is None:
            object.__setattr__(
                self, "mask", 0xFFFFFFFF if 0 <= self.value <= 0xFFFFFFFF else (1 << 64) - 1
            )
        value = self.value & ((1 << 64) - 1)  # accept negative ints as two's complement
        object.__setattr__(self, "value", value)
        if not 0 <= self.mask < (1 << 64):
            raise ValueError(f"mask must fit in 64 bits, got {self.mask:#x}")
        if value & ~self.mask:
            raise ValueError(
                f"value {value:#x} has bits outside mask {self.mask:#x}: it could never match"
            )


@dataclass(frozen=True)
class Rule:
    """Fail syscall ``nr`` with ``errno`` when every one of ``args`` matches."""

    nr: int
    errno: int
    args: tuple = ()

    def __post_init__(self):
        if not 0 <= self.nr <= 0xFFFFFFFF:
            raise ValueError(f"bad syscall number {self.nr}")
        if not 0 <= self.errno <= MAX_ERRNO:
            raise ValueError(f"errno must be 0..{MAX_ERRNO}, got {self.errno}")
        object.__setattr__(self, "args", tuple(_as_argmatch(a) for a in self.args))


RuleLike = Union[Rule, Sequence]


def _as_argmatch(a) -> ArgMatch:
    if isinstance(a, ArgMatch):
        return a
    return ArgMatch(*a)


def _as_rule(r: RuleLike) -> Rule:
    """Accept Rule, (nr, errno), (nr, errno, (idx, value[, mask])) or
    (nr, errno, [(idx, value[, mask]), ...])."""
    if isinstance(r, Rule):
        return r
    r = tuple(r)
    if len(r) == 2:
        return Rule(r[0], r[1])
    if len(r) == 3:
        nr, err, match = r
        if match is None:
            return Rule(nr, err)
        if isinstance(match, ArgMatch) or (match and isinstance(match[0], int)):
            return Rule(nr, err, (match,))
        return Rule(nr, err, tuple(match))
    raise ValueError(f"cannot read {r!r} as a rule")


# -- BPF program -----------------------------------------------------------------
def _stmt(code: int, k: int) -> tuple:
    return (code, 0, 0, k & 0xFFFFFFFF)


def _jump(code: int, k: int, jt: int, jf: int) -> tuple:
    if not (0 <= jt <= 255 and 0 <= jf <= 255):
        raise ValueError("BPF jump too long")
    return (code, jt, jf, k & 0xFFFFFFFF)


def _rule_block(rule: Rule, little_endian: bool) -> list:
    """Instructions for one rule: fall through to the next block when it does
    not match, return SECCOMP_RET_ERRNO|errno when it does."""
    # Each test is (offset, mask, value); every test loads the accumulator,
    # optionally masks it, and compares.
    tests = [(_OFF_NR, 0xFFFFFFFF, rule.nr)]
    for m in rule.args:
        base = _OFF_ARGS + 8 * m.index
        lo_off, hi_off = (base, base + 4) if little_endian else (base + 4, base)
        for off, shift in ((lo_off, 0), (hi_off, 32)):
            half_mask = (m.mask >> shift) & 0xFFFFFFFF
            if half_mask:
                tests.append((off, half_mask, (m.value >> shift) & 0xFFFFFFFF))

    block = []
    for i, (off, mask, value) in enumerate(tests):
        block.append(("ld", off))
        if mask != 0xFFFFFFFF:
            block.append(("and", mask))
        block.append(("jeq", value))
    block.append(("ret", SECCOMP_RET_ERRNO | (rule.errno & SECCOMP_RET_DATA)))

    out = []
    n = len(block)
    for pos, (op, k) in enumerate(block):
        if op == "ld":
            out.append(_stmt(BPF_LD | BPF_W | BPF_ABS, k))
        elif op == "and":
            out.append(_stmt(BPF_ALU | BPF_AND | BPF_K, k))
        elif op == "jeq":
            # on mismatch skip the rest of this block (its last insn is the ret)
            out.append(_jump(BPF_JMP | BPF_JEQ | BPF_K, k, 0, n - pos - 1))
        else:
            out.append(_stmt(BPF_RET | BPF_K, k))
    return out


def build_program(rules: Iterable[RuleLike], arch: Union[int, None] = None,
                  little_endian: Union[bool, None] = None) -> list:
    """The filter as a list of ``(code, jt, jf, k)`` sock_filter tuples."""
    if arch is None:
        arch = audit_arch()
    if little_endian is None:
        little_endian = sys.byteorder == "little"
    prog = [
        _stmt(BPF_LD | BPF_W | BPF_ABS, _OFF_ARCH),
        # native ABI: go on with the rules; anything else: allow
        _jump(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
        _stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    ]
    for r in rules:
        prog.extend(_rule_block(_as_rule(r), little_endian))
    prog.append(_stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW))
    if len(prog) > BPF_MAXINSNS:
        raise ValueError(f"filter has {len(prog)} instructions, the kernel takes {BPF_MAXINSNS}")
    return prog


# -- installing ----------------------------------------------------------------
class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [
        ("len", ctypes.c_ushort),
        ("filter", ctypes.POINTER(_SockFilter)),
    ]


_libc = None


def _get_libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def _prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    libc = _get_libc()
    ctypes.set_errno(0)
    rc = libc.prctl(
        ctypes.c_int(option), ctypes.c_ulong(a2), ctypes.c_ulong(a3),
        ctypes.c_ulong(a4), ctypes.c_ulong(a5),
    )
    return rc


def install_filter(rules: Iterable[RuleLike]) -> None:
    """Install a filter failing the syscalls described by ``rules`` in THIS
    process.  Irreversible: call it in a child process only.

    Raises SeccompUnavailable when the kernel refuses (no seccomp support,
    or already in strict mode), UnsupportedArchitecture when this helper
    does not know the machine.
    """
    prog = build_program(rules)
    insns = (_SockFilter * len(prog))(*[_SockFilter(*i) for i in prog])
    fprog = _SockFprog(len(prog), ctypes.cast(insns, ctypes.POINTER(_SockFilter)))

    if _prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
        raise SeccompUnavailable(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog)) != 0:
        raise SeccompUnavailable(ctypes.get_errno(), "PR_SET_SECCOMP")
    # the kernel copied the program; insns/fprog may now be freed


def deny_syscall(nr: int, errno: int, *, arg0=None, arg1=None, arg2=None,
                 arg3=None, arg4=None, arg5=None) -> None:
    """Install (now, in this process) a filter failing syscall ``nr`` with
    ``errno``.  ``argN`` is a value, or ``(value, mask)``, that argument N must
    match for the call to fail.  Each call stacks one more filter."""
    matches = []
    for i, a in enumerate((arg0, arg1, arg2, arg3, arg4, arg5)):
        if a is None:
            continue
        if isinstance(a, tuple):
            matches.append(ArgMatch(i, *a))
        else:
            matches.append(ArgMatch(i, a))
    install_filter([Rule(nr, errno, tuple(matches))])


# -- raw calls, for checking the filter ----------------------------------------
def raw_syscall(nr: int, *args: int) -> tuple:
    """syscall(nr, *args) through libc.  Returns ``(result, errno)``; errno is
    0 on success.  Arguments are passed as C longs."""
    libc = _get_libc()
    ctypes.set_errno(0)
    res = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    # libc.syscall returns long; ctypes' default restype is int, fine for
    # -1 / small fds.
    if res == -1:
        return -1, ctypes.get_errno()
    return res, 0


def io_uring_setup_probe(entries: int = 1) -> tuple:
    """Call io_uring_setup(entries, &params) for real; close the ring if made.

    Returns ``(ok, errno)``.
    """
    params = ctypes.create_string_buffer(120)  # sizeof(struct io_uring_params), zeroed
    fd, err = raw_syscall(NR_io_uring_setup, entries, ctypes.addressof(params))
    if fd >= 0:
        os.close(fd)
        return True, 0
    return False, err


# -- probing from the parent -----------------------------------------------------
_PROBE_CODE = r"""
import errno, json, sys
sys.path.insert(0, {here!r})
import seccomp_util as su
out = {{}}
try:
    su.install_filter([(su.NR_io_uring_setup, errno.ENOTUNIQ)])
except su.SeccompUnavailable as e:
    out = {{"installed": False, "reason": str(e)}}
except su.UnsupportedArchitecture as e:
    out = {{"installed": False, "reason": str(e)}}
else:
    rc, err = su.raw_syscall(su.NR_io_uring_setup, 0, 0)
    out = {{"installed": True, "rc": rc, "errno": err}}
print("PROBE:" + json.dumps(out))
"""


def probe_in_child(python: str = sys.executable, timeout: float = 60) -> tuple:
    """Check, in a child process, that a filter can be installed and works.

    Returns ``(True, "")`` when it works, ``(False, reason)`` when seccomp is
    not available (prctl refused, or unknown architecture).  Raises
    RuntimeError when the filter installed but did not do its job or the child
    broke: that is a bug in this helper, not a missing feature.
    """
    code = _PROBE_CODE.format(here=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True,
                          timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("PROBE:")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"seccomp probe child failed (rc={proc.returncode}):\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    res = json.loads(lines[-1][len("PROBE:"):])
    if not res["installed"]:
        return False, res["reason"]
    if (res["rc"], res["errno"]) != (-1, _errno.ENOTUNIQ):
        raise RuntimeError(
            "seccomp filter installed but io_uring_setup was not denied as asked: "
            f"got rc={res['rc']} errno={res['errno']}, wanted rc=-1 errno=ENOTUNIQ"
        )
    return True, ""


# -- self-test -------------------------------------------------------------------
_SELFTEST_CHILD = r"""
import ctypes, errno, json, os, sys
sys.path.insert(0, {here!r})
import seccomp_util as su
su.install_filter({rules!r})
res = {{}}
res["setup"] = su.raw_syscall(su.NR_io_uring_setup, 0, 0)
params = ctypes.create_string_buffer(120)
fd, err = su.raw_syscall(su.NR_io_uring_setup, 1, ctypes.addressof(params))
res["setup_real"] = [fd, err]
regs = {{}}
for op in (8, 33, 33 | su.IORING_REGISTER_USE_REGISTERED_RING, 33 | (1 << 32)):
    regs[str(op)] = su.raw_syscall(su.NR_io_uring_register, fd if fd >= 0 else 999, op, 0, 0)
res["register"] = regs
res["dup"] = su.raw_syscall(32 if os.uname().machine == "x86_64" else 23, 0)  # dup(0)
print("SELFTEST:" + json.dumps(res))
"""


def _selftest_child(rules) -> dict:
    code = _SELFTEST_CHILD.format(here=os.path.dirname(os.path.abspath(__file__)),
                                  rules=rules)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("SELFTEST:")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed rc={proc.returncode}: {proc.stderr}")
    return json.loads(lines[-1][len("SELFTEST:"):])


def _main() -> int:
    ok, reason = probe_in_child()
    if not ok:
        print(f"seccomp unavailable: {reason}")
        return 77
    print("probe: filter installs and denies io_uring_setup")
    E = _errno
    none = _selftest_child([])
    print("no filter:", none)
    masked = _selftest_child([
        (NR_io_uring_register, E.ENOTUNIQ, (1, IORING_REGISTER_RESIZE_RINGS, 0x7FFFFFFF)),
        (NR_io_uring_setup, E.EL3HLT, (0, 0)),  # only entries == 0
    ])
    print("masked register + setup(entries==0):", masked)
    failures = []
    if none["setup_real"][0] < 0:
        failures.append("io_uring_setup failed without a filter")
    if none["register"]["33"][1] == E.ENOTUNIQ:
        failures.append("unfiltered register returned the injected errno")
    if masked["setup"] != [-1, E.EL3HLT]:
        failures.append("setup(0) not denied")
    if masked["setup_real"][0] < 0:
        failures.append("setup(1) denied although only entries==0 should be")
    for op in ("33", str(33 | IORING_REGISTER_USE_REGISTERED_RING), str(33 | (1 << 32))):
        if masked["register"][op] != [-1, E.ENOTUNIQ]:
            failures.append(f"register op {op} not denied")
    if masked["register"]["8"][1] == E.ENOTUNIQ:
        failures.append("register op 8 denied")
    if masked["dup"][0] < 0:
        failures.append("dup denied")
    for f in failures:
        print("FAIL:", f)
    print("self-test", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(_main())
