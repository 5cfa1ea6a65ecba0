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
import time
from typing import Protocol

import pytest

from mtasts_fast.cache.base import FAILURE_RETENTION, NO_POLICY, Cache, CacheEntry, FetchFailure
from mtasts_fast.policy import Policy


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


class CachePeer(Protocol):
    """The part of a cache that another process uses to coordinate with us."""

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
