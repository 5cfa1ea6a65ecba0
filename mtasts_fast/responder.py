"""Turn one socketmap request into one reply (DESIGN.md §3–§4).

The hot path — a cache hit on a backend with synchronous reads — runs without
creating a task or touching the network: split the request, find the zone,
normalise the key (memoised), read the entry, return the memoised reply bytes.
Everything else returns a coroutine for the server to schedule.

Every lookup is counted once, by zone, outcome and path (metrics/catalogue.py),
in the worker's shared region: on the hot path one compiled increment of a
cell the zone knows in advance, about 20 ns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mtasts_fast.cache import Cache, CacheEntry
from mtasts_fast.config import Config, ZoneConfig
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.keys import normalise_key
from mtasts_fast.memo import make_room
from mtasts_fast.metrics.catalogue import DEFAULT_ZONE_LABEL
from mtasts_fast.metrics.worker import LookupCells, WorkerMetrics
from mtasts_fast.netstring import encode
from mtasts_fast.refresh import PolicyRefresher
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


def _outcome(reply: bytes) -> str:
    """What Postfix is told by a framed reply: "policy", "no-policy" or "temp"."""
    payload = reply[reply.find(b":") + 1 :]
    if payload.startswith(b"OK "):
        return "policy"
    if payload.startswith(b"TEMP"):
        return "temp"
    return "no-policy"


class _Zone:
    """A zone's settings as the hot path wants them."""

    __slots__ = ("config", "lookups", "memo_no_policy", "memo_policy", "render_key", "timeout")

    def __init__(self, config: ZoneConfig, lookups: LookupCells) -> None:
        self.config = config
        #: The zone's lookup counters (cell indexes in the worker's region);
        #: the hot path's two also as attributes of their own, one load nearer.
        self.lookups = lookups
        self.memo_policy = lookups.memo_policy
        self.memo_no_policy = lookups.memo_no_policy
        self.timeout = config.timeout
        # A reply depends on these three settings only (reply.render_policy),
        # so zones that agree on them share the rendered reply of an entry.
        # An int key hashes in nanoseconds; the frozen dataclass does not.
        self.render_key = (
            int(config.strict_testing) | int(config.require_sni) << 1 | int(config.tlsrpt) << 2
        )


