"""Redis backends (``cache.type: redis`` and ``redis_sentinel``), shared by a fleet.

Data layout, the same for both types and kept to our own namespace, so a
database shared with postfix-mta-sts-resolver (one ZSET per raw domain name and
a ``_metadata`` hash) or with anything else is never read or touched:

- ``mtasts:policy:<domain>``: a hash per domain, fields ``v`` (the entry as
  :mod:`mtasts_fast.cache.codec` bytes), ``c`` (``checked_at``) and ``x``
  (the policy's ``expires_at``), both as decimal text that Lua's ``tonumber``
  reads back exactly. A small Lua script compares ``c`` and writes in one step,
  so an older write never replaces a newer one, whichever relay writes last.
- ``mtasts:meta``: a hash, field ``proactive_ts``.
- ``mtasts:failure:<domain>``: a string, the domain's ``FetchFailure`` as
  codec bytes, expiring ``FAILURE_RETENTION`` seconds after its
  ``retry_at`` (a record written later than that is not kept at all): Redis
  forgets it on its own, so ``prune`` leaves failure records alone.
- ``mtasts:lease:<name>``: a string, the holder's name, with a millisecond
  TTL of the lease's length. Small Lua scripts take, renew and release it
  in one step each; the expiry is Redis's own clock, so relays whose clocks
  disagree still agree on when a lease has lapsed.

Every policy key expires (EXPIREAT) ``RETENTION`` seconds (one day, the
margin the periodic prune keeps) after its policy does, and at the earliest
``RETENTION`` seconds after it was written: Redis forgets policies on its own
(postfix-mta-sts-resolver's keys live for ever, its issue #109), ``prune``
finds little left to do, and an expired policy stays a day for
``mta-sts-cache list`` to show.

Connections are made on first use, so a server that is down at start-up
does not stop the daemon; every failure to use the server raises
:class:`CacheUnavailable`, and redis-py reconnects once the server is back.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.asyncio.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from mtasts_fast.cache.base import (
    FAILURE_RETENTION,
    SCAN_BATCH,
    Cache,
    CacheEntry,
    CacheStats,
    CacheUnavailable,
    FetchFailure,
)
from mtasts_fast.cache.codec import decode_entry, decode_failure, encode_entry, encode_failure
from mtasts_fast.errors import ConfigError
from mtasts_fast.maintenance import PRUNE_RETENTION

__all__ = [
    "FAILURE_PREFIX",
    "LEASE_PREFIX",
    "META_KEY",
    "POLICY_PREFIX",
    "RETENTION",
    "RedisCache",
    "RedisSentinelCache",
]

POLICY_PREFIX = b"mtasts:policy:"
FAILURE_PREFIX = b"mtasts:failure:"
LEASE_PREFIX = b"mtasts:lease:"
META_KEY = b"mtasts:meta"
# The prefixes hold no glob characters.
_POLICY_PATTERN = POLICY_PREFIX + b"*"
_FAILURE_PATTERN = FAILURE_PREFIX + b"*"
_PROACTIVE_FIELD = b"proactive_ts"

#: Seconds a policy key outlives its policy (and its last write): as long
#: as the periodic prune keeps expired entries in every backend.
RETENTION = PRUNE_RETENTION

# KEYS[1] policy key; ARGV: codec bytes, checked_at, expires_at, EXPIREAT time.
# Returns 1 if written, 0 if the stored entry was checked later. Whatever
# else sits under the key (a hash without a readable `c`, another type) is
# not an entry of ours and is replaced.
_PUT_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then
  local stored = tonumber(redis.call('HGET', KEYS[1], 'c'))
  if stored and stored > tonumber(ARGV[2]) then
    return 0
  end
elseif kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'c', ARGV[2], 'x', ARGV[3])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return 1
"""

# KEYS: policy keys; ARGV[1] older_than. Deletes the hashes whose policy
# expired before it, re-reading each in the script so that an entry another
# relay refreshed since the SCAN is kept. Returns how many were deleted.
_PRUNE_SCRIPT = """
local deleted = 0
local limit = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok == 'hash' then
    local expires = tonumber(redis.call('HGET', key, 'x'))
    if expires and expires < limit then
      deleted = deleted + redis.call('DEL', key)
    end
  end
end
return deleted
"""

# KEYS[1] lease key; ARGV: owner, TTL in milliseconds. Returns 1 if the
# owner holds the lease now (it was free, lapsed, or the owner's: renewed),
# else 0. Anything but a string under the key is not a lease of ours.
_ACQUIRE_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
  end
