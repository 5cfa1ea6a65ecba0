"""The ``redis`` and ``redis_sentinel`` backends against real servers on loopback.

The shared contract, then what is Redis-specific: our own key namespace next
to postfix-mta-sts-resolver's keys, TTLs, the newest ``checked_at`` winning
between relays, outages and recovery without a restart, the config examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from mtasts_fast.cache.base import FAILURE_RETENTION, Cache, CacheUnavailable
from mtasts_fast.cache.codec import encode_dane, encode_entry, encode_failure
from tests.cache_contract import (
    DANE_STATES,
    POLICY_ENTRIES,
    CachePeer,
    PersistentCacheContract,
    RecordKind,
    assert_same,
    collect,
    make_entry,
    make_failure,
)
from tests.servers.redis import RedisSentinel, RedisServer, RedisUnavailable

_REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")

try:
    import redis.asyncio.sentinel
except ImportError as exc:  # the `redis` extra is not installed
    if _REQUIRE_ALL:
        raise
    pytest.skip(f"redis-py not installed: {exc}", allow_module_level=True)

from mtasts_fast.cache import create_cache  # noqa: E402
from mtasts_fast.cache.redis import (  # noqa: E402
    FAILURE_PREFIX,
    LEASE_PREFIX,
    META_KEY,
    POLICY_PREFIX,
    RETENTION,
    RedisCache,
    RedisSentinelCache,
)
from mtasts_fast.config import Config  # noqa: E402
from mtasts_fast.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.both_loops

EXAMPLES = Path(__file__).resolve().parent.parent / "config_examples"

# The config's defaults, patient enough for a loaded test machine...
TIMEOUTS = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
# ...and small ones for the outage tests, so that an outage shows at once.
SHORT = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


def _no_redis(exc: RedisUnavailable) -> NoReturn:
    if _REQUIRE_ALL:
        pytest.fail(f"redis unavailable and MTASTS_REQUIRE_ALL is set: {exc}")
    pytest.skip(f"redis unavailable: {exc}")


def _new_server(directory: Path, **kwargs: Any) -> RedisServer:
    try:
        server = RedisServer(str(directory), **kwargs)
        server.start()
    except RedisUnavailable as exc:
        _no_redis(exc)
    return server


def _new_sentinel(directory: Path, master: RedisServer, **kwargs: Any) -> RedisSentinel:
    try:
        sentinel = RedisSentinel(str(directory), master, **kwargs)
        sentinel.start()
    except RedisUnavailable as exc:
        _no_redis(exc)
    return sentinel


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the whole session; tests flush it before use."""
    server = _new_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sentinel_group(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisServer, RedisSentinel]]:
    """A master and one sentinel monitoring it, for the whole session."""
    directory = tmp_path_factory.mktemp("sentinel")
    master = _new_server(directory / "master")
    try:
        sentinel = _new_sentinel(directory / "sentinel", master)
    except BaseException:
        master.stop()
        raise
    yield master, sentinel
    sentinel.stop()
    master.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, to kill, freeze and restart."""
    server = _new_server(tmp_path / "redis")
    yield server
    server.stop()


def _redis_options(
    server: RedisServer, *, db: int = 3, timeouts: dict[str, float] = TIMEOUTS, **extra: Any
) -> dict[str, Any]:
    return {"url": server.url(db), **timeouts, **extra}


def _sentinel_options(
    sentinel: RedisSentinel, *, db: int = 2, timeouts: dict[str, float] = TIMEOUTS, **extra: Any
) -> dict[str, Any]:
    return {
        "sentinels": (sentinel.address,),
        "sentinel_master_name": sentinel.master_name,
        "db": db,
        **timeouts,
        **extra,
    }


async def _open(cache: Cache) -> Cache:
    await cache.setup()
    return cache


# --------------------------------------------------------------------------
# The contract


class RedisContract(PersistentCacheContract):
    """A reopened cache, and a peer, are new clients with the same options."""

    backend: Callable[[dict[str, Any]], Cache]
    options: dict[str, Any]

    async def _open_cache(self, server: RedisServer, db: int, options: dict[str, Any]) -> Cache:
        server.command("FLUSHALL")
        _seed_old_daemon_keys(server, db=db)  # the contract holds in a shared DB
        self.options = options
        return await _open(self.backend(options))

    async def reopen(self, cache: Cache) -> Cache:
        await cache.close()
        return await _open(self.backend(self.options))

    async def open_peer(self, cache: Cache) -> CachePeer:
        return await _open(self.backend(self.options))  # another relay's client


class TestRedisCache(RedisContract):
    backend = RedisCache

    @pytest.fixture
    async def cache(self, redis_server: RedisServer) -> AsyncIterator[Cache]:
        cache = await self._open_cache(redis_server, 3, _redis_options(redis_server, db=3))
        yield cache
        await cache.close()


class TestRedisSentinelCache(RedisContract):
    backend = RedisSentinelCache

    @pytest.fixture
    async def cache(
        self, sentinel_group: tuple[RedisServer, RedisSentinel]
    ) -> AsyncIterator[Cache]:
        master, sentinel = sentinel_group
        cache = await self._open_cache(master, 2, _sentinel_options(sentinel, db=2))
        yield cache
        await cache.close()


# --------------------------------------------------------------------------
# Layout: our namespace, TTLs, foreign data


@contextlib.asynccontextmanager
async def _emptied(server: RedisServer, **options: Any) -> AsyncIterator[RedisCache]:
    """A cache, with these client options, on ``server`` emptied first."""
    server.command("FLUSHALL")
    cache = RedisCache(_redis_options(server, **options))
    await cache.setup()
    try:
        yield cache
    finally:
        await cache.close()


@pytest.fixture
async def cache(redis_server: RedisServer) -> AsyncIterator[RedisCache]:
    async with _emptied(redis_server) as cache:
        yield cache


def _seed_old_daemon_keys(server: RedisServer, db: int = 3) -> None:
    """What postfix-mta-sts-resolver keeps in a DB, plus someone else's key."""
    member = b"\x00" * 16 + b'["20240101T000000", {"mode": "enforce"}]'
    server.command("ZADD", "example.com", "1700000000", member, db=db)
    server.command("HSET", "_metadata", "proactive_fetch_ts", "1700000000.5", db=db)
    server.command("SET", "someone:else", "value", db=db)


