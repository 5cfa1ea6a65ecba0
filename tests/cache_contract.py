"""The contract every cache backend must keep, as a test class to subclass.

A backend's test module subclasses ``CacheContract`` and provides a ``cache``
fixture (set up, yielded, closed). Persistent backends subclass
``PersistentCacheContract`` instead and implement ``reopen(cache)``, which
closes the cache and returns a new instance on the same storage.
"""

from __future__ import annotations

import time

import pytest

from mtasts_fast.cache.base import Cache, CacheEntry
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
