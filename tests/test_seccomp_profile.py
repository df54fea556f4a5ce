"""`python -m uringloop.seccomp` turns a container runtime's seccomp profile into one that allows
io_uring: valid JSON, and exactly io_uring_setup, io_uring_enter and io_uring_register allowed
beyond what the base profile allowed."""
import json
import subprocess
import sys

from uringloop.seccomp import IO_URING_SYSCALLS, allow_io_uring

# A small profile in Docker's format, written for this test: an allow-list, a rule with
# conditions, and an explicit denial of io_uring as some runtimes ship it.
BASE = {
    'defaultAction': 'SCMP_ACT_ERRNO',
    'defaultErrnoRet': 1,
    'archMap': [{'architecture': 'SCMP_ARCH_X86_64', 'subArchitectures': ['SCMP_ARCH_X86']}],
    'syscalls': [
        {'names': ['read', 'write', 'close', 'epoll_wait', 'mmap'], 'action': 'SCMP_ACT_ALLOW'},
        {'names': ['personality'], 'action': 'SCMP_ACT_ALLOW',
         'args': [{'index': 0, 'value': 0, 'op': 'SCMP_CMP_EQ'}]},
        {'names': ['io_uring_setup', 'io_uring_enter', 'io_uring_register', 'kexec_load'],
         'action': 'SCMP_ACT_ERRNO', 'errnoRet': 1},
        {'name': 'io_uring_setup', 'action': 'SCMP_ACT_ERRNO'},
    ],
}


def allowed(profile):
    names = set()
    for rule in profile['syscalls']:
        if rule['action'] == 'SCMP_ACT_ALLOW':
            names.update(rule.get('names', [rule.get('name')]))
    return names


def mentions_io_uring(rule):
    return bool(set(rule.get('names', [rule.get('name')])) & set(IO_URING_SYSCALLS))


def test_the_command_prints_a_profile_allowing_exactly_io_uring(tmp_path):
    base = tmp_path / 'default.json'
    base.write_text(json.dumps(BASE))
    out = subprocess.run([sys.executable, '-m', 'uringloop.seccomp', str(base)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    profile = json.loads(out)
    assert allowed(profile) - allowed(BASE) == set(IO_URING_SYSCALLS)
    assert allowed(BASE) <= allowed(profile)
    # Nothing else changed: the same default, the same other rules, io_uring in one rule.
    assert {k: v for k, v in profile.items() if k != 'syscalls'} == \
        {k: v for k, v in BASE.items() if k != 'syscalls'}
    io_rules = [r for r in profile['syscalls'] if mentions_io_uring(r)]
    assert io_rules == [{'names': list(IO_URING_SYSCALLS), 'action': 'SCMP_ACT_ALLOW',
                         'comment': 'uringloop: io_uring event loop'}]
    others = [r for r in profile['syscalls'] if not mentions_io_uring(r)]
    assert others == [BASE['syscalls'][0], BASE['syscalls'][1],
                      {'names': ['kexec_load'], 'action': 'SCMP_ACT_ERRNO', 'errnoRet': 1}]


def test_a_profile_that_allows_by_default_gets_no_rule():
    profile = allow_io_uring({'defaultAction': 'SCMP_ACT_ALLOW', 'syscalls': [
        {'names': ['io_uring_enter'], 'action': 'SCMP_ACT_ERRNO'}]})
    assert profile == {'defaultAction': 'SCMP_ACT_ALLOW', 'syscalls': []}


def test_not_a_profile_is_refused():
    import pytest
    with pytest.raises(ValueError):
        allow_io_uring({'syscalls': []})
