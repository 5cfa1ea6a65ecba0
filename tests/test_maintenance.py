"""Long-expired policies are pruned from the cache."""

from __future__ import annotations

import asyncio
import contextlib
import time

from mtasts_fast.cache.internal import InternalCache
from mtasts_fast.maintenance import PRUNE_RETENTION, prune_forever, prune_once
from tests.cache_contract import make_entry


async def test_prune_once_keeps_recent_and_unexpired() -> None:
    cache = InternalCache(100)
    now = time.time()
    await cache.put(make_entry("gone.example", max_age=60, fetched_at=now - PRUNE_RETENTION - 120))
    await cache.put(make_entry("grace.example", max_age=60, fetched_at=now - 600))
    await cache.put(make_entry("live.example", max_age=86400, fetched_at=now))
    assert await prune_once(cache, now) == 1
    assert cache.get_nowait("gone.example") is None
    assert cache.get_nowait("grace.example") is not None
    assert cache.get_nowait("live.example") is not None


async def test_prune_forever_runs_at_start_and_repeats() -> None:
    cache = InternalCache(100)
    old = time.time() - PRUNE_RETENTION - 1000
    await cache.put(make_entry("a.example", max_age=1, fetched_at=old))
    task = asyncio.ensure_future(prune_forever(cache, interval=0.05))
    await asyncio.sleep(0.02)
    assert len(cache) == 0
    await cache.put(make_entry("b.example", max_age=1, fetched_at=old))
    await asyncio.sleep(0.15)
    assert len(cache) == 0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_prune_failure_is_logged_not_raised(caplog: object) -> None:
    class Broken(InternalCache):
        async def prune(self, older_than: float) -> int:
            raise OSError("backend down")

    assert await prune_once(Broken(10)) == 0
