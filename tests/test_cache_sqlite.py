"""The ``sqlite`` backend: the shared contract, the file, locks held by other processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mtasts_fast.cache import create_cache
from mtasts_fast.cache.base import Cache, CacheUnavailable
from mtasts_fast.cache.sqlite import FILE_MODE, SqliteCache
from mtasts_fast.config import Config
from tests.cache_contract import (
    CachePeer,
    PersistentCacheContract,
    collect,
    make_dane,
    make_entry,
    make_failure,
)
from tests.sql_contract import SqlTablesContract

pytestmark = pytest.mark.usefixtures("collect_garbage")


ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config_examples" / "sqlite.yml"


def options(path: Path, **overrides: Any) -> dict[str, Any]:
    return {"filename": str(path), "threads": 2, "timeout": 5.0, **overrides}


async def open_cache(path: Path, **overrides: Any) -> SqliteCache:
    cache = SqliteCache(options(path, **overrides))
    await cache.setup()
    return cache


@pytest.mark.both_loops
class TestSqliteCache(PersistentCacheContract):
    @pytest.fixture
    async def cache(self, tmp_path: Path) -> AsyncIterator[SqliteCache]:
        self.path = tmp_path / "cache.db"
        cache = await open_cache(self.path)
        yield cache
        await cache.close()

    async def reopen(self, cache: Cache) -> Cache:
        await cache.close()
        return await open_cache(self.path)

    async def open_peer(self, cache: Cache) -> CachePeer:
        # Its own connections and threads: what another worker has.
        return await open_cache(self.path)


# --- another process holding a lock ------------------------------------------

_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
for statement in sys.argv[2:]:
    conn.execute(statement).fetchall()
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def lock_held(path: Path, *statements: str) -> Iterator[None]:
    """Another process runs ``statements`` on ``path`` and keeps its locks until exit."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), *statements],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()


async def fails_within(call: Any, low: float, high: float) -> str:
    started = time.monotonic()
    with pytest.raises(CacheUnavailable) as caught:
        await call
    elapsed = time.monotonic() - started
    assert low <= elapsed <= high, elapsed
    return str(caught.value)


