"""The proactive refresh pass (``proactive_policy_fetching``).

Every ``interval`` seconds one process — whichever takes the cache's
``proactive-refresh`` lease first, among all workers and all hosts sharing the
cache — walks the cache and fetches again, body included, every policy last
fetched more than ``interval / grace_ratio`` seconds ago. Fetching the body
even when the TXT id is unchanged is the point: it is the only way to notice a
policy edited without a new id (DESIGN.md §4), and it moves the expiry of
policies that are still served (RFC 8461 §3.3 suggests refreshing well before
expiry, at least daily).

The fetches of one pass are spread evenly over ``jitter`` seconds, each at a
random moment within its share, with at most ``concurrency_limit`` in flight:
a daily pass over a million domains is a trickle, not a burst. Entries whose
policy expired more than a day ago are dropped, not fetched: nobody has mailed
those domains for a whole max_age. The end of a pass is stored in the cache
(``set_proactive_ts``) so a restart does not start a new pass early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from mtasts_fast import defaults
from mtasts_fast.cache import Cache, CacheEntry
from mtasts_fast.config import Config
from mtasts_fast.refresh import PolicyRefresher

__all__ = ["LEASE_NAME", "PassReport", "ProactiveRefresher", "lease_owner"]

_log = logging.getLogger("mtasts_fast.proactive")

LEASE_NAME = "proactive-refresh"
# The lease outlives its holder by at most this long: a crashed pass is taken
# over by another process this many seconds later. Renewed every third of it.
LEASE_TTL = 60.0
# How long to wait before asking again when the cache cannot be read or
# another process holds the lease.
_RETRY = 30.0


def lease_owner() -> str:
    """A name for this process that no other process on any host shares."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"


@dataclass(slots=True)
class PassReport:
    """What one pass did (logged at its end, returned for tests and tools)."""

    due: int = 0
    refreshed: int = 0  # fetched again, body included
    changed: int = 0  # ... and the policy (or its id) differs from the cached one
    kept: int = 0  # fetch failed, no policy, or backing off: the entry is left as it was
    dropped: int = 0  # expired long ago, deleted
    aborted: bool = False  # the lease was lost (or the cache failed) mid-pass


class LeaseLost(Exception):
    """Another process holds the proactive lease now."""


