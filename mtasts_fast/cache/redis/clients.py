"""How each Redis type connects: one server, or the master a Sentinel group names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio
import redis.asyncio.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mtasts_fast.cache.redis.store import RedisStore, aclose
from mtasts_fast.errors import ConfigError

__all__ = ["RedisCache", "RedisSentinelCache"]

# The client never decodes replies: values are msgpack bytes.
_FORCED = {"decode_responses": False}


def _check_options(filename: str, where: str, build: Callable[[], object]) -> None:
    """Reject options redis-py would only refuse on the first connection.

    redis-py keeps most keyword arguments until it opens a connection, so a
    misspelt option would otherwise fail every lookup instead of the start.
    ``build`` makes the client-side objects, which does no I/O and needs no
    event loop.
    """
    try:
        build()
    except (TypeError, ValueError) as exc:
        raise ConfigError(filename, where, f"rejected by redis-py: {exc}") from None


def _connection_of(pool: redis.asyncio.ConnectionPool) -> object:
    return pool.connection_class(**pool.connection_kwargs)


class RedisCache(RedisStore):
    """One Redis server (``cache.type: redis``).

    ``options`` as validated by the config: ``url`` (``redis://``,
    ``rediss://`` or ``unix://``) and every other key passed to redis-py's
    ``redis.asyncio.from_url`` as a keyword argument, as
    postfix-mta-sts-resolver does. ``decode_responses`` is always off.
    """

    def __init__(self, options: Mapping[str, Any], filename: str = "<config>") -> None:
        super().__init__()
        self._url: str = options["url"]
        self._kwargs = {k: v for k, v in options.items() if k != "url"} | _FORCED
        _check_options(
            filename,
            "cache.options",
            lambda: _connection_of(
                redis.asyncio.ConnectionPool.from_url(self._url, **self._kwargs)
            ),
        )

    def _connect(self) -> redis.asyncio.Redis:
        return redis.asyncio.from_url(self._url, **self._kwargs)


class RedisSentinelCache(RedisStore):
    """The master of a Redis Sentinel group (``cache.type: redis_sentinel``).

    ``options`` as validated by the config: ``sentinels`` (pairs of host and
    port), ``sentinel_master_name``, and every other key passed to redis-py's
    ``Sentinel.master_for`` as a keyword argument, as postfix-mta-sts-resolver
    does. One key is ours: ``sentinel_kwargs``, a mapping of options for the
    connections to the sentinels themselves (for example their ``password``);
    by default they get the ``socket_*`` options, so a sentinel that is down
    cannot hang a lookup.

    The master's address is asked of the sentinels for each new connection,
    so a failover is followed without a restart.
    """

    def __init__(self, options: Mapping[str, Any], filename: str = "<config>") -> None:
        super().__init__()
        self._sentinels = [(str(host), int(port)) for host, port in options["sentinels"]]
        self._master_name: str = options["sentinel_master_name"]
        consumed = ("sentinels", "sentinel_master_name", "sentinel_kwargs")
        self._kwargs = {k: v for k, v in options.items() if k not in consumed} | _FORCED
        _check_options(
            filename,
            "cache.options",
            lambda: _connection_of(
                redis.asyncio.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
                    self._master_name, None, **self._kwargs
                )
            ),
        )
        extra = options.get("sentinel_kwargs") or {}
        if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
            where = "cache.options.sentinel_kwargs"
            raise ConfigError(filename, where, "expected a mapping of option names")
        socket = {k: v for k, v in self._kwargs.items() if k.startswith("socket_")}
        self._sentinel_kwargs = socket | dict(extra)
        _check_options(
            filename,
            "cache.options.sentinel_kwargs",
            lambda: redis.asyncio.Redis(**self._sentinel_kwargs),
        )
        self._sentinel: redis.asyncio.sentinel.Sentinel | None = None

    def _connect(self) -> redis.asyncio.Redis:
        sentinel_kwargs: dict[str, Any] = {
            # Each sentinel is asked once per discovery, and the next one is
            # tried if it fails: redis-py's default retries (several seconds
            # against a dead sentinel) would only delay the fallback.
            "retry": Retry(NoBackoff(), 0),
            **self._sentinel_kwargs,
        }
        self._sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            self._sentinels, sentinel_kwargs=sentinel_kwargs
        )
        client: redis.asyncio.Redis = self._sentinel.master_for(self._master_name, **self._kwargs)
        return client

    async def _disconnect(self) -> None:
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            for client in sentinel.sentinels:
                await aclose(client)
