"""The contract every cache backend must keep, as a test class to subclass.

A backend's test module subclasses ``CacheContract`` and provides a ``cache``
fixture (set up, yielded, closed). Persistent backends subclass
``PersistentCacheContract`` instead and implement ``reopen(cache)``, which
closes the cache and returns a new instance on the same storage, and
``open_peer(cache)``, which returns what another process (or host) sharing
that storage sees: a second instance, or a proxy to a real other process
where one process cannot open the storage twice (LMDB).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pytest

from mtasts_fast.cache.base import FAILURE_RETENTION, NO_POLICY, Cache, CacheEntry, FetchFailure
from mtasts_fast.dane.state import DANE, DANE_ONLY, NO_DANE, TEMP, DaneHost, DaneState
from mtasts_fast.policy import MAX_AGE_LIMIT, Policy


def make_entry(
    domain: str,
    *,
    pid: str = "20240101T000000",
    mode: str = "enforce",
    max_age: int = 86400,
    fetched_at: float | None = None,
    checked_at: float | None = None,
) -> CacheEntry:
    now = time.time()
    fetched = now if fetched_at is None else fetched_at
    checked = fetched if checked_at is None else checked_at
    mx = (f"mx1.{domain}", f"*.mail.{domain}")
    lines = (
        "version: STSv1",
        f"mode: {mode}",
        *(f"mx: {m}" for m in mx),
        f"max_age: {max_age}",
        "ext-note: caf\u00e9",  # policy lines may carry UTF-8 extension values
    )
    return CacheEntry(domain, pid, Policy(mode, max_age, mx, lines), fetched, checked)


async def collect(cache: Cache, batch_size: int) -> list[list[CacheEntry]]:
    return [batch async for batch in cache.scan(batch_size)]


def make_failure(
    domain: str,
    *,
    result_type: str = "sts-policy-fetch-error",
    stage: str = "https",
    reason: str = "HTTP status 503",
    failed_at: float | None = None,
    retry_at: float | None = None,
    attempts: int = 1,
) -> FetchFailure:
    failed = time.time() if failed_at is None else failed_at
    retry = failed + 300.0 if retry_at is None else retry_at
    return FetchFailure(domain, result_type, stage, reason, failed, retry, attempts)


def make_dane(
    domain: str,
    *,
    decision: str = DANE_ONLY,
    reason: str = "2 of 2 MX hosts have usable TLSA",
    hosts: tuple[DaneHost, ...] | None = None,
    evaluated_at: float | None = None,
    ttl: float = 3600.0,
    expires_at: float | None = None,
) -> DaneState:
    evaluated = time.time() if evaluated_at is None else evaluated_at
    expires = evaluated + ttl if expires_at is None else expires_at
    if hosts is None:
        hosts = (
            DaneHost(f"mx1.{domain}", "dane", "TLSA 3 1 1 usable"),
            DaneHost(f"mx2.{domain}", "dane", "TLSA 2 0 1 usable"),
        )
    return DaneState(domain, decision, reason, hosts, evaluated, expires)


# One host of each status, in a deliberate (non-sorted) order.
EVERY_HOST_STATUS = (
    DaneHost("mx9.example.com", "dane", "TLSA 3 1 1 usable"),
    DaneHost("mx1.example.com", "tls-required", "TLSA 0 0 1 only: PKIX usages"),
    DaneHost("mx5.example.com", "no-tlsa", "secure NODATA for _25._tcp.mx5.example.com"),
    DaneHost("mx3.example.com", "insecure", "AAAA answer without AD: caf\u00e9 \u2603"),
    DaneHost("mx2.example.com", "missing", "NXDOMAIN"),
)


def assert_same(got: object, want: CacheEntry | FetchFailure | DaneState) -> None:
    """``got`` holds every field of ``want`` (a memo of rendered replies is not data)."""
    if isinstance(want, FetchFailure):
        assert got == want
        return
    assert isinstance(got, type(want)), got
    assert got.same_as(want)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class RecordKind:
    """One kind of what a cache keeps: policy entries, failure records or DANE
    states, each kind apart from the others and indexed by one time (an
    entry's or a state's ``expires_at``, a failure record's ``retry_at``).
    A backend's tests of what holds alike for every kind are parametrised over
    these (``RECORD_KINDS``: the two kept beside the policy entries)."""

    make: Callable[[str], Any]
    """A record of the domain, its times near now."""
    make_at: Callable[[str, float], Any]
    """A record of the domain whose indexed time is the one given; of two, the
    one with the later time is also the later written (entries are ordered by
    ``checked_at``, DANE states by ``evaluated_at``)."""
    indexed_at: Callable[[Any], float]
    put: Callable[[Cache, Any], Awaitable[None]]
    get: Callable[[Cache, str], Awaitable[Any]]
    delete: Callable[[Cache, str], Awaitable[bool]]


POLICY_ENTRIES = RecordKind(
    make=make_entry,
    # The longest max_age (RFC 8461 §3.2): fetched in the past for any time near now.
    make_at=lambda domain, at: make_entry(
        domain, max_age=MAX_AGE_LIMIT, fetched_at=at - MAX_AGE_LIMIT
    ),
    indexed_at=lambda entry: entry.expires_at,
    put=lambda cache, entry: cache.put(entry),
    get=lambda cache, domain: cache.get(domain),
    delete=lambda cache, domain: cache.delete(domain),
)
FAILURE_RECORDS = RecordKind(
    make=make_failure,
    make_at=lambda domain, at: make_failure(domain, retry_at=at),
    indexed_at=lambda failure: failure.retry_at,
    put=lambda cache, failure: cache.put_failure(failure),
    get=lambda cache, domain: cache.get_failure(domain),
    delete=lambda cache, domain: cache.delete_failure(domain),
)
DANE_STATES = RecordKind(
    make=make_dane,
    make_at=lambda domain, at: make_dane(domain, evaluated_at=at - 60.0, expires_at=at),
    indexed_at=lambda state: state.expires_at,
    put=lambda cache, state: cache.put_dane(state),
    get=lambda cache, domain: cache.get_dane(domain),
    delete=lambda cache, domain: cache.delete_dane(domain),
)
RECORD_KINDS = [
    pytest.param(FAILURE_RECORDS, id="failure-record"),
    pytest.param(DANE_STATES, id="dane-state"),
]


class CachePeer(Protocol):
    """The part of a cache that another process uses to coordinate with us."""

    async def get_dane(self, domain: str) -> DaneState | None: ...
    async def put_dane(self, state: DaneState) -> None: ...
    async def delete_dane(self, domain: str) -> bool: ...
    async def get_failure(self, domain: str) -> FetchFailure | None: ...
    async def put_failure(self, failure: FetchFailure) -> None: ...
    async def delete_failure(self, domain: str) -> bool: ...
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool: ...
    async def release_lease(self, name: str, owner: str) -> None: ...
    async def close(self) -> None: ...


class CacheContract:
    async def test_missing_key_is_none(self, cache: Cache) -> None:
        assert await cache.get("nonesuch.example") is None

    async def test_round_trip(self, cache: Cache) -> None:
        entry = make_entry("example.com", fetched_at=1_700_000_000.25, checked_at=1_700_000_100.5)
        await cache.put(entry)
        got = await cache.get("example.com")
        assert got is not None
        assert got.same_as(entry)

    async def test_put_replaces(self, cache: Cache) -> None:
        await cache.put(make_entry("example.com", pid="one", fetched_at=1000.0))
        await cache.put(make_entry("example.com", pid="two", fetched_at=2000.0))
        got = await cache.get("example.com")
        assert got is not None
        assert got.policy_id == "two"

    async def test_older_write_does_not_replace_newer(self, cache: Cache) -> None:
        await cache.put(make_entry("example.com", pid="new", fetched_at=2000.0))
        await cache.put(make_entry("example.com", pid="old", fetched_at=1000.0))
        got = await cache.get("example.com")
        assert got is not None
        assert got.policy_id == "new"

    async def test_delete(self, cache: Cache) -> None:
        await cache.put(make_entry("example.com"))
        assert await cache.delete("example.com") is True
        assert await cache.get("example.com") is None
        assert await cache.delete("example.com") is False

    @pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
    async def test_scan_small(self, cache: Cache, batch_size: int) -> None:
        domains = {"a.example", "b.example", "c.example"}
        for domain in domains:
            await cache.put(make_entry(domain))
        batches = await collect(cache, batch_size)
        assert all(0 < len(batch) <= batch_size for batch in batches)
        seen = [entry.domain for batch in batches for entry in batch]
        assert sorted(seen) == sorted(domains)

    async def test_scan_empty(self, cache: Cache) -> None:
        assert await collect(cache, 10) == []

    async def test_scan_many(self, cache: Cache) -> None:
        domains = [f"d{i:05d}.example" for i in range(2500)]
        for domain in domains:
            await cache.put(make_entry(domain))
        batches = await collect(cache, 1000)
        assert [len(b) for b in batches] == [1000, 1000, 500]
        seen = [entry.domain for batch in batches for entry in batch]
        assert sorted(seen) == domains

    async def test_purge(self, cache: Cache) -> None:
        for i in range(5):
            await cache.put(make_entry(f"p{i}.example"))
        assert await cache.purge() == 5
        assert await collect(cache, 10) == []
        assert await cache.purge() == 0

    async def test_prune_removes_only_long_expired(self, cache: Cache) -> None:
        now = time.time()
        await cache.put(make_entry("old.example", max_age=10, fetched_at=now - 1000))
        await cache.put(make_entry("recent.example", max_age=10, fetched_at=now - 100))
        await cache.put(make_entry("fresh.example", max_age=86400, fetched_at=now))
        assert await cache.prune(now - 500) == 1
        assert await cache.get("old.example") is None
        assert await cache.get("recent.example") is not None
        assert await cache.get("fresh.example") is not None

    async def test_proactive_ts(self, cache: Cache) -> None:
        assert await cache.get_proactive_ts() == 0.0
        await cache.set_proactive_ts(123.0)
        await cache.set_proactive_ts(123.0)
        assert await cache.get_proactive_ts() == 123.0
        await cache.set_proactive_ts(321.5)
        assert await cache.get_proactive_ts() == 321.5

    async def test_stats_count_entries_failures_and_the_checked_range(self, cache: Cache) -> None:
        empty = await cache.stats()
        assert (empty.entries, empty.failures) == (0, 0)
        assert (empty.oldest_checked, empty.newest_checked) == (None, None)
        now = time.time()
        await cache.put(make_entry("old.example", fetched_at=now - 3000, checked_at=now - 2000))
        await cache.put(make_entry("mid.example", fetched_at=now - 100))
        await cache.put(make_entry("new.example", fetched_at=now - 50, checked_at=now - 10))
        # Rewritten with a later check: its old place in any index is stale.
        await cache.put(make_entry("mid.example", fetched_at=now - 100, checked_at=now - 5))
        await cache.put_failure(make_failure("broken.example"))
        await cache.put_failure(make_failure("none.example", result_type=NO_POLICY))
        stats = await cache.stats()
        assert (stats.entries, stats.failures) == (3, 2)
        assert stats.oldest_checked == now - 2000
        assert stats.newest_checked == now - 5
        if stats.size_bytes is not None:
            assert stats.size_bytes > 0
        await cache.delete("old.example")
        await cache.delete_failure("broken.example")
        stats = await cache.stats()
        assert (stats.entries, stats.failures) == (2, 1)
        assert stats.oldest_checked == now - 10

    async def test_sync_read_matches_async_read(self, cache: Cache) -> None:
        if not cache.synchronous_reads:
            with pytest.raises(NotImplementedError):
                cache.get_nowait("example.com")
            return
        assert cache.get_nowait("example.com") is None
        entry = make_entry("example.com")
        await cache.put(entry)
        got = cache.get_nowait("example.com")
        assert got is not None
        assert got.same_as(entry)

    # -- failure records (negative caching and backoff) -------------------------

    async def test_missing_failure_is_none(self, cache: Cache) -> None:
        assert await cache.get_failure("nonesuch.example") is None

    async def test_failure_round_trip_and_replace(self, cache: Cache) -> None:
        # Times near now: a backend may forget a record FAILURE_RETENTION
        # after its retry time (Redis, by key expiry).
        now = time.time()
        first = make_failure(
            "example.com",
            result_type="sts-webpki-invalid",
            stage="https",
            reason="certificate verify failed: caf\u00e9 \u2603",  # reasons may be UTF-8
            failed_at=now - 0.25,
            retry_at=now + 600.125,
            attempts=3,
        )
        other = make_failure("example.net", failed_at=now - 1.5)
        await cache.put_failure(first)
        await cache.put_failure(other)
        assert await cache.get_failure("example.com") == first  # every field
        second = make_failure(
            "example.com",
            result_type=NO_POLICY,
            stage="",
            reason="",
            failed_at=now,
            retry_at=now + 3600.0,
            attempts=1,
        )
        await cache.put_failure(second)
        got = await cache.get_failure("example.com")
        assert got == second
        assert got is not None
        assert got.no_policy
        assert await cache.get_failure("example.net") == other

    async def test_delete_failure(self, cache: Cache) -> None:
        await cache.put_failure(make_failure("example.com"))
        assert await cache.delete_failure("example.com") is True
        assert await cache.get_failure("example.com") is None
        assert await cache.delete_failure("example.com") is False
        assert await cache.delete_failure("nonesuch.example") is False

    async def test_failures_and_entries_are_kept_apart(self, cache: Cache) -> None:
        entry = make_entry("example.com")
        failure = make_failure("example.com")
        await cache.put(entry)
        await cache.put_failure(failure)
        await cache.put_failure(make_failure("failing.example"))
        assert await cache.get("failing.example") is None
        assert [e.domain for b in await collect(cache, 10) for e in b] == ["example.com"]
        assert await cache.delete("example.com") is True
        assert await cache.get_failure("example.com") == failure
        await cache.put(entry)
        assert await cache.delete_failure("example.com") is True
        got = await cache.get("example.com")
        assert got is not None
        assert got.same_as(entry)

    async def test_prune_removes_only_failures_past_retention(self, cache: Cache) -> None:
        now = time.time()
        older_than = now - 500
        # Kept FAILURE_RETENTION after retry_at: gone once that is before
        # older_than (or, with Redis, before now).
        stale = make_failure("stale.example", retry_at=older_than - FAILURE_RETENTION - 100)
        kept = make_failure("kept.example", retry_at=now - FAILURE_RETENTION + 100)
        pending = make_failure("pending.example", retry_at=now + 300)
        for failure in (stale, kept, pending):
            await cache.put_failure(failure)
        await cache.put(make_entry("old.example", max_age=10, fetched_at=now - 1000))
        await cache.put(make_entry("fresh.example", max_age=86400, fetched_at=now))
        # Only policy entries are counted.
        assert await cache.prune(older_than) == 1
        assert await cache.get_failure("stale.example") is None
        assert await cache.get_failure("kept.example") == kept
        assert await cache.get_failure("pending.example") == pending
        assert await cache.get("old.example") is None
        assert await cache.get("fresh.example") is not None

    async def test_purge_forgets_failures_but_not_leases(self, cache: Cache) -> None:
        await cache.put(make_entry("a.example"))
        await cache.put_failure(make_failure("a.example"))
        await cache.put_failure(make_failure("b.example"))
        assert await cache.acquire_lease("refresh", "worker-1", 60)
        assert await cache.purge() == 1  # policy entries only
        assert await cache.get_failure("a.example") is None
        assert await cache.get_failure("b.example") is None
        # A lease is not cached data: a refresh pass running during
        # `mta-sts-cache purge --all` keeps it.
        assert not await cache.acquire_lease("refresh", "worker-2", 60)

    # -- DANE states (DESIGN.md §7): beside the entries, apart from them --------

    async def test_missing_dane_is_none(self, cache: Cache) -> None:
        assert await cache.get_dane("nonesuch.example") is None

    @pytest.mark.parametrize(
        "state",
        [
            pytest.param(
                make_dane(
                    "example.com",
                    decision=DANE,
                    reason="1 of 5 MX hosts has usable TLSA: caf\u00e9",
                    hosts=EVERY_HOST_STATUS,
                    evaluated_at=time.time() - 0.25,
                    ttl=300.125,
                ),
                id="every-host-status",
            ),
            pytest.param(
                make_dane("example.com", decision=NO_DANE, reason="MX RRset insecure", hosts=()),
                id="no-hosts",
            ),
            pytest.param(
                make_dane(
                    "example.com",
                    decision=TEMP,
                    reason="TLSA _25._tcp.mx1.example.com: SERVFAIL from the validating resolver",
                    ttl=30.0,
                ),
                id="temp",
            ),
        ],
    )
    async def test_dane_round_trip(self, cache: Cache, state: DaneState) -> None:
        await cache.put_dane(state)
        got = await cache.get_dane("example.com")
        assert got is not None
        assert got.same_as(state)  # every field, the hosts in their order
        assert got.rendered == {}

    async def test_put_dane_replaces(self, cache: Cache) -> None:
        now = time.time()
        await cache.put_dane(make_dane("example.com", decision=DANE_ONLY, evaluated_at=now - 10))
        await cache.put_dane(make_dane("example.com", decision=TEMP, evaluated_at=now))
        got = await cache.get_dane("example.com")
        assert got is not None
        assert got.decision == TEMP
        assert got.evaluated_at == now

    async def test_older_dane_write_does_not_replace_newer(self, cache: Cache) -> None:
        # Two workers (or hosts) evaluated the domain; the one that finished
        # first writes last: what it saw is older and must not win.
        # Evaluations are ordered by when they ended, not by when they expire:
        # a TEMP state expires soon, yet it is newer than a day-long one.
        now = time.time()
        newer = make_dane("example.com", decision=TEMP, evaluated_at=now, ttl=30, hosts=())
        await cache.put_dane(newer)
        older = make_dane("example.com", decision=DANE_ONLY, evaluated_at=now - 5, ttl=86400)
        await cache.put_dane(older)
        got = await cache.get_dane("example.com")
        assert got is not None
        assert got.same_as(newer)

    async def test_delete_dane(self, cache: Cache) -> None:
        await cache.put_dane(make_dane("example.com"))
        assert await cache.delete_dane("example.com") is True
        assert await cache.get_dane("example.com") is None
        assert await cache.delete_dane("example.com") is False
        assert await cache.delete_dane("nonesuch.example") is False

    async def test_prune_removes_dane_states_expired_before_the_limit(self, cache: Cache) -> None:
        now = time.time()
        older_than = now - 500
        await cache.put_dane(make_dane("old.example", evaluated_at=now - 2000, ttl=1000))
        await cache.put_dane(make_dane("stale.example", evaluated_at=now - 2000, ttl=1600))
        await cache.put_dane(make_dane("fresh.example", evaluated_at=now))
        await cache.put(make_entry("old.example", max_age=10, fetched_at=now - 1000))
        # Only policy entries are counted.
        assert await cache.prune(older_than) == 1
        assert await cache.get_dane("old.example") is None
        # Expired, but less than the retention ago: still there to be served
        # while it is revalidated.
        assert await cache.get_dane("stale.example") is not None
        assert await cache.get_dane("fresh.example") is not None

    async def test_purge_forgets_dane_states(self, cache: Cache) -> None:
        await cache.put(make_entry("a.example"))
        await cache.put_dane(make_dane("a.example"))
        await cache.put_dane(make_dane("b.example"))
        assert await cache.purge() == 1  # policy entries only
        assert await cache.get_dane("a.example") is None
        assert await cache.get_dane("b.example") is None

    async def test_dane_states_entries_and_failures_are_kept_apart(self, cache: Cache) -> None:
        entry = make_entry("example.com")
        failure = make_failure("example.com")
        state = make_dane("example.com")
        await cache.put(entry)
        await cache.put_failure(failure)
        await cache.put_dane(state)
        await cache.put_dane(make_dane("dane-only.example"))
        assert await cache.get("dane-only.example") is None
        assert await cache.get_failure("dane-only.example") is None
        assert [e.domain for b in await collect(cache, 10) for e in b] == ["example.com"]
        assert await cache.delete("example.com") is True
        assert await cache.delete_failure("example.com") is True
        got = await cache.get_dane("example.com")
        assert got is not None
        assert got.same_as(state)
        await cache.put(entry)
        await cache.put_failure(failure)
        assert await cache.delete_dane("example.com") is True
        got_entry = await cache.get("example.com")
        assert got_entry is not None
        assert got_entry.same_as(entry)
        assert await cache.get_failure("example.com") == failure

    async def test_dane_sync_read_matches_async_read(self, cache: Cache) -> None:
        if not cache.synchronous_reads:
            with pytest.raises(NotImplementedError):
                cache.get_dane_nowait("example.com")
            return
        assert cache.get_dane_nowait("example.com") is None
        state = make_dane("example.com", hosts=EVERY_HOST_STATUS)
        await cache.put_dane(state)
        got = cache.get_dane_nowait("example.com")
        assert got is not None
        assert got.same_as(state)
        again = await cache.get_dane("example.com")
        assert again is not None
        assert again.same_as(state)
        assert await cache.delete_dane("example.com")
        assert cache.get_dane_nowait("example.com") is None

    # -- leases ------------------------------------------------------------------

    async def test_lease_has_one_holder(self, cache: Cache) -> None:
        assert await cache.acquire_lease("refresh", "a", 60)
        assert not await cache.acquire_lease("refresh", "b", 60)
        assert await cache.acquire_lease("refresh", "a", 60)  # renewed
        assert not await cache.acquire_lease("refresh", "b", 60)
        await cache.release_lease("refresh", "b")  # not b's: nothing happens
        assert not await cache.acquire_lease("refresh", "b", 60)
        assert await cache.acquire_lease("other", "b", 60)  # names are separate
        await cache.release_lease("refresh", "a")
        assert await cache.acquire_lease("refresh", "b", 60)
        assert not await cache.acquire_lease("refresh", "a", 60)
        await cache.release_lease("refresh", "a")  # no longer a's: nothing happens
        assert not await cache.acquire_lease("refresh", "a", 60)
        assert not await cache.acquire_lease("other", "a", 60)

    async def test_releasing_a_free_lease_does_nothing(self, cache: Cache) -> None:
        await cache.release_lease("refresh", "a")
        assert await cache.acquire_lease("refresh", "b", 60)

    async def test_lease_lapses_after_its_ttl(self, cache: Cache) -> None:
        ttl = 0.2
        started = time.monotonic()
        assert await cache.acquire_lease("refresh", "a", ttl)
        refused = not await cache.acquire_lease("refresh", "b", 60)
        if time.monotonic() - started < ttl:  # else the machine was too slow to tell
            assert refused
        await asyncio.sleep(ttl + 0.2)
        assert await cache.acquire_lease("refresh", "b", 60)
        assert not await cache.acquire_lease("refresh", "a", ttl)

    async def test_renewal_moves_the_expiry(self, cache: Cache) -> None:
        assert await cache.acquire_lease("refresh", "a", 0.3)
        assert await cache.acquire_lease("refresh", "a", 60)
        await asyncio.sleep(0.5)  # past the first expiry, long before the second
        assert not await cache.acquire_lease("refresh", "b", 60)


class PersistentCacheContract(CacheContract):
    """For backends whose entries outlive the process."""

    async def reopen(self, cache: Cache) -> Cache:
        """Close ``cache`` and return a new, set-up instance on the same storage."""
        raise NotImplementedError

    async def test_survives_reopen(self, cache: Cache) -> None:
        entry = make_entry("example.com", fetched_at=1_700_000_000.0)
        await cache.put(entry)
        await cache.set_proactive_ts(42.0)
        reopened = await self.reopen(cache)
        try:
            got = await reopened.get("example.com")
            assert got is not None
            assert got.same_as(entry)
            assert await reopened.get_proactive_ts() == 42.0
        finally:
            await reopened.close()

    async def open_peer(self, cache: Cache) -> CachePeer:
        """What another process sharing ``cache``'s storage sees (closed by the caller)."""
        raise NotImplementedError

    async def test_failures_survive_reopen(self, cache: Cache) -> None:
        failure = make_failure("example.com", failed_at=time.time() - 0.5, attempts=2)
        await cache.put_failure(failure)
        reopened = await self.reopen(cache)
        try:
            assert await reopened.get_failure("example.com") == failure
        finally:
            await reopened.close()

    async def test_peer_shares_failures(self, cache: Cache) -> None:
        peer = await self.open_peer(cache)
        try:
            mine = make_failure("mine.example", attempts=4)
            await cache.put_failure(mine)
            assert await peer.get_failure("mine.example") == mine
            theirs = make_failure("theirs.example", result_type=NO_POLICY, stage="", reason="")
            await peer.put_failure(theirs)
            assert await cache.get_failure("theirs.example") == theirs
            assert await cache.delete_failure("theirs.example") is True
            assert await peer.get_failure("theirs.example") is None
            assert await peer.delete_failure("theirs.example") is False
        finally:
            await peer.close()

    async def test_peer_respects_the_lease(self, cache: Cache) -> None:
        peer = await self.open_peer(cache)
        try:
            assert await cache.acquire_lease("refresh", "one", 60)
            assert not await peer.acquire_lease("refresh", "two", 60)
            await peer.release_lease("refresh", "two")  # not two's: nothing happens
            assert await cache.acquire_lease("refresh", "one", 60)
            await cache.release_lease("refresh", "one")
            assert await peer.acquire_lease("refresh", "two", 0.3)
            assert not await cache.acquire_lease("refresh", "one", 60)
            await asyncio.sleep(0.5)  # the peer's lease lapses (say, it was killed)
            assert await cache.acquire_lease("refresh", "one", 60)
            assert not await peer.acquire_lease("refresh", "two", 60)
        finally:
            await peer.close()

    async def test_concurrent_acquires_have_one_winner(self, cache: Cache) -> None:
        peer = await self.open_peer(cache)
        try:
            rounds = 10
            results = await asyncio.gather(
                *(cache.acquire_lease("race", "one", 60) for _ in range(rounds)),
                *(peer.acquire_lease("race", "two", 60) for _ in range(rounds)),
            )
            ones, twos = results[:rounds], results[rounds:]
            # Whoever got there first holds it; every call of the other fails.
            assert (all(ones) and not any(twos)) or (all(twos) and not any(ones)), results
        finally:
            await peer.close()

    async def test_dane_survives_reopen(self, cache: Cache) -> None:
        state = make_dane("example.com", hosts=EVERY_HOST_STATUS)
        await cache.put_dane(state)
        reopened = await self.reopen(cache)
        try:
            got = await reopened.get_dane("example.com")
            assert got is not None
            assert got.same_as(state)
        finally:
            await reopened.close()

    async def test_peer_shares_dane_states(self, cache: Cache) -> None:
        now = time.time()
        peer = await self.open_peer(cache)
        try:
            mine = make_dane("mine.example", evaluated_at=now)
            await cache.put_dane(mine)
            got = await peer.get_dane("mine.example")
            assert got is not None
            assert got.same_as(mine)
            theirs = make_dane("theirs.example", decision=TEMP, reason="bogus", hosts=())
            await peer.put_dane(theirs)
            got = await cache.get_dane("theirs.example")
            assert got is not None
            assert got.same_as(theirs)
            # The peer evaluated mine.example later: its state wins...
            newer = make_dane("mine.example", decision=NO_DANE, evaluated_at=now + 1, hosts=())
            await peer.put_dane(newer)
            # ...and a late write of an older evaluation from here does not.
            await cache.put_dane(make_dane("mine.example", evaluated_at=now + 0.5))
            got = await cache.get_dane("mine.example")
            assert got is not None
            assert got.same_as(newer)
            if cache.synchronous_reads:
                got = cache.get_dane_nowait("mine.example")
                assert got is not None
                assert got.same_as(newer)
            assert await cache.delete_dane("theirs.example") is True
            assert await peer.get_dane("theirs.example") is None
            assert await peer.delete_dane("theirs.example") is False
        finally:
            await peer.close()