def _foreign_state(server: RedisServer, db: int = 3) -> list[Any]:
    return [
        server.command("ZRANGE", "example.com", 0, -1, "WITHSCORES", db=db),
        server.command("HGETALL", "_metadata", db=db),
        server.command("GET", "someone:else", db=db),
    ]


@dataclasses.dataclass(frozen=True)
class Hashed:
    """A kind of record kept as a hash under its own prefix: ``v`` its codec
    bytes, ``c`` the time that decides which of two writes is newer, ``x`` its
    expiry; the key's TTL keeps it RETENTION past that."""

    kind: RecordKind
    prefix: bytes
    encode: Callable[[Any], bytes]
    written_at: Callable[[Any], float]
    counted: bool
    """Whether prune and purge count them (policy entries only)."""


HASHED = [
    pytest.param(
        Hashed(POLICY_ENTRIES, b"mtasts:policy:", encode_entry, lambda e: e.checked_at, True),
        id="policy",
    ),
    pytest.param(
        Hashed(DANE_STATES, b"mtasts:dane:", encode_dane, lambda s: s.evaluated_at, False),
        id="dane-state",
    ),
]


@pytest.mark.parametrize("hashed", HASHED)
async def test_key_layout(cache: RedisCache, redis_server: RedisServer, hashed: Hashed) -> None:
    record = hashed.kind.make_at("example.com", time.time() + 600.25)
    await hashed.kind.put(cache, record)
    key = hashed.prefix + b"example.com"
    assert redis_server.command("TYPE", key, db=3) == "hash"
    fields = redis_server.command("HGETALL", key, db=3)
    stored = dict(zip(fields[::2], fields[1::2], strict=True))
    assert sorted(stored) == [b"c", b"v", b"x"]
    assert stored[b"v"] == hashed.encode(record)
    assert float(stored[b"c"]) == hashed.written_at(record)
    assert float(stored[b"x"]) == hashed.kind.indexed_at(record)
    # Apart from the other kinds of the same domain.
    assert redis_server.command("KEYS", "*", db=3) == [key]


