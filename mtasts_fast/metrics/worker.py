"""What a worker counts, and where: the methods its parts call, one line each.

Every count is a store into the worker's shared region (region.py), so the
supervisor has it the moment it is made. The hot path (a cached lookup)
calls :attr:`WorkerMetrics.count` with a cell index the responder worked out
per zone when it started: one call of the compiled ``CounterArray.inc``,
about 20 ns. Everything else here runs off the hot path: per fetch, per
connection, per pass.

A process that is not a worker of the daemon (the tests' in-process
servers, ``mta-sts-cache warm``) gets a private region from
:meth:`WorkerMetrics.private` and counts the same way.
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING

from mtasts_fast.config import Config
from mtasts_fast.metrics import catalogue as cat
from mtasts_fast.metrics import layout as lay
from mtasts_fast.metrics.layout import Layout
from mtasts_fast.metrics.region import Region

if TYPE_CHECKING:
    from mtasts_fast.cache.base import CacheStats

__all__ = ["LookupCells", "WorkerMetrics"]

_OUTCOME = {name: i for i, name in enumerate(cat.OUTCOMES)}
_PATH = {name: i for i, name in enumerate(cat.PATHS)}


class LookupCells:
    """One zone's lookup counters: ``cell(path, outcome)``, and the hot ones by name."""

    __slots__ = ("backoff", "invalid", "memo_no_policy", "memo_policy", "table")

    def __init__(self, table: tuple[tuple[int, ...], ...]) -> None:
        self.table = table
        policy, no_policy = _OUTCOME["policy"], _OUTCOME["no-policy"]
        self.memo_policy = table[_PATH["memo"]][policy]
        self.memo_no_policy = table[_PATH["memo"]][no_policy]
        self.backoff = table[_PATH["backoff"]][no_policy]
        self.invalid = table[_PATH["invalid-key"]][no_policy]

    def cell(self, path: str, outcome: str) -> int:
        """The counter of (``path``, ``outcome``); KeyError for a name not in the catalogue."""
        return self.table[_PATH[path]][_OUTCOME[outcome]]


