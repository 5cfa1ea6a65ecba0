"""``RedisStore``: the data layout and the commands, shared by both Redis types.

The layout is described in the package doc; the subclasses in ``clients``
only say how to connect.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import redis.asyncio
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
from mtasts_fast.cache.codec import (
    decode_dane,
    decode_entry,
    decode_failure,
    encode_dane,
    encode_entry,
    encode_failure,
)
from mtasts_fast.cache.redis.scripts import (
    ACQUIRE_SCRIPT,
    PRUNE_SCRIPT,
    PUT_SCRIPT,
    RELEASE_SCRIPT,
)
from mtasts_fast.dane.state import DaneState
from mtasts_fast.maintenance import PRUNE_RETENTION

__all__ = [
    "DANE_PREFIX",
    "FAILURE_PREFIX",
    "LEASE_PREFIX",
    "META_KEY",
    "POLICY_PREFIX",
    "RETENTION",
    "RedisStore",
    "aclose",
]

POLICY_PREFIX = b"mtasts:policy:"
FAILURE_PREFIX = b"mtasts:failure:"
DANE_PREFIX = b"mtasts:dane:"
LEASE_PREFIX = b"mtasts:lease:"
META_KEY = b"mtasts:meta"
# The prefixes hold no glob characters.
_POLICY_PATTERN = POLICY_PREFIX + b"*"
_FAILURE_PATTERN = FAILURE_PREFIX + b"*"
_DANE_PATTERN = DANE_PREFIX + b"*"
_PROACTIVE_FIELD = b"proactive_ts"

#: Seconds a policy or DANE key outlives its expiry (and its last write): as
#: long as the periodic prune keeps expired entries and states in every backend.
RETENTION = PRUNE_RETENTION


def _policy_key(domain: str) -> bytes:
    return POLICY_PREFIX + domain.encode("utf-8")


def _dane_key(domain: str) -> bytes:
    return DANE_PREFIX + domain.encode("utf-8")


def _failure_key(domain: str) -> bytes:
    return FAILURE_PREFIX + domain.encode("utf-8")


def _failure_ttl_ms(failure: FetchFailure, now: float) -> int:
    """Milliseconds the record is kept: until FAILURE_RETENTION after its retry time."""
    return math.ceil((failure.retry_at - now + FAILURE_RETENTION) * 1000)


def _number(value: float) -> bytes:
    # repr() is the shortest text that reads back as the same double, in
    # Python and in Lua's tonumber alike.
    return repr(float(value)).encode("ascii")


def _key_expiry(expires_at: float, now: float) -> int:
    return math.ceil(max(expires_at, now) + RETENTION)


def _chunks(items: Sequence[bytes], size: int) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def aclose(client: redis.asyncio.Redis) -> None:
    # aclose() is redis-py >= 5.0.1; close(), deprecated since, before it.
    close = getattr(client, "aclose", None) or client.close
    await close()


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


class RedisStore(Cache):
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
            client.register_script(PUT_SCRIPT),
            client.register_script(PRUNE_SCRIPT),
            client.register_script(ACQUIRE_SCRIPT),
            client.register_script(RELEASE_SCRIPT),
            asyncio.Semaphore(client.connection_pool.max_connections),
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        self._closed = True
        if session is not None:
            await aclose(session.client)
            # Older redis-py clients do not always own their pool (master_for).
            await session.client.connection_pool.disconnect()
        await self._disconnect()

    async def _read(self, key: bytes, *, hashed: bool = True) -> bytes | None:
        """The stored value at ``key`` (the ``v`` field of a hash, or a plain
        string), or None. A key of another type is not a record of ours: it
        reads as missing, and the next put replaces it."""
        async with self._use() as session:
            try:
                if hashed:
                    data = await session.client.hget(key, b"v")
                else:
                    data = await session.client.get(key)
            except ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                return None
        return data if isinstance(data, bytes) else None

    async def _delete(self, key: bytes) -> bool:
        async with self._use() as session:
            deleted: int = await session.client.delete(key)
        return deleted > 0

    async def get(self, domain: str) -> CacheEntry | None:
        data = await self._read(_policy_key(domain))
        return decode_entry(domain, data) if data is not None else None

    async def put(self, entry: CacheEntry) -> None:
        args = (
            encode_entry(entry),
            _number(entry.checked_at),
            _number(entry.expires_at),
            _key_expiry(entry.expires_at, time.time()),
        )
        async with self._use() as session:
            await session.put(keys=[_policy_key(entry.domain)], args=args)

    async def delete(self, domain: str) -> bool:
        return await self._delete(_policy_key(domain))

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
        # Failure records and DANE states go too, so that every purged domain
        # is fetched and evaluated afresh; only policy entries are counted.
        for pattern in (_FAILURE_PATTERN, _DANE_PATTERN):
            async for keys in self._scan_keys(SCAN_BATCH, pattern):
                async with self._use() as session:
                    await session.client.delete(*keys)
        return deleted

    async def prune(self, older_than: float) -> int:
        limit = _number(older_than)
        # Only policy entries are counted; DANE states expired before
        # older_than go too (their key TTLs usually got there first).
        deleted = await self._prune_keys(_POLICY_PATTERN, limit)
        await self._prune_keys(_DANE_PATTERN, limit)
        return deleted

    async def _prune_keys(self, pattern: bytes, limit: bytes) -> int:
        deleted = 0
        async for keys in self._scan_keys(SCAN_BATCH, pattern):
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
        data = await self._read(_failure_key(domain), hashed=False)
        return decode_failure(domain, data) if data is not None else None

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
        return await self._delete(_failure_key(domain))

    async def get_dane(self, domain: str) -> DaneState | None:
        data = await self._read(_dane_key(domain))
        return decode_dane(domain, data) if data is not None else None

    async def put_dane(self, state: DaneState) -> None:
        # The policies' script: it orders writes by the `c` field, here the
        # evaluated_at, so an older evaluation never replaces a newer one.
        args = (
            encode_dane(state),
            _number(state.evaluated_at),
            _number(state.expires_at),
            _key_expiry(state.expires_at, time.time()),
        )
        async with self._use() as session:
            await session.put(keys=[_dane_key(state.domain)], args=args)

    async def delete_dane(self, domain: str) -> bool:
        return await self._delete(_dane_key(domain))

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
