"""Build the four Cython extensions; all metadata lives in pyproject.toml.

MTASTS_NO_EXTENSIONS=1 builds nothing (pure-Python install).
MTASTS_DEBUG=1 adds Cython annotations and line tracing for profiling.
"""

import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("MTASTS_NO_EXTENSIONS", "").strip() not in ("", "0")
DEBUG = os.environ.get("MTASTS_DEBUG", "").strip() not in ("", "0")

ext_modules = []
if not NO_EXTENSIONS:
    from Cython.Build import cythonize

    macros = [("CYTHON_TRACE", "1")] if DEBUG else []
    ext_modules = cythonize(
        [
            Extension(
                "mtasts_fast._netstring", ["mtasts_fast/_netstring.pyx"], define_macros=macros
            ),
            Extension("mtasts_fast._matcher", ["mtasts_fast/_matcher.pyx"], define_macros=macros),
            Extension("mtasts_fast._counters", ["mtasts_fast/_counters.pyx"], define_macros=macros),
            Extension("mtasts_fast._fastpath", ["mtasts_fast/_fastpath.pyx"], define_macros=macros),
        ],
        compiler_directives={
            "language_level": "3",
            "linetrace": DEBUG,
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
        },
        annotate=DEBUG,
    )

setup(ext_modules=ext_modules)
