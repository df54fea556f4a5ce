"""Builds uringloop's single extension: the ring layer (C) and the Cython core."""
import sys

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    raise RuntimeError("uringloop runs on Linux only: it drives the loop with io_uring")

from Cython.Build import cythonize

core = Extension(
    "uringloop._core",
    sources=["uringloop/_core.pyx", "uringloop/ring/ring.c", "uringloop/ring/kernel_features.c"],
    include_dirs=["uringloop/ring", "uringloop/includes"],
    extra_compile_args=["-O2", "-fno-strict-aliasing", "-Wno-unused-function"],
)

setup(
    ext_modules=cythonize(
        [core],
        language_level=3,
        compiler_directives={"embedsignature": True, "binding": False},
    ),
)
