"""Turn one socketmap request into one reply (DESIGN.md §3–§4).

The hot path — a cache hit on a backend with synchronous reads — runs without
creating a task or touching the network: split the request, find the zone,
normalise the key (memoised), read the entry, return the memoised reply bytes.
Everything else returns a coroutine for the server to schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mtasts_fast.cache import Cache, CacheEntry
from mtasts_fast.cache.internal import InternalCache
from mtasts_fast.config import Config, ZoneConfig
from mtasts_fast.fetcher import FetchResult, Outcome, PolicyFetcher
from mtasts_fast.keys import normalise_key
from mtasts_fast.netstring import encode
from mtasts_fast.reply import NOTFOUND, render_policy

__all__ = ["Responder"]

_log = logging.getLogger(__name__)

NOTFOUND_REPLY = encode(NOTFOUND)
# A daemon-side fault: Postfix defers the message (4.7.5) and retries later,
# which is safer than NOTFOUND when a cached enforce policy might exist.
TEMP_INTERNAL = encode(b"TEMP internal error in the MTA-STS daemon")
TEMP_CACHE = encode(b"TEMP MTA-STS policy cache unavailable")

# Distinct raw keys remembered by the normalisation memo. Postfix sends the same
# few thousand next-hops over and over; the bound only stops a hostile client
# from growing it without end.
_KEY_MEMO_LIMIT = 65_536

_MISSING = object()

# Entries kept in process while the cache backend (Redis, PostgreSQL, ...) is
# unreachable, so an outage does not turn every lookup into a fetch.
_FALLBACK_SIZE = 10_000

# What a shared fetch hands its waiters: the entry to serve (or None) and
# whether the fetch failed (as opposed to finding no policy).
_Refreshed = tuple[CacheEntry | None, bool]


class Responder:
    """Answers socketmap payloads from the cache, fetching policies when needed."""

    def __init__(
        self,
        config: Config,
        cache: Cache,
        fetcher: PolicyFetcher,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._fetcher = fetcher
        self._clock = clock
        self._grace = config.cache_grace
        self._default_zone = config.default_zone
        self._zones: dict[bytes, ZoneConfig] = {
            name.encode(): zone for name, zone in config.zones.items()
        }
        self._sync_reads = cache.synchronous_reads
        self._keys: dict[bytes, str | None] = {}
        # One fetch per (domain, known id) at a time, shared by every lookup
        # that needs it (DESIGN.md §2 "Coalescing").
        self._inflight: dict[tuple[str, str | None], asyncio.Future[_Refreshed]] = {}
        # Last background revalidation attempt per domain, so a domain whose DNS
        # is failing is retried at most once per cache_grace, not per lookup.
        self._attempted: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fallback = InternalCache(_FALLBACK_SIZE)
        self._backend_down = False
        self.backend_errors = 0  # for the metrics to come

    # -- the hot path -----------------------------------------------------------

    def answer(self, payload: bytes) -> bytes | Coroutine[Any, Any, bytes]:
        """Return the framed reply, or a coroutine producing it."""
        map_name, _, raw_key = payload.partition(b" ")
        zone = self._zones.get(map_name, self._default_zone)
        domain = self._keys.get(raw_key, _MISSING)
        if domain is _MISSING:
            domain = self._normalise(raw_key)
        if domain is None:
            return NOTFOUND_REPLY
        assert isinstance(domain, str)
        if self._sync_reads:
            try:
                entry = self._cache.get_nowait(domain)
            except Exception:
                _log.exception("cache read failed for %s", domain)
                return self._answer_slow(domain, zone)
            if entry is not None:
                now = self._clock()
                if now < entry.expires_at:
                    if now - entry.checked_at > self._grace:
                        self._revalidate_soon(entry, zone, now)
                    return self._framed(entry, zone)
        return self._answer_slow(domain, zone)

    def _normalise(self, raw_key: bytes) -> str | None:
        if len(self._keys) >= _KEY_MEMO_LIMIT:
            self._keys.clear()
        domain = normalise_key(raw_key)
        self._keys[raw_key] = domain
        return domain

    @staticmethod
    def _framed(entry: CacheEntry, zone: ZoneConfig) -> bytes:
        reply = entry.rendered.get(zone)
        if reply is None:
            reply = encode(render_policy(entry.domain, entry.policy, zone))
            entry.rendered[zone] = reply
        return reply

    # -- misses, expired entries and asynchronous backends ---------------------------

    async def _answer_slow(self, domain: str, zone: ZoneConfig) -> bytes:
        try:
            return await self._lookup(domain, zone)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("internal error while answering for %s", domain)
            return TEMP_INTERNAL

    async def _lookup(self, domain: str, zone: ZoneConfig) -> bytes:
        cache_down = False
        try:
            entry = await self._cache.get(domain)
        except Exception as exc:
            self._backend_failed("read", exc)
            entry, cache_down = self._fallback.get_nowait(domain), True
        else:
            self._backend_ok()
        now = self._clock()
        if entry is not None and now < entry.expires_at:
            if now - entry.checked_at > self._grace:
                self._revalidate_soon(entry, zone, now)
            return self._framed(entry, zone)
        # No usable entry: this lookup has to wait for the network. An expired
        # entry's id is not passed on, because RFC 8461 §3.2 counts max_age
        # from the last HTTPS fetch: the body must be fetched again.
        fresh, failed = await self._refresh(domain, None, zone.timeout)
        if fresh is not None:
            return self._framed(fresh, zone)
        if cache_down and failed:
            # We could not see whether an enforce policy is cached, and the
            # fetch failed too: NOTFOUND might downgrade, so defer instead. (A
            # domain that publishes no policy is still answered NOTFOUND.)
            return TEMP_CACHE
        # RFC 8461 §3.3: no valid policy and nothing cached → deliver as if the
        # domain had no MTA-STS policy.
        return NOTFOUND_REPLY

    def _revalidate_soon(self, entry: CacheEntry, zone: ZoneConfig, now: float) -> None:
        domain = entry.domain
        if (domain, entry.policy_id) in self._inflight:
            return
        last = self._attempted.get(domain)
        if last is not None and now - last <= self._grace:
            return
        if len(self._attempted) >= _KEY_MEMO_LIMIT:
            self._attempted.clear()
        self._attempted[domain] = now
        self._spawn(self._refresh(domain, entry.policy_id, zone.timeout, previous=entry))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refresh(
        self,
        domain: str,
        known_id: str | None,
        timeout: float,
        previous: CacheEntry | None = None,
    ) -> asyncio.Future[_Refreshed]:
        """Fetch and store ``domain``'s policy once, however many callers wait."""
        key = (domain, known_id)
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(
                self._fetch_and_store(domain, known_id, timeout, previous)
            )
            self._inflight[key] = future
            future.add_done_callback(lambda _f: self._inflight.pop(key, None))
        # A caller that goes away (client disconnect, shutdown) must not cancel
        # the fetch the other callers are waiting for.
        return asyncio.shield(future)

    async def _fetch_and_store(
        self,
        domain: str,
        known_id: str | None,
        timeout: float,
        previous: CacheEntry | None,
    ) -> _Refreshed:
        """Fetch, store what is valid, and return the entry to serve (or None)."""
        try:
            result = await self._fetcher.fetch(domain, timeout, known_id)
        except Exception:
            _log.exception("policy fetch for %s crashed", domain)
            return previous, True
        now = self._clock()
        entry = self._entry_from(result, domain, now, previous)
        if entry is None:
            self._log_failure(domain, result, previous)
            failed = result.outcome is Outcome.FAILED
            # RFC 8461 §3.3: a failed refresh keeps an unexpired policy in force.
            if previous is not None and now < previous.expires_at:
                return previous, failed
            return None, failed
        try:
            await self._cache.put(entry)
        except Exception as exc:
            self._backend_failed("write", exc)
            await self._fallback.put(entry)
        else:
            self._backend_ok()
        return entry, False

    def _backend_failed(self, what: str, exc: Exception) -> None:
        self.backend_errors += 1
        if not self._backend_down:
            self._backend_down = True
            _log.warning(
                "cache backend %s failed (%s); answering from fetches and an in-process "
                "fallback cache until it is back",
                what,
                exc or type(exc).__name__,
            )

    def _backend_ok(self) -> None:
        if self._backend_down:
            self._backend_down = False
            _log.warning("cache backend is back after %d failed calls", self.backend_errors)

    @staticmethod
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

    @staticmethod
    def _log_failure(domain: str, result: FetchResult, previous: CacheEntry | None) -> None:
        if result.outcome is Outcome.FAILED:
            _log.warning(
                "policy fetch for %s failed at %s (%s): %s%s",
                domain,
                result.stage,
                result.result_type,
                result.reason,
                "; keeping the cached policy" if previous is not None else "",
            )
        else:
            _log.debug("no MTA-STS policy for %s: %s", domain, result.reason)

    async def close(self) -> None:
        """Cancel background revalidations (at shutdown)."""
        for task in list(self._tasks) + list(self._inflight.values()):
            task.cancel()
        for task in list(self._tasks) + list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