class ProactiveRefresher:
    """Runs passes for one process, competing for the lease with the others."""

    def __init__(
        self,
        config: Config,
        cache: Cache,
        refresher: PolicyRefresher,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        settings = config.proactive_policy_fetching
        self._cache = cache
        self._refresher = refresher
        self._interval = settings.interval
        self._min_age = settings.interval / settings.grace_ratio
        self._concurrency = settings.concurrency_limit
        self._spread = settings.spread
        # The old daemon uses the default zone's timeout for its passes too.
        self._timeout = config.default_zone.timeout
        self._owner = owner or lease_owner()
        self._clock = clock
        self._lease_ttl = lease_ttl
        #: Passes this process completed (for tests; the metrics count them too).
        self.passes = 0

    async def run_forever(self) -> None:
        """Wait for each pass to fall due, and run it if this process gets the lease."""
        while True:
            try:
                last = await self._cache.get_proactive_ts()
            except Exception as exc:
                _log.warning("proactive refresh: cannot read the last pass time: %s", exc)
                await asyncio.sleep(_RETRY)
                continue
            wait = last + self._interval - self._clock()
            if wait > 0:
                # Sleep in short steps when the next pass is far: another
                # process may run it, and then the stored time moves on.
                await asyncio.sleep(min(wait, max(self._lease_ttl, 1.0)))
                continue
            try:
                report = await self.run_once()
            except Exception:
                _log.exception("proactive refresh pass failed")
                report = None
            if report is None:
                # Another process holds the lease (or the cache is down):
                # ask again a little later, at a random moment.
                await asyncio.sleep(min(_RETRY, self._lease_ttl / 2) * (0.5 + random.random()))

    async def run_once(self) -> PassReport | None:
        """Run one pass now if the lease is free; None if another process has it."""
        if not await self._cache.acquire_lease(LEASE_NAME, self._owner, self._lease_ttl):
            return None
        renewer = asyncio.ensure_future(self._keep_lease())
        try:
            # Another process may have finished a pass while this one waited.
            if await self._cache.get_proactive_ts() + self._interval > self._clock():
                return None
            work = asyncio.ensure_future(self._run_pass())
            done, _ = await asyncio.wait({work, renewer}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                _log.warning("proactive refresh: lease lost mid-pass; another process continues")
                self._refresher.metrics.proactive_pass(aborted=True)
                return PassReport(aborted=True)
            report = work.result()
            await self._cache.set_proactive_ts(self._clock())
            self.passes += 1
            self._refresher.metrics.proactive_pass(
                aborted=False,
                due=report.due,
                refreshed=report.refreshed,
                changed=report.changed,
                kept=report.kept,
                dropped=report.dropped,
            )
            return report
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewer
            with contextlib.suppress(Exception):
                await self._cache.release_lease(LEASE_NAME, self._owner)

    async def _keep_lease(self) -> None:
        """Renew the lease until cancelled; return if it is lost."""
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            try:
                held = await self._cache.acquire_lease(LEASE_NAME, self._owner, self._lease_ttl)
            except Exception as exc:
                _log.warning("proactive refresh: cannot renew the lease: %s", exc)
                continue  # it is still ours until it expires
            if not held:
                return

    async def _run_pass(self) -> PassReport:
        started = self._clock()
        report = PassReport()
        report.dropped = await self._cache.prune(started - defaults.PROACTIVE_DROP_AFTER)
        report.due = await self._count_due(started)
        _log.info(
            "proactive refresh: %d of the cached policies are due, spread over %.0f s",
            report.due,
            self._spread,
        )
        slots = asyncio.Semaphore(self._concurrency)
        running: set[asyncio.Task[None]] = set()
        gap = self._spread / report.due if report.due else 0.0
        index = 0
        async for batch in self._cache.scan():
            due = [entry for entry in batch if self._is_due(entry, started)]
            random.shuffle(due)
            for entry in due:
                if index >= report.due:
                    break  # written since the count: the next pass has them
                if gap:
                    # Entry i starts at a random moment in [i·gap, (i+1)·gap).
                    delay = started + (index + random.random()) * gap - self._clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                index += 1
                await slots.acquire()
                task = asyncio.ensure_future(self._refresh_one(entry, report))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _t: slots.release())
        if running:
            await asyncio.gather(*running)
        _log.info(
            "proactive refresh pass done in %.1f s: %d refreshed (%d changed), %d kept as "
            "they were, %d dropped (expired long ago)",
            self._clock() - started,
            report.refreshed,
            report.changed,
            report.kept,
            report.dropped,
            extra={"event": "proactive-pass"},
        )
        return report

    def _is_due(self, entry: CacheEntry, now: float) -> bool:
        return now - entry.fetched_at >= self._min_age

    async def _count_due(self, now: float) -> int:
        count = 0
        async for batch in self._cache.scan():
            count += sum(1 for entry in batch if self._is_due(entry, now))
        return count

    async def _refresh_one(self, entry: CacheEntry, report: PassReport) -> None:
        # known_id None: fetch the body even if the TXT id is unchanged.
        fresh, _, _ = await self._refresher.refresh(
            entry.domain, None, self._timeout, previous=entry, proactive=True
        )
        if fresh is None or fresh is entry:
            report.kept += 1
            return
        report.refreshed += 1
        if fresh.policy_id != entry.policy_id or fresh.policy != entry.policy:
            report.changed += 1
            _log.info(
                "proactive refresh: the policy of %s changed (id %s → %s, mode %s → %s)",
                entry.domain,
                entry.policy_id,
                fresh.policy_id,
                entry.policy.mode,
                fresh.policy.mode,
            )
