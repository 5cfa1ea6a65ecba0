"""Fetch discipline: one fetch per domain at a time, stored results, backoff.

Every path that fetches a policy goes through :class:`PolicyRefresher` — a
lookup that missed the cache, the background revalidation of an entry past
``cache_grace``, the proactive pass and ``mta-sts-cache warm`` — so they all
obey the same rules (DESIGN.md §2 "Coalescing", §4 "Cache semantics"):

- concurrent requests for one (domain, known id) share one fetch;
- at most ``max_concurrent_fetches`` fetches are in flight per process; a
  request waits for a slot for at most its timeout;
- "no policy" is remembered for ``negative_ttl`` and a failed fetch backs off
  per domain (60 s, doubling, up to ``fetch_backoff_max``), in a failure
  record stored in the cache, so every worker and host sharing it holds back;
- a valid policy is stored (``mode: none`` replaces an enforce policy at
  once); an invalid or unfetchable one never replaces a valid cached entry
  (RFC 8461 §3.3, §5.1);
- each fetch outcome is counted under its RFC 8460 result type (in
  :attr:`PolicyRefresher.counts` and in the worker's metrics, with its
  duration), and a failure is logged once per attempt, which the backoff
  makes once per period.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from mtasts_fast import defaults
from mtasts_fast.cache import Cache, CacheEntry
from mtasts_fast.cache.base import NO_POLICY, FetchFailure
from mtasts_fast.cache.internal import InternalCache
from mtasts_fast.config import Config
from mtasts_fast.fetcher import FetchResult, Outcome, PolicyFetcher
from mtasts_fast.memo import make_room
from mtasts_fast.metrics.worker import WorkerMetrics

__all__ = ["PolicyRefresher", "Refreshed", "backoff_delay"]

_log = logging.getLogger("mtasts_fast.refresh")


class Refreshed(NamedTuple):
    """What a shared fetch hands its waiters."""

    entry: CacheEntry | None
    """The entry to serve: the new one, the previous one while unexpired, or None."""
    failed: bool
    """The attempt failed (as opposed to finding no policy)."""
    kind: str
    """What happened, as counted in :attr:`PolicyRefresher.counts`."""


# Domains remembered in process as "in backoff until T". The bound only stops
# a flood of distinct broken names from growing a worker without end.
_MEMO_LIMIT = 65_536

# Entries kept in process while the cache backend (Redis, PostgreSQL, ...) is
# unreachable, so an outage does not turn every lookup into a fetch.
_FALLBACK_SIZE = 10_000


def backoff_delay(attempts: int, maximum: float) -> float:
    """Seconds before retrying after ``attempts`` consecutive failures."""
    # 60, 120, 240, ... capped; a maximum below the first step wins.
    exponent = min(attempts - 1, 32)
    return min(defaults.FETCH_BACKOFF_MIN * float(2**exponent), maximum)


class PolicyRefresher:
    """Fetches policies for one process and stores what it learns."""

    def __init__(
        self,
        config: Config,
        cache: Cache,
        fetcher: PolicyFetcher,
        *,
        clock: Callable[[], float] = time.time,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._cache = cache
        self._fetcher = fetcher
        #: Where fetches, slot waits and backend errors are counted.
        self.metrics = metrics if metrics is not None else WorkerMetrics.private(config)
        self._clock = clock
        self._negative_ttl = config.negative_ttl
        self._backoff_max = config.fetch_backoff_max
        self._slots = asyncio.Semaphore(config.max_concurrent_fetches)
        self._inflight: dict[tuple[str, str | None], asyncio.Future[Refreshed]] = {}
        # domain → retry time, for domains this process knows to be in
        # backoff or negatively cached: checked on the hot path.
        self._retry_at: dict[str, float] = {}
        self.fallback = InternalCache(_FALLBACK_SIZE)
        # "read" and/or "write" while they fail, with the calls failed since.
        self._failing: dict[str, int] = {}
        #: Failed backend calls since start.
        self.backend_errors = 0
        #: Fetch outcomes by kind: "policy", "not-changed", "no-policy", the RFC
        #: 8460 result types, "backoff" (skipped: the domain is backing off) and
        #: "no-slot" (no fetch slot within the timeout).
        self.counts: collections.Counter[str] = collections.Counter()

    # -- negative cache, in process ----------------------------------------------------

    def in_backoff(self, domain: str, now: float) -> bool:
        """True if this process knows ``domain`` must not be fetched before later."""
        until = self._retry_at.get(domain)
        if until is None:
            return False
        if now < until:
            return True
        del self._retry_at[domain]
        return False

    def _remember_retry(self, domain: str, until: float) -> None:
        memo = self._retry_at
        # Re-inserted at the end, so the dict stays in insertion order and
        # the oldest entries (the first to expire) come first.
        memo.pop(domain, None)
        make_room(memo, _MEMO_LIMIT)
        memo[domain] = until
        # Forget a few expired entries from the front: without it the memo
        # would fill with domains nobody asks for again until the bound, and
        # hold memory a fetch-free worker never gives back.
        now = self._clock()
        for _ in range(4):
            oldest = next(iter(memo))
            if memo[oldest] > now:
                break
            del memo[oldest]

    # -- fetching --------------------------------------------------------------------------

    def refresh(
        self,
        domain: str,
        known_id: str | None,
        timeout: float,
        previous: CacheEntry | None = None,
        *,
        proactive: bool = False,
    ) -> asyncio.Future[Refreshed]:
        """Fetch and store ``domain``'s policy once, however many callers wait.

        ``known_id``: the cached id; when the TXT record still carries it the
        body is not fetched again. ``previous``: the cached entry, served
        while it is unexpired if the fetch fails. ``proactive``: a refresh
        failure of a non-``none`` policy is worth a warning even when the
        entry is still served.
        """
        key = (domain, known_id)
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(
                self._fetch_and_store(domain, known_id, timeout, previous, proactive)
            )
            self._inflight[key] = future
            future.add_done_callback(lambda _f: self._inflight.pop(key, None))
        else:
            self.metrics.coalesced()
        # A caller that goes away (client disconnect, shutdown) must not cancel
        # the fetch the other callers are waiting for.
        return asyncio.shield(future)

    async def _fetch_and_store(
        self,
        domain: str,
        known_id: str | None,
        timeout: float,
        previous: CacheEntry | None,
        proactive: bool,
    ) -> Refreshed:
        now = self._clock()
        last_failure = await self._read_failure(domain)
        if last_failure is not None and now < last_failure.retry_at:
            # Another worker or host failed (or found no policy) recently.
            self.counts["backoff"] += 1
            self.metrics.skipped("backoff")
            self._remember_retry(domain, last_failure.retry_at)
            return self._keep(previous, now, not last_failure.no_policy, "backoff")
        try:
            if self._slots.locked():
                self.metrics.slot_wait()
                await asyncio.wait_for(self._slots.acquire(), timeout)
            else:
                await self._slots.acquire()
        except TimeoutError:
            self.counts["no-slot"] += 1
            self.metrics.skipped("no-slot")
            _log.warning(
                "no fetch slot for %s within %.3g s: %d fetches already in flight "
                "(max_concurrent_fetches)",
                domain,
                timeout,
                len(self._inflight) - 1,
            )
            return self._keep(previous, self._clock(), True, "no-slot")
        started = time.monotonic()
        try:
            result = await self._fetcher.fetch(domain, timeout, known_id)
        except Exception:
            _log.exception("policy fetch for %s crashed", domain)
            result = FetchResult(
                Outcome.FAILED,
                stage="internal",
                reason="internal error (see the traceback above)",
                result_type="sts-policy-fetch-error",
            )
        finally:
            self._slots.release()
        now = self._clock()
        kind = result.result_type or result.outcome.value
        self.counts[kind] += 1
        self.metrics.fetched(kind, time.monotonic() - started)
        entry = _entry_from(result, domain, now, previous)
        if entry is None:
            await self._record_failure(domain, result, now, previous, last_failure, proactive)
            return self._keep(previous, now, result.outcome is Outcome.FAILED, kind)
        await self.store(entry)
        if last_failure is not None or self._retry_at.pop(domain, None) is not None:
            with contextlib.suppress(Exception):
                await self._cache.delete_failure(domain)
        return Refreshed(entry, False, kind)

    @staticmethod
    def _keep(previous: CacheEntry | None, now: float, failed: bool, kind: str) -> Refreshed:
        # RFC 8461 §3.3: a failed refresh keeps an unexpired policy in force.
        if previous is not None and now < previous.expires_at:
            return Refreshed(previous, failed, kind)
        return Refreshed(None, failed, kind)

    async def store(self, entry: CacheEntry) -> None:
        """Write ``entry``; into the in-process fallback while the backend is down."""
        try:
            await self._cache.put(entry)
        except Exception as exc:
            self.backend_failed("write", exc)
            await self.fallback.put(entry)
        else:
            self.backend_ok("write")

    async def _read_failure(self, domain: str) -> FetchFailure | None:
        try:
            return await self._cache.get_failure(domain)
        except Exception as exc:
            self.backend_failed("read", exc)
            return await self.fallback.get_failure(domain)

    async def _record_failure(
        self,
        domain: str,
        result: FetchResult,
        now: float,
        previous: CacheEntry | None,
        last_failure: FetchFailure | None,
        proactive: bool,
    ) -> None:
        if result.outcome is Outcome.FAILED:
            attempts = 1
            if last_failure is not None and not last_failure.no_policy:
                attempts = last_failure.attempts + 1
            delay = backoff_delay(attempts, self._backoff_max)
            failure = FetchFailure(
                domain,
                result.result_type or "sts-policy-fetch-error",
                result.stage,
                result.reason,
                now,
                now + delay,
                attempts,
            )
            _log_failure(failure, previous, now, proactive)
        else:
            # No policy (RFC 8461 §3.1), or a TXT id that no longer matches an
            # entry we could reuse: remembered for negative_ttl.
            failure = FetchFailure(
                domain, NO_POLICY, result.stage, result.reason, now, now + self._negative_ttl, 1
            )
            _log.debug(
                "no MTA-STS policy for %s: %s",
                domain,
                result.reason,
                extra={"event": "no-policy", "domain": domain, "reason": result.reason},
            )
        if failure.retry_at > now:
            self._remember_retry(domain, failure.retry_at)
        try:
            await self._cache.put_failure(failure)
        except Exception as exc:
            self.backend_failed("write", exc)
            await self.fallback.put_failure(failure)

    # -- backend health ----------------------------------------------------------------------

    def backend_failed(self, what: str, exc: Exception) -> None:
        """Count a failed backend call; ``what`` is "read" or "write"."""
        self.backend_errors += 1
        self.metrics.backend_error(outage=not self._failing)
        reason = str(exc) or type(exc).__name__
        if what == "read":
            self.metrics.backend_state(False, reason)
        failed = self._failing.get(what)
        self._failing[what] = (failed or 0) + 1
        if failed is None:
            _log.warning(
                "cache backend %s failed (%s); answering from fetches and an in-process "
                "fallback cache until it is back",
                what,
                reason,
                extra={"event": "cache-backend-down", "reason": reason},
            )

    def backend_ok(self, what: str) -> None:
        """A backend call of kind ``what`` worked again."""
        # Reads and writes recover separately: with a full disk or a locked
        # file, reads work while writes fail, and a read must not announce a
        # recovery that the next write contradicts (a log line per lookup).
        failed = self._failing.pop(what, None)
        if failed is not None:
            if what == "read":
                self.metrics.backend_state(True)
            _log.warning(
                "cache backend is back for %ss after %d failed calls",
                what,
                failed,
                extra={"event": "cache-backend-up"},
            )

    @property
    def backend_down(self) -> bool:
        return bool(self._failing)

    async def close(self) -> None:
        """Cancel fetches in flight (at shutdown)."""
        pending = list(self._inflight.values())
        for future in pending:
            future.cancel()
        for future in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await future


def _entry_from(
    result: FetchResult, domain: str, now: float, previous: CacheEntry | None
) -> CacheEntry | None:
    if result.outcome is Outcome.POLICY:
        assert result.policy is not None
        assert result.policy_id is not None
        for warning in result.warnings:
            _log.info("policy of %s: %s", domain, warning)
        # A fetched ``mode: none`` replaces the cached policy at once
        # (RFC 8461 §8.3), like any other valid policy.
        return CacheEntry(domain, result.policy_id, result.policy, now, now)
    if result.outcome is Outcome.NOT_CHANGED and previous is not None:
        # Same TXT id: the policy is confirmed but not re-fetched, so its
        # expiry (from fetched_at) does not move (RFC 8461 §3.2).
        return CacheEntry(domain, previous.policy_id, previous.policy, previous.fetched_at, now)
    return None


def _log_failure(
    failure: FetchFailure, previous: CacheEntry | None, now: float, proactive: bool
) -> None:
    retry = time.strftime("%H:%M:%S", time.localtime(failure.retry_at))
    if previous is not None and now < previous.expires_at:
        kept = f"; keeping the cached {previous.policy.mode} policy"
        if previous.policy.mode == "none" and not proactive:
            level = logging.INFO
        else:
            level = logging.WARNING
    else:
        kept = "; answering as if the domain had no policy"
        level = logging.WARNING
    _log.log(
        level,
        "policy fetch for %s failed at %s (%s): %s%s; next attempt after %s (in %d s, "
        "failure %d in a row)",
        failure.domain,
        failure.stage,
        failure.result_type,
        failure.reason,
        kept,
        retry,
        round(failure.retry_at - now),
        failure.attempts,
        extra={
            "event": "fetch-failed",
            "domain": failure.domain,
            "result_type": failure.result_type,
            "reason": failure.reason,
        },
    )
