"""A worker start's shared memory: its health header and its counters.

The supervisor maps one region per worker start, anonymous and
``MAP_SHARED``, just before it forks the worker. The worker inherits the
mapping and counts into it directly, each increment a store into memory the
supervisor sees at once; when the worker exits, however it exits (``kill -9``
included), the supervisor reads the final values, adds them to the totals
of the workers before it, and unmaps the region.

Why an anonymous shared mapping rather than a file under ``/dev/shm``: it
needs no name, no permissions and no clean-up (it disappears with the last
process that maps it, even if the supervisor itself is killed), works the
same after the privilege drop and under systemd's ``PrivateDevices=`` or
``DynamicUser=``, and only the supervisor and that one worker ever map it.
Nothing is counted in process memory first, so no count is lost with a
worker, and exported totals never go backwards while the daemon runs.
"""

from __future__ import annotations

import mmap

from mtasts_fast.counters import CELL, Cells, CounterArray
from mtasts_fast.metrics import layout as _layout
from mtasts_fast.metrics.layout import Cell, Layout

__all__ = ["Region"]


class Region:
    """One worker's cells (:attr:`cells`, a :class:`~mtasts_fast.counters.CounterArray`)."""

    __slots__ = ("_map", "cells", "layout")

    def __init__(
        self,
        layout: Layout,
        *,
        array: type[Cells] | None = None,
    ) -> None:
        """``array``: the twin to count with (the switch's choice, or either, for tests)."""
        self.layout = layout
        # fileno -1: anonymous; Python maps it MAP_SHARED unless told otherwise,
        # so a child forked after this writes memory the parent reads.
        self._map = mmap.mmap(-1, layout.size)
        self.cells: Cells = (array or CounterArray)(self._map)

    @property
    def closed(self) -> bool:
        return self._map.closed

    def close(self) -> None:
        """Unmap (in this process only; a forked worker keeps its own mapping)."""
        if self._map.closed:
            return
        self.cells.release()
        self._map.close()

    # -- the health header ------------------------------------------------------------------

    def set_reason(self, text: str) -> None:
        """Why the backend is down, cut to what the header holds."""
        data = text.encode("utf-8", "replace")[: _layout.REASON_BYTES]
        start = _layout.REASON_START * CELL
        self._map[start : start + len(data)] = data
        self.cells.set(_layout.REASON_LENGTH, len(data))

    def reason(self) -> str:
        length = min(self.cells.get(_layout.REASON_LENGTH), _layout.REASON_BYTES)
        start = _layout.REASON_START * CELL
        return self._map[start : start + length].decode("utf-8", "replace")

    def values(self) -> list[tuple[Cell, float]]:
        """Every series cell with its value now."""
        get, get_float = self.cells.get, self.cells.get_float
        return [
            (cell, get_float(i) if cell.is_float else get(i))
            for i, cell in self.layout.indexed_cells()
        ]
