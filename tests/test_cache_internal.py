"""The ``internal`` backend: the shared contract plus its LRU bound."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mtasts_fast.cache.internal import InternalCache
from tests.cache_contract import CacheContract, collect, make_dane, make_entry


class TestInternalCache(CacheContract):
    @pytest.fixture
    async def cache(self) -> AsyncIterator[InternalCache]:
        cache = InternalCache(10_000)
        await cache.setup()
        yield cache
        await cache.close()


async def test_least_recently_used_goes_first() -> None:
    cache = InternalCache(2)
    await cache.put(make_entry("test1.example"))
    await cache.put(make_entry("test2.example"))
    assert cache.get_nowait("test1.example") is not None  # now most recently used
    await cache.put(make_entry("test3.example"))
    assert cache.get_nowait("test2.example") is None
    assert cache.get_nowait("test1.example") is not None
    assert cache.get_nowait("test3.example") is not None


async def test_scan_is_lru_first_and_does_not_touch() -> None:
    cache = InternalCache(10)
    for name in ("a.example", "b.example", "c.example"):
        await cache.put(make_entry(name))
    cache.get_nowait("a.example")
    batches = await collect(cache, 10)
    assert [e.domain for e in batches[0]] == ["b.example", "c.example", "a.example"]
    batches = await collect(cache, 10)
    assert [e.domain for e in batches[0]] == ["b.example", "c.example", "a.example"]


async def test_dane_states_are_bounded_by_the_cache_size_apart_from_entries() -> None:
    cache = InternalCache(2)
    await cache.put(make_entry("policy.example"))
    await cache.put_dane(make_dane("d1.example"))
    await cache.put_dane(make_dane("d2.example"))
    assert cache.get_dane_nowait("d1.example") is not None  # now most recently used
    await cache.put_dane(make_dane("d3.example"))
    assert cache.get_dane_nowait("d2.example") is None
    assert cache.get_dane_nowait("d1.example") is not None
    assert cache.get_dane_nowait("d3.example") is not None
    assert cache.get_nowait("policy.example") is not None


async def test_a_dane_hit_returns_the_object_stored() -> None:
    # The responder keeps rendered replies on the state it was given.
    cache = InternalCache(10)
    state = make_dane("example.com")
    await cache.put_dane(state)
    got = cache.get_dane_nowait("example.com")
    assert got is state
    assert await cache.get_dane("example.com") is state