class Responder:
    """Answers socketmap payloads from the cache, fetching policies when needed."""

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
        self._clock = clock
        self._grace = config.cache_grace
        #: Where lookups (and, through the refresher, fetches) are counted.
        self.metrics = metrics = metrics if metrics is not None else WorkerMetrics.private(config)
        self._count = metrics.count
        self._default_zone = _Zone(config.default_zone, metrics.lookup_cells(DEFAULT_ZONE_LABEL))
        self._zones: dict[bytes, _Zone] = {
            name.encode(): _Zone(zone, metrics.lookup_cells(name))
            for name, zone in config.zones.items()
        }
        self._sync_reads = cache.synchronous_reads
        self._keys: dict[bytes, str | None] = {}
        #: Coalesced, rate-limited fetches with negative caching and backoff.
        self.refresher = PolicyRefresher(config, cache, fetcher, clock=clock, metrics=metrics)
        # Last background revalidation attempt per domain, so a lookup storm
        # past cache_grace schedules one TXT check per grace, not per lookup.
        self._attempted: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the hot path -----------------------------------------------------------

    def answer(self, payload: bytes) -> bytes | Coroutine[Any, Any, bytes]:
        """Return the framed reply, or a coroutine producing it."""
        map_name, _, raw_key = payload.partition(b" ")
        zone = self._zones.get(map_name, self._default_zone)
        domain = self._keys.get(raw_key, _MISSING)
        if domain is _MISSING:
            domain = self._normalise(raw_key)
        if domain is None:
            self._count(zone.lookups.invalid)
            return NOTFOUND_REPLY
        assert isinstance(domain, str)
        if self._sync_reads:
            try:
                entry = self._cache.get_nowait(domain)
            except Exception:
                _log.exception("cache read failed for %s", domain)
                return self._answer_slow(domain, zone)
            now = self._clock()
            if entry is not None:
                if now < entry.expires_at:
                    if now - entry.checked_at > self._grace:
                        self._revalidate_soon(entry, zone, now)
                    reply = entry.rendered.get(zone.render_key)
                    if reply is not None:
                        # _framed memoises NOTFOUND as the one NOTFOUND_REPLY object.
                        if reply is NOTFOUND_REPLY:
                            self._count(zone.memo_no_policy)
                        else:
                            self._count(zone.memo_policy)
                        return reply
                    return self._counted(zone, "cache", self._framed(entry, zone))
            elif self.refresher.in_backoff(domain, now):
                # Negatively cached, or its last fetch failed: RFC 8461 §3.3,
                # deliver as if the domain had no policy until the retry time.
                self._count(zone.lookups.backoff)
                return NOTFOUND_REPLY
        return self._answer_slow(domain, zone)

    def _counted(self, zone: _Zone, path: str, reply: bytes) -> bytes:
        """Count a lookup answered by ``reply`` along ``path`` (off the hot path)."""
        self._count(zone.lookups.cell(path, _outcome(reply)))
        return reply

    def _normalise(self, raw_key: bytes) -> str | None:
        make_room(self._keys, _KEY_MEMO_LIMIT)
        domain = normalise_key(raw_key)
        self._keys[raw_key] = domain
        return domain

    @staticmethod
    def _framed(entry: CacheEntry, zone: _Zone) -> bytes:
        reply = entry.rendered.get(zone.render_key)
        if reply is None:
            text = render_policy(entry.domain, entry.policy, zone.config)
            # One object for every NOTFOUND, so the hot path tells the outcome
            # of a memoised reply by identity.
            reply = NOTFOUND_REPLY if text == NOTFOUND else encode(text)
            entry.rendered[zone.render_key] = reply
        return reply

    # -- misses, expired entries and asynchronous backends ---------------------------

    async def _answer_slow(self, domain: str, zone: _Zone) -> bytes:
        try:
            reply, path = await self._lookup(domain, zone)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("internal error while answering for %s", domain)
            reply, path = TEMP_INTERNAL, "error"
        return self._counted(zone, path, reply)

    async def _lookup(self, domain: str, zone: _Zone) -> tuple[bytes, str]:
        """The reply, and the path that found it (metrics/catalogue.py)."""
        refresher = self.refresher
        cache_down = False
        try:
            entry = await self._cache.get(domain)
        except Exception as exc:
            refresher.backend_failed("read", exc)
            entry, cache_down = refresher.fallback.get_nowait(domain), True
        else:
            refresher.backend_ok("read")
        now = self._clock()
        if entry is not None and now < entry.expires_at:
            if now - entry.checked_at > self._grace:
                self._revalidate_soon(entry, zone, now)
            return self._framed(entry, zone), "cache"
        if not cache_down and refresher.in_backoff(domain, now):
            return NOTFOUND_REPLY, "backoff"
        # No usable entry: this lookup has to wait for the network. An expired
        # entry's id is not passed on, because RFC 8461 §3.2 counts max_age
        # from the last HTTPS fetch: the body must be fetched again.
        fresh, failed, kind = await refresher.refresh(domain, None, zone.timeout)
        # Another worker or host recorded a failure meanwhile: no fetch was made.
        path = "backoff" if kind == "backoff" else "fetch"
        if fresh is not None:
            return self._framed(fresh, zone), path
        if cache_down and failed:
            # We could not see whether an enforce policy is cached, and the
            # fetch failed too: NOTFOUND might downgrade, so defer instead. (A
            # domain that publishes no policy is still answered NOTFOUND.)
            return TEMP_CACHE, path
        # RFC 8461 §3.3: no valid policy and nothing cached → deliver as if the
        # domain had no MTA-STS policy.
        return NOTFOUND_REPLY, path

    def _revalidate_soon(self, entry: CacheEntry, zone: _Zone, now: float) -> None:
        """Check ``entry``'s TXT id in the background; a new id fetches the body."""
        domain = entry.domain
        last = self._attempted.get(domain)
        if last is not None and now - last <= self._grace:
            return
        if self.refresher.in_backoff(domain, now):
            return
        make_room(self._attempted, _KEY_MEMO_LIMIT)
        self._attempted[domain] = now
        self._spawn(self.refresher.refresh(domain, entry.policy_id, zone.timeout, previous=entry))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def backend_errors(self) -> int:
        return self.refresher.backend_errors

    async def close(self) -> None:
        """Cancel background revalidations and fetches (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.refresher.close()
