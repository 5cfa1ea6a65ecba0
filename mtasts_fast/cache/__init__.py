"""Policy cache backends behind one small interface (DESIGN.md §5)."""

from __future__ import annotations

from mtasts_fast.cache.base import Cache, CacheEntry, CacheUnavailable
from mtasts_fast.config import CacheConfig
from mtasts_fast.errors import ConfigError

__all__ = ["Cache", "CacheEntry", "CacheUnavailable", "create_cache"]


def create_cache(config: CacheConfig, filename: str) -> Cache:
    """Build the backend named by ``cache.type``; ConfigError if it is unavailable."""
    if config.type == "internal":
        from mtasts_fast.cache.internal import InternalCache

        return InternalCache(int(config.options["cache_size"]))
    raise ConfigError(
        filename,
        "cache.type",
        f"cache type {config.type!r} is not available in this release yet; "
        "use 'internal' (the shared persistent backends are being added)",
    )
