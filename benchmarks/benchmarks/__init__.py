"""asv micro-benchmarks for mtasts-fast (``make bench``).

Each suite covers one module of the request path. Where a compiled and a
pure-Python version exist, classes are parametrized over ``impl`` = ``c`` /
``py``; ``c`` is left out when the extensions are not built or
``MTASTS_NO_EXTENSIONS=1`` is set. Every benchmark's docstring says what one
call measures.

The suites deliberately define no ``setup`` hooks: asv_runner ≥ 0.3 re-runs
``setup`` before every individually timed call when one exists (asv#966),
which turns a sub-microsecond benchmark into a single cold call dominated by
timer overhead and cache misses. Fixtures are built once, at import, and each
benchmark leaves them as it found them, so plain ``timeit`` batching applies.
"""