elseif kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] lease key; ARGV[1] owner. Deletes the lease only if it is the owner's.
_RELEASE_SCRIPT = """
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# The client never decodes replies: values are msgpack bytes.
_FORCED = {"decode_responses": False}


def _policy_key(domain: str) -> bytes:
    return POLICY_PREFIX + domain.encode("utf-8")


def _failure_key(domain: str) -> bytes:
    return FAILURE_PREFIX + domain.encode("utf-8")


def _failure_ttl_ms(failure: FetchFailure, now: float) -> int:
    """Milliseconds the record is kept: until FAILURE_RETENTION after its retry time."""
    return math.ceil((failure.retry_at - now + FAILURE_RETENTION) * 1000)


def _number(value: float) -> bytes:
    # repr() is the shortest text that reads back as the same double, in
    # Python and in Lua's tonumber alike.
    return repr(float(value)).encode("ascii")


def _key_expiry(entry: CacheEntry, now: float) -> int:
    return math.ceil(max(entry.expires_at, now) + RETENTION)


def _chunks(items: Sequence[bytes], size: int) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _aclose(client: redis.asyncio.Redis) -> None:
    # aclose() is redis-py >= 5.0.1; close(), deprecated since, before it.
    close = getattr(client, "aclose", None) or client.close
    await close()


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


@dataclass(slots=True, frozen=True)
class _Session:
    """What ``setup`` makes: the client, its scripts, and the connection slots."""

    client: redis.asyncio.Redis
    put: AsyncScript
    prune: AsyncScript
    acquire: AsyncScript
    release: AsyncScript
    # One slot per connection the pool may open: redis-py (from 6.0) fails a
    # command at once with "Too many connections" when they are all busy,
    # so a burst of lookups waits here for a free one instead.
    slots: asyncio.Semaphore


class _RedisStore(Cache):
    """The data layout and commands, over a client the subclass connects."""

    def __init__(self) -> None:
        self._session: _Session | None = None
        self._closed = False

    @abc.abstractmethod
    def _connect(self) -> redis.asyncio.Redis:
        """A client for the server; no connection is opened yet."""

    async def _disconnect(self) -> None:
        """Release what ``_connect`` made besides the client."""

    def _live(self) -> _Session:
        if self._session is None:
            if self._closed:  # a lookup that outlived the shutdown
                raise CacheUnavailable("redis: the cache is closed")
            raise RuntimeError(f"{type(self).__name__}.setup() was not called")
        return self._session

    @contextlib.asynccontextmanager
    async def _use(self) -> AsyncIterator[_Session]:
        """A connection slot; any failure to use the server is CacheUnavailable.

        redis-py wraps socket errors in its ConnectionError / TimeoutError (a
        sentinel's MasterNotFoundError is one); OSError covers the rest, the
        built-in TimeoutError included. Server replies such as OOM, READONLY
        (a replica after a failover) or NOAUTH also mean "cannot be used
        right now". Hold it around commands only, never across a ``yield``.
        """
        session = self._live()
        try:
            async with session.slots:
                yield session
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(f"redis: {exc}") from exc

    async def setup(self) -> None:
        self._closed = False
        client = self._connect()
        self._session = _Session(
            client,
            client.register_script(_PUT_SCRIPT),
            client.register_script(_PRUNE_SCRIPT),
            client.register_script(_ACQUIRE_SCRIPT),
            client.register_script(_RELEASE_SCRIPT),
            asyncio.Semaphore(client.connection_pool.max_connections),
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        self._closed = True
        if session is not None:
            await _aclose(session.client)
            # Older redis-py clients do not always own their pool (master_for).
            await session.client.connection_pool.disconnect()
        await self._disconnect()

    async def get(self, domain: str) -> CacheEntry | None:
        async with self._use() as session:
            try:
                data = await session.client.hget(_policy_key(domain), b"v")
            except ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                return None  # not an entry of ours; put replaces it
        return decode_entry(domain, data) if isinstance(data, bytes) else None

    async def put(self, entry: CacheEntry) -> None:
        args = (
            encode_entry(entry),
            _number(entry.checked_at),
            _number(entry.expires_at),
            _key_expiry(entry, time.time()),
        )
        async with self._use() as session:
            await session.put(keys=[_policy_key(entry.domain)], args=args)

    async def delete(self, domain: str) -> bool:
        async with self._use() as session:
            deleted: int = await session.client.delete(_policy_key(domain))
        return deleted > 0

    async def _scan_keys(
        self, count: int, pattern: bytes = _POLICY_PATTERN
    ) -> AsyncIterator[list[bytes]]:
        """Our keys matching ``pattern`` (policy keys), a SCAN page at a time, each once.

        SCAN may return a key twice (when the table is resized mid-scan), so
        the keys seen so far are remembered for the length of one walk.
        """
        seen: set[bytes] = set()
        cursor = 0
        while True:
            async with self._use() as session:
                cursor, keys = await session.client.scan(cursor, match=pattern, count=count)
            fresh = [k for k in keys if isinstance(k, bytes) and k not in seen]
            seen.update(fresh)
            if fresh:
                yield fresh
            if not cursor:
                return

    async def _entries(self, keys: Sequence[bytes]) -> list[CacheEntry]:
        """The decodable entries among ``keys``, in one round trip."""
        async with self._use() as session, session.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, b"v")
            # A key of another type under our prefix fails that one command
            # with WRONGTYPE: it reads as missing.
            values = await pipe.execute(raise_on_error=False)
        entries = []
        for key, value in zip(keys, values, strict=True):
            if not isinstance(value, bytes):
                continue  # gone since the SCAN, or not a hash of ours
            try:
                domain = key[len(POLICY_PREFIX) :].decode("utf-8")
            except UnicodeDecodeError:
                continue
            entry = decode_entry(domain, value)
            if entry is not None:
                entries.append(entry)
        return entries

    async def scan(self, batch_size: int = SCAN_BATCH) -> AsyncIterator[list[CacheEntry]]:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        pending: list[CacheEntry] = []
        # COUNT is how many slots one SCAN call visits: about a batch, but
        # not so few that a large database takes a round trip per key, nor so
        # many that one call holds up the server.
        async for keys in self._scan_keys(min(max(batch_size, 100), 10_000)):
            for chunk in _chunks(keys, batch_size):
                pending.extend(await self._entries(chunk))
                while len(pending) >= batch_size:
                    yield pending[:batch_size]
                    del pending[:batch_size]
        if pending:
            yield pending

    async def purge(self) -> int:
        deleted = 0
        async for keys in self._scan_keys(SCAN_BATCH):
            async with self._use() as session:
                deleted += await session.client.delete(*keys)
        # Failure records go too, so that every purged domain is fetched
        # afresh; only policy entries are counted.
        async for keys in self._scan_keys(SCAN_BATCH, _FAILURE_PATTERN):
            async with self._use() as session:
                await session.client.delete(*keys)
        return deleted

    async def prune(self, older_than: float) -> int:
        limit = _number(older_than)
        deleted = 0
        async for keys in self._scan_keys(SCAN_BATCH):
            # Small script runs: Redis serves nobody else while one runs.
            for chunk in _chunks(keys, 100):
                async with self._use() as session:
                    deleted += int(await session.prune(keys=chunk, args=(limit,)))
        return deleted

    async def stats(self) -> CacheStats:
        """A SCAN of our keys: their number, checked range and memory (``MEMORY USAGE``)."""
        entries = failures = 0
        oldest: float | None = None
        newest: float | None = None
        size: int | None = None
        for pattern in (_POLICY_PATTERN, _FAILURE_PATTERN):
            policy = pattern == _POLICY_PATTERN
            async for keys in self._scan_keys(SCAN_BATCH, pattern):
                async with (
                    self._use() as session,
                    session.client.pipeline(transaction=False) as pipe,
                ):
                    for key in keys:
                        if policy:
                            pipe.hget(key, b"c")
                        pipe.memory_usage(key, samples=0)
                    replies = await pipe.execute(raise_on_error=False)
                step = 2 if policy else 1
                for start in range(0, len(replies), step):
                    if policy:
                        # Anything but one of our hashes under the prefix is no entry.
                        stamp = replies[start]
                        if not isinstance(stamp, bytes):
                            continue
                        entries += 1
                        with contextlib.suppress(ValueError):
                            when = float(stamp)
                            oldest = when if oldest is None else min(oldest, when)
                            newest = when if newest is None else max(newest, when)
                    else:
                        failures += 1
                    used = replies[start + step - 1]
                    if isinstance(used, int):
                        size = (size or 0) + used
        return CacheStats(entries, failures, oldest, newest, size)

    async def get_proactive_ts(self) -> float:
        async with self._use() as session:
            value = await session.client.hget(META_KEY, _PROACTIVE_FIELD)
        try:
            ts = float(value) if value is not None else 0.0
        except ValueError:
            return 0.0
        return ts if math.isfinite(ts) else 0.0

    async def set_proactive_ts(self, ts: float) -> None:
        async with self._use() as session:
            await session.client.hset(META_KEY, _PROACTIVE_FIELD, _number(ts))

    async def get_failure(self, domain: str) -> FetchFailure | None:
        async with self._use() as session:
            try:
                data = await session.client.get(_failure_key(domain))
            except ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                return None  # not a record of ours; put_failure replaces it
        return decode_failure(domain, data) if isinstance(data, bytes) else None

    async def put_failure(self, failure: FetchFailure) -> None:
        data = encode_failure(failure)
        ttl_ms = _failure_ttl_ms(failure, time.time())
        key = _failure_key(failure.domain)
        async with self._use() as session:
            if ttl_ms > 0:
                # SET replaces a key of any type.
                await session.client.set(key, data, px=ttl_ms)
            else:
                # Already past its retention (Redis refuses a TTL of zero or
                # less): forgotten at once, like the record it replaces.
                await session.client.delete(key)

    async def delete_failure(self, domain: str) -> bool:
        async with self._use() as session:
            deleted: int = await session.client.delete(_failure_key(domain))
        return deleted > 0

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        key = LEASE_PREFIX + name.encode("utf-8")
        # Whole milliseconds, at least one: PX refuses zero.
        args = (owner.encode("utf-8"), max(1, math.ceil(ttl * 1000)))
        async with self._use() as session:
            held = await session.acquire(keys=[key], args=args)
        return int(held) == 1

    async def release_lease(self, name: str, owner: str) -> None:
        key = LEASE_PREFIX + name.encode("utf-8")
        async with self._use() as session:
            await session.release(keys=[key], args=(owner.encode("utf-8"),))


class RedisCache(_RedisStore):
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


class RedisSentinelCache(_RedisStore):
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
                await _aclose(client)
