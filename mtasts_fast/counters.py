"""Counters that live in a shared memory buffer, written by one process, read by another.

A worker counts what it does (lookups, fetches, connections) straight into
memory its supervisor can still read after the worker died, even of
``kill -9`` (metrics/region.py). :class:`CounterArrayPy` views a writable
buffer (an anonymous shared ``mmap``) as 64-bit cells: unsigned integers for
counters and gauges, or doubles for sums and times, each cell used as one
or the other by its owner's layout.

Rules, shared by the compiled twin in ``_counters.pyx``:

- Cells are native-endian and 8-byte aligned, so a reader in another
  process sees each value whole (an aligned 8-byte store is one instruction
  on x86-64 and AArch64): one writer per buffer, any number of readers.
- ``inc``/``add``/``set`` write integers (``add`` takes ``n >= 0``),
  ``add_float``/``set_float`` doubles; ``get``/``get_float`` read them.
- Index ``i`` may be negative as for a list; out of range is IndexError.
- :meth:`release` lets go of the buffer (an ``mmap`` cannot be closed while
  a view of it exists); the array is empty afterwards.

Cost on the hot path (``inc``, one cached lookup): the compiled twin ~18 ns,
this one ~55 ns (a ``memoryview`` item read, add and write), a plain Python
list ~22 ns but private to the process (README "Monitoring").

The name at the bottom is rebound to the compiled twin unless
``MTASTS_NO_EXTENSIONS`` is set.
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING, TypeAlias

from mtasts_fast import _compat

if TYPE_CHECKING:
    from mtasts_fast._counters import CounterArray as _CounterArrayC

__all__ = [
    "CELL",
    "Cells",
    "CounterArray",
    "CounterArrayC",
    "CounterArrayPy",
    "WritableBuffer",
]

#: What the cells may live in.
WritableBuffer: TypeAlias = mmap.mmap | bytearray | memoryview

#: Bytes per cell.
CELL = 8


class CounterArrayPy:
    """64-bit cells over a writable buffer whose size is a multiple of :data:`CELL`."""

    __slots__ = ("_floats", "_ints")

    def __init__(self, buffer: WritableBuffer) -> None:
        raw = memoryview(buffer).cast("B")
        if raw.readonly:
            raw.release()
            raise ValueError("the buffer must be writable")
        if raw.nbytes % CELL:
            raw.release()
            raise ValueError(f"the buffer size must be a multiple of {CELL} bytes")
        self._ints = raw.cast("Q")
        self._floats = raw.cast("d")
        raw.release()

    def __len__(self) -> int:
        return len(self._ints)

    def inc(self, i: int) -> None:
        self._ints[i] += 1

    def add(self, i: int, n: int) -> None:
        if n < 0:
            raise ValueError("counters only go up")
        self._ints[i] += n

    def set(self, i: int, value: int) -> None:
        self._ints[i] = value

    def get(self, i: int) -> int:
        return self._ints[i]

    def add_float(self, i: int, x: float) -> None:
        self._floats[i] += x

    def set_float(self, i: int, x: float) -> None:
        self._floats[i] = x

    def get_float(self, i: int) -> float:
        return self._floats[i]

    def release(self) -> None:
        self._ints.release()
        self._floats.release()
        empty = memoryview(b"").cast("B")
        self._ints = empty.cast("Q")
        self._floats = empty.cast("d")


#: Either twin's arrays (for annotations).
Cells: TypeAlias = "CounterArrayPy | _CounterArrayC"

CounterArrayC: type[_CounterArrayC] | None = None
CounterArray: type[CounterArrayPy] | type[_CounterArrayC] = CounterArrayPy

if not _compat.NO_EXTENSIONS:
    try:
        from mtasts_fast import _counters
    except ImportError:
        if _compat.REQUIRE_EXTENSIONS:
            raise
    else:
        CounterArrayC = CounterArray = _counters.CounterArray
