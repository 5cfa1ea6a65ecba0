"""The supervisor's side: totals over every worker, health, and the exposition.

Totals of a counter are the sum, over the workers alive now, of what their
regions hold, plus everything folded in from the workers that exited
(:meth:`Collector.worker_exited`, called when a worker is reaped, whatever
ended it). A worker's region stays readable until it is reaped, so its
counts are neither lost nor counted twice, and the totals never go back
while the daemon runs. Gauges (open connections) count live workers only.

Health, for ``/healthz`` and ``mtasts_healthy``: at least one worker is
*answering* (it said it was ready, it is not being replaced, and its
heartbeat is at most :data:`HEARTBEAT_STALE` seconds old) and at least one of
those reaches the cache backend (its last probe or call worked).
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from mtasts_fast import __version__
from mtasts_fast.config import Config
from mtasts_fast.metrics import catalogue as cat
from mtasts_fast.metrics import layout as lay
from mtasts_fast.metrics.exposition import CONTENT_TYPE, Writer
from mtasts_fast.metrics.http import Response
from mtasts_fast.metrics.layout import Layout, SeriesKey
from mtasts_fast.metrics.region import Region

__all__ = ["HEARTBEAT_STALE", "Collector", "WorkerView", "compiled_extensions"]

#: A worker whose heartbeat (every second) is older than this does not answer:
#: its event loop is stuck.
HEARTBEAT_STALE = 5.0

_KEEPS_TOTALS = (cat.COUNTER, cat.HISTOGRAM)
# Configurations whose layouts are kept for the next fork.
_LAYOUTS_KEPT = 4


class WorkerView(Protocol):
    """What the collector reads of a worker process (worker_processes.WorkerProcess)."""

    @property
    def slot(self) -> int: ...
    @property
    def ready(self) -> bool: ...
    @property
    def retiring(self) -> bool: ...
    @property
    def region(self) -> Region | None: ...


def compiled_extensions() -> str:
    """The compiled twins in use, comma-separated, or "none"."""
    from mtasts_fast import counters, fastpath, matcher, netstring

    used = []
    if counters.CounterArrayC is not None:
        used.append("counters")
    if fastpath.FastPathC is not None:
        used.append("fastpath")
    if matcher.mx_matches is not matcher.mx_matches_py:
        used.append("matcher")
    if netstring.NetstringParserC is not None:
        used.append("netstring")
    return ",".join(used) or "none"


class _Stats:
    """A worker's last count of the cache."""

    __slots__ = ("entries", "failures", "size", "when")

    def __init__(self, region: Region) -> None:
        cells = region.cells
        self.when = cells.get_float(lay.STATS_TIME)
        self.entries = cells.get(lay.STATS_ENTRIES)
        self.failures = cells.get(lay.STATS_FAILURES)
        size = cells.get(lay.STATS_SIZE)
        self.size = size - 1 if size else None


