"""In-process LRU cache (``cache.type: internal``), lost on restart."""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

from mtasts_fast.cache.base import Cache, CacheEntry

__all__ = ["InternalCache"]


class InternalCache(Cache):
    """At most ``size`` entries; the least recently used one goes first."""

    synchronous_reads: ClassVar[bool] = True

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("cache size must be at least 1")
        self._size = size
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()

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
        self._entries[entry.domain] = entry
        self._entries.move_to_end(entry.domain)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    async def delete(self, domain: str) -> None:
        self._entries.pop(domain, None)