async def test_write_lock_held_elsewhere_fails_writes_in_time_reads_go_on(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = await open_cache(path, timeout=0.5)
    try:
        await cache.put(make_entry("kept.example"))
        await cache.put_failure(make_failure("kept.example"))
        await cache.put_dane(make_dane("kept.example"))
        with lock_held(path, "BEGIN EXCLUSIVE"):
            message = await fails_within(cache.put(make_entry("new.example")), 0.3, 2.0)
            assert str(path) in message
            await fails_within(cache.delete("kept.example"), 0.3, 2.0)
            await fails_within(cache.prune(time.time()), 0.3, 2.0)
            await fails_within(cache.set_proactive_ts(1.0), 0.3, 2.0)
            await fails_within(cache.put_failure(make_failure("new.example")), 0.3, 2.0)
            await fails_within(cache.acquire_lease("refresh", "a", 60), 0.3, 2.0)
            await fails_within(cache.release_lease("refresh", "a"), 0.3, 2.0)
            await fails_within(cache.put_dane(make_dane("new.example")), 0.3, 2.0)
            await fails_within(cache.delete_dane("kept.example"), 0.3, 2.0)
            # WAL: readers do not wait for a writer, even an exclusive one.
            assert await cache.get("kept.example") is not None
            assert await cache.get_failure("kept.example") is not None
            assert await cache.get_dane("kept.example") is not None
            assert [len(b) for b in await collect(cache, 10)] == [1]
        await cache.put(make_entry("new.example"))
        assert await cache.get("new.example") is not None
    finally:
        await cache.close()


async def test_file_locked_at_start_then_released(tmp_path: Path) -> None:
    # A process in exclusive locking mode keeps every other connection out,
    # readers included. Starting meanwhile is not an error; calls fail in
    # time, and work once the lock is gone (the tables are made then).
    path = tmp_path / "cache.db"
    with lock_held(
        path,
        "PRAGMA journal_mode=WAL",
        "PRAGMA locking_mode=EXCLUSIVE",
        "CREATE TABLE other (x)",
    ):
        started = time.monotonic()
        cache = await open_cache(path, timeout=0.5)
        assert time.monotonic() - started < 2.0
        try:
            await fails_within(cache.get("example.com"), 0.3, 2.0)
            await fails_within(cache.put(make_entry("example.com")), 0.3, 2.0)
        except BaseException:
            await cache.close()
            raise
    try:
        await cache.put(make_entry("example.com"))
        assert await cache.get("example.com") is not None
    finally:
        await cache.close()


async def test_calls_queued_for_a_connection_keep_their_deadline(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = await open_cache(path, threads=1, timeout=0.5)
    try:
        with lock_held(path, "BEGIN EXCLUSIVE"):
            started = time.monotonic()
            results = await asyncio.gather(
                *(cache.put(make_entry(f"d{i}.example")) for i in range(4)),
                return_exceptions=True,
            )
            assert all(isinstance(r, CacheUnavailable) for r in results), results
            assert time.monotonic() - started < 1.5
        await cache.put(make_entry("after.example"))  # the connection came back
    finally:
        await cache.close()


# --- the file ------------------------------------------------------------------


async def test_new_file_mode_and_journal(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    old_umask = os.umask(0)
    try:
        cache = await open_cache(path)
    finally:
        os.umask(old_umask)
    try:
        await cache.put(make_entry("example.com"))
        for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == FILE_MODE == 0o640, name
        with contextlib.closing(sqlite3.connect(path)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        synchronous = await cache._run(lambda conn: conn.execute("PRAGMA synchronous").fetchall())
        assert synchronous == [(1,)]  # NORMAL
    finally:
        await cache.close()


async def test_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    cache = await open_cache(path)
    await cache.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(lambda p: p / "missing" / "cache.db", "does not exist", id="no-directory"),
        pytest.param(
            lambda p: (p / "garbage.db").write_bytes(b"not a database " * 100) and p / "garbage.db",
            "not a database",
            id="not-a-database",
        ),
        pytest.param(lambda p: p, "", id="a-directory"),
    ],
)
async def test_unusable_file_fails_setup_clearly(tmp_path: Path, make: Any, expected: str) -> None:
    path = make(tmp_path)
    cache = SqliteCache(options(path))
    with pytest.raises(CacheUnavailable) as caught:
        await cache.setup()
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)
    with pytest.raises(CacheUnavailable):
        await cache.get("example.com")


async def test_closed_cache_is_unavailable(tmp_path: Path) -> None:
    cache = await open_cache(tmp_path / "cache.db")
    await cache.close()
    await cache.close()
    with pytest.raises(CacheUnavailable):
        await cache.get("example.com")


# --- rows ------------------------------------------------------------------------

# postgresql-mta-sts-resolver's table, left alone beside ours.
OLD_SCHEMA = (
    "CREATE TABLE proactive_fetch_ts (id integer primary key, last_fetch_ts integer)",
    "CREATE TABLE sts_policy_cache (domain text, ts integer, pol_id text, pol_body text)",
    "CREATE UNIQUE INDEX sts_policy_domain ON sts_policy_cache (domain)",
    "CREATE INDEX sts_policy_domain_ts ON sts_policy_cache (domain, ts)",
    "INSERT INTO proactive_fetch_ts VALUES (1, 1000)",
    "INSERT INTO sts_policy_cache VALUES ('example.com', 0, 'old', '{\"mode\": \"enforce\"}')",
    "INSERT INTO sts_policy_cache VALUES ('other.example', 0, 'old', '{}')",
)


# The tables of the first release, before failure records and leases.
FIRST_RELEASE_SCHEMA = (
    """CREATE TABLE mtasts_policy (
        domain TEXT NOT NULL PRIMARY KEY,
        checked_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        entry BLOB NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX mtasts_policy_expires_at ON mtasts_policy (expires_at)",
    "CREATE TABLE mtasts_meta (name TEXT NOT NULL PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID",
)


async def test_stored_lease_row(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = await open_cache(path)
    try:
        before = time.time()
        assert await cache.acquire_lease("refresh", "host-1:42", 60.0)
        after = time.time()
    finally:
        await cache.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        leases = conn.execute("SELECT name, owner, expires_at FROM mtasts_leases").fetchall()
    [(name, owner, expires_at)] = leases
    assert (name, owner) == ("refresh", "host-1:42")
    assert before + 60.0 <= expires_at <= after + 60.0  # wall-clock seconds


# The tables of the previous release, before DANE states.
PREVIOUS_RELEASE_SCHEMA = (
    *FIRST_RELEASE_SCHEMA,
    """CREATE TABLE mtasts_failures (
        domain TEXT NOT NULL PRIMARY KEY,
        data BLOB NOT NULL,
        retry_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX mtasts_failures_retry_at ON mtasts_failures (retry_at)",
    """CREATE TABLE mtasts_leases (
        name TEXT NOT NULL PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
)


class TestSqliteTables(SqlTablesContract):
    old_daemon_schema = OLD_SCHEMA
    old_daemon_rows = (
        "SELECT domain, ts, pol_id, pol_body FROM sts_policy_cache"
        " UNION ALL SELECT 'ts', last_fetch_ts, NULL, NULL FROM proactive_fetch_ts ORDER BY 1"
    )
    first_release_schema = FIRST_RELEASE_SCHEMA
    previous_release_schema = PREVIOUS_RELEASE_SCHEMA

    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "cache.db"

    @pytest.fixture(
        params=[
            pytest.param(b"\xc1garbage", id="not-msgpack"),
            pytest.param(b"\x93\x02\x01\x02", id="other-format"),
            pytest.param("text, not bytes", id="text-value"),
            pytest.param(42, id="integer-value"),
        ]
    )
    def undecodable(self, request: pytest.FixtureRequest) -> object:
        return request.param

    async def open_cache(self) -> Cache:
        return await open_cache(self.path)

    async def execute(self, sql: str, *args: object) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            conn.execute(sql, args)
            conn.commit()

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            return conn.execute(sql).fetchall()

    async def relations(self) -> set[str]:
        return {name for (name,) in await self.fetch("SELECT name FROM sqlite_master")}


# --- several workers on one file -------------------------------------------------

_WORKER = """
import asyncio, sys
from mtasts_fast.cache.sqlite import SqliteCache
from tests.cache_contract import make_entry

async def main():
    cache = SqliteCache({"filename": sys.argv[1], "threads": 2, "timeout": 20.0})
    await cache.setup()
    try:
        for i in range(20):
            await cache.put(make_entry(f"w{sys.argv[2]}-{i}.example"))
    finally:
        await cache.close()

print("ready", flush=True)
sys.stdin.readline()  # the start line: every worker opens the new file at once
asyncio.run(main())
"""


@pytest.mark.slow
def test_workers_starting_together_on_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(n)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "ready\n"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        codes = [worker.wait(60) for worker in workers]
    finally:
        for worker in workers:
            for stream in (worker.stdin, worker.stdout):
                if stream is not None:
                    stream.close()
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert codes == [0] * 6
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM mtasts_policy").fetchone() == (6 * 20,)


async def test_caches_of_one_process_starting_together(tmp_path: Path) -> None:
    caches = [SqliteCache(options(tmp_path / "cache.db")) for _ in range(6)]
    await asyncio.gather(*(cache.setup() for cache in caches))
    try:
        await asyncio.gather(
            *(cache.put(make_entry(f"c{n}.example")) for n, cache in enumerate(caches))
        )
        batches = await collect(caches[-1], 1000)
        assert len(batches[0]) == 6
    finally:
        for cache in caches:
            await cache.close()


def _busy(message: str = "database is locked") -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = sqlite3.SQLITE_BUSY
    exc.sqlite_errorname = "SQLITE_BUSY"
    return exc


async def test_tables_are_created_once_the_lock_the_busy_handler_skipped_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When processes open a new file together, turning it to WAL can fail
    # with SQLITE_BUSY at once (no busy handler: it could deadlock); seen in
    # CI as test_workers_starting_together_on_a_new_file failing one worker.
    # The cache tries again instead of failing the call.
    from mtasts_fast.cache.sqlite import calls

    real = calls.create_schema
    attempts: list[float] = []

    def busy_twice(conn: sqlite3.Connection) -> None:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            raise _busy()
        real(conn)

    monkeypatch.setattr(calls, "create_schema", busy_twice)
    cache = await open_cache(tmp_path / "cache.db")
    try:
        await cache.put(make_entry("a.example"))
        assert await cache.get("a.example") is not None
        assert len(attempts) == 3
    finally:
        await cache.close()


async def test_other_schema_errors_and_a_lock_held_past_the_timeout_are_not_retried_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtasts_fast.cache.sqlite import calls

    attempts = 0

    def broken(conn: sqlite3.Connection) -> None:
        nonlocal attempts
        attempts += 1
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(calls, "create_schema", broken)
    cache = SqliteCache(options(tmp_path / "cache.db"))
    with pytest.raises(CacheUnavailable, match="disk I/O error"):
        await cache.setup()
    assert attempts == 1

    def always_busy(conn: sqlite3.Connection) -> None:
        raise _busy()

    monkeypatch.setattr(calls, "create_schema", always_busy)
    cache = SqliteCache(options(tmp_path / "other.db", timeout=0.3))
    await cache.setup()  # a locked file is not an error at start (logged)
    try:
        started = time.monotonic()
        with pytest.raises(CacheUnavailable, match="locked"):
            await cache.put(make_entry("a.example"))
        assert time.monotonic() - started < 2.0
    finally:
        await cache.close()


# --- configuration -----------------------------------------------------------------


def test_example_config_names_the_sqlite_cache() -> None:
    config = Config.from_yaml(EXAMPLE)
    assert config.cache.type == "sqlite"
    assert config.cache.options["filename"] == "/var/lib/mta-sts/cache.db"
    assert isinstance(create_cache(config.cache, config.filename), SqliteCache)
