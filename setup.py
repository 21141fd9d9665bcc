"""Build the Cython extensions of wsmem (metadata lives in pyproject.toml).

Environment switches:
  CYTHON_ANNOTATE=1   write annotated HTML next to each .pyx
  CYTHON_TRACE=1      build with line tracing (coverage of Cython code)
  WSMEM_SANITIZE=address  build with AddressSanitizer (see docs/reliability.md)
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["_pages", "_arena", "_capture", "_array", "_gpu", "_workspace"]

define_macros = [("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")]
extra_compile = ["-O3"]
if sys.platform.startswith("linux"):
    # Calls into libpython through the GOT, not a PLT stub each: `with ws:`
    # runs once per step with its code out of the caches, and every stub is
    # one more cache line to fetch (cachegrind: 3 of ~150 lines per frame).
    extra_compile.append("-fno-plt")
extra_link = []
directives = {"language_level": 3, "embedsignature": True}

if os.environ.get("CYTHON_TRACE") == "1":
    directives["linetrace"] = True
    define_macros.append(("CYTHON_TRACE_NOGIL", "1"))

sanitize = os.environ.get("WSMEM_SANITIZE")
if sanitize:
    extra_compile = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={sanitize}"]
    extra_link = [f"-fsanitize={sanitize}"]

extensions = [
    Extension(
        f"wsmem.{name}",
        [f"pyx/wsmem/{name}.pyx"],
        include_dirs=[np.get_include(), "pyx"],
        define_macros=define_macros,
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=os.environ.get("CYTHON_ANNOTATE") == "1",
        include_path=["pyx"],
    ),
)
