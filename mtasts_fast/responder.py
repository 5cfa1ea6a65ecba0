"""Turn one socketmap request into one reply (DESIGN.md §3–§4, §7, §8).

The hot path — a cache hit on a backend with synchronous reads — runs without
creating a task or touching the network: split the request, find the zone,
normalise the key (memoised), read the entry, return the memoised reply bytes.
Everything else returns a coroutine for the server to schedule.

Every lookup is counted once, by zone, outcome and path (metrics/catalogue.py),
in the worker's shared region: on the hot path one compiled increment of a
cell the zone knows in advance, about 20 ns.

A lookup's steps, in order: the key (normalised, memoised); a local override
(overrides.py), found with the key and memoised with it, so a key without
one pays a type check only — the operator's word wins over DANE and MTA-STS
alike; then the policy from the cache or a fetch, and its DANE state.

DANE comes first (RFC 8461 §2): in a zone with ``dane: precedence`` an answer
that would be an MTA-STS ``OK secure ...`` is replaced by the domain's DANE
answer (``OK dane-only``, ``OK dane`` or ``TEMP``) when DANE applies; with
``dane: all`` every answer is. On the hot path that is one more memoised
cache read (``get_dane_nowait``) and the reply memoised on the DANE state;
a state past its expiry is still answered while it is re-evaluated in the
background, and only a domain with no usable state waits for DNS.

The compiled request path (fastpath.py) answers most requests before they
get here: each time this hot path answers from a memoised entry (and DANE
state), from a local override or for a key that can have no policy, it
records the reply with the conditions under which it would give it again
(``_learn``), and the server's connections replay it while they hold.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mtasts_fast import defaults
from mtasts_fast.cache import Cache, CacheEntry
from mtasts_fast.config import Config
from mtasts_fast.config.zones import socketmap_zones
from mtasts_fast.dane.probe import DnssecProbe
from mtasts_fast.dane.refresher import DaneRefresher
from mtasts_fast.dane.reply import RENDER_KEY, dane_reply
from mtasts_fast.dane.resolver import DaneResolver
from mtasts_fast.dane.state import TEMP, DaneState
from mtasts_fast.fastpath import FastPath
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.keys import normalise_key
from mtasts_fast.memo import make_room
from mtasts_fast.metrics.catalogue import DEFAULT_ZONE_LABEL
from mtasts_fast.metrics.worker import WorkerMetrics
from mtasts_fast.netstring import encode
from mtasts_fast.overrides import ENFORCE_TESTING, Applied, Overrides
from mtasts_fast.refresh import PolicyRefresher
from mtasts_fast.reply import NOTFOUND, render_policy
from mtasts_fast.responder_zone import ALL, PRECEDENCE, STS_ONLY, ZoneView, outcome

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
# The hot path reads a DANE state's memoised reply with the literal key.
assert RENDER_KEY == 0


class Responder:
    """Answers socketmap payloads from the cache, fetching policies when needed."""

    def __init__(
        self,
        config: Config,
        cache: Cache,
        fetcher: PolicyFetcher,
        *,
        clock: Callable[[], float] = time.time,
        resolver: DaneResolver | None = None,
        probe: DnssecProbe | None = None,
        overrides: Overrides | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """``resolver``: the DNSSEC-aware resolver for the DANE evaluation; without
        it every zone answers MTA-STS only. ``probe``: turns DANE detection off
        while the resolver does not validate. ``overrides``: the operator's local
        policies (policy_overrides). ``metrics``: where lookups (and, through the
        refreshers, fetches and DANE decisions) are counted."""
        self._cache = cache
        self._clock = clock
        self._grace = config.cache_grace
        #: Where lookups (and, through the refresher, fetches) are counted.
        self.metrics = metrics = metrics if metrics is not None else WorkerMetrics.private(config)
        self._count = metrics.count
        self._default_zone = ZoneView(config.default_zone, metrics.lookup_cells(DEFAULT_ZONE_LABEL))
        # The configured zones and postfix-tlspol's QUERY / QUERYwithTLSRPT.
        self._zones: dict[bytes, ZoneView] = {
            name.encode(): ZoneView(zone, metrics.lookup_cells(name))
            for name, zone in socketmap_zones(config.default_zone, config.zones).items()
        }
        self._sync_reads = cache.synchronous_reads
        self._overrides = overrides if overrides else None
        # raw key -> its domain, None (NOTFOUND at once), or the override
        # that applies to it.
        self._keys: dict[bytes, str | Applied | None] = {}
        #: Lookups answered (or, for enforce_testing, rendered) by an
        #: override, by kind: a plain counter for the metrics to export.
        self.override_counts: collections.Counter[str] = collections.Counter()
        #: The replies the server's connections may serve without calling
        #: ``answer`` (fastpath.py), as this hot path records them.
        self.fast = FastPath(
            metrics.region.cells, self.override_counts, grace=self._grace, clock=clock
        )
        # A memoised entry dropped by the cache would be read anew, and
        # counted on the "cache" path: the recorded replies must go.
        self._forget = self.fast.clear
        cache.watch_memo(self._forget)
        # The id of the cache's last commit (None: no stamps, nothing of the
        # cache is recorded); bound on first use, the cache may open later.
        self._stamp: Callable[[], int | None] = self._bind_stamps
        # Records an answer from the cache if no commit came during its reads
        # (fastpath.FastPathPy.record): the cache's memo then holds the entry
        # and state under that id, and while it stays unchanged this hot path
        # would find them again and answer alike, within the recorded times.
        self._learn = self.fast.record
        #: Coalesced, rate-limited fetches with negative caching and backoff.
        self.refresher = PolicyRefresher(config, cache, fetcher, clock=clock, metrics=metrics)
        # Last background revalidation attempt per domain, so a lookup storm
        # past cache_grace schedules one TXT check per grace, not per lookup.
        self._attempted: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Coalesced, stored DANE evaluations (None: MTA-STS answers only).
        self.dane: DaneRefresher | None = None
        if self._sync_reads:
            # Bound once: the hot path's second read is a plain call.
            self._get_dane_nowait = cache.get_dane_nowait
        if resolver is not None:
            self.dane = DaneRefresher(
                config,
                cache,
                resolver,
                self.refresher,
                probe=probe,
                clock=clock,
                on_decision=metrics.dane_decision,
            )
            self._set_dane_active(probe is None or probe.active)
            if probe is not None:
                probe.subscribe(self._set_dane_active)

    def _set_dane_active(self, active: bool) -> None:
        """Switch DANE answers on or off in every zone (the probe calls it)."""
        for zone in (self._default_zone, *self._zones.values()):
            for each in (zone, zone.strict):
                each.dane = each.dane_mode if active else STS_ONLY
        # Every recorded reply was decided with the old setting.
        self.fast.clear()

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
            # The same answer for as long as this responder lives.
            self.fast.put(payload, NOTFOUND_REPLY, zone.lookups.invalid)
            return NOTFOUND_REPLY
        kind = None
        if not isinstance(domain, str):
            # A local override: the operator's word, before anything else
            # (DANE and MTA-STS alike).
            assert isinstance(domain, Applied)
            kind = domain.override.kind
            self.override_counts[kind] += 1
            if kind != ENFORCE_TESTING:
                given = domain.reply(zone.config, zone.render_key)
                cell = zone.lookups.cell("override", outcome(given))
                self._count(cell)
                self.fast.put(payload, given, cell, kind=kind)
                return given
            zone = zone.strict
            domain = domain.domain
        if self._sync_reads:
            # Before the reads: a reply is recorded only if no commit came
            # between this and the end of the reads (_learn).
            stamp = self._stamp()
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
                    memo = reply is not None
                    if reply is None:
                        reply = self._framed(entry, zone)
                    dane = zone.dane
                    # _framed memoises NOTFOUND as the one NOTFOUND_REPLY object.
                    cell = zone.memo_no_policy if reply is NOTFOUND_REPLY else zone.memo_policy
                    if not dane or (reply is NOTFOUND_REPLY and dane == PRECEDENCE):
                        # The next lookup finds the reply memoised: its cell.
                        self._learn(payload, reply, cell, stamp, entry, None, kind)
                        if not memo:
                            return self._counted(zone, "cache", reply)
                        self._count(cell)
                        return reply
                    # RFC 8461 §2: the DANE answer, when DANE applies, comes first.
                    path = "memo" if memo else "cache"
                    try:
                        state = self._get_dane_nowait(domain)
                    except Exception:
                        return self._answer_dane_slow(domain, zone, reply, path)
                    if state is not None and now < state.expires_at:
                        final = state.rendered.get(0)  # dane.reply.RENDER_KEY, as a constant
                        if final is None:
                            final = dane_reply(state)
                        if final:
                            cell = zone.dane_temp if state.decision == TEMP else zone.dane_policy
                            self._count(cell)
                            self._learn(payload, final, cell, stamp, entry, state, kind)
                            return final
                        self._learn(payload, reply, cell, stamp, entry, state, kind)
                        return self._counted(zone, path, reply)
                    return self._dane_expired(domain, zone, reply, path, state, now)
            elif self.refresher.in_backoff(domain, now):
                # Negatively cached, or its last fetch failed: RFC 8461 §3.3,
                # deliver as if the domain had no policy until the retry time.
                if zone.dane == ALL:
                    return self._with_dane_nowait(domain, zone, NOTFOUND_REPLY, now)
                self._count(zone.lookups.backoff)
                return NOTFOUND_REPLY
        return self._answer_slow(domain, zone)

    def _bind_stamps(self) -> int | None:
        """The commit id, binding ``_stamp`` to the cache's counter once it has one."""
        stamps = self._cache.commit_stamps
        if stamps is None:
            return None
        self.fast.set_stamps(stamps)
        self._stamp = self.fast.stamp
        return self._stamp()

    def _counted(self, zone: ZoneView, path: str, reply: bytes) -> bytes:
        """Count a lookup answered by ``reply`` along ``path`` (off the hot path)."""
        self._count(zone.lookups.cell(path, outcome(reply)))
        return reply

    def _normalise(self, raw_key: bytes) -> str | Applied | None:
        make_room(self._keys, _KEY_MEMO_LIMIT)
        domain = normalise_key(raw_key)
        resolved: str | Applied | None = domain
        if domain is not None and self._overrides is not None:
            # Once per distinct key: the memo keeps the answer either way.
            resolved = self._overrides.apply(domain) or domain
        self._keys[raw_key] = resolved
        return resolved

    @staticmethod
    def _framed(entry: CacheEntry, zone: ZoneView) -> bytes:
        reply = entry.rendered.get(zone.render_key)
        if reply is None:
            reply = encode(render_policy(entry.domain, entry.policy, zone.config))
            if reply == NOTFOUND_REPLY:
                # The same object: the hot path tells NOTFOUND by identity.
                reply = NOTFOUND_REPLY
            entry.rendered[zone.render_key] = reply
        return reply

    # -- misses, expired entries and asynchronous backends ---------------------------

    async def _answer_slow(self, domain: str, zone: ZoneView) -> bytes:
        try:
            if zone.dane == ALL:
                # Both answers are needed: look them up side by side.
                (reply, path), state = await asyncio.gather(
                    self._lookup(domain, zone), self._dane_state(domain, zone)
                )
                return self._combined(zone, state, reply, path)
            reply, path = await self._lookup(domain, zone)
            if zone.dane and reply is not NOTFOUND_REPLY and reply is not TEMP_CACHE:
                return self._combined(zone, await self._dane_state(domain, zone), reply, path)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("internal error while answering for %s", domain)
            reply, path = TEMP_INTERNAL, "error"
        return self._counted(zone, path, reply)

    async def _lookup(self, domain: str, zone: ZoneView) -> tuple[bytes, str]:
        """The MTA-STS answer, and the path that found it (metrics/catalogue.py)."""
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

    # -- DANE (RFC 8461 §2, RFC 7672) ---------------------------------------------

    def _with_dane_nowait(
        self, domain: str, zone: ZoneView, reply: bytes, now: float, path: str = "backoff"
    ) -> bytes | Coroutine[Any, Any, bytes]:
        """The hot path's DANE step, for the answers it does not inline."""
        try:
            state = self._get_dane_nowait(domain)
        except Exception:
            return self._answer_dane_slow(domain, zone, reply, path)
        if state is not None and now < state.expires_at:
            return self._combined(zone, state, reply, path)
        return self._dane_expired(domain, zone, reply, path, state, now)

    def _dane_expired(
        self,
        domain: str,
        zone: ZoneView,
        reply: bytes,
        path: str,
        state: DaneState | None,
        now: float,
    ) -> bytes | Coroutine[Any, Any, bytes]:
        """The answer when the memoised state is missing or past its expiry."""
        dane = self.dane
        if dane is not None and state is not None and _servable(state, now):
            dane.revalidate(state, zone.timeout, now)
            return self._combined(zone, state, reply, path)
        return self._answer_dane_slow(domain, zone, reply, path, state)

    async def _answer_dane_slow(
        self,
        domain: str,
        zone: ZoneView,
        reply: bytes,
        path: str,
        state: DaneState | None = None,
    ) -> bytes:
        try:
            return self._combined(zone, await self._dane_state(domain, zone, state), reply, path)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("internal error while answering for %s", domain)
            return self._counted(zone, "error", TEMP_INTERNAL)

    def _combined(self, zone: ZoneView, state: DaneState | None, reply: bytes, path: str) -> bytes:
        """The DANE answer of ``state`` when DANE applies, else the MTA-STS ``reply``; counted."""
        final = dane_reply(state) if state is not None else None
        if final:
            return self._counted(zone, "dane", final)
        return self._counted(zone, path, reply)

    async def _dane_state(
        self, domain: str, zone: ZoneView, state: DaneState | None = None
    ) -> DaneState | None:
        """The state to answer from: stored, or evaluated now (None: MTA-STS only)."""
        dane = self.dane
        if dane is None:
            return None
        if state is None:
            state = await dane.stored(domain)
        now = self._clock()
        if state is not None and now < state.expires_at:
            return state
        if state is not None and _servable(state, now):
            dane.revalidate(state, zone.timeout, now)
            return state
        return await dane.refresh(domain, zone.timeout, state)

    def _revalidate_soon(self, entry: CacheEntry, zone: ZoneView, now: float) -> None:
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
        """Cancel background revalidations, fetches and evaluations (at shutdown)."""
        self._cache.unwatch_memo(self._forget)
        self.fast.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.dane is not None:
            await self.dane.close()
        await self.refresher.close()


def _servable(state: DaneState, now: float) -> bool:
    """An expired state that may still be answered while it is re-evaluated.

    Not a ``temp`` one: its retry time is all it was good for.
    """
    return state.decision != TEMP and now - state.expires_at <= defaults.DANE_STALE_LIMIT
