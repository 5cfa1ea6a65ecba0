"""SQLite backend (``cache.type: sqlite``): one file shared by the workers of a host.

Options, as validated by the config, with postfix-mta-sts-resolver's names and
meanings: ``filename`` (required; its directory must exist), ``threads`` (pooled
connections, each used by one thread at a time) and ``timeout`` (seconds).

Our tables sit beside postfix-mta-sts-resolver's ``sts_policy_cache``, which is
never read or touched, so both daemons can share one file:

- ``mtasts_policy``: ``domain`` (primary key), ``entry`` (the codec bytes), and
  copies of the entry's ``checked_at`` and ``expires_at``, kept as columns so
  that a write is one upsert that never replaces a newer check, and ``prune``
  is one indexed DELETE.
- ``mtasts_meta``: ``name`` → ``value`` (``proactive_ts``).
- ``mtasts_failures``: ``domain`` → ``data`` (a ``FetchFailure`` as codec
  bytes) and a copy of its ``retry_at``, indexed for ``prune``.
- ``mtasts_leases``: ``name`` → ``owner`` and ``expires_at`` (wall-clock
  seconds: the processes share no other clock). A lease is taken or renewed
  by one upsert whose ``WHERE`` admits only a free, expired or own lease,
  inside a ``BEGIN IMMEDIATE`` transaction that reads the owner back, so
  SQLite's single writer lock makes it atomic across processes.

The schema is created on first use, in one ``BEGIN IMMEDIATE`` transaction,
so workers starting together serialise on SQLite's write lock. WAL journal
mode lets readers go on while another process writes; ``synchronous=NORMAL``
makes a commit a write to the WAL rather than an fsync (a power cut may lose
the last writes, never the file: a cache can afford that).

Every call — waiting for a free connection, then waiting for a lock held by
another process (SQLite's busy timeout) — ends within ``timeout`` seconds, and
raises :class:`CacheUnavailable` if it could not finish; the connection goes
back to the pool when its statement really ends.

Why the standard library's ``sqlite3`` on our own pool rather than aiosqlite:
each call here is one small function run in one thread hop, where aiosqlite
makes a hop per cursor method; and a call that gave up waiting must not hand
its connection to the next caller before the thread has finished with it,
which a :mod:`concurrent.futures` completion callback tells us and aiosqlite's
internal queue does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mtasts_fast import defaults
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

__all__ = ["FILE_MODE", "SqliteCache"]

_log = logging.getLogger("mtasts_fast.cache.sqlite")

_T = TypeVar("_T")

#: Permission bits of a database file we create (SQLite gives its -wal and
#: -shm files the same). Policies are public data, but the file is the
#: daemon's own: no other user needs to read it, none may write it.
FILE_MODE = 0o640

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mtasts_policy (
        domain TEXT NOT NULL PRIMARY KEY,
        checked_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        entry BLOB NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS mtasts_policy_expires_at ON mtasts_policy (expires_at)",
    """CREATE TABLE IF NOT EXISTS mtasts_meta (
        name TEXT NOT NULL PRIMARY KEY,
        value REAL NOT NULL
    ) WITHOUT ROWID""",
    # Added after the first release: IF NOT EXISTS adds them to older files.
    """CREATE TABLE IF NOT EXISTS mtasts_failures (
        domain TEXT NOT NULL PRIMARY KEY,
        data BLOB NOT NULL,
        retry_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS mtasts_failures_retry_at ON mtasts_failures (retry_at)",
    """CREATE TABLE IF NOT EXISTS mtasts_leases (
        name TEXT NOT NULL PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
)
_SCHEMA_NAMES = (
    "mtasts_policy",
    "mtasts_policy_expires_at",
    "mtasts_meta",
    "mtasts_failures",
    "mtasts_failures_retry_at",
    "mtasts_leases",
)

_UPSERT = """
    INSERT INTO mtasts_policy (domain, checked_at, expires_at, entry) VALUES (?, ?, ?, ?)
    ON CONFLICT (domain) DO UPDATE SET
        checked_at = excluded.checked_at,
        expires_at = excluded.expires_at,
        entry = excluded.entry
    WHERE excluded.checked_at >= mtasts_policy.checked_at
"""
_PUT_FAILURE = """
    INSERT INTO mtasts_failures (domain, data, retry_at) VALUES (?, ?, ?)
    ON CONFLICT (domain) DO UPDATE SET data = excluded.data, retry_at = excluded.retry_at
"""
# Takes the lease if it is free, expired (at :now) or already :owner's.
_ACQUIRE = """
    INSERT INTO mtasts_leases (name, owner, expires_at) VALUES (:name, :owner, :expires_at)
    ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE mtasts_leases.owner = excluded.owner OR mtasts_leases.expires_at <= :now
"""
_PROACTIVE = "proactive_ts"

# Primary result codes that mean "another connection holds the lock".
_LOCKED = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


# --- work done in a pool thread, one function per call --------------------------
# Every statement is fetched to the end (fetchall), so that no half-read
# statement keeps a read transaction open on a pooled connection.


def _create_schema(conn: sqlite3.Connection) -> None:
    (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0]
    if str(mode).lower() != "wal":
        _log.warning(
            "sqlite cache: journal mode is %s, not wal; readers may wait for writers", mode
        )
    marks = ", ".join("?" * len(_SCHEMA_NAMES))
    rows = conn.execute(
        f"SELECT count(*) FROM sqlite_master WHERE name IN ({marks})", _SCHEMA_NAMES
    ).fetchall()
    if rows[0][0] == len(_SCHEMA_NAMES):
        return  # no write lock needed: reads go on while another process writes
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _decode(domain: object, data: object) -> CacheEntry | None:
    # Rows written by hand or by a later release may hold other types.
    if not isinstance(domain, str) or not isinstance(data, bytes):
        return None
    return decode_entry(domain, data)


def _get(conn: sqlite3.Connection, domain: str) -> CacheEntry | None:
    rows = conn.execute("SELECT entry FROM mtasts_policy WHERE domain = ?", (domain,)).fetchall()
    return _decode(domain, rows[0][0]) if rows else None


def _put(conn: sqlite3.Connection, row: tuple[str, float, float, bytes]) -> None:
    conn.execute(_UPSERT, row).fetchall()


def _delete(conn: sqlite3.Connection, domain: str) -> bool:
    return conn.execute("DELETE FROM mtasts_policy WHERE domain = ?", (domain,)).rowcount > 0


def _page(
    conn: sqlite3.Connection, after: str | None, limit: int
) -> tuple[str | None, int, list[CacheEntry]]:
    """Up to ``limit`` rows after ``after`` in key order: (last key, row count, entries)."""
    args: tuple[object, ...]
    if after is None:
        sql, args = "SELECT domain, entry FROM mtasts_policy ORDER BY domain LIMIT ?", (limit,)
    else:
        sql = "SELECT domain, entry FROM mtasts_policy WHERE domain > ? ORDER BY domain LIMIT ?"
        args = (after, limit)
    rows = conn.execute(sql, args).fetchall()
    entries = [e for e in (_decode(domain, data) for domain, data in rows) if e is not None]
    return (rows[-1][0] if rows else None), len(rows), entries


def _purge(conn: sqlite3.Connection) -> int:
    # Failure records go too, so that every purged domain is fetched afresh;
    # only policy entries are counted.
    count = conn.execute("DELETE FROM mtasts_policy").rowcount
    conn.execute("DELETE FROM mtasts_failures").fetchall()
    return count


def _prune(conn: sqlite3.Connection, older_than: float) -> int:
    count = conn.execute("DELETE FROM mtasts_policy WHERE expires_at < ?", (older_than,)).rowcount
    # A failure record is kept FAILURE_RETENTION after its retry time, so
    # the next failure continues the backoff; it is not counted.
    conn.execute(
        "DELETE FROM mtasts_failures WHERE retry_at < ?", (older_than - FAILURE_RETENTION,)
    ).fetchall()
    return count


def _stats(conn: sqlite3.Connection, filename: str) -> CacheStats:
    # One read transaction, so the two counts agree with each other.
    conn.execute("BEGIN")
    try:
        entries, oldest, newest = conn.execute(
            "SELECT count(*), min(checked_at), max(checked_at) FROM mtasts_policy"
        ).fetchall()[0]
        (failures,) = conn.execute("SELECT count(*) FROM mtasts_failures").fetchall()[0]
    finally:
        conn.rollback()
    # The file with its write-ahead log: what the cache takes on disk (the
    # file may hold postfix-mta-sts-resolver's table too).
    size = 0
    for name in (filename, filename + "-wal", filename + "-shm"):
        with contextlib.suppress(OSError):
            size += os.stat(name).st_size
    return CacheStats(int(entries), int(failures), oldest, newest, size)


def _get_failure(conn: sqlite3.Connection, domain: str) -> FetchFailure | None:
    rows = conn.execute("SELECT data FROM mtasts_failures WHERE domain = ?", (domain,)).fetchall()
    if not rows or not isinstance(rows[0][0], bytes):
        return None
    return decode_failure(domain, rows[0][0])


def _put_failure(conn: sqlite3.Connection, row: tuple[str, bytes, float]) -> None:
    conn.execute(_PUT_FAILURE, row).fetchall()


def _delete_failure(conn: sqlite3.Connection, domain: str) -> bool:
    return conn.execute("DELETE FROM mtasts_failures WHERE domain = ?", (domain,)).rowcount > 0


def _acquire(conn: sqlite3.Connection, name: str, owner: str, ttl: float) -> bool:
    # BEGIN IMMEDIATE takes the write lock first (waiting up to the busy
    # timeout), so the clock is read, the lease judged and the outcome read
    # back with no other process writing in between.
    conn.execute("BEGIN IMMEDIATE")
    try:
        now = time.time()
        args = {"name": name, "owner": owner, "expires_at": now + ttl, "now": now}
        conn.execute(_ACQUIRE, args).fetchall()
        rows = conn.execute("SELECT owner FROM mtasts_leases WHERE name = ?", (name,)).fetchall()
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return bool(rows) and rows[0][0] == owner


def _release(conn: sqlite3.Connection, name: str, owner: str) -> None:
    conn.execute("DELETE FROM mtasts_leases WHERE name = ? AND owner = ?", (name, owner)).fetchall()


def _get_meta(conn: sqlite3.Connection, name: str) -> float:
    rows = conn.execute("SELECT value FROM mtasts_meta WHERE name = ?", (name,)).fetchall()
    return float(rows[0][0]) if rows else 0.0


def _set_meta(conn: sqlite3.Connection, name: str, value: float) -> None:
    conn.execute(
        "INSERT INTO mtasts_meta (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    ).fetchall()


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for conn in connections:
        try:
            conn.close()
        except sqlite3.Error as exc:
            _log.warning("sqlite cache: error while closing: %s", exc)


def _job_done(
    idle: asyncio.LifoQueue[sqlite3.Connection],
    conn: sqlite3.Connection,
    job: asyncio.Future[Any],
) -> None:
    # The thread is done with the connection: back to the pool. The caller
    # may have stopped waiting; its outcome counts as seen either way.
    idle.put_nowait(conn)
    if not job.cancelled():
        job.exception()


class _NoAnswer(CacheUnavailable):
    """A call did not finish within ``timeout`` (a lock, most likely)."""


def _is_lock_wait(exc: CacheUnavailable) -> bool:
    if isinstance(exc, _NoAnswer):
        return True
    code = getattr(exc.__cause__, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _LOCKED


class SqliteCache(Cache):
    """Policies in a SQLite database file, shared by the worker processes of a host."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._filename = os.fspath(options["filename"])
        self._threads = int(options.get("threads", defaults.SQLITE_THREADS))
        self._timeout = float(options.get("timeout", defaults.SQLITE_TIMEOUT))
        if self._threads < 1 or self._timeout <= 0:
            raise ValueError("sqlite cache: threads must be at least 1 and timeout positive")
        self._executor: ThreadPoolExecutor | None = None
        self._idle: asyncio.LifoQueue[sqlite3.Connection] | None = None
        self._connections: list[sqlite3.Connection] = []
        self._fresh: set[sqlite3.Connection] = set()  # not configured yet
        # Set from a pool thread once the tables exist; until then every call
        # tries to create them first (the file may have been locked at start).
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"<SqliteCache {self._filename!r}>"

    # -- life cycle --------------------------------------------------------------

    async def setup(self) -> None:
        """Open the pool and create the tables.

        Raises CacheUnavailable if the file cannot be used at all (missing
        directory, no permission, not a database). A file locked by another
        process is not an error here: the tables are then created by the
        first call that gets the lock.
        """
        if self._idle is not None:
            return
        executor = ThreadPoolExecutor(self._threads, thread_name_prefix="mtasts-sqlite")
        try:
            connections = await asyncio.get_running_loop().run_in_executor(executor, self._open)
        except (OSError, sqlite3.Error) as exc:
            executor.shutdown(wait=False)
            raise CacheUnavailable(f"sqlite cache {self._filename}: cannot open: {exc}") from exc
        idle: asyncio.LifoQueue[sqlite3.Connection] = asyncio.LifoQueue()
        for conn in connections:
            idle.put_nowait(conn)
        self._executor, self._idle, self._connections = executor, idle, connections
        self._fresh = set(connections)
        try:
            await self._run(_get_meta, _PROACTIVE)  # any call creates the tables first
        except CacheUnavailable as exc:
            if not _is_lock_wait(exc):
                await self.close()
                raise
            _log.warning("%s; the cache is used once the lock is released", exc)

    def _open(self) -> list[sqlite3.Connection]:
        directory = os.path.dirname(os.path.abspath(self._filename))
        if not os.path.isdir(directory):
            # SQLite's own message would be "unable to open database file".
            raise FileNotFoundError(f"directory {directory} does not exist")
        # Created here rather than by SQLite, which would use 0644 (minus umask).
        os.close(os.open(self._filename, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
        connections: list[sqlite3.Connection] = []
        try:
            for _ in range(self._threads):
                conn = sqlite3.connect(
                    self._filename,
                    timeout=self._timeout,  # the busy timeout
                    isolation_level=None,  # autocommit: every write is its own transaction
                    check_same_thread=False,  # the pool hands it to one thread at a time
                )
                connections.append(conn)
        except BaseException:
            _close_all(connections)
            raise
        return connections

    async def close(self) -> None:
        idle, executor = self._idle, self._executor
        self._idle = self._executor = None
        if idle is None or executor is None:
            return
        connections, self._connections = self._connections, []
        self._fresh = set()
        # A statement still waiting for a lock ends within its busy timeout.
        # Waiting for it lets the last connection to close checkpoint the WAL.
        returned: list[sqlite3.Connection] = []
        try:
            async with asyncio.timeout(self._timeout + 1.0):
                while len(returned) < len(connections):
                    returned.append(await idle.get())
        except TimeoutError:
            _log.warning(
                "sqlite cache %s: %d connections still busy at close",
                self._filename,
                len(connections) - len(returned),
            )
        await asyncio.get_running_loop().run_in_executor(executor, _close_all, returned)
        executor.shutdown(wait=False)

    # -- one call ------------------------------------------------------------------

    async def _run(self, work: Callable[..., _T], *args: Any) -> _T:
        idle, executor = self._idle, self._executor
        if idle is None or executor is None:
            raise CacheUnavailable(f"sqlite cache {self._filename} is not open")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                conn = await idle.get()
        except TimeoutError:
            raise self._too_slow() from None
        try:
            job = loop.run_in_executor(executor, self._call, conn, work, args)
        except RuntimeError:  # close() gave up waiting and shut the threads down
            idle.put_nowait(conn)
            raise CacheUnavailable(f"sqlite cache {self._filename} is closed") from None
        job.add_done_callback(functools.partial(_job_done, idle, conn))
        # asyncio.wait, not wait_for or shield: the job is never cancelled
        # (the thread could not be stopped anyway), and its outcome is never
        # lost, whichever of the job and the deadline comes first.
        await asyncio.wait((job,), timeout=max(0.0, deadline - loop.time()))
        if not job.done():
            raise self._too_slow()
        try:
            return job.result()
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"sqlite cache {self._filename}: {exc}") from exc

    def _too_slow(self) -> _NoAnswer:
        return _NoAnswer(
            f"sqlite cache {self._filename}: no answer within {self._timeout:g} s"
            " (database locked by another process?)"
        )

    def _call(self, conn: sqlite3.Connection, work: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        if conn in self._fresh:
            # Here, not when opening: even a PRAGMA reads the schema, so it
            # waits for a lock held by another process.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._fresh.discard(conn)
        if not self._schema_ready:
            _create_schema(conn)
            self._schema_ready = True
        return work(conn, *args)

    # -- the interface -----------------------------------------------------------

    async def get(self, domain: str) -> CacheEntry | None:
        return await self._run(_get, domain)

    async def put(self, entry: CacheEntry) -> None:
        row = (entry.domain, float(entry.checked_at), float(entry.expires_at), encode_entry(entry))
        await self._run(_put, row)

    async def delete(self, domain: str) -> bool:
        return await self._run(_delete, domain)

    async def scan(self, batch_size: int = SCAN_BATCH) -> AsyncIterator[list[CacheEntry]]:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        after: str | None = None
        while True:
            # One short statement per page, by primary key: no transaction
            # stays open between pages, so writers are never held up.
            after, count, entries = await self._run(_page, after, batch_size)
            if entries:
                yield entries
            if count < batch_size:
                return

    async def purge(self) -> int:
        return await self._run(_purge)

    async def prune(self, older_than: float) -> int:
        return await self._run(_prune, float(older_than))

    async def get_proactive_ts(self) -> float:
        return await self._run(_get_meta, _PROACTIVE)

    async def set_proactive_ts(self, ts: float) -> None:
        await self._run(_set_meta, _PROACTIVE, float(ts))

    async def stats(self) -> CacheStats:
        return await self._run(_stats, self._filename)

    async def get_failure(self, domain: str) -> FetchFailure | None:
        return await self._run(_get_failure, domain)

    async def put_failure(self, failure: FetchFailure) -> None:
        row = (failure.domain, encode_failure(failure), float(failure.retry_at))
        await self._run(_put_failure, row)

    async def delete_failure(self, domain: str) -> bool:
        return await self._run(_delete_failure, domain)

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return await self._run(_acquire, name, owner, float(ttl))

    async def release_lease(self, name: str, owner: str) -> None:
        await self._run(_release, name, owner)