@pytest.mark.parametrize(
    ("expires_in", "expected_ttl"),
    [
        pytest.param(3600, 3600 + RETENTION, id="fresh-kept-until-expiry-plus-margin"),
        pytest.param(600, 600 + RETENTION, id="aged-kept-until-expiry-plus-margin"),
        pytest.param(30, 30 + RETENTION, id="temp-retry-kept-until-expiry-plus-margin"),
        pytest.param(-7200, RETENTION, id="expired-kept-margin-after-the-write"),
        pytest.param(-(10**8), RETENTION, id="long-expired-kept-margin-after-the-write"),
    ],
)
@pytest.mark.parametrize("hashed", HASHED)
async def test_keys_expire(
    cache: RedisCache,
    redis_server: RedisServer,
    hashed: Hashed,
    expires_in: int,
    expected_ttl: float,
) -> None:
    await hashed.kind.put(cache, hashed.kind.make_at("example.com", time.time() + expires_in))
    ttl = redis_server.command("TTL", hashed.prefix + b"example.com", db=3)
    assert expected_ttl - 5 <= ttl <= expected_ttl + 2


@pytest.mark.parametrize("hashed", HASHED)
async def test_rewrite_moves_the_expiry(
    cache: RedisCache, redis_server: RedisServer, hashed: Hashed
) -> None:
    now = time.time()
    await hashed.kind.put(cache, hashed.kind.make_at("example.com", now + 300))
    await hashed.kind.put(cache, hashed.kind.make_at("example.com", now + 86400))
    ttl = redis_server.command("TTL", hashed.prefix + b"example.com", db=3)
    assert 86400 + RETENTION - 5 <= ttl <= 86400 + RETENTION + 2


async def test_proactive_ts_in_our_meta_key(cache: RedisCache, redis_server: RedisServer) -> None:
    _seed_old_daemon_keys(redis_server)
    assert await cache.get_proactive_ts() == 0.0  # the old daemon's _metadata is not read
    await cache.set_proactive_ts(1_700_000_123.25)
    assert redis_server.command("HGET", META_KEY, "proactive_ts", db=3) == b"1700000123.25"
    assert redis_server.command("HGET", "_metadata", "proactive_fetch_ts", db=3) == b"1700000000.5"


async def test_unreadable_proactive_ts_is_zero(
    cache: RedisCache, redis_server: RedisServer
) -> None:
    redis_server.command("HSET", META_KEY, "proactive_ts", "soon", db=3)
    assert await cache.get_proactive_ts() == 0.0


@pytest.mark.parametrize("hashed", HASHED)
async def test_foreign_keys_survive_everything(
    cache: RedisCache, redis_server: RedisServer, hashed: Hashed
) -> None:
    _seed_old_daemon_keys(redis_server)
    before = _foreign_state(redis_server)
    kind = hashed.kind
    names = ["_metadata", "example.com", "someone:else"]  # the foreign keys' names
    assert await kind.get(cache, "example.com") is None  # the old daemon's ZSET is not ours
    now = time.time()
    for name in names:
        await kind.put(cache, kind.make_at(name, now - 990))
    assert await kind.get(cache, "example.com") is not None
    seen = sorted(e.domain for batch in await collect(cache, 10) for e in batch)
    assert seen == (names if hashed.counted else [])
    assert await cache.prune(now) == (3 if hashed.counted else 0)
    assert await kind.get(cache, "example.com") is None  # pruned, counted or not
    assert _foreign_state(redis_server) == before
    await kind.put(cache, kind.make("example.com"))
    assert await cache.purge() == (1 if hashed.counted else 0)
    assert await kind.get(cache, "example.com") is None
    assert await kind.delete(cache, "example.com") is False
    assert _foreign_state(redis_server) == before
    assert redis_server.command("DBSIZE", db=3) == 3


