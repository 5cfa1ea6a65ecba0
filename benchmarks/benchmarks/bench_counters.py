"""Counting into a worker's shared region: the cell increment and a counted lookup.

``python benchmarks/metrics_cost.py`` compares the same operations with a
private list, a bare memoryview and the hot path without counting.
"""

from __future__ import annotations

import mmap
from typing import Any, ClassVar

from mtasts_fast import counters

IMPLS = ["c", "py"] if counters.CounterArrayC is not None else ["py"]
_REGION = mmap.mmap(-1, mmap.PAGESIZE)
_CELLS: dict[str, Any] = {"py": counters.CounterArrayPy(_REGION)}
if counters.CounterArrayC is not None:
    _CELLS["c"] = counters.CounterArrayC(_REGION)


class Increment:
    """One counter increment, as the hot path makes one per lookup."""

    params: ClassVar[list[Any]] = [IMPLS]
    param_names: ClassVar[list[str]] = ["impl"]

    def time_inc(self, impl: str) -> None:
        """``CounterArray.inc(i)``: a 64-bit add in the shared mapping."""
        _CELLS[impl].inc(7)

    def time_fetch_histogram(self, impl: str) -> None:
        """What a fetch costs to count: result, bucket, sum (off the hot path)."""
        cells = _CELLS[impl]
        cells.inc(3)
        cells.inc(11)
        cells.add_float(20, 0.125)
