"""The tables, and the work of each call, run in a pool thread (``store``).

One function per call, each taking the connection the pool lent it. Every
statement is fetched to the end (``fetchall``), so that no half-read
statement keeps a read transaction open on a pooled connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time

from mtasts_fast.cache.base import FAILURE_RETENTION, CacheEntry, CacheStats, FetchFailure
from mtasts_fast.cache.codec import decode_dane, decode_entry, decode_failure
from mtasts_fast.dane.state import DaneState

__all__ = [
    "LOCKED",
    "PROACTIVE",
    "acquire_lease",
    "create_schema",
    "delete_dane",
    "delete_entry",
    "delete_failure",
    "get_dane",
    "get_entry",
    "get_failure",
    "get_meta",
    "page",
    "prune",
    "purge",
    "put_dane",
    "put_entry",
    "put_failure",
    "release_lease",
    "set_meta",
]

_log = logging.getLogger("mtasts_fast.cache.sqlite")

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
    """CREATE TABLE IF NOT EXISTS mtasts_dane (
        domain TEXT NOT NULL PRIMARY KEY,
        evaluated_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        state BLOB NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS mtasts_dane_expires_at ON mtasts_dane (expires_at)",
)
_SCHEMA_NAMES = (
    "mtasts_policy",
    "mtasts_policy_expires_at",
    "mtasts_meta",
    "mtasts_failures",
    "mtasts_failures_retry_at",
    "mtasts_leases",
    "mtasts_dane",
    "mtasts_dane_expires_at",
)

_UPSERT = """
    INSERT INTO mtasts_policy (domain, checked_at, expires_at, entry) VALUES (?, ?, ?, ?)
    ON CONFLICT (domain) DO UPDATE SET
        checked_at = excluded.checked_at,
        expires_at = excluded.expires_at,
        entry = excluded.entry
    WHERE excluded.checked_at >= mtasts_policy.checked_at
"""
# A DANE state never replaces one evaluated later (another worker or host).
_PUT_DANE = """
    INSERT INTO mtasts_dane (domain, evaluated_at, expires_at, state) VALUES (?, ?, ?, ?)
    ON CONFLICT (domain) DO UPDATE SET
        evaluated_at = excluded.evaluated_at,
        expires_at = excluded.expires_at,
        state = excluded.state
    WHERE excluded.evaluated_at >= mtasts_dane.evaluated_at
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
PROACTIVE = "proactive_ts"

# Primary result codes that mean "another connection holds the lock".
LOCKED = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def create_schema(conn: sqlite3.Connection) -> None:
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


def _decode_entry(domain: object, data: object) -> CacheEntry | None:
    # Rows written by hand or by a later release may hold other types.
    if not isinstance(domain, str) or not isinstance(data, bytes):
        return None
    return decode_entry(domain, data)


def get_entry(conn: sqlite3.Connection, domain: str) -> CacheEntry | None:
    rows = conn.execute("SELECT entry FROM mtasts_policy WHERE domain = ?", (domain,)).fetchall()
    return _decode_entry(domain, rows[0][0]) if rows else None


def put_entry(conn: sqlite3.Connection, row: tuple[str, float, float, bytes]) -> None:
    conn.execute(_UPSERT, row).fetchall()


def delete_entry(conn: sqlite3.Connection, domain: str) -> bool:
    return conn.execute("DELETE FROM mtasts_policy WHERE domain = ?", (domain,)).rowcount > 0


def page(
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
    entries = [e for e in (_decode_entry(domain, data) for domain, data in rows) if e is not None]
    return (rows[-1][0] if rows else None), len(rows), entries


def purge(conn: sqlite3.Connection) -> int:
    # Failure records and DANE states go too, so that every purged domain is
    # fetched and evaluated afresh; only policy entries are counted.
    count = conn.execute("DELETE FROM mtasts_policy").rowcount
    conn.execute("DELETE FROM mtasts_failures").fetchall()
    conn.execute("DELETE FROM mtasts_dane").fetchall()
    return count


def prune(conn: sqlite3.Connection, older_than: float) -> int:
    count = conn.execute("DELETE FROM mtasts_policy WHERE expires_at < ?", (older_than,)).rowcount
    # A failure record is kept FAILURE_RETENTION after its retry time, so
    # the next failure continues the backoff; it is not counted.
    conn.execute(
        "DELETE FROM mtasts_failures WHERE retry_at < ?", (older_than - FAILURE_RETENTION,)
    ).fetchall()
    # DANE states go once they expired before older_than, like the entries.
    conn.execute("DELETE FROM mtasts_dane WHERE expires_at < ?", (older_than,)).fetchall()
    return count


def stats(conn: sqlite3.Connection, filename: str) -> CacheStats:
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


def get_failure(conn: sqlite3.Connection, domain: str) -> FetchFailure | None:
    rows = conn.execute("SELECT data FROM mtasts_failures WHERE domain = ?", (domain,)).fetchall()
    if not rows or not isinstance(rows[0][0], bytes):
        return None
    return decode_failure(domain, rows[0][0])


def put_failure(conn: sqlite3.Connection, row: tuple[str, bytes, float]) -> None:
    conn.execute(_PUT_FAILURE, row).fetchall()


def delete_failure(conn: sqlite3.Connection, domain: str) -> bool:
    return conn.execute("DELETE FROM mtasts_failures WHERE domain = ?", (domain,)).rowcount > 0


def get_dane(conn: sqlite3.Connection, domain: str) -> DaneState | None:
    rows = conn.execute("SELECT state FROM mtasts_dane WHERE domain = ?", (domain,)).fetchall()
    if not rows or not isinstance(rows[0][0], bytes):
        return None
    return decode_dane(domain, rows[0][0])


def put_dane(conn: sqlite3.Connection, row: tuple[str, float, float, bytes]) -> None:
    conn.execute(_PUT_DANE, row).fetchall()


def delete_dane(conn: sqlite3.Connection, domain: str) -> bool:
    return conn.execute("DELETE FROM mtasts_dane WHERE domain = ?", (domain,)).rowcount > 0


def acquire_lease(conn: sqlite3.Connection, name: str, owner: str, ttl: float) -> bool:
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


def release_lease(conn: sqlite3.Connection, name: str, owner: str) -> None:
    conn.execute("DELETE FROM mtasts_leases WHERE name = ? AND owner = ?", (name, owner)).fetchall()


def get_meta(conn: sqlite3.Connection, name: str) -> float:
    rows = conn.execute("SELECT value FROM mtasts_meta WHERE name = ?", (name,)).fetchall()
    return float(rows[0][0]) if rows else 0.0


def set_meta(conn: sqlite3.Connection, name: str, value: float) -> None:
    conn.execute(
        "INSERT INTO mtasts_meta (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    ).fetchall()
