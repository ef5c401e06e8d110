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


setup(
    ext_modules=[
        Extension(
            "hugeload.libhugeload",
            sources=["csrc/hugeload.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            extra_link_args=["-pthread", "-Wl,-z,now"],
            libraries=["dl"],
        )
    ],
    cmdclass={"build_ext": build_plain_shared_object},
)