async def test_other_databases_untouched(cache: RedisCache, redis_server: RedisServer) -> None:
    redis_server.command("HSET", POLICY_PREFIX + b"example.com", "v", "x", "c", "1", "x", "0", db=4)
    await cache.put(make_entry("example.org"))
    assert await cache.purge() == 1
    assert await cache.prune(time.time() + 10**9) == 0
    assert redis_server.command("EXISTS", POLICY_PREFIX + b"example.com", db=4) == 1


@pytest.mark.parametrize(
    ("junk", "replaced"),
    [
        pytest.param(("SET", "text"), True, id="string-key"),
        pytest.param(("RPUSH", "item"), True, id="list-key"),
        pytest.param(("HSET", "other", "field"), True, id="hash-without-our-fields"),
        # A readable, later `c` means a newer writer (another format): kept.
        pytest.param(("HSET", "v", "not msgpack", "c", "9e99"), False, id="hash-newer-format"),
    ],
)
@pytest.mark.parametrize("hashed", HASHED)
async def test_junk_under_our_prefix_reads_as_missing(
    cache: RedisCache,
    redis_server: RedisServer,
    hashed: Hashed,
    junk: tuple[str, ...],
    replaced: bool,
) -> None:
    command, *args = junk
    kind = hashed.kind
    redis_server.command(command, hashed.prefix + b"junk.example", *args, db=3)
    await cache.put(make_entry("good.example"))
    assert await kind.get(cache, "junk.example") is None
    assert [e.domain for batch in await collect(cache, 10) for e in batch] == ["good.example"]
    assert await cache.prune(time.time() + 10**9) == 1  # only the entry with an expiry
    record = kind.make("junk.example")
    await kind.put(cache, record)
    got = await kind.get(cache, "junk.example")
    if replaced:
        assert_same(got, record)
    else:
        assert got is None


@pytest.mark.parametrize(
    ("retry_in", "expected_ttl"),
    [
        pytest.param(300, 300 + FAILURE_RETENTION, id="retry-ahead-kept-retention-after-it"),
        pytest.param(-3600, FAILURE_RETENTION - 3600, id="retry-passed-kept-what-is-left"),
    ],
)
async def test_failure_key_layout_and_expiry(
    cache: RedisCache, redis_server: RedisServer, retry_in: float, expected_ttl: float
) -> None:
    failure = make_failure("example.com", retry_at=time.time() + retry_in)
    await cache.put_failure(failure)
    key = FAILURE_PREFIX + b"example.com"
    assert key == b"mtasts:failure:example.com"
    assert redis_server.command("GET", key, db=3) == encode_failure(failure)
    ttl = redis_server.command("TTL", key, db=3)
    assert expected_ttl - 5 <= ttl <= expected_ttl + 1


async def test_failure_past_its_retention_is_not_kept(
    cache: RedisCache, redis_server: RedisServer
) -> None:
    now = time.time()
    await cache.put_failure(make_failure("example.com", retry_at=now + 300))
    # Replaced by a record whose retention is already over: both are gone.
    await cache.put_failure(make_failure("example.com", retry_at=now - FAILURE_RETENTION - 1))
    assert redis_server.command("EXISTS", FAILURE_PREFIX + b"example.com", db=3) == 0
    assert await cache.get_failure("example.com") is None


async def test_lease_key_layout_and_expiry(cache: RedisCache, redis_server: RedisServer) -> None:
    assert await cache.acquire_lease("refresh", "host-1:42", 60.0)
    key = LEASE_PREFIX + b"refresh"
    assert key == b"mtasts:lease:refresh"
    assert redis_server.command("GET", key, db=3) == b"host-1:42"
    assert 59_000 < redis_server.command("PTTL", key, db=3) <= 60_000
    assert await cache.acquire_lease("refresh", "host-1:42", 0.5)  # a renewal sets the TTL
    assert 0 < redis_server.command("PTTL", key, db=3) <= 500
    await cache.release_lease("refresh", "host-1:42")
    assert redis_server.command("EXISTS", key, db=3) == 0


