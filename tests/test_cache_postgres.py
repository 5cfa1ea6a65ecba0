"""The ``postgres`` backend against a throwaway PostgreSQL cluster (tests/servers/postgres.py).

Each test gets a database of its own in one cluster started for the session.
Outage tests stop, restart or freeze that cluster, and always bring it back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest

from mtasts_fast.cache import create_cache
from mtasts_fast.cache.base import Cache, CacheUnavailable
from mtasts_fast.cache.postgres import RETRY_INTERVAL, PostgresCache
from mtasts_fast.config import Config
from mtasts_fast.errors import ConfigError
from tests.cache_contract import (
    CachePeer,
    PersistentCacheContract,
    collect,
    make_dane,
    make_entry,
    make_failure,
)
from tests.servers.postgres import PostgresServer, PostgresUnavailable
from tests.sql_contract import SqlTablesContract

EXAMPLE = Path(__file__).resolve().parent.parent / "config_examples" / "postgres.yml"

pytestmark = pytest.mark.usefixtures("collect_garbage")


_T = TypeVar("_T")
_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster on 127.0.0.1 for the whole session.

    Skipped when the server binaries are missing, unless
    ``MTASTS_REQUIRE_ALL=1``, which turns the skip into a failure.
    """
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        if os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0"):
            pytest.fail(f"PostgreSQL unavailable and MTASTS_REQUIRE_ALL is set: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        server.start()
        yield server
    finally:
        server.close()


async def admin(server: PostgresServer, *statements: str, database: str = "postgres") -> None:
    conn = await asyncpg.connect(server.dsn(database))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def query(server: PostgresServer, database: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(server.dsn(database))
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


@pytest.fixture
async def database(postgres_server: PostgresServer) -> AsyncIterator[str]:
    name = f"mtasts_{os.getpid()}_{next(_names)}"
    await admin(postgres_server, f'CREATE DATABASE "{name}"')
    yield name
    await admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def options(server: PostgresServer, database: str, **overrides: Any) -> dict[str, Any]:
    return {
        "dsn": server.dsn(database),
        "timeout": 5.0,
        "min_size": 1,
        "max_size": 4,
        **overrides,
    }


async def open_cache(server: PostgresServer, database: str, **overrides: Any) -> PostgresCache:
    cache = PostgresCache(options(server, database, **overrides))
    await cache.setup()
    return cache


async def timed(call: Awaitable[_T]) -> tuple[float, _T | BaseException]:
    started = time.monotonic()
    try:
        result: _T | BaseException = await call
    except Exception as exc:
        result = exc
    return time.monotonic() - started, result


async def eventually(call: Any, within: float) -> Any:
    """Retry ``call()`` while it raises CacheUnavailable, for up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except CacheUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.both_loops
class TestPostgresCache(PersistentCacheContract):
    @pytest.fixture
    async def cache(
        self, postgres_server: PostgresServer, database: str
    ) -> AsyncIterator[PostgresCache]:
        self.options = options(postgres_server, database)
        cache = PostgresCache(self.options)
        await cache.setup()
        yield cache
        await cache.close()

    async def reopen(self, cache: Cache) -> Cache:
        await cache.close()
        again = PostgresCache(self.options)
        await again.setup()
        return again

    async def open_peer(self, cache: Cache) -> CachePeer:
        # Its own pool of connections: what another host has.
        peer = PostgresCache(self.options)
        await peer.setup()
        return peer


# --- tables --------------------------------------------------------------------------

OLD_SCHEMA = (
    "CREATE TABLE proactive_fetch_ts (id serial primary key, last_fetch_ts integer)",
    "CREATE TABLE sts_policy_cache (id serial primary key, domain text, ts integer,"
    " pol_id text, pol_body jsonb)",
    "CREATE UNIQUE INDEX sts_policy_domain ON sts_policy_cache (domain)",
    "CREATE INDEX sts_policy_domain_ts ON sts_policy_cache (domain, ts)",
    "INSERT INTO proactive_fetch_ts (last_fetch_ts) VALUES (1000)",
    "INSERT INTO sts_policy_cache (domain, ts, pol_id, pol_body) VALUES"
    """ ('example.com', 0, 'old', '{"mode": "enforce"}'), ('other.example', 0, 'old', '{}')""",
)
OLD_ROWS = (
    "SELECT domain, ts, pol_id, pol_body::text FROM sts_policy_cache"
    " UNION ALL SELECT 'ts', last_fetch_ts, NULL, NULL FROM proactive_fetch_ts ORDER BY 1"
)


@pytest.mark.parametrize(
    ("table", "column"),
    [
        pytest.param("mtasts_policy", "expires_at", id="policy"),
        pytest.param("mtasts_failures", "retry_at", id="failure"),
        pytest.param("mtasts_dane", "expires_at", id="dane-state"),
    ],
)
async def test_prune_deletes_through_an_index(
    postgres_server: PostgresServer, database: str, table: str, column: str
) -> None:
    cache = await open_cache(postgres_server, database)
    try:
        await cache.get("example.com")  # makes the tables
    finally:
        await cache.close()
    # prune is one DELETE per table that can use an index (the planner
    # prefers a scan of a table this small, unless told otherwise).
    conn = await asyncpg.connect(postgres_server.dsn(database))
    try:
        await conn.execute("SET enable_seqscan = off")
        plan = await conn.fetch(f"EXPLAIN (COSTS OFF) DELETE FROM {table} WHERE {column} < 5")
    finally:
        await conn.close()
    assert f"{table}_{column}" in " ".join(row[0] for row in plan)


async def test_a_dropped_table_is_made_again(
    postgres_server: PostgresServer, database: str
) -> None:
    cache = await open_cache(postgres_server, database)
    try:
        await cache.put(make_entry("example.com"))
        await admin(postgres_server, "DROP TABLE mtasts_policy", database=database)
        with pytest.raises(CacheUnavailable):
            await cache.get("example.com")
        assert await eventually(lambda: cache.get("example.com"), 5.0) is None
        await cache.put(make_entry("example.com"))
        assert await cache.get("example.com") is not None
    finally:
        await cache.close()


# The tables of the first release, before failure records and leases.
FIRST_RELEASE_SCHEMA = (
    """CREATE TABLE mtasts_policy (
        domain TEXT COLLATE "C" PRIMARY KEY,
        checked_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        entry BYTEA NOT NULL
    )""",
    "CREATE INDEX mtasts_policy_expires_at ON mtasts_policy (expires_at)",
    "CREATE TABLE mtasts_meta (name TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL)",
)


async def test_stored_lease_row(postgres_server: PostgresServer, database: str) -> None:
    cache = await open_cache(postgres_server, database)
    try:
        assert await cache.acquire_lease("refresh", "host-1:42", 60.0)
    finally:
        await cache.close()
    # The expiry is on the server's clock.
    leases = await query(
        postgres_server,
        database,
        "SELECT name, owner, expires_at - extract(epoch FROM now())::double precision"
        " FROM mtasts_leases",
    )
    [(name, owner, left)] = leases
    assert (name, owner) == ("refresh", "host-1:42")
    assert 50.0 < left <= 60.0


async def test_a_host_whose_clock_runs_ahead_cannot_take_a_lease_early(
    postgres_server: PostgresServer, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hosts of a fleet may disagree about the time; the server's clock decides.
    one = await open_cache(postgres_server, database)
    two = await open_cache(postgres_server, database)
    try:
        assert await one.acquire_lease("refresh", "one", 60)
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
        assert not await two.acquire_lease("refresh", "two", 60)
        monkeypatch.undo()
        assert await one.acquire_lease("refresh", "one", 60)
    finally:
        await one.close()
        await two.close()


# The tables of the previous release, before DANE states.
PREVIOUS_RELEASE_SCHEMA = (
    *FIRST_RELEASE_SCHEMA,
    """CREATE TABLE mtasts_failures (
        domain TEXT COLLATE "C" PRIMARY KEY,
        data BYTEA NOT NULL,
        retry_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX mtasts_failures_retry_at ON mtasts_failures (retry_at)",
    """CREATE TABLE mtasts_leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
)


class TestPostgresTables(SqlTablesContract):
    old_daemon_schema = OLD_SCHEMA
    old_daemon_rows = OLD_ROWS
    first_release_schema = FIRST_RELEASE_SCHEMA
    previous_release_schema = PREVIOUS_RELEASE_SCHEMA

    @pytest.fixture(autouse=True)
    def _database(self, postgres_server: PostgresServer, database: str) -> None:
        self.server = postgres_server
        self.database = database

    @pytest.fixture(
        params=[
            pytest.param(b"\xc1garbage", id="not-msgpack"),
            pytest.param(b"\x93\x02\x01\x02", id="other-format"),
            pytest.param(b"", id="empty"),
        ]
    )
    def undecodable(self, request: pytest.FixtureRequest) -> object:
        return request.param

    async def open_cache(self) -> Cache:
        return await open_cache(self.server, self.database)

    async def execute(self, sql: str, *args: object) -> None:
        # asyncpg numbers its parameters: $1, $2...
        parts = sql.split("?")
        numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
        conn = await asyncpg.connect(self.server.dsn(self.database))
        try:
            await conn.execute(numbered, *args)
        finally:
            await conn.close()

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return await query(self.server, self.database, sql)

    async def relations(self) -> set[str]:
        rows = await self.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        )
        return {name for (name,) in rows}


# --- a fleet on one database ------------------------------------------------------------


async def test_two_hosts_see_each_others_writes_and_the_newer_check_wins(
    postgres_server: PostgresServer, database: str
) -> None:
    one = await open_cache(postgres_server, database)
    two = await open_cache(postgres_server, database)
    try:
        await one.put(make_entry("a.example", pid="one", fetched_at=1000.0))
        got = await two.get("a.example")
        assert got is not None
        assert got.policy_id == "one"

        # Newer first, older last: the older write is refused...
        await one.put(make_entry("b.example", pid="new", fetched_at=1000.0, checked_at=2000.0))
        await two.put(make_entry("b.example", pid="old", fetched_at=1000.0, checked_at=1500.0))
        # ...older first, newer last: the newer write replaces it.
        await two.put(make_entry("c.example", pid="old", fetched_at=1000.0, checked_at=1500.0))
        await one.put(make_entry("c.example", pid="new", fetched_at=1000.0, checked_at=2000.0))
        for cache in (one, two):
            for domain in ("b.example", "c.example"):
                got = await cache.get(domain)
                assert got is not None
                assert got.policy_id == "new", (cache, domain)

        await two.set_proactive_ts(77.0)
        assert await one.get_proactive_ts() == 77.0
        assert await two.delete("a.example") is True
        assert await one.get("a.example") is None
    finally:
        await one.close()
        await two.close()


async def test_hosts_starting_together_make_the_schema_once(
    postgres_server: PostgresServer, database: str
) -> None:
    caches = [PostgresCache(options(postgres_server, database)) for _ in range(10)]
    try:
        await asyncio.gather(*(cache.setup() for cache in caches))
        await asyncio.gather(
            *(cache.put(make_entry(f"h{n}.example")) for n, cache in enumerate(caches))
        )
        batches = await collect(caches[0], 100)
        assert len(batches[0]) == 10
    finally:
        for cache in caches:
            await cache.close()
    tables = await query(
        postgres_server,
        database,
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'mtasts%' ORDER BY 1",
    )
    assert tables == [
        ("mtasts_dane",),
        ("mtasts_failures",),
        ("mtasts_leases",),
        ("mtasts_meta",),
        ("mtasts_policy",),
    ]


async def test_a_role_without_create_rights_uses_tables_made_for_it(
    postgres_server: PostgresServer, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    role = f"limited_{database}"
    await admin(postgres_server, f'CREATE ROLE "{role}" LOGIN')
    # A fresh database, no tables, and no right to make them.
    await admin(postgres_server, "REVOKE CREATE ON SCHEMA public FROM PUBLIC", database=database)
    with caplog.at_level(logging.WARNING, logger="mtasts_fast.cache.postgres"):
        cache = await open_cache(postgres_server, database, user=role)
    try:
        assert "permission denied" in caplog.text
        with pytest.raises(CacheUnavailable):
            await cache.get("example.com")
    finally:
        await cache.close()
    # An administrator makes them (here: a cache running as the owner).
    owner = await open_cache(postgres_server, database)
    await owner.close()
    await admin(
        postgres_server,
        "GRANT SELECT, INSERT, UPDATE, DELETE"
        " ON mtasts_policy, mtasts_meta, mtasts_failures, mtasts_leases, mtasts_dane"
        f' TO "{role}"',
        database=database,
    )
    cache = await open_cache(postgres_server, database, user=role)
    try:
        await cache.put(make_entry("example.com"))
        assert await cache.get("example.com") is not None
        await cache.set_proactive_ts(5.0)
        assert await cache.get_proactive_ts() == 5.0
        failure = make_failure("example.com")
        await cache.put_failure(failure)
        assert await cache.get_failure("example.com") == failure
        assert await cache.acquire_lease("refresh", "a", 60)
        await cache.put_dane(make_dane("example.com"))
        assert await cache.get_dane("example.com") is not None
        assert await cache.prune(time.time()) == 0
        assert await cache.purge() == 1
        assert await cache.get_dane("example.com") is None
    finally:
        await cache.close()


# --- options -----------------------------------------------------------------------------


async def test_unix_socket_dsn(postgres_server: PostgresServer, database: str) -> None:
    cache = await open_cache(postgres_server, database, dsn=postgres_server.socket_dsn(database))
    try:
        await cache.put(make_entry("example.com"))
        assert await cache.get("example.com") is not None
    finally:
        await cache.close()


async def test_options_other_than_timeout_go_to_the_pool(
    postgres_server: PostgresServer, database: str
) -> None:
    name = f"mtasts-test-{database}"
    cache = await open_cache(
        postgres_server,
        database,
        min_size=3,
        max_size=3,
        server_settings={"application_name": name},
    )
    try:
        rows = await query(
            postgres_server,
            database,
            f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'",
        )
        assert rows == [(3,)]
    finally:
        await cache.close()


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        pytest.param("sslmod", "did you mean 'ssl'", id="misspelt"),
        pytest.param("setup", "", id="hook-not-from-yaml"),
    ],
)
def test_unknown_options_are_a_config_error(key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresCache({"dsn": "postgresql://x/y", key: "z"}, "/etc/mta-sts-daemon.yml")
    message = str(caught.value)
    assert message.startswith(f"/etc/mta-sts-daemon.yml: cache.options.{key}: ")
    assert hint in message


async def test_pool_options_asyncpg_refuses_make_calls_fail() -> None:
    # Checked by asyncpg only when the pool is made: logged, never a crash.
    cache = PostgresCache({"dsn": "postgresql://127.0.0.1:1/x", "max_queries": 0})
    await cache.setup()
    try:
        with pytest.raises(CacheUnavailable, match="max_queries"):
            await cache.get("example.com")
    finally:
        await cache.close()


async def test_closed_cache_is_unavailable(postgres_server: PostgresServer, database: str) -> None:
    cache = await open_cache(postgres_server, database)
    await cache.close()
    await cache.close()
    with pytest.raises(CacheUnavailable, match="closed"):
        await cache.get("example.com")


def test_example_config_names_the_postgres_cache() -> None:
    config = Config.from_yaml(EXAMPLE)
    assert config.cache.type == "postgres"
    assert config.cache.options["dsn"] == "postgres://mta@%2Frun%2Fpostgresql/mta"
    assert config.cache.options["timeout"] == 5
    assert isinstance(create_cache(config.cache, config.filename), PostgresCache)


# --- outages -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_server_down_at_start_then_up(
    postgres_server: PostgresServer, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    postgres_server.stop()
    try:
        cache = PostgresCache(options(postgres_server, database, timeout=2.0))
        with caplog.at_level(logging.WARNING, logger="mtasts_fast.cache.postgres"):
            elapsed, _ = await timed(cache.setup())
        assert elapsed < 2.5
        assert "postgres cache unavailable" in caplog.text
        elapsed, result = await timed(cache.get("example.com"))
        assert isinstance(result, CacheUnavailable)
        assert elapsed < 0.5
    finally:
        postgres_server.restart()
    try:
        # The tables are made by the first call that gets through.
        with caplog.at_level(logging.WARNING, logger="mtasts_fast.cache.postgres"):
            assert await eventually(lambda: cache.get("example.com"), RETRY_INTERVAL + 5) is None
        assert "postgres cache available again" in caplog.text
        await cache.put(make_entry("example.com"))
        assert await cache.get("example.com") is not None
    finally:
        await cache.close()


@pytest.mark.slow
async def test_server_stopped_and_restarted(postgres_server: PostgresServer, database: str) -> None:
    cache = await open_cache(postgres_server, database, timeout=2.0, min_size=2)
    try:
        await cache.put(make_entry("example.com"))
        postgres_server.stop()
        try:
            for call in (
                cache.get("example.com"),
                cache.put(make_entry("other.example")),
                cache.get("example.com"),
                cache.set_proactive_ts(1.0),
                cache.get_failure("example.com"),
                cache.put_failure(make_failure("example.com")),
                cache.acquire_lease("refresh", "a", 60),
                cache.release_lease("refresh", "a"),
            ):
                elapsed, result = await timed(call)
                assert isinstance(result, CacheUnavailable), result
                assert elapsed < 2.5
        finally:
            postgres_server.restart()
        got = await eventually(lambda: cache.get("example.com"), RETRY_INTERVAL + 5)
        assert got is not None
        await cache.put(make_entry("other.example"))
        assert await cache.get("other.example") is not None
    finally:
        await cache.close()


@pytest.mark.slow
async def test_hung_server_costs_one_timeout_then_calls_fail_at_once(
    postgres_server: PostgresServer, database: str
) -> None:
    cache = await open_cache(postgres_server, database, timeout=1.0)
    try:
        await cache.put(make_entry("example.com"))
        with postgres_server.frozen():
            elapsed, result = await timed(cache.get("example.com"))
            assert isinstance(result, CacheUnavailable), result
            assert "no answer within 1 s" in str(result)
            assert 0.8 <= elapsed < 2.0
            elapsed, result = await timed(cache.put(make_entry("example.com")))
            assert isinstance(result, CacheUnavailable), result
            assert elapsed < 0.2
        got = await eventually(lambda: cache.get("example.com"), RETRY_INTERVAL + 5)
        assert got is not None
        for _ in range(5):  # connections are usable again, not left mid-statement
            await cache.put(make_entry("example.com"))
            assert await cache.get("example.com") is not None
    finally:
        await cache.close()


@pytest.mark.slow
async def test_server_that_never_answers_at_start() -> None:
    with socket.socket() as listener:
        # Connections complete in the kernel's backlog; nobody ever reads them.
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        cache = PostgresCache({"dsn": f"postgresql://x@127.0.0.1:{port}/x", "timeout": 1.0})
        try:
            elapsed, _ = await timed(cache.setup())
            assert 0.8 <= elapsed < 2.0
            elapsed, result = await timed(cache.get("example.com"))
            assert isinstance(result, CacheUnavailable)
            assert elapsed < 0.2
            # After the retry interval one call tries again (and waits); the
            # others fail at once meanwhile.
            await asyncio.sleep(RETRY_INTERVAL)
            results = await asyncio.gather(*(timed(cache.get("example.com")) for _ in range(5)))
            assert all(isinstance(r, CacheUnavailable) for _, r in results)
            times = sorted(t for t, _ in results)
            assert times[-1] >= 0.8
            assert times[-2] < 0.2
        finally:
            await cache.close()
