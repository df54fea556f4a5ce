"""Allow io_uring in a container's seccomp profile.

Docker (since 25) and containerd leave io_uring_setup, io_uring_enter and io_uring_register out
of their default seccomp allow-lists, so io_uring_setup fails with EPERM inside a container and
uringloop.new_event_loop() raises IoUringUnavailable(cause='seccomp'). A container runtime takes
one whole profile, not a patch, so the fix is the runtime's own default profile plus exactly those
three system calls. This module makes that profile from the default one:

    python -m uringloop.seccomp default.json > uringloop-seccomp.json
    docker run --security-opt seccomp=uringloop-seccomp.json IMAGE ...

`default.json` is the runtime's default profile (for Docker: profiles/seccomp/default.json in
the moby source of the Docker release in use). Nothing else in the profile changes: rules that
deny the three calls are dropped, one rule that allows them is added.
"""
import argparse
import copy
import json
import sys

IO_URING_SYSCALLS = ('io_uring_setup', 'io_uring_enter', 'io_uring_register')
ALLOW = 'SCMP_ACT_ALLOW'


def allow_io_uring(profile):
    """Return a copy of the seccomp profile `profile` (a dict in the OCI/Docker format) that
    allows exactly the three io_uring system calls in addition to what it allowed before."""
    if not isinstance(profile, dict) or 'defaultAction' not in profile:
        raise ValueError('not a seccomp profile: no defaultAction')
    out = copy.deepcopy(profile)
    rules = []
    for rule in out.get('syscalls', []):
        if rule.get('name') in IO_URING_SYSCALLS:       # the older one-name form
            continue
        if 'names' in rule:
            names = [n for n in rule['names'] if n not in IO_URING_SYSCALLS]
            if not names:
                continue
            rule['names'] = names
        rules.append(rule)
    if out['defaultAction'] != ALLOW:
        rules.append({'names': list(IO_URING_SYSCALLS), 'action': ALLOW,
                      'comment': 'uringloop: io_uring event loop'})
    out['syscalls'] = rules
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m uringloop.seccomp',
        description='Print a seccomp profile that allows io_uring, made from a container '
                    "runtime's profile (e.g. Docker's default.json).")
    parser.add_argument('profile', help='the base profile (JSON); - for standard input')
    args = parser.parse_args(argv)
    if args.profile == '-':
        base = json.load(sys.stdin)
    else:
        with open(args.profile) as f:
            base = json.load(f)
    json.dump(allow_io_uring(base), sys.stdout, indent=2)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
