"""Policy cache backends behind one small interface (DESIGN.md §5)."""

from __future__ import annotations

import importlib
from typing import Any

from mtasts_fast.cache.base import SCAN_BATCH, Cache, CacheEntry, CacheUnavailable
from mtasts_fast.config import CacheConfig
from mtasts_fast.errors import ConfigError

__all__ = ["SCAN_BATCH", "Cache", "CacheEntry", "CacheUnavailable", "create_cache"]

# cache.type → (module, class, pip extra that brings its client library)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "internal": ("mtasts_fast.cache.internal", "InternalCache", None),
    "lmdb": ("mtasts_fast.cache.lmdb", "LmdbCache", None),
    "sqlite": ("mtasts_fast.cache.sqlite", "SqliteCache", "sqlite"),
    "redis": ("mtasts_fast.cache.redis", "RedisCache", "redis"),
    "redis_sentinel": ("mtasts_fast.cache.redis", "RedisSentinelCache", "redis"),
    "postgres": ("mtasts_fast.cache.postgres", "PostgresCache", "postgres"),
}


def create_cache(config: CacheConfig, filename: str) -> Cache:
    """Build the backend named by ``cache.type`` (not yet set up).

    A backend whose client library is not installed is a configuration error
    that names the package extra to install.
    """
    module_name, class_name, extra = _BACKENDS[config.type]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("mtasts_fast"):
            raise
        hint = f"pip install 'mtasts-fast[{extra}]'" if extra else "reinstall mtasts-fast"
        raise ConfigError(
            filename,
            "cache.type",
            f"cache type {config.type!r} needs the Python package {exc.name!r} ({hint})",
        ) from None
    backend: Any = getattr(module, class_name)
    if config.type == "internal":
        cache = backend(int(config.options["cache_size"]))
    elif config.type in ("postgres", "redis", "redis_sentinel"):
        # These check their pass-through client options and name the file.
        cache = backend(config.options, filename=filename)
    else:
        cache = backend(config.options)
    assert isinstance(cache, Cache)
    return cache
