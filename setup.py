"""Builds the native library with the package: `pip install .` needs no make step.

The library is preloaded into programs that are not Python (llama.cpp), so it is
built as a plain shared object: no ABI-tagged file name, no libpython, no
PyInit symbol.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class build_plain_shared_object(build_ext):
    def get_ext_filename(self, fullname):
        *package, name = fullname.split(".")
        return os.path.join(*package, name + ".so")

    def get_export_symbols(self, ext):
        return []

    def get_libraries(self, ext):
        # build_ext adds libpython on shared-libpython builds; the preload library must not need it.
        return list(ext.libraries)


FLAGS = ["-O2", "-std=gnu11", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter"]

# The preload library: the interposers and what they need, nothing else (csrc/preload/hl.h says what each part owns).
PRELOAD_SOURCES = [
    "csrc/preload/os.c",
    "csrc/preload/log.c",
    "csrc/preload/config.c",
    "csrc/preload/policy.c",
    "csrc/preload/regions.c",
    "csrc/preload/hugemem.c",
    "csrc/preload/alloc.c",
    "csrc/preload/demote.c",
    "csrc/preload/advice.c",
    "csrc/preload/fork.c",
    "csrc/preload/redirect.c",
    "csrc/preload/filemap.c",
    "csrc/preload/override.c",
]

setup(
    ext_modules=[
        Extension(
            "hugeload.libhugeload",
            sources=PRELOAD_SOURCES,
            depends=["csrc/preload/hl.h"],
            extra_compile_args=FLAGS,
            extra_link_args=["-pthread", "-Wl,-z,now"],
            libraries=["dl"],
        ),
        # ctypes only (CPUID, benchmark loops): never preloaded.
        Extension(
            "hugeload._native",
            sources=["csrc/native/cpuid.c", "csrc/native/bench_loops.c"],
            extra_compile_args=FLAGS,
        ),
    ],
    cmdclass={"build_ext": build_plain_shared_object},
)