class Collector:
    """Counts the supervisor's own events and sums the workers' regions."""

    def __init__(self, config: Config) -> None:
        self.started_at = time.time()
        self._extensions = compiled_extensions()
        self._retired: dict[SeriesKey, float] = {}
        # The last count of each shared backend, kept when the worker that
        # made it exits (only one worker counts a shared cache).
        self._shared_stats: dict[str, _Stats] = {}
        self._layouts: dict[int, tuple[Config, Layout]] = {}
        self.worker_starts = 0
        self.worker_crashes = 0
        self.worker_restarts = 0
        self.reloads: Counter[str] = Counter()
        self.last_reload_ok = True
        self.layout(config)

    def layout(self, config: Config) -> Layout:
        """The layout of ``config``'s workers, built once per configuration."""
        known = self._layouts.get(id(config))
        if known is None or known[0] is not config:
            known = (config, Layout.for_config(config))
            self._layouts[id(config)] = known
            # Only the last few configurations fork workers (a region keeps
            # its own layout): reload after reload must not grow this.
            while len(self._layouts) > _LAYOUTS_KEPT:
                del self._layouts[next(iter(self._layouts))]
        return known[1]

    # -- events ------------------------------------------------------------------------------

    def new_region(self, config: Config) -> Region:
        """The region for a worker about to be forked on ``config``."""
        return Region(self.layout(config))

    def worker_started(self, *, restart: bool) -> None:
        self.worker_starts += 1
        if restart:
            self.worker_restarts += 1

    def worker_exited(self, region: Region | None, *, crashed: bool) -> None:
        """Fold a reaped worker's counts into the totals and unmap its region."""
        if crashed:
            self.worker_crashes += 1
        if region is None or region.closed:
            return
        retired = self._retired
        for cell, value in region.values():
            if cell.metric.kind in _KEEPS_TOTALS:
                key = cell.key
                retired[key] = retired.get(key, 0) + value
        backend = region.layout.backend
        stats = _Stats(region)
        if backend != "internal" and stats.when:
            kept = self._shared_stats.get(backend)
            if kept is None or kept.when < stats.when:
                self._shared_stats[backend] = stats
        region.close()

    def reload_result(self, result: str) -> None:
        """A reload ended: one of catalogue.RELOAD_RESULTS."""
        self.reloads[result] += 1
        if result in ("applied", "unchanged"):
            self.last_reload_ok = True
        elif result in ("invalid", "aborted"):
            self.last_reload_ok = False

    # -- health ------------------------------------------------------------------------------

    @staticmethod
    def state(worker: WorkerView, now: float) -> str:
        """One of catalogue.WORKER_STATES."""
        if worker.retiring:
            return "stopping"
        if not worker.ready:
            return "starting"
        region = worker.region
        if region is None or region.closed:
            return "answering"  # nothing to tell otherwise
        if now - region.cells.get_float(lay.HEARTBEAT) > HEARTBEAT_STALE:
            return "unresponsive"
        return "answering"

    def health(self, workers: Iterable[WorkerView], *, stopping: bool) -> tuple[bool, str]:
        """(healthy, one line saying why) for /healthz."""
        if stopping:
            return False, "unavailable: the daemon is stopping"
        now = time.monotonic()
        workers = list(workers)
        states = Counter(self.state(w, now) for w in workers)
        answering = [w for w in workers if self.state(w, now) == "answering"]
        if not answering:
            detail = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
            return (
                False,
                f"unavailable: no worker is answering lookups ({detail or 'none running'})",
            )
        reachable = [w for w in answering if _backend(w) != lay.BACKEND_DOWN]
        backend = _backend_name(answering[0])
        if not reachable:
            region = answering[0].region
            reason = region.reason() if region is not None else ""
            return False, f"unavailable: cache backend ({backend}) unreachable: {reason}"
        return (
            True,
            f"ok: {len(answering)} worker(s) answering, cache backend ({backend}) reachable",
        )

    # -- exposition ------------------------------------------------------------------------------

    def respond(
        self, path: str, workers: Iterable[WorkerView], *, stopping: bool = False
    ) -> Response:
        """The endpoint's page at ``path``: /metrics, /healthz, or 404."""
        if path == "/metrics":
            return Response(200, CONTENT_TYPE, self.render(workers, stopping=stopping).encode())
        text = "text/plain; charset=utf-8"
        if path == "/healthz":
            healthy, why = self.health(workers, stopping=stopping)
            return Response(200 if healthy else 503, text, (why + "\n").encode())
        return Response(404, text, b"mtasts-fast: GET /metrics (Prometheus) or /healthz\n")

    def render(self, workers: Iterable[WorkerView], *, stopping: bool = False) -> str:
        workers = list(workers)
        now = time.monotonic()
        totals = dict(self._retired)
        for worker in workers:
            region = worker.region
            if region is None or region.closed:
                continue
            for cell, value in region.values():
                key = cell.key
                totals[key] = totals.get(key, 0) + value
        by_metric: dict[str, dict[tuple[tuple[str, ...], str], float]] = {}
        for (name, labels, part), value in totals.items():
            by_metric.setdefault(name, {})[(labels, part)] = value
        out = Writer()
        for metric in cat.WORKER:
            series = by_metric.get(metric.name, {})
            out.family(metric)
            if metric.kind == cat.HISTOGRAM:
                _histogram(out, metric, series)
            else:
                for (labels, _), value in series.items():
                    out.sample(metric.name, metric.labels, labels, value)
        self._render_supervisor(out, workers, now, stopping)
        return out.text()

    def _render_supervisor(
        self, out: Writer, workers: list[WorkerView], now: float, stopping: bool
    ) -> None:
        def one(metric: cat.Metric, value: float, *labels: str) -> None:
            out.sample(metric.name, metric.labels, labels, value)

        for metric, value in (
            (cat.WORKER_STARTS, self.worker_starts),
            (cat.WORKER_CRASHES, self.worker_crashes),
            (cat.WORKER_RESTARTS, self.worker_restarts),
        ):
            out.family(metric)
            one(metric, value)
        out.family(cat.WORKERS)
        states = Counter(self.state(w, now) for w in workers)
        for state in cat.WORKER_STATES:
            one(cat.WORKERS, states[state], state)
        out.family(cat.RELOADS)
        for result in cat.RELOAD_RESULTS:
            one(cat.RELOADS, self.reloads[result], result)
        out.family(cat.LAST_RELOAD_OK)
        one(cat.LAST_RELOAD_OK, int(self.last_reload_ok))
        self._render_cache(out, workers, now)
        out.family(cat.HEALTHY)
        one(cat.HEALTHY, int(self.health(workers, stopping=stopping)[0]))
        out.family(cat.BUILD_INFO)
        one(cat.BUILD_INFO, 1, __version__, self._extensions, platform.python_version())
        out.family(cat.START_TIME)
        one(cat.START_TIME, self.started_at)

    def _render_cache(self, out: Writer, workers: list[WorkerView], now: float) -> None:
        live = [w for w in workers if w.region is not None and not w.region.closed]
        counted: dict[str, list[_Stats]] = {}
        up: dict[str, int] = {}
        for worker in live:
            assert worker.region is not None
            backend = worker.region.layout.backend
            up.setdefault(backend, 0)
            if self.state(worker, now) == "answering" and _backend(worker) != lay.BACKEND_DOWN:
                up[backend] = 1
            stats = _Stats(worker.region)
            if stats.when:
                counted.setdefault(backend, []).append(stats)
        rows: dict[str, tuple[int, int, int | None, float]] = {}
        for backend in up:
            reports = counted.get(backend, [])
            if backend == "internal":
                # Each worker has a cache of its own: the total is the sum.
                if reports:
                    rows[backend] = (
                        sum(s.entries for s in reports),
                        sum(s.failures for s in reports),
                        None,
                        max(s.when for s in reports),
                    )
                continue
            kept = self._shared_stats.get(backend)
            if kept is not None:
                reports = [*reports, kept]
            if reports:
                last = max(reports, key=lambda s: s.when)
                rows[backend] = (last.entries, last.failures, last.size, last.when)
        for metric, column in (
            (cat.CACHE_ENTRIES, 0),
            (cat.CACHE_FAILURE_RECORDS, 1),
            (cat.CACHE_SIZE, 2),
            (cat.CACHE_STATS_TIME, 3),
        ):
            out.family(metric)
            for backend, row in rows.items():
                value = row[column]
                if value is not None:
                    out.sample(metric.name, metric.labels, (backend,), value)
        out.family(cat.BACKEND_UP)
        for backend, value in up.items():
            out.sample(cat.BACKEND_UP.name, cat.BACKEND_UP.labels, (backend,), value)


def _backend(worker: WorkerView) -> int:
    region = worker.region
    if region is None or region.closed:
        return lay.BACKEND_UNKNOWN
    return region.cells.get(lay.BACKEND)


def _backend_name(worker: WorkerView) -> str:
    region = worker.region
    return region.layout.backend if region is not None else "unknown"


def _histogram(
    out: Writer, metric: cat.Metric, series: dict[tuple[tuple[str, ...], str], float]
) -> None:
    label_sets = dict.fromkeys(labels for labels, _ in series)
    for labels in label_sets:
        cumulative: float = 0
        for bound in (*cat.FETCH_BUCKETS, float("inf")):
            le = lay.bucket_label(bound)
            cumulative += series.get((labels, le), 0)
            out.sample(f"{metric.name}_bucket", (*metric.labels, "le"), (*labels, le), cumulative)
        out.sample(f"{metric.name}_sum", metric.labels, labels, series.get((labels, "sum"), 0.0))
        out.sample(f"{metric.name}_count", metric.labels, labels, cumulative)