async def test_a_relay_whose_clock_runs_ahead_cannot_take_a_lease_early(
    cache: RedisCache, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relays may disagree about the time; the key's TTL on the server decides.
    other = await _open(RedisCache(_redis_options(redis_server)))
    try:
        assert await cache.acquire_lease("refresh", "one", 60)
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
        assert not await other.acquire_lease("refresh", "two", 60)
    finally:
        monkeypatch.undo()
        await other.close()


@pytest.mark.parametrize(
    "junk",
    [pytest.param(("HSET", "f", "v"), id="hash"), pytest.param(("RPUSH", "x"), id="list")],
)
async def test_foreign_keys_under_our_failure_and_lease_names(
    cache: RedisCache, redis_server: RedisServer, junk: tuple[str, ...]
) -> None:
    command, *args = junk
    failure_key, lease_key = FAILURE_PREFIX + b"junk.example", LEASE_PREFIX + b"refresh"
    redis_server.command(command, failure_key, *args, db=3)
    redis_server.command(command, lease_key, *args, db=3)
    assert await cache.get_failure("junk.example") is None
    failure = make_failure("junk.example")
    await cache.put_failure(failure)
    assert await cache.get_failure("junk.example") == failure
    await cache.release_lease("refresh", "a")  # not a lease of a's: left alone
    assert redis_server.command("TYPE", lease_key, db=3) == (
        "hash" if command == "HSET" else "list"
    )
    assert await cache.acquire_lease("refresh", "a", 60)  # not a lease at all: replaced
    assert redis_server.command("GET", lease_key, db=3) == b"a"


async def test_purge_deletes_failure_keys_only_ours(
    cache: RedisCache, redis_server: RedisServer
) -> None:
    _seed_old_daemon_keys(redis_server)
    before = _foreign_state(redis_server)
    await cache.put(make_entry("example.com"))
    for i in range(3):
        await cache.put_failure(make_failure(f"f{i}.example"))
    assert await cache.acquire_lease("refresh", "a", 60)
    await cache.set_proactive_ts(5.0)
    assert await cache.purge() == 1
    assert redis_server.command("KEYS", "mtasts:failure:*", db=3) == []
    assert redis_server.command("EXISTS", LEASE_PREFIX + b"refresh", db=3) == 1
    assert await cache.get_proactive_ts() == 5.0
    assert _foreign_state(redis_server) == before


async def test_scan_dedupes_keys_returned_twice(
    cache: RedisCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    domains = [f"d{i:03d}.example" for i in range(300)]
    for domain in domains:
        await cache.put(make_entry(domain))
    client = cache._live().client
    real_scan = client.scan
    previous: list[Any] = []
    repeated = 0

    async def scan_with_repeats(cursor: int, **kwargs: Any) -> tuple[int, list[Any]]:
        # What SCAN may do while the table is resized: repeat earlier keys.
        nonlocal previous, repeated
        cursor, keys = await real_scan(cursor, **kwargs)
        page = keys + previous
        repeated += len(previous)
        previous = list(keys)
        return cursor, page

    monkeypatch.setattr(client, "scan", scan_with_repeats)
    batches = await collect(cache, 7)
    assert repeated > 0
    seen = [entry.domain for batch in batches for entry in batch]
    assert sorted(seen) == domains
    assert all(len(batch) == 7 for batch in batches[:-1])


async def test_scan_rejects_empty_batches(cache: RedisCache) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        await collect(cache, 0)


async def test_binary_safe_even_if_asked_to_decode(redis_server: RedisServer) -> None:
    async with _emptied(redis_server, decode_responses=True, encoding="latin-1") as cache:
        entry = make_entry("example.com")
        await cache.put(entry)
        assert_same(await cache.get("example.com"), entry)


async def test_resp3_protocol(redis_server: RedisServer) -> None:
    async with _emptied(redis_server, protocol=3) as cache:
        entries = [make_entry(f"d{i}.example") for i in range(5)]
        for entry in entries:
            await cache.put(entry)
        await cache.put(make_entry("d0.example", pid="stale", fetched_at=1.0))
        batches = await collect(cache, 2)
        assert sorted(e.domain for b in batches for e in b) == [e.domain for e in entries]
        got = await cache.get("d0.example")
        assert got is not None
        assert got.same_as(entries[0])
        assert await cache.prune(time.time() + 10**9) == 5


async def test_bursts_wait_for_a_free_connection(redis_server: RedisServer) -> None:
    # redis-py refuses a command outright when its pool is exhausted; a
    # burst of lookups must queue for a connection instead.
    async with _emptied(redis_server, max_connections=2) as cache:
        async with asyncio.TaskGroup() as group:
            for i in range(50):
                group.create_task(cache.put(make_entry(f"d{i}.example")))
        async with asyncio.TaskGroup() as group:
            reads = [group.create_task(cache.get(f"d{i}.example")) for i in range(50)]
        assert all(read.result() is not None for read in reads)


async def test_unix_socket_url(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = _new_server(tmp_path / "redis", unix_socket=str(socket_path))
    try:
        cache = RedisCache({"url": f"unix://{socket_path}?db=5", **TIMEOUTS})
        await cache.setup()
        try:
            await cache.put(make_entry("example.com"))
            assert await cache.get("example.com") is not None
        finally:
            await cache.close()
        assert server.command("EXISTS", POLICY_PREFIX + b"example.com", db=5) == 1
    finally:
        server.stop()


# --------------------------------------------------------------------------
# Several relays on one server


async def test_newer_checked_at_wins_whoever_writes_last(redis_server: RedisServer) -> None:
    async with _emptied(redis_server) as first, _emptied(redis_server) as second:
        await first.put(make_entry("example.com", pid="first", fetched_at=2000.0))
        await second.put(make_entry("example.com", pid="stale", fetched_at=1000.0))
        got = await second.get("example.com")
        assert got is not None
        assert got.policy_id == "first"
        await second.put(make_entry("example.com", pid="second", fetched_at=3000.0))
        got = await first.get("example.com")
        assert got is not None
        assert got.policy_id == "second"
        # Same checked_at: the later write wins, as in every backend.
        await first.put(make_entry("example.com", pid="tie", fetched_at=3000.0))
        got = await second.get("example.com")
        assert got is not None
        assert got.policy_id == "tie"


async def test_concurrent_writers_keep_the_newest(redis_server: RedisServer) -> None:
    async with contextlib.AsyncExitStack() as stack:
        caches = [
            await stack.enter_async_context(_emptied(redis_server, max_connections=20))
            for _ in range(3)
        ]
        stamps = [1000.0 + (i * 7919) % 400 for i in range(400)]  # shuffled, 0..399
        async with asyncio.TaskGroup() as group:
            for i, ts in enumerate(stamps):
                entry = make_entry("example.com", pid=f"p{ts}", fetched_at=ts)
                group.create_task(caches[i % 3].put(entry))
        got = await caches[0].get("example.com")
        assert got is not None
        assert got.checked_at == max(stamps)
        assert got.policy_id == f"p{max(stamps)}"


# --------------------------------------------------------------------------
# Outages


async def _raises_unavailable_quickly(
    call: Callable[[], Awaitable[object]], limit: float = 3.0
) -> CacheUnavailable:
    started = time.monotonic()
    with pytest.raises(CacheUnavailable) as info:
        await call()
    assert time.monotonic() - started < limit
    return info.value


@pytest.fixture
async def short_cache(own_redis: RedisServer) -> AsyncIterator[RedisCache]:
    """A cache on the test's own server, its timeouts short so that an outage shows at once."""
    cache = RedisCache(_redis_options(own_redis, timeouts=SHORT))
    await cache.setup()
    yield cache
    await cache.close()


async def _serves_again(cache: Cache) -> None:
    """The server is back, empty: the same cache object works straight away
    (a dead pooled connection is noticed and replaced)."""
    assert await cache.get("example.com") is None
    entry = make_entry("example.com")
    await cache.put(entry)
    assert_same(await cache.get("example.com"), entry)


async def test_server_down_at_setup_then_up(own_redis: RedisServer) -> None:
    own_redis.kill()
    cache = RedisCache(_redis_options(own_redis, timeouts=SHORT))
    await cache.setup()  # lazy: no connection yet
    try:
        error = await _raises_unavailable_quickly(lambda: cache.get("example.com"))
        assert isinstance(error.__cause__, redis.exceptions.ConnectionError)
        own_redis.start()
        await _serves_again(cache)
    finally:
        await cache.close()


async def test_killed_server_then_restarted(
    own_redis: RedisServer, short_cache: RedisCache
) -> None:
    cache = short_cache
    await cache.put(make_entry("example.com"))
    own_redis.kill()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: cache.get("example.com"),
        lambda: cache.put(make_entry("example.net")),
        lambda: cache.delete("example.com"),
        lambda: collect(cache, 10),
        cache.purge,
        lambda: cache.prune(time.time()),
        cache.get_proactive_ts,
        lambda: cache.set_proactive_ts(1.0),
        lambda: cache.get_failure("example.com"),
        lambda: cache.put_failure(make_failure("example.com")),
        lambda: cache.delete_failure("example.com"),
        lambda: cache.acquire_lease("refresh", "a", 60),
        lambda: cache.release_lease("refresh", "a"),
    ]
    for call in calls:
        await _raises_unavailable_quickly(call)
    own_redis.start()  # same port, no persistence: an empty server
    await _serves_again(cache)


async def test_frozen_server_times_out_then_recovers(
    own_redis: RedisServer, short_cache: RedisCache
) -> None:
    cache = short_cache
    await cache.put(make_entry("example.com"))
    own_redis.pause()
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: cache.get("example.com"),
            lambda: cache.put(make_entry("example.net")),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(CacheUnavailable):
                await call()
            elapsed = time.monotonic() - started
            assert SHORT["socket_timeout"] * 0.8 <= elapsed < 3.0
    finally:
        own_redis.resume()
    # Frozen, not restarted: what it held is still there.
    assert await cache.get("example.com") is not None
    await cache.put(make_entry("example.net"))
    assert await cache.get("example.net") is not None


async def test_sentinel_master_down_then_back(tmp_path: Path) -> None:
    master = _new_server(tmp_path / "master")
    sentinel: RedisSentinel | None = None
    try:
        sentinel = _new_sentinel(tmp_path / "sentinel", master, down_after=300)
        cache = RedisSentinelCache(_sentinel_options(sentinel, timeouts=SHORT))
        await cache.setup()
        try:
            await cache.put(make_entry("example.com"))
            master.kill()
            await _raises_unavailable_quickly(lambda: cache.get("example.com"))
            # Once the sentinel sees the master down it no longer names it.
            deadline = time.monotonic() + 10
            while not sentinel.master_down():
                assert time.monotonic() < deadline, "sentinel never noticed the master down"
                await asyncio.sleep(0.05)
            error = await _raises_unavailable_quickly(lambda: cache.put(make_entry("example.net")))
            assert isinstance(error.__cause__, redis.asyncio.sentinel.MasterNotFoundError)
            master.start()
            # The sentinel clears its "down" flag after its next ping.
            deadline = time.monotonic() + 10
            while True:
                try:
                    await cache.put(make_entry("example.org"))
                    break
                except CacheUnavailable:
                    assert time.monotonic() < deadline, "the cache never came back"
                    await asyncio.sleep(0.05)
            assert await cache.get("example.org") is not None
        finally:
            await cache.close()
    finally:
        if sentinel is not None:
            sentinel.stop()
        master.stop()


async def test_no_sentinel_reachable(own_redis: RedisServer) -> None:
    own_redis.kill()  # nothing listens on its port now
    cache = RedisSentinelCache(
        {"sentinels": (("127.0.0.1", own_redis.port),), "sentinel_master_name": "mtasts"} | SHORT
    )
    await cache.setup()
    try:
        error = await _raises_unavailable_quickly(lambda: cache.get("example.com"))
        assert isinstance(error.__cause__, redis.asyncio.sentinel.MasterNotFoundError)
    finally:
        await cache.close()


# --------------------------------------------------------------------------
# Options and configuration


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        pytest.param(
            lambda: RedisCache({"url": "redis://127.0.0.1/0", "socket_timout": 1}),
            "socket_timout",
            id="redis-misspelt-option",
        ),
        pytest.param(
            lambda: RedisSentinelCache(
                {"sentinels": (("127.0.0.1", 1),), "sentinel_master_name": "m", "sockettimeout": 1}
            ),
            "sockettimeout",
            id="sentinel-misspelt-option",
        ),
        pytest.param(
            lambda: RedisSentinelCache(
                {
                    "sentinels": (("127.0.0.1", 1),),
                    "sentinel_master_name": "m",
                    "sentinel_kwargs": ["password"],
                }
            ),
            "sentinel_kwargs",
            id="sentinel-kwargs-not-a-mapping",
        ),
        pytest.param(
            lambda: RedisSentinelCache(
                {
                    "sentinels": (("127.0.0.1", 1),),
                    "sentinel_master_name": "m",
                    "sentinel_kwargs": {"passwd": "x"},
                }
            ),
            "passwd",
            id="sentinel-kwargs-misspelt-option",
        ),
    ],
)
async def test_bad_options_fail_at_start(make: Callable[[], Cache], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"ssl": True, "ssl_cert_reqs": "none"}, id="tls"),
        pytest.param({"check_connection": True}, id="check-connection"),
        pytest.param({"sentinel_kwargs": {"password": "s3cret"}}, id="sentinel-password"),
    ],
)
async def test_sentinel_pool_options_accepted(options: dict[str, Any]) -> None:
    # Options of redis-py's sentinel pool, not of a connection: not typos.
    base = {"sentinels": (("127.0.0.1", 1),), "sentinel_master_name": "m"}
    RedisSentinelCache(base | options)


