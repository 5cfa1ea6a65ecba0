"""A worker's background reports: heartbeat, cache backend probe, cache counts.

Three loops, each in its own task so that a slow one never delays another:

- the heartbeat, every :data:`HEARTBEAT_PERIOD` seconds, proves the event
  loop turns (the supervisor's /healthz counts a worker whose heartbeat is
  older than :data:`collector.HEARTBEAT_STALE` as not answering);
- the probe, every :data:`PROBE_PERIOD` seconds, reads one small key of the
  cache backend (the proactive pass time, which every backend has), so an
  outage and the recovery are seen even when no lookup needs the backend; a
  failure counts and logs like any failed backend call (refresh.py);
- the count (``Cache.stats``): every worker for ``internal`` (each has a
  cache of its own), only worker 1 for the shared backends, every
  :data:`STATS_PERIOD` seconds, or :data:`STATS_PERIOD_REMOTE` for redis and
  postgres, where counting scans the whole key space or table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mtasts_fast.cache import Cache
from mtasts_fast.metrics.worker import WorkerMetrics
from mtasts_fast.refresh import PolicyRefresher

__all__ = ["HEARTBEAT_PERIOD", "PROBE_PERIOD", "STATS_PERIOD", "WorkerMonitor"]

_log = logging.getLogger("mtasts_fast.metrics")

HEARTBEAT_PERIOD = 1.0
PROBE_PERIOD = 2.0
#: A probe that takes longer has failed.
PROBE_TIMEOUT = 3.0
STATS_PERIOD = 60.0
STATS_PERIOD_REMOTE = 300.0
_REMOTE = ("redis", "redis_sentinel", "postgres")


class WorkerMonitor:
    """Runs the three loops of one worker until cancelled."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        cache: Cache,
        refresher: PolicyRefresher,
        *,
        number: int,
        backend: str,
    ) -> None:
        self._metrics = metrics
        self._cache = cache
        self._refresher = refresher
        self._counts = backend == "internal" or number == 1
        self._stats_period = STATS_PERIOD_REMOTE if backend in _REMOTE else STATS_PERIOD

    async def run_forever(self) -> None:
        loops = [self._heartbeat(), self._probe()]
        if self._counts:
            loops.append(self._count())
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _heartbeat(self) -> None:
        while True:
            self._metrics.heartbeat()
            await asyncio.sleep(HEARTBEAT_PERIOD)

    async def _probe(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(PROBE_PERIOD)

    async def probe_once(self) -> bool:
        """Read the backend once; True if it answered."""
        try:
            await asyncio.wait_for(self._cache.get_proactive_ts(), PROBE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"no answer within {PROBE_TIMEOUT:g} s")
            self._refresher.backend_failed("read", exc)
            return False
        self._refresher.backend_ok("read")
        return True

    async def _count(self) -> None:
        while True:
            try:
                self._metrics.cache_stats(await self._cache.stats())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The probe reports the backend's health; a count can wait.
                _log.debug("cannot count the cache: %s", exc)
            await asyncio.sleep(self._stats_period)
