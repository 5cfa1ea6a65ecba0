"""In-process LRU cache (``cache.type: internal``), lost on restart.

Policy entries, failure records and DANE states are bounded separately, each
by ``cache_size``: a flood of distinct broken or DANE-signed domains must
not push out working policies, nor grow a worker without end.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import ClassVar

from mtasts_fast.cache.base import (
    FAILURE_RETENTION,
    SCAN_BATCH,
    Cache,
    CacheEntry,
    CacheStats,
    FetchFailure,
)
from mtasts_fast.dane.state import DaneState

__all__ = ["InternalCache"]


class InternalCache(Cache):
    """At most ``size`` entries; the least recently used one goes first."""

    synchronous_reads: ClassVar[bool] = True

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("cache size must be at least 1")
        self._size = size
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._proactive_ts = 0.0
        # Failure records are bounded like the entries: a flood of distinct
        # broken domains must not grow a worker without end.
        self._failures: OrderedDict[str, FetchFailure] = OrderedDict()
        # The states themselves, not copies: a hit returns the object put,
        # with the replies the responder rendered on it.
        self._dane: OrderedDict[str, DaneState] = OrderedDict()
        self._leases: dict[str, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get_nowait(self, domain: str) -> CacheEntry | None:
        entry = self._entries.get(domain)
        if entry is not None:
            self._entries.move_to_end(domain)
        return entry

    async def get(self, domain: str) -> CacheEntry | None:
        return self.get_nowait(domain)

    async def put(self, entry: CacheEntry) -> None:
        old = self._entries.get(entry.domain)
        if old is not None and old.checked_at > entry.checked_at:
            return
        self._entries[entry.domain] = entry
        self._entries.move_to_end(entry.domain)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    async def delete(self, domain: str) -> bool:
        return self._entries.pop(domain, None) is not None

    async def scan(self, batch_size: int = SCAN_BATCH) -> AsyncIterator[list[CacheEntry]]:
        # A snapshot, least recently used first; scanning does not count as use.
        snapshot = list(self._entries.values())
        for start in range(0, len(snapshot), batch_size):
            yield snapshot[start : start + batch_size]

    async def purge(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        # A purged domain is fetched and evaluated at its next lookup.
        self._failures.clear()
        self._dane.clear()
        return count

    async def prune(self, older_than: float) -> int:
        expired = [d for d, e in self._entries.items() if e.expires_at < older_than]
        for domain in expired:
            del self._entries[domain]
        stale = [
            d for d, f in self._failures.items() if f.retry_at + FAILURE_RETENTION < older_than
        ]
        for domain in stale:
            del self._failures[domain]
        gone = [d for d, state in self._dane.items() if state.expires_at < older_than]
        for domain in gone:
            del self._dane[domain]
        return len(expired)

    async def stats(self) -> CacheStats:
        checked = [entry.checked_at for entry in self._entries.values()]
        return CacheStats(
            entries=len(self._entries),
            failures=len(self._failures),
            oldest_checked=min(checked, default=None),
            newest_checked=max(checked, default=None),
            size_bytes=None,
        )

    async def get_proactive_ts(self) -> float:
        return self._proactive_ts

    async def set_proactive_ts(self, ts: float) -> None:
        self._proactive_ts = float(ts)

    async def get_failure(self, domain: str) -> FetchFailure | None:
        return self._failures.get(domain)

    async def put_failure(self, failure: FetchFailure) -> None:
        self._failures[failure.domain] = failure
        self._failures.move_to_end(failure.domain)
        while len(self._failures) > self._size:
            self._failures.popitem(last=False)

    async def delete_failure(self, domain: str) -> bool:
        return self._failures.pop(domain, None) is not None

    def get_dane_nowait(self, domain: str) -> DaneState | None:
        state = self._dane.get(domain)
        if state is not None:
            self._dane.move_to_end(domain)
        return state

    async def get_dane(self, domain: str) -> DaneState | None:
        return self.get_dane_nowait(domain)

    async def put_dane(self, state: DaneState) -> None:
        old = self._dane.get(state.domain)
        if old is not None and old.evaluated_at > state.evaluated_at:
            return
        self._dane[state.domain] = state
        self._dane.move_to_end(state.domain)
        while len(self._dane) > self._size:
            self._dane.popitem(last=False)

    async def delete_dane(self, domain: str) -> bool:
        return self._dane.pop(domain, None) is not None

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        # Per process: nothing else shares this cache.
        now = time.time()
        held = self._leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[name] = (owner, now + ttl)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        held = self._leases.get(name)
        if held is not None and held[0] == owner:
            del self._leases[name]