async def test_using_a_cache_before_setup_is_a_bug() -> None:
    cache = RedisCache({"url": "redis://127.0.0.1/0"})
    with pytest.raises(RuntimeError, match="setup"):
        await cache.get("example.com")
    with pytest.raises(RuntimeError, match="setup"):
        await cache.put(make_entry("example.com"))


async def test_a_closed_cache_is_unavailable(cache: RedisCache) -> None:
    await cache.close()
    with pytest.raises(CacheUnavailable, match="closed"):
        await cache.get("example.com")
    await cache.close()  # twice is harmless


@pytest.mark.parametrize(
    ("example", "backend"),
    [
        pytest.param("redis.yml", RedisCache, id="redis"),
        pytest.param("redis_sentinel.yml", RedisSentinelCache, id="redis_sentinel"),
    ],
)
async def test_config_examples_load(example: str, backend: type[Cache]) -> None:
    config = Config.from_yaml(EXAMPLES / example)
    assert config.cache.type == example.removesuffix(".yml")
    assert isinstance(create_cache(config.cache, config.filename), backend)


async def test_factory_builds_working_caches(
    redis_server: RedisServer, sentinel_group: tuple[RedisServer, RedisSentinel]
) -> None:
    redis_server.command("FLUSHALL")
    master, sentinel = sentinel_group
    master.command("FLUSHALL")
    host, port = sentinel.address
    for data in (
        {"cache": {"type": "redis", "options": {"url": redis_server.url(1)}}},
        {
            "cache": {
                "type": "redis_sentinel",
                "options": {
                    "sentinels": [[host, port]],
                    "sentinel_master_name": sentinel.master_name,
                },
            }
        },
    ):
        config = Config.from_mapping(data)
        cache = create_cache(config.cache, config.filename)
        await cache.setup()
        try:
            entry = make_entry("example.com")
            await cache.put(entry)
            assert_same(await cache.get("example.com"), entry)
        finally:
            await cache.close()
