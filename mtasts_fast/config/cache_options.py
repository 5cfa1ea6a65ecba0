"""The ``cache`` section: the backend type and each backend's ``options``.

The old daemon gave only `internal` a default options block (any other type
without `options:` died with KeyError); here every type may omit it, and a
missing required key is reported by name. A new backend gets a builder here,
an entry in :data:`CACHE_BACKENDS` and its name in
:data:`~mtasts_fast.config.model.CACHE_TYPES`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from types import MappingProxyType
from typing import Any

from .. import defaults
from .model import CACHE_TYPES, CacheConfig
from .sections import Section, suggest
from .values import (
    Parse,
    describe,
    fail,
    integer,
    positive,
    sentinel_addresses,
    string,
    url,
    word,
)

# An LMDB map smaller than this fills up after a few hundred policies; a
# smaller value is a unit mistake (kilobytes for bytes), not a choice.
_LMDB_MIN_MAP_SIZE = 1 << 20
# mdb_env_set_map_size takes a size_t, and the map must fit the address space.
_LMDB_MAX_MAP_SIZE = (1 << 63) - 1


def _internal_options(section: Section) -> dict[str, Any]:
    return {"cache_size": section.get("cache_size", integer(1), defaults.INTERNAL_CACHE_SIZE)}


def _lmdb_options(section: Section) -> dict[str, Any]:
    return {
        "path": section.get("path", string, defaults.LMDB_PATH),
        "map_size": section.get(
            "map_size", integer(_LMDB_MIN_MAP_SIZE, _LMDB_MAX_MAP_SIZE), defaults.LMDB_MAP_SIZE
        ),
        "max_entries": section.get("max_entries", integer(1), defaults.LMDB_MAX_ENTRIES),
    }


def _sqlite_options(section: Section) -> dict[str, Any]:
    return {
        "filename": section.required("filename", string, "required for cache type 'sqlite'"),
        "threads": section.get("threads", integer(1), defaults.SQLITE_THREADS),
        "timeout": section.get("timeout", positive, defaults.SQLITE_TIMEOUT),
    }


#: redis-py keyword arguments worth checking; every other key is passed
#: through untouched (redis-py reports its own unknown arguments).
REDIS_CHECKED: dict[str, Parse[Any]] = {
    "socket_timeout": positive,
    "socket_connect_timeout": positive,
    "max_connections": integer(1),
    "db": integer(0),
    "username": string,
    "password": string,
}


def _redis_common(section: Section, consumed: Collection[str]) -> dict[str, Any]:
    options = section.extras(consumed)
    for key, parse in REDIS_CHECKED.items():
        if key in options:
            options[key] = parse(options[key], section.key_path(key))
    # Same defaults as the old daemon; redis-py's own are "wait forever".
    options.setdefault("socket_timeout", defaults.REDIS_SOCKET_TIMEOUT)
    options.setdefault("socket_connect_timeout", defaults.REDIS_SOCKET_CONNECT_TIMEOUT)
    return options


def _redis_options(section: Section) -> dict[str, Any]:
    redis_url = section.required(
        "url", url(("redis", "rediss", "unix")), "required for cache type 'redis'"
    )
    return {"url": redis_url, **_redis_common(section, ("url",))}


def _redis_sentinel_options(section: Section) -> dict[str, Any]:
    why = "required for cache type 'redis_sentinel'"
    sentinels = section.required("sentinels", sentinel_addresses, why)
    master = section.required("sentinel_master_name", word, why)
    return {
        "sentinels": sentinels,
        "sentinel_master_name": master,
        **_redis_common(section, ("sentinels", "sentinel_master_name")),
    }


def _postgres_options(section: Section) -> dict[str, Any]:
    # postfix-mta-sts-resolver passes every option but `timeout` to
    # asyncpg.create_pool, so a config may name host/database/user instead of
    # a dsn; without either, asyncpg uses its PG* environment defaults.
    dsn = section.optional("dsn", url(("postgres", "postgresql")))
    options = {
        **({"dsn": dsn} if dsn is not None else {}),
        "timeout": section.get("timeout", positive, defaults.POSTGRES_TIMEOUT),
        **section.extras(("dsn", "timeout")),
    }
    if "min_size" in options:
        options["min_size"] = integer(0)(options["min_size"], section.key_path("min_size"))
    if "max_size" in options:
        options["max_size"] = integer(1)(options["max_size"], section.key_path("max_size"))
        if options.get("min_size", 0) > options["max_size"]:
            fail(section.key_path("min_size"), "must not be larger than max_size")
    return options


CACHE_BACKENDS: dict[str, tuple[Collection[str] | None, Callable[[Section], dict[str, Any]]]] = {
    # type: (allowed option keys, or None for "any, passed through"; builder)
    "internal": (("cache_size",), _internal_options),
    "lmdb": (("path", "map_size", "max_entries"), _lmdb_options),
    "sqlite": (("filename", "threads", "timeout"), _sqlite_options),
    "redis": (None, _redis_options),
    "redis_sentinel": (None, _redis_sentinel_options),
    "postgres": (None, _postgres_options),
}
assert tuple(CACHE_BACKENDS) == CACHE_TYPES


def _cache_type(value: object, path: str) -> str:
    text = string(value, path)
    if text not in CACHE_BACKENDS:
        fail(path, f"unknown cache type {describe(text)} (valid: {', '.join(CACHE_TYPES)})")
    return text


#: Every option key some backend checks by name: one of them directly under
#: ``cache`` gets a hint that it belongs under ``cache.options``.
ALL_CACHE_OPTIONS = frozenset(
    key for known, _ in CACHE_BACKENDS.values() if known is not None for key in known
) | {"url", "dsn", "sentinels", "sentinel_master_name"}


def _cache_hint(key: str) -> str | None:
    if key in ALL_CACHE_OPTIONS:
        return f"backend settings go under cache.options: cache.options.{key}"
    return None


def cache_config(value: object, path: str) -> CacheConfig:
    section = Section(value, path, ("type", "options"), hint=_cache_hint)
    default_kind = defaults.CACHE_TYPE
    raw_options = section.items.get("options")
    if isinstance(raw_options, dict) and "cache_size" in raw_options:
        # postfix-mta-sts-resolver's default type was `internal`: its configs
        # may size that cache without naming the type.
        default_kind = "internal"
    kind = section.get("type", _cache_type, default_kind)
    known, build = CACHE_BACKENDS[kind]

    def hint(key: str) -> str:
        return suggest(key, known or ()) or (f"cache type {kind!r} takes {', '.join(known or ())}")

    options = Section(
        section.items.get("options"),
        section.key_path("options"),
        known or (),
        open_ended=known is None,
        hint=hint,
    )
    return CacheConfig(type=kind, options=MappingProxyType(build(options)))