class WorkerMetrics:
    """Counts one worker's events into its region."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.layout = layout = region.layout
        cells = region.cells
        #: ``count(cell)``: add one to a counter (the hot path's one call).
        self.count = cells.inc
        self._cells = cells
        index = layout.index
        backend = layout.backend
        self._fetches = {r: index(cat.FETCHES, r) for r in cat.FETCH_RESULTS}
        self._buckets = [
            index(cat.FETCH_DURATION, part=lay.bucket_label(b))
            for b in (*cat.FETCH_BUCKETS, float("inf"))
        ]
        self._duration_sum = index(cat.FETCH_DURATION, part="sum")
        self._skipped = {r: index(cat.FETCHES_SKIPPED, r) for r in cat.SKIP_REASONS}
        self._slot_waits = index(cat.FETCH_SLOT_WAITS)
        self._coalesced = index(cat.FETCH_COALESCED)
        self._backend_errors = index(cat.BACKEND_ERRORS, backend)
        self._backend_outages = index(cat.BACKEND_OUTAGES, backend)
        self._accepted = index(cat.CONNECTIONS_ACCEPTED)
        self._refused = index(cat.CONNECTIONS_REFUSED)
        self._idle_closed = index(cat.CONNECTIONS_IDLE_CLOSED)
        self._bad_netstrings = index(cat.BAD_NETSTRINGS)
        self._open = index(cat.CONNECTIONS_OPEN)
        self._passes = {r: index(cat.PROACTIVE_PASSES, r) for r in cat.PASS_RESULTS}
        self._proactive = {a: index(cat.PROACTIVE_POLICIES, a) for a in cat.PROACTIVE_ACTIONS}
        self._dane = {d: index(cat.DANE_DECISIONS_TOTAL, d) for d in cat.DANE_DECISIONS}

    @classmethod
    def private(cls, config: Config) -> WorkerMetrics:
        """Metrics for a process nobody reads them from (tests, command-line tools)."""
        return cls(Region(Layout.for_config(config)))

    # -- lookups (responder) -----------------------------------------------------------------

    def lookup_cells(self, zone: str) -> LookupCells:
        """``zone``'s lookup counters; the label is the zone's name (catalogue.DEFAULT_ZONE_LABEL
        for the default zone)."""
        return LookupCells(self.layout.lookup_cells(zone))

    # -- fetches (refresh.py) ----------------------------------------------------------------

    def fetched(self, result: str, seconds: float) -> None:
        """A fetch ended with ``result`` (catalogue.FETCH_RESULTS) after ``seconds``."""
        cell = self._fetches.get(result)
        if cell is None:  # a failure without a result type is counted as refresh.py logs it
            cell = self._fetches["sts-policy-fetch-error"]
        cells = self._cells
        cells.inc(cell)
        cells.inc(self._buckets[bisect.bisect_left(cat.FETCH_BUCKETS, seconds)])
        cells.add_float(self._duration_sum, seconds)

    def skipped(self, reason: str) -> None:
        """A fetch was not made: "backoff" or "no-slot"."""
        self._cells.inc(self._skipped[reason])

    def slot_wait(self) -> None:
        self._cells.inc(self._slot_waits)

    def coalesced(self) -> None:
        self._cells.inc(self._coalesced)

    # -- the cache backend ---------------------------------------------------------------------

    def backend_error(self, *, outage: bool) -> None:
        """A backend call failed; ``outage`` when everything worked before it."""
        self._cells.inc(self._backend_errors)
        if outage:
            self._cells.inc(self._backend_outages)

    def backend_state(self, up: bool, reason: str = "") -> None:
        """Publish whether the backend can be read (for /healthz)."""
        if not up:
            self.region.set_reason(reason)
        self._cells.set(lay.BACKEND, lay.BACKEND_UP if up else lay.BACKEND_DOWN)

    def cache_stats(self, stats: CacheStats) -> None:
        """Publish a count of the cache (for the mtasts_cache_* gauges)."""
        cells = self._cells
        cells.set(lay.STATS_ENTRIES, stats.entries)
        cells.set(lay.STATS_FAILURES, stats.failures)
        cells.set(lay.STATS_SIZE, 0 if stats.size_bytes is None else stats.size_bytes + 1)
        cells.set_float(lay.STATS_TIME, time.time())

    def heartbeat(self) -> None:
        self._cells.set_float(lay.HEARTBEAT, time.monotonic())

    # -- connections (server.py) ---------------------------------------------------------------

    def connection_accepted(self, open_now: int) -> None:
        self._cells.inc(self._accepted)
        self._cells.set(self._open, open_now)

    def connection_closed(self, open_now: int) -> None:
        self._cells.set(self._open, open_now)

    def connection_refused(self) -> None:
        self._cells.inc(self._refused)

    def idle_closed(self) -> None:
        self._cells.inc(self._idle_closed)

    def bad_netstring(self) -> None:
        self._cells.inc(self._bad_netstrings)

    # -- proactive passes and DANE -------------------------------------------------------------

    def proactive_pass(
        self,
        *,
        aborted: bool,
        due: int = 0,
        refreshed: int = 0,
        changed: int = 0,
        kept: int = 0,
        dropped: int = 0,
    ) -> None:
        cells = self._cells
        cells.inc(self._passes["aborted" if aborted else "completed"])
        for action, number in (
            ("due", due),
            ("refreshed", refreshed),
            ("changed", changed),
            ("kept", kept),
            ("dropped", dropped),
        ):
            cells.add(self._proactive[action], number)

    def dane_decision(self, decision: str) -> None:
        """A domain's DANE state was evaluated (dane.state.DECISIONS)."""
        self._cells.inc(self._dane[decision])
