#!/usr/bin/env python3
"""How fast does this CPU copy 64 KiB with `rep movsb`, by destination-source distance?

The kernel's copy_to_user/copy_from_user use `rep movsb` on CPUs with fast string moves, so
the address a receive lands at decides how fast the kernel can fill it. On the AMD EPYC VMs
this project is measured on, a destination 1 to 31 bytes past the source (modulo 4 KiB) makes
the copy about 20 times slower. That is why the provided buffers (uringloop/ring/bufring.pyx) are
page-aligned: loopback and page-fragment skbs carry data from a page boundary.

    python benchmarks/copy_alignment.py

Prints, per distance, the best of 200 copies in µs. x86-64 only; needs `cc`.
"""

import os
import platform
import subprocess
import sys
import tempfile

PROBE_C = r'''
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int main(int argc, char **argv) {
    const size_t len = 65536;
    char *src = aligned_alloc(4096, 2 * len), *dst = aligned_alloc(4096, 2 * len + 4096);
    for (size_t i = 0; i < 2 * len; i++) src[i] = (char)i;
    for (size_t i = 0; i < 2 * len + 4096; i++) dst[i] = 0;
    for (int a = 1; a < argc; a++) {
        long distance = atol(argv[a]);
        uint64_t best = UINT64_MAX;
        for (int rep = 0; rep < 200; rep++) {
            char *d = dst + distance, *s = src;
            size_t n = len;
            uint64_t t0 = now_ns();
            __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
            uint64_t t = now_ns() - t0;
            if (t < best) best = t;
        }
        printf("%ld %.2f\n", distance, best / 1000.0);
    }
    return 0;
}
'''

DISTANCES = [0, 1, 8, 16, 24, 31, 32, 48, 64, 256, 2048, 4064, 4095]


def main():
    if platform.machine() not in ('x86_64', 'AMD64'):
        print('rep movsb is x86-64 only', file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'probe.c')
        exe = os.path.join(tmp, 'probe')
        with open(src, 'w') as f:
            f.write(PROBE_C)
        subprocess.run(['cc', '-O2', '-o', exe, src], check=True)
        out = subprocess.run([exe, *map(str, DISTANCES)], check=True, capture_output=True,
                             text=True).stdout
    print('| dst - src (mod 4 KiB) | 64 KiB rep movsb, best of 200 (µs) |')
    print('|---:|---:|')
    for line in out.splitlines():
        distance, us = line.split()
        print(f'| {distance} | {us} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
