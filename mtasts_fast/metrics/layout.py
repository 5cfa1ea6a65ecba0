"""Where each series lives in a worker's shared region.

A region (region.py) is an array of 64-bit cells: a fixed header the worker
writes its health into, then one cell per series of :data:`catalogue.WORKER`
(a histogram takes one cell per bucket and one for its sum). The layout
depends on the configuration (its zones and cache backend label the
series), so the supervisor builds one per configuration it runs and every
worker forked on that configuration inherits it: writer and reader agree
on every index without telling each other anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mtasts_fast.config import Config
from mtasts_fast.config.zones import socketmap_zones
from mtasts_fast.counters import CELL
from mtasts_fast.metrics import catalogue
from mtasts_fast.metrics.catalogue import HISTOGRAM, Metric

__all__ = ["HEADER_CELLS", "REASON_BYTES", "Cell", "Layout", "SeriesKey"]

# -- the header: one worker's health, written by it, read by the supervisor --------------------

#: ``time.monotonic()`` of the worker's last heartbeat (a double; CLOCK_MONOTONIC
#: is one clock for every process of the host).
HEARTBEAT = 0
#: The cache backend as the worker last found it: BACKEND_UNKNOWN, _UP or _DOWN.
BACKEND = 1
BACKEND_UNKNOWN, BACKEND_UP, BACKEND_DOWN = 0, 1, 2
#: Wall-clock time of the worker's last count of the cache (a double; 0: none yet).
STATS_TIME = 2
STATS_ENTRIES = 3
STATS_FAILURES = 4
#: The cache's size in bytes plus one (0: the backend cannot tell).
STATS_SIZE = 5
#: Length of the text that says why the backend is down, and the text (UTF-8).
REASON_LENGTH = 6
REASON_START = 7
REASON_BYTES = 31 * CELL
HEADER_CELLS = REASON_START + REASON_BYTES // CELL

#: (metric name, label values, part): a series, or a part of a histogram.
SeriesKey = tuple[str, tuple[str, ...], str]


@dataclass(frozen=True, slots=True)
class Cell:
    """One series cell: a counter, a gauge, a histogram bucket or a histogram sum."""

    metric: Metric
    labels: tuple[str, ...]
    #: "" for counters and gauges; for histograms the bucket's upper bound
    #: (``le``, the count of observations in that bucket alone, not
    #: cumulative) or "sum".
    part: str = ""

    @property
    def is_float(self) -> bool:
        return self.part == "sum"

    @property
    def key(self) -> SeriesKey:
        return (self.metric.name, self.labels, self.part)


def bucket_label(bound: float) -> str:
    """The ``le`` label value of a bucket bound, as Prometheus clients write it."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Layout:
    """The cells of one configuration's worker regions."""

    def __init__(self, zones: Sequence[str], backend: str) -> None:
        # A zone named like the default zone's label shares its series.
        self.zones: tuple[str, ...] = tuple(dict.fromkeys((catalogue.DEFAULT_ZONE_LABEL, *zones)))
        self.backend = backend
        self.cells: list[Cell] = []
        self._index: dict[SeriesKey, int] = {}
        for metric in catalogue.WORKER:
            for labels in self._label_sets(metric):
                if metric.kind == HISTOGRAM:
                    bounds = (*catalogue.FETCH_BUCKETS, float("inf"))
                    for bound in bounds:
                        self._add(Cell(metric, labels, bucket_label(bound)))
                    self._add(Cell(metric, labels, "sum"))
                else:
                    self._add(Cell(metric, labels))

    @classmethod
    def for_config(cls, config: Config) -> Layout:
        # postfix-tlspol's QUERY and QUERYwithTLSRPT are zones too, configured
        # or not: the configured zones first, then those two.
        names = dict.fromkeys(config.zones)
        names.update(dict.fromkeys(socketmap_zones(config.default_zone, config.zones)))
        return cls(tuple(names), config.cache.type)

    def _add(self, cell: Cell) -> None:
        self._index[cell.key] = HEADER_CELLS + len(self.cells)
        self.cells.append(cell)

    def _label_sets(self, metric: Metric) -> Iterable[tuple[str, ...]]:
        values: dict[str, Sequence[str]] = {
            "zone": self.zones,
            "outcome": catalogue.OUTCOMES,
            "path": catalogue.PATHS,
            "result": (
                catalogue.PASS_RESULTS
                if metric is catalogue.PROACTIVE_PASSES
                else catalogue.FETCH_RESULTS
            ),
            "reason": catalogue.SKIP_REASONS,
            "backend": (self.backend,),
            "action": catalogue.PROACTIVE_ACTIONS,
            "decision": catalogue.DANE_DECISIONS,
        }
        return itertools.product(*(values[name] for name in metric.labels))

    @property
    def size(self) -> int:
        """Bytes of a region: the header and every cell."""
        return (HEADER_CELLS + len(self.cells)) * CELL

    def index(self, metric: Metric, *labels: str, part: str = "") -> int:
        """The cell of a series; KeyError for a label value the catalogue does not list."""
        return self._index[(metric.name, labels, part)]

    def indexed_cells(self) -> Iterable[tuple[int, Cell]]:
        return enumerate(self.cells, start=HEADER_CELLS)

    def lookup_cells(self, zone: str) -> tuple[tuple[int, ...], ...]:
        """The lookup counters of ``zone``: ``[path][outcome]`` (catalogue order)."""
        metric = catalogue.LOOKUPS
        return tuple(
            tuple(self.index(metric, zone, outcome, path) for outcome in catalogue.OUTCOMES)
            for path in catalogue.PATHS
        )
